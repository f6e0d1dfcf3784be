//! Routing decisions: which region a client should use (sans-I/O).
//!
//! `GET /v1/route` on every node and the `tickmesh router` DNS server both ask the same
//! question: *given where the client is, which regions are healthy and the operator's
//! weights, which region should this client use, and where should it go next?* This module
//! answers it without sockets or clocks, so the node, the DNS server and the tests agree
//! on every answer for the same inputs.
//!
//! # The decision
//! 1. **Preference.** The client names a country ([`Country`], ISO 3166-1 alpha-2), a region,
//!    or nothing (the answering node's own region is preferred). A country maps to its
//!    preferred region through [`preferred_region`] (REGIONS.md's default map).
//! 2. **Proximity.** Every *healthy* configured region ([`RegionState::Active`]) is ordered by
//!    the REGIONS.md round-trip time from the preferred region (the preferred one first when
//!    it is deployed and healthy). A draining or down region is left out. So a country whose
//!    region is not deployed (BR while sa-east-1 is not) goes to the nearest deployed one
//!    (us-east-1, 114 ms).
//! 3. **Weights (0-100, default 100).** A region's weight is the share of *its own* clients
//!    (those for whom it is the nearest healthy region) that it keeps; the rest spill to the
//!    next-nearest healthy region with a weight above 0. This is the "traffic dial" of a
//!    global load balancer: with every weight at 100 the nearest region always wins; with
//!    `us-east-1=90, eu-west-1=10` a US client goes 90/10 to us-east-1 / eu-west-1 and a
//!    European one 10/90, while Asian clients are untouched; weight 0 moves a region's
//!    whole share away (a soft drain that keeps the region serving its current clients).
//!    We chose it over one global weighted draw because a global draw would send European
//!    clients across the Atlantic as soon as any weight is set; the dial shifts only the
//!    traffic the operator named, to the nearest place that can take it.
//! 4. **Affinity.** Whether a client stays or spills is decided by a hash of
//!    `(affinity key, region)` ([`affinity_unit`]), a rendezvous-style score that does not
//!    depend on any other region. So the same key gets the same region on every call and
//!    on every node, and it moves only when its region goes unhealthy (or its region's weight
//!    drops below the key's score). Over many keys the scores are uniform, which is what
//!    makes 90/10 weights give 90/10 answers. Without a key the caller passes a random one.
//! 5. **Fallbacks.** The other healthy regions in failover order from the chosen one (by
//!    round-trip time), regions with weight 0 last.
//!
//! If no region is healthy the answer is [`RouteError::NoHealthyRegion`]; if every healthy
//! region has weight 0 the weights are ignored (an answer is better than none).

use std::collections::BTreeMap;

/// Every error of a routing decision; each message says what to do.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    /// `geo` is not two ASCII letters.
    #[error("geo '{0}' is not an ISO 3166-1 alpha-2 country code; use two letters such as US, DE or SG")]
    BadCountry(String),
    /// A well-formed code that the country map does not hold.
    #[error(
        "country code '{0}' is not in the routing table; use an assigned ISO 3166-1 alpha-2 code such as US, DE or SG"
    )]
    UnknownCountry(String),
    /// `region` names no configured region.
    #[error("region '{region}' is not configured; use one of {known}")]
    UnknownRegion {
        /// What was asked for.
        region: String,
        /// The configured regions, comma-separated.
        known: String,
    },
    /// Every region is down or draining.
    #[error("no region is healthy now; retry in a few seconds")]
    NoHealthyRegion,
    /// A weight outside 0-100 or a malformed weight list.
    #[error("{0}")]
    BadWeights(String),
}

/// An ISO 3166-1 alpha-2 country code, upper case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Country([u8; 2]);

impl Country {
    /// Parses two ASCII letters (any case).
    pub fn parse(s: &str) -> Result<Country, RouteError> {
        let b = s.trim().as_bytes();
        match b {
            [a, c] if a.is_ascii_alphabetic() && c.is_ascii_alphabetic() => {
                Ok(Country([a.to_ascii_uppercase(), c.to_ascii_uppercase()]))
            }
            _ => Err(RouteError::BadCountry(s.to_owned())),
        }
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        // The bytes are ASCII letters by construction.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl std::fmt::Display for Country {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The default country-to-region map of REGIONS.md ("Default country-to-region map"),
/// spelled out per ISO 3166-1 alpha-2 code.
///
/// Source: REGIONS.md names each region's continent and its key countries; the remaining
/// codes of ISO 3166-1 are assigned by continent (UN geoscheme). Two readings of ours, both
/// by proximity: the rest of the Middle East (IQ, IR, LB, SY, YE, PS) goes with me-south-1's
/// named countries rather than to Singapore, and TR, GE, AM, AZ and XK (Kosovo, a
/// user-assigned code in common use) go to Europe. Antarctic codes (AQ, BV, TF) are not mapped.
pub const COUNTRY_TABLE: [(&str, &str); 6] = [
    (
        "us-east-1",
        "US CA MX GT BZ SV HN NI CR PA CU JM HT DO PR BS BB TT AG DM GD KN LC VC AW CW SX BQ KY TC \
         VG VI AI MS GP MQ BL MF PM BM GL UM",
    ),
    (
        "eu-west-1",
        "GB IE DE FR NL BE LU CH AT IT ES PT DK SE NO FI IS PL CZ SK HU SI HR BA RS ME MK AL GR BG RO \
         MD UA BY LT LV EE RU MT CY LI MC SM VA AD GI IM JE GG FO AX SJ XK TR GE AM AZ \
         DZ AO BJ BW BF BI CV CM CF TD KM CD CG CI DJ GQ ER SZ ET GA GM GH GN GW KE LS LR LY MG MW \
         ML MR MU YT MA MZ NA NE NG RE RW SH ST SN SC SL SO ZA SS SD TZ TG TN UG EH ZM ZW",
    ),
    (
        "ap-southeast-1",
        "SG MY ID TH VN PH JP KR CN HK TW IN KP MO MN LA KH MM BN TL BD BT NP LK MV PK AF KZ UZ TM KG \
         TJ IO CX CC",
    ),
    ("sa-east-1", "BR AR CL CO PE UY PY BO EC VE GY SR GF FK GS"),
    ("ap-southeast-2", "AU NZ PG FJ SB VU NC PF WS TO KI TV NR PW FM MH GU MP AS CK NU TK WF PN NF HM"),
    ("me-south-1", "AE SA BH QA KW OM IL JO EG IQ IR LB SY YE PS"),
];

/// The preferred region of a country (REGIONS.md), deployed or not.
pub fn preferred_region(c: Country) -> Option<&'static str> {
    COUNTRY_TABLE.iter().find(|(_, list)| list.split_whitespace().any(|x| x == c.as_str())).map(|(r, _)| *r)
}

/// A region's health as the answering side sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegionState {
    /// Ready and taking traffic.
    Active,
    /// Refusing new clients (an operator drained it); left out of answers.
    Draining,
    /// Unreachable or not ready; left out of answers.
    Down,
}

impl RegionState {
    /// The state's name as `/v1/regions` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            RegionState::Active => "active",
            RegionState::Draining => "draining",
            RegionState::Down => "down",
        }
    }
}

/// Per-region weights, 0-100; a region not listed has the default, 100.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Weights(BTreeMap<String, u8>);

impl Weights {
    /// The default weight of a region not listed.
    pub const DEFAULT: u8 = 100;

    /// Weight of `region`.
    pub fn get(&self, region: &str) -> u8 {
        self.0.get(region).copied().unwrap_or(Self::DEFAULT)
    }

    /// Sets one weight (clamped to 100).
    pub fn set(&mut self, region: &str, w: u8) {
        self.0.insert(region.to_owned(), w.min(100));
    }

    /// The explicitly set weights.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u8)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// Parses `us-east-1=90,eu-west-1=10` (the CLI's form).
    pub fn parse_list(s: &str) -> Result<Weights, RouteError> {
        let mut w = Weights::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((r, v)) = part.split_once('=') else {
                return Err(RouteError::BadWeights(format!(
                    "'{part}' is not REGION=WEIGHT; write e.g. us-east-1=90,eu-west-1=10"
                )));
            };
            let v: u8 = v.trim().parse().ok().filter(|v| *v <= 100).ok_or_else(|| {
                RouteError::BadWeights(format!(
                    "weight '{}' of {} is not a whole number from 0 to 100",
                    v.trim(),
                    r.trim()
                ))
            })?;
            w.set(r.trim(), v);
        }
        if w.0.is_empty() {
            return Err(RouteError::BadWeights("no weights given; write e.g. us-east-1=90,eu-west-1=10".into()));
        }
        Ok(w)
    }

    /// Checks every weight names a configured region and lies in 0-100; reports every problem.
    pub fn validate(&self, configured: &[String]) -> Result<(), RouteError> {
        let mut p = Vec::new();
        for (r, v) in &self.0 {
            if !configured.contains(r) {
                p.push(format!("region '{r}' is not configured (configured: {})", configured.join(", ")));
            }
            if *v > 100 {
                p.push(format!("weight {v} of {r} is above 100; use 0 to 100"));
            }
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(RouteError::BadWeights(p.join("; ")))
        }
    }
}

/// One configured region as the routing core sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionView {
    /// Region name.
    pub region: String,
    /// Its health now.
    pub state: RegionState,
}

/// What a client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want<'a> {
    /// The nearest region to a country.
    Geo(Country),
    /// A named region (or the nearest healthy one to it).
    Region(&'a str),
}

/// The answer: the chosen region and where to go next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The region the client should use.
    pub region: String,
    /// The other healthy regions in failover order from `region`.
    pub fallbacks: Vec<String>,
}

/// A uniform number in [0, 1) (as a 53-bit fraction) for one (key, region) pair.
///
/// FNV-1a over the key and the region name, then the splitmix64 finalizer so that keys
/// differing in one byte land far apart. Written out rather than taken from `std`'s hasher:
/// the value must be the same in every process and every release, or affinity would break
/// across nodes and upgrades.
pub fn affinity_unit(key: &[u8], region: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.iter().chain([0xffu8].iter()).chain(region.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    h >> 11
}

/// True when the key's score for `region` falls within the region's weight.
fn keeps(key: &[u8], region: &str, weight: u8) -> bool {
    // unit / 2^53 < weight / 100, in integers.
    u128::from(affinity_unit(key, region)) * 100 < u128::from(weight) << 53
}

/// Orders `names` by round-trip time from `from` (`from` first when present).
fn by_rtt(from: &str, names: &[String]) -> Vec<String> {
    crate::regions::failover_order(from, names)
}

/// Decides where a client goes. `regions` are the configured regions with their health,
/// `local` the answering node's region (preferred when `want` is `None`), and `key` the
/// affinity key (the caller passes random bytes when the client gave none). See the module
/// docs for the rules.
pub fn decide(
    regions: &[RegionView],
    weights: &Weights,
    local: &str,
    want: Option<Want<'_>>,
    key: &[u8],
) -> Result<Route, RouteError> {
    let configured: Vec<String> = regions.iter().map(|r| r.region.clone()).collect();
    let preferred: String = match want {
        Some(Want::Region(r)) => {
            if !configured.iter().any(|c| c == r) {
                return Err(RouteError::UnknownRegion { region: r.to_owned(), known: configured.join(", ") });
            }
            r.to_owned()
        }
        Some(Want::Geo(c)) => preferred_region(c).ok_or_else(|| RouteError::UnknownCountry(c.to_string()))?.to_owned(),
        None => local.to_owned(),
    };
    let healthy: Vec<String> =
        regions.iter().filter(|r| r.state == RegionState::Active).map(|r| r.region.clone()).collect();
    let order = by_rtt(&preferred, &healthy);
    let Some(nearest) = order.first() else { return Err(RouteError::NoHealthyRegion) };
    let any_weight = order.iter().any(|r| weights.get(r) > 0);
    let chosen = if !any_weight || keeps(key, nearest, weights.get(nearest)) {
        nearest.clone()
    } else {
        // Spill to the next-nearest region that takes traffic.
        order.iter().skip(1).find(|r| weights.get(r) > 0).cloned().unwrap_or_else(|| nearest.clone())
    };
    let mut fallbacks: Vec<String> = by_rtt(&chosen, &healthy).into_iter().filter(|r| *r != chosen).collect();
    // Stable: regions that take traffic first, each group in failover order.
    fallbacks.sort_by_key(|r| weights.get(r) == 0);
    Ok(Route { region: chosen, fallbacks })
}

/// What one health probe of a region (its `/readyz`) found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// 200: ready.
    Ready,
    /// 503 naming a drain.
    Draining,
    /// Answered, but not ready (feed stale, journal not writable, ...).
    NotReady,
    /// No answer (refused, timed out, not HTTP).
    Unreachable,
}

/// Turns probe results into region states (sans-I/O; the poller feeds it).
///
/// An explicit answer counts at once: a region that says it is draining or not ready is
/// left out from that probe on, and one ready answer brings it back. Silence counts only
/// after `down_after` probes in a row, so one lost probe on a loaded host does not flap
/// a healthy region out of every answer.
#[derive(Debug, Clone)]
pub struct HealthTracker {
    down_after: u32,
    regions: BTreeMap<String, (Option<RegionState>, u32)>,
}

impl HealthTracker {
    /// A tracker that marks a silent region down after `down_after` (at least 1) failed probes.
    pub fn new(down_after: u32) -> HealthTracker {
        HealthTracker { down_after: down_after.max(1), regions: BTreeMap::new() }
    }

    /// Records one probe of `region`.
    pub fn observe(&mut self, region: &str, probe: Probe) {
        let e = self.regions.entry(region.to_owned()).or_insert((None, 0));
        match probe {
            Probe::Ready => *e = (Some(RegionState::Active), 0),
            Probe::Draining => *e = (Some(RegionState::Draining), 0),
            Probe::NotReady => *e = (Some(RegionState::Down), 0),
            Probe::Unreachable => {
                e.1 = e.1.saturating_add(1);
                if e.1 >= self.down_after {
                    e.0 = Some(RegionState::Down);
                }
            }
        }
    }

    /// The region's state, or None before any verdict.
    pub fn state(&self, region: &str) -> Option<RegionState> {
        self.regions.get(region).and_then(|e| e.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn views(states: &[(&str, RegionState)]) -> Vec<RegionView> {
        states.iter().map(|(r, s)| RegionView { region: r.to_string(), state: *s }).collect()
    }

    fn primaries() -> Vec<RegionView> {
        views(&[
            ("us-east-1", RegionState::Active),
            ("eu-west-1", RegionState::Active),
            ("ap-southeast-1", RegionState::Active),
        ])
    }

    fn geo(regions: &[RegionView], w: &Weights, cc: &str, key: &str) -> Route {
        decide(regions, w, "us-east-1", Some(Want::Geo(Country::parse(cc).unwrap())), key.as_bytes()).unwrap()
    }

    #[test]
    fn table_maps_each_code_once_and_names_known_regions() {
        let mut seen = std::collections::BTreeSet::new();
        for (r, list) in COUNTRY_TABLE {
            assert!(crate::regions::is_known(r), "{r}");
            for c in list.split_whitespace() {
                assert_eq!(c.len(), 2, "{c}");
                assert!(seen.insert(c), "{c} is mapped twice");
            }
        }
        assert!(seen.len() > 230, "{}", seen.len());
    }

    #[test]
    fn each_country_maps_to_its_nearest_healthy_region() {
        let all = primaries();
        let w = Weights::default();
        for (cc, want) in [
            ("US", "us-east-1"),
            ("ca", "us-east-1"),
            ("MX", "us-east-1"),
            ("BR", "us-east-1"), // sa-east-1 not deployed: 114 ms to us-east-1
            ("AR", "us-east-1"),
            ("GB", "eu-west-1"),
            ("DE", "eu-west-1"),
            ("ZA", "eu-west-1"),
            ("SG", "ap-southeast-1"),
            ("JP", "ap-southeast-1"),
            ("IN", "ap-southeast-1"),
            ("AU", "ap-southeast-1"), // 93 ms from ap-southeast-2
            ("AE", "ap-southeast-1"), // 86 ms from me-south-1, against 96 ms to eu-west-1
        ] {
            for k in 0..50 {
                assert_eq!(geo(&all, &w, cc, &format!("k{k}")).region, want, "{cc}");
            }
        }
        // Every mapped country gets an answer, and the expansion regions when deployed win.
        let six = views(&crate::regions::REGIONS.map(|r| (r, RegionState::Active)));
        for (r, list) in COUNTRY_TABLE {
            for c in list.split_whitespace() {
                assert_eq!(geo(&six, &w, c, "x").region, r, "{c}");
            }
        }
    }

    #[test]
    fn down_or_draining_regions_disappear() {
        let w = Weights::default();
        let mut v = primaries();
        v[0].state = RegionState::Down;
        let r = geo(&v, &w, "US", "a");
        assert_eq!(r.region, "eu-west-1");
        assert_eq!(r.fallbacks, ["ap-southeast-1"]);
        v[1].state = RegionState::Draining;
        assert_eq!(geo(&v, &w, "US", "a").region, "ap-southeast-1");
        assert!(geo(&v, &w, "US", "a").fallbacks.is_empty());
        v[2].state = RegionState::Down;
        assert_eq!(
            decide(&v, &w, "us-east-1", Some(Want::Geo(Country::parse("US").unwrap())), b"a"),
            Err(RouteError::NoHealthyRegion)
        );
    }

    #[test]
    fn fallbacks_follow_failover_order_of_the_chosen_region() {
        let r = geo(&primaries(), &Weights::default(), "SG", "a");
        assert_eq!(r.region, "ap-southeast-1");
        assert_eq!(r.fallbacks, ["eu-west-1", "us-east-1"]);
    }

    #[test]
    fn weights_90_10_give_90_10_within_3_percent() {
        let w = Weights::parse_list("us-east-1=90,eu-west-1=10").unwrap();
        for (cc, us_share) in [("US", 0.90), ("DE", 0.90)] {
            let mut us = 0;
            let n = 10_000;
            for k in 0..n {
                let r = geo(&primaries(), &w, cc, &format!("user-{k}"));
                match r.region.as_str() {
                    "us-east-1" => us += 1,
                    "eu-west-1" => {}
                    other => panic!("{cc} went to {other}"),
                }
            }
            let share = us as f64 / n as f64;
            assert!((share - us_share).abs() < 0.03, "{cc}: us-east-1 share {share}");
        }
        // Asia is untouched.
        for k in 0..100 {
            assert_eq!(geo(&primaries(), &w, "SG", &format!("u{k}")).region, "ap-southeast-1");
        }
    }

    #[test]
    fn weight_zero_moves_everything_and_all_zero_is_ignored() {
        let w = Weights::parse_list("us-east-1=0").unwrap();
        for k in 0..200 {
            let r = geo(&primaries(), &w, "US", &format!("u{k}"));
            assert_eq!(r.region, "eu-west-1");
            assert_eq!(r.fallbacks, ["ap-southeast-1", "us-east-1"], "weight 0 last");
        }
        let w = Weights::parse_list("us-east-1=0,eu-west-1=0,ap-southeast-1=0").unwrap();
        assert_eq!(geo(&primaries(), &w, "DE", "u").region, "eu-west-1");
    }

    #[test]
    fn affinity_holds_and_moves_only_when_its_region_goes_unhealthy() {
        let w = Weights::parse_list("us-east-1=50,eu-west-1=50").unwrap();
        let all = primaries();
        let first: Vec<String> = (0..2000).map(|k| geo(&all, &w, "US", &format!("u{k}")).region).collect();
        assert!(first.iter().any(|r| r == "eu-west-1") && first.iter().any(|r| r == "us-east-1"));
        // Same answers on a second call, and from another node (local region differs).
        for (k, r) in first.iter().enumerate() {
            let again = decide(
                &all,
                &w,
                "ap-southeast-1",
                Some(Want::Geo(Country::parse("US").unwrap())),
                format!("u{k}").as_bytes(),
            );
            assert_eq!(&again.unwrap().region, r);
        }
        // ap-southeast-1 going down moves nobody.
        let mut v = all.clone();
        v[2].state = RegionState::Down;
        for (k, r) in first.iter().enumerate() {
            assert_eq!(&geo(&v, &w, "US", &format!("u{k}")).region, r);
        }
        // eu-west-1 going down moves exactly its keys; they come back when it returns.
        let mut v = all.clone();
        v[1].state = RegionState::Down;
        for (k, r) in first.iter().enumerate() {
            let now = geo(&v, &w, "US", &format!("u{k}")).region;
            if r == "us-east-1" {
                assert_eq!(now, "us-east-1");
            } else {
                assert_ne!(now, "eu-west-1");
            }
        }
        for (k, r) in first.iter().enumerate() {
            assert_eq!(&geo(&all, &w, "US", &format!("u{k}")).region, r);
        }
    }

    #[test]
    fn lowering_a_weight_moves_only_the_keys_it_must() {
        let all = primaries();
        let w90 = Weights::parse_list("us-east-1=90").unwrap();
        let w80 = Weights::parse_list("us-east-1=80").unwrap();
        for k in 0..2000 {
            let key = format!("u{k}");
            let a = geo(&all, &w90, "US", &key).region;
            let b = geo(&all, &w80, "US", &key).region;
            if a == "eu-west-1" {
                assert_eq!(b, "eu-west-1", "a key that had spilled stays spilled");
            }
        }
    }

    #[test]
    fn explicit_region_and_local_default() {
        let w = Weights::default();
        let all = primaries();
        let r = decide(&all, &w, "us-east-1", Some(Want::Region("eu-west-1")), b"k").unwrap();
        assert_eq!(r.region, "eu-west-1");
        assert_eq!(r.fallbacks, ["us-east-1", "ap-southeast-1"]);
        assert_eq!(decide(&all, &w, "ap-southeast-1", None, b"k").unwrap().region, "ap-southeast-1");
        let e = decide(&all, &w, "us-east-1", Some(Want::Region("mars-1")), b"k").unwrap_err();
        assert_eq!(e.to_string(), "region 'mars-1' is not configured; use one of us-east-1, eu-west-1, ap-southeast-1");
    }

    #[test]
    fn health_counts_explicit_answers_at_once_and_silence_after_a_threshold() {
        let mut h = HealthTracker::new(2);
        assert_eq!(h.state("a"), None);
        h.observe("a", Probe::Unreachable);
        assert_eq!(h.state("a"), None);
        h.observe("a", Probe::Ready);
        assert_eq!(h.state("a"), Some(RegionState::Active));
        h.observe("a", Probe::Unreachable);
        assert_eq!(h.state("a"), Some(RegionState::Active), "one lost probe is not enough");
        h.observe("a", Probe::Unreachable);
        assert_eq!(h.state("a"), Some(RegionState::Down));
        h.observe("a", Probe::Ready);
        h.observe("a", Probe::Draining);
        assert_eq!(h.state("a"), Some(RegionState::Draining));
        h.observe("a", Probe::NotReady);
        assert_eq!(h.state("a"), Some(RegionState::Down));
    }

    #[test]
    fn bad_inputs_say_what_to_do() {
        assert!(Country::parse("USA").unwrap_err().to_string().contains("two letters"));
        assert!(Country::parse("1A").is_err());
        let e =
            decide(&primaries(), &Weights::default(), "us-east-1", Some(Want::Geo(Country::parse("QQ").unwrap())), b"");
        assert!(e.unwrap_err().to_string().contains("not in the routing table"));
        assert!(Weights::parse_list("us-east-1=101").unwrap_err().to_string().contains("0 to 100"));
        assert!(Weights::parse_list("us-east-1").unwrap_err().to_string().contains("REGION=WEIGHT"));
        assert!(Weights::parse_list("").is_err());
        let w = Weights::parse_list("mars-1=5").unwrap();
        assert!(w.validate(&["us-east-1".into()]).unwrap_err().to_string().contains("'mars-1' is not configured"));
    }
}

//! [`ResidencyPolicy`]: the residency rules of REGIONS.md ("Data sovereignty") as a
//! [`TransferPolicy`], built from the node configuration's `[residency]` section.
//!
//! Every source has a [`DataClass`]: the most specific rule of `residency.sources` that
//! matches its id (an exact id beats any pattern, a longer pattern beats a shorter one),
//! else `residency.default_class` (market data). Where a class may go:
//!
//! * `market_data`: to every region, except those `residency.market_data.deny` names.
//! * `pii`, `regulatory`: nowhere but its home region, unless `residency.<class>.allow`
//!   names the destination (and `deny` does not).
//!
//! An `allow` list on `market_data` narrows it to the listed regions. Both the sender and
//! the receiver check with their own configuration, so a source leaves its region only
//! when both sides agree.
//!
//! ```toml
//! [residency]
//! sources = { "USR.*" = "pii", "REG.EUW1" = "regulatory" }
//! [residency.pii]
//! allow = []                  # PII never leaves its home region
//! [residency.market_data]
//! deny = []                   # market data goes everywhere
//! ```

use std::collections::BTreeMap;
use tickmesh_codec::SourceId;

use crate::transfer::{DataClass, Decision, Direction, TransferPolicy};

/// Where one class may go (`[residency.<class>]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClassRule {
    /// Destination regions this class may be sent to. Absent: every region for
    /// `market_data`, none (home only) for `pii` and `regulatory`.
    pub allow: Option<Vec<String>>,
    /// Destination regions this class must never be sent to (checked after `allow`).
    pub deny: Vec<String>,
}

/// The `[residency]` section of a node's configuration. Every field has a default: an
/// absent section classes every source as market data and lets it go everywhere.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResidencyConfig {
    /// Class of a source no rule of `sources` matches. Default `market_data`.
    pub default_class: DataClass,
    /// Source id or pattern (a prefix ending in `*`, such as `USR.*`; `*` alone matches
    /// every source) to its class.
    pub sources: BTreeMap<String, DataClass>,
    /// Where market data may go.
    pub market_data: ClassRule,
    /// Where personal data may go.
    pub pii: ClassRule,
    /// Where regulatory data may go.
    pub regulatory: ClassRule,
}

impl Default for ResidencyConfig {
    fn default() -> Self {
        ResidencyConfig {
            default_class: DataClass::MarketData,
            sources: BTreeMap::new(),
            market_data: ClassRule::default(),
            pii: ClassRule::default(),
            regulatory: ClassRule::default(),
        }
    }
}

impl ResidencyConfig {
    /// REGIONS.md's rules as the demo and deploy/ write them: user data (`USR.*`) and
    /// private order updates (`ORD.*`) are PII, `REG.*` sources regulatory, both kept in
    /// their home region; everything else is market data and goes everywhere.
    pub fn regions_md() -> ResidencyConfig {
        let mut sources = BTreeMap::new();
        sources.insert("USR.*".to_owned(), DataClass::Pii);
        sources.insert("ORD.*".to_owned(), DataClass::Pii);
        sources.insert("REG.*".to_owned(), DataClass::Regulatory);
        ResidencyConfig {
            sources,
            pii: ClassRule { allow: Some(Vec::new()), deny: Vec::new() },
            regulatory: ClassRule { allow: Some(Vec::new()), deny: Vec::new() },
            ..ResidencyConfig::default()
        }
    }
}

/// Whether `s` is a valid region name (as `NodeConfig` requires of `region`).
fn valid_region(s: &str) -> bool {
    !s.is_empty() && s.len() <= 63 && s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

impl ResidencyConfig {
    /// Appends every problem of the section to `problems`, each prefixed with its TOML path.
    pub fn validate(&self, problems: &mut Vec<String>) {
        for pat in self.sources.keys() {
            if let Err(why) = Pattern::parse(pat) {
                problems.push(format!("residency.sources {pat:?}: {why}"));
            }
        }
        for (name, rule) in self.rules() {
            let lists = rule.allow.iter().map(|a| ("allow", a)).chain(std::iter::once(("deny", &rule.deny)));
            for (what, list) in lists {
                let mut seen = std::collections::BTreeSet::new();
                for (i, r) in list.iter().enumerate() {
                    if !valid_region(r) {
                        problems.push(format!(
                            "residency.{name}.{what}[{i}] {r:?} is not a region name; use lowercase letters, digits and '-', e.g. eu-west-1"
                        ));
                    }
                    if !seen.insert(r) {
                        problems
                            .push(format!("residency.{name}.{what}[{i}] {r} is listed twice; list each region once"));
                    }
                }
            }
            if let Some(allow) = &rule.allow {
                for r in allow.iter().filter(|r| rule.deny.contains(r)) {
                    problems.push(format!(
                        "residency.{name}: {r} is in both allow and deny; deny wins, so remove it from one of them"
                    ));
                }
            }
        }
    }

    fn rules(&self) -> [(&'static str, &ClassRule); 3] {
        [("market_data", &self.market_data), ("pii", &self.pii), ("regulatory", &self.regulatory)]
    }
}

/// A parsed `residency.sources` key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    fn parse(s: &str) -> Result<Pattern, String> {
        let (body, prefix) = match s.strip_suffix('*') {
            Some(p) => (p, true),
            None => (s, false),
        };
        if body.contains('*') {
            return Err("'*' may only end a pattern (e.g. USR.*)".into());
        }
        if !prefix && body.is_empty() {
            return Err("empty source id; write an id such as XNAS.ITCH or a pattern such as USR.*".into());
        }
        if body.len() > SourceId::LEN {
            return Err(format!("longer than a source id ({} characters at most)", SourceId::LEN));
        }
        if let Some(c) = body.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
            return Err(format!(
                "{c:?} cannot appear in a source id; use letters, digits, '.', '_', '-' and a final '*'"
            ));
        }
        Ok(if prefix { Pattern::Prefix(body.to_owned()) } else { Pattern::Exact(body.to_owned()) })
    }
}

/// The residency rules of one node, ready for the mesh.
#[derive(Debug, Clone)]
pub struct ResidencyPolicy {
    default_class: DataClass,
    exact: BTreeMap<String, DataClass>,
    /// Longest prefix first, so the first match is the most specific.
    prefixes: Vec<(String, DataClass)>,
    market_data: ClassRule,
    pii: ClassRule,
    regulatory: ClassRule,
}

impl ResidencyPolicy {
    /// Builds the policy. Keys that [`ResidencyConfig::validate`] would refuse are
    /// skipped (the node validates the configuration before it gets here).
    pub fn new(cfg: &ResidencyConfig) -> ResidencyPolicy {
        let mut exact = BTreeMap::new();
        let mut prefixes = Vec::new();
        for (k, class) in &cfg.sources {
            match Pattern::parse(k) {
                Ok(Pattern::Exact(s)) => {
                    exact.insert(s, *class);
                }
                Ok(Pattern::Prefix(p)) => prefixes.push((p, *class)),
                Err(_) => {}
            }
        }
        prefixes.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        ResidencyPolicy {
            default_class: cfg.default_class,
            exact,
            prefixes,
            market_data: cfg.market_data.clone(),
            pii: cfg.pii.clone(),
            regulatory: cfg.regulatory.clone(),
        }
    }

    /// The class of a source given by its text id (also for ids of the audit log).
    pub fn class_of_str(&self, src: &str) -> DataClass {
        if let Some(c) = self.exact.get(src) {
            return *c;
        }
        self.prefixes.iter().find(|(p, _)| src.starts_with(p.as_str())).map(|(_, c)| *c).unwrap_or(self.default_class)
    }

    fn rule(&self, class: DataClass) -> &ClassRule {
        match class {
            DataClass::MarketData => &self.market_data,
            DataClass::Pii => &self.pii,
            DataClass::Regulatory => &self.regulatory,
        }
    }

    /// [`TransferPolicy::check`] on a text source id.
    pub fn check_str(&self, src: &str, from: &str, to: &str, dir: Direction) -> Decision {
        if from == to {
            return Decision::Allow;
        }
        let class = self.class_of_str(src);
        let rule = self.rule(class);
        let side = match dir {
            Direction::Send => "sender",
            Direction::Receive => "receiver",
        };
        let c = class.as_str();
        if rule.deny.iter().any(|r| r == to) {
            return Decision::Deny(format!(
                "source {src} is class {c} and residency.{c}.deny of the {side} lists {to}; it may not move from {from} to {to}"
            ));
        }
        let allowed = allow_listed(rule, class, to);
        if allowed {
            Decision::Allow
        } else {
            Decision::Deny(format!(
                "source {src} is class {c}, which stays in its home region unless residency.{c}.allow of the {side} lists the destination; {to} is not listed, so it may not move from {from} to {to}"
            ))
        }
    }
}

/// Whether `rule` lets `class` go to `to`: its `allow` list when set, else market data
/// everywhere and every other class nowhere.
fn allow_listed(rule: &ClassRule, class: DataClass, to: &str) -> bool {
    match (&rule.allow, class) {
        (Some(list), _) => list.iter().any(|r| r == to),
        (None, DataClass::MarketData) => true,
        (None, _) => false,
    }
}

impl TransferPolicy for ResidencyPolicy {
    fn class_of(&self, src: &SourceId) -> DataClass {
        self.class_of_str(src.as_str())
    }

    /// User-data messages: personal data may always return to its home region (that is
    /// where it lives); otherwise, like a source of the message's class, the class's
    /// `allow` and `deny` lists decide (so PII goes nowhere else unless allow-listed, and
    /// the PII-free view goes where market data goes).
    fn check_user_data(&self, class: DataClass, home: &str, from: &str, to: &str, dir: Direction) -> Decision {
        if from == to {
            return Decision::Allow;
        }
        let rule = self.rule(class);
        let c = class.as_str();
        let side = match dir {
            Direction::Send => "sender",
            Direction::Receive => "receiver",
        };
        if rule.deny.iter().any(|r| r == to) {
            return Decision::Deny(format!(
                "user data of class {c} (home {home}) may not move to {to}: residency.{c}.deny of the {side} lists it"
            ));
        }
        let allowed = to == home || allow_listed(rule, class, to);
        if allowed {
            Decision::Allow
        } else {
            Decision::Deny(format!(
                "user data of class {c} is homed in {home} and stays there unless residency.{c}.allow of the {side} lists the destination; it may not move from {from} to {to}"
            ))
        }
    }

    fn check(&self, src: &SourceId, from: &str, to: &str, dir: Direction) -> Decision {
        self.check_str(src.as_str(), from, to, dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_goes_home_and_the_view_goes_where_market_data_goes() {
        let mut c = ResidencyConfig::regions_md();
        c.market_data.deny = vec!["cn-north-1".into()];
        let p = ResidencyPolicy::new(&c);
        let ok = |class, from, to| p.check_user_data(class, "us-east-1", from, to, Direction::Send).is_allowed();
        assert!(ok(DataClass::Pii, "eu-west-1", "us-east-1"), "personal data returns home");
        assert!(!ok(DataClass::Pii, "us-east-1", "eu-west-1"), "and goes nowhere else");
        assert!(!ok(DataClass::Pii, "eu-west-1", "ap-southeast-1"));
        assert!(ok(DataClass::Pii, "us-east-1", "us-east-1"));
        assert!(ok(DataClass::MarketData, "us-east-1", "eu-west-1"), "the PII-free view travels");
        assert!(!ok(DataClass::MarketData, "us-east-1", "cn-north-1"), "unless denied like market data");
        let Decision::Deny(why) =
            p.check_user_data(DataClass::Pii, "us-east-1", "us-east-1", "eu-west-1", Direction::Receive)
        else {
            panic!("allowed")
        };
        assert!(why.contains("residency.pii.allow of the receiver"), "{why}");
        // An allow-list entry lets it go there too.
        c.pii.allow = Some(vec!["eu-west-1".into()]);
        let p = ResidencyPolicy::new(&c);
        assert!(p.check_user_data(DataClass::Pii, "us-east-1", "us-east-1", "eu-west-1", Direction::Send).is_allowed());
    }

    fn cfg(text: &str) -> ResidencyConfig {
        toml::from_str(text).unwrap()
    }

    fn sid(s: &str) -> SourceId {
        SourceId::new(s).unwrap()
    }

    const REGIONS_MD: &str = r#"
        [sources]
        "USR.*" = "pii"
        "USR.PUBLIC" = "market_data"
        "REG.*" = "regulatory"
        "REG.EU.*" = "pii"
        [regulatory]
        allow = ["eu-west-1"]
        [market_data]
        deny = ["me-south-1"]
    "#;

    #[test]
    fn classes_follow_the_most_specific_rule() {
        let p = ResidencyPolicy::new(&cfg(REGIONS_MD));
        assert_eq!(p.class_of(&sid("SYN.USE1")), DataClass::MarketData, "default class");
        assert_eq!(p.class_of(&sid("USR.EUW1")), DataClass::Pii, "prefix pattern");
        assert_eq!(p.class_of(&sid("USR.PUBLIC")), DataClass::MarketData, "exact beats pattern");
        assert_eq!(p.class_of(&sid("REG.SG")), DataClass::Regulatory);
        assert_eq!(p.class_of(&sid("REG.EU.X")), DataClass::Pii, "longer pattern beats shorter");
        assert_eq!(p.class_of(&sid("USR")), DataClass::MarketData, "USR.* needs the dot");
        let all = ResidencyPolicy::new(&cfg("default_class = \"regulatory\""));
        assert_eq!(all.class_of(&sid("ANY.THING")), DataClass::Regulatory);
        let star = ResidencyPolicy::new(&cfg("sources = { \"*\" = \"pii\" }"));
        assert_eq!(star.class_of(&sid("X")), DataClass::Pii);
    }

    #[test]
    fn an_absent_section_allows_everything_as_market_data() {
        let p = ResidencyPolicy::new(&ResidencyConfig::default());
        for dir in [Direction::Send, Direction::Receive] {
            assert_eq!(p.check(&sid("USR.X"), "us-east-1", "eu-west-1", dir), Decision::Allow);
        }
        assert_eq!(p.class_of(&sid("USR.X")), DataClass::MarketData);
    }

    #[test]
    fn pii_stays_home_in_both_directions() {
        let p = ResidencyPolicy::new(&cfg(REGIONS_MD));
        for dir in [Direction::Send, Direction::Receive] {
            let d = p.check(&sid("USR.EUW1"), "eu-west-1", "us-east-1", dir);
            let Decision::Deny(why) = d else { panic!("PII left its region ({dir:?})") };
            assert!(why.contains("class pii") && why.contains("residency.pii.allow"), "{why}");
            assert!(why.contains(if dir == Direction::Send { "sender" } else { "receiver" }), "{why}");
        }
        // Inside the region nothing is checked.
        assert!(p.check(&sid("USR.EUW1"), "eu-west-1", "eu-west-1", Direction::Send).is_allowed());
    }

    #[test]
    fn allow_lists_let_named_regions_in() {
        let p = ResidencyPolicy::new(&cfg(REGIONS_MD));
        assert!(p.check(&sid("REG.SG"), "ap-southeast-1", "eu-west-1", Direction::Send).is_allowed());
        assert!(p.check(&sid("REG.SG"), "ap-southeast-1", "eu-west-1", Direction::Receive).is_allowed());
        assert!(!p.check(&sid("REG.SG"), "ap-southeast-1", "us-east-1", Direction::Send).is_allowed());
        let pii = ResidencyPolicy::new(&cfg("sources = { \"USR.*\" = \"pii\" }\n[pii]\nallow = [\"eu-west-1\"]\n"));
        assert!(pii.check(&sid("USR.A"), "us-east-1", "eu-west-1", Direction::Receive).is_allowed());
        assert!(!pii.check(&sid("USR.A"), "us-east-1", "ap-southeast-1", Direction::Receive).is_allowed());
    }

    #[test]
    fn market_data_goes_everywhere_but_a_denied_region() {
        let p = ResidencyPolicy::new(&cfg(REGIONS_MD));
        for to in ["eu-west-1", "ap-southeast-1", "sa-east-1", "ap-southeast-2"] {
            assert!(p.check(&sid("SYN.USE1"), "us-east-1", to, Direction::Send).is_allowed(), "{to}");
        }
        let Decision::Deny(why) = p.check(&sid("SYN.USE1"), "us-east-1", "me-south-1", Direction::Receive) else {
            panic!("deny-list ignored")
        };
        assert!(why.contains("residency.market_data.deny"), "{why}");
        // An allow list narrows market data too.
        let narrow = ResidencyPolicy::new(&cfg("[market_data]\nallow = [\"eu-west-1\"]\n"));
        assert!(narrow.check(&sid("A"), "us-east-1", "eu-west-1", Direction::Send).is_allowed());
        assert!(!narrow.check(&sid("A"), "us-east-1", "sa-east-1", Direction::Send).is_allowed());
    }

    #[test]
    fn validation_reports_every_problem() {
        let c = cfg(r#"
            [sources]
            "US*R" = "pii"
            "" = "pii"
            "A B" = "pii"
            "WAY.TOO.LONG.SOURCE.ID" = "pii"
            [pii]
            allow = ["EU West", "eu-west-1", "eu-west-1"]
            deny = ["eu-west-1"]
        "#);
        let mut p = Vec::new();
        c.validate(&mut p);
        assert!(p.iter().any(|m| m.starts_with("residency.sources \"US*R\": '*' may only end")), "{p:?}");
        assert!(p.iter().any(|m| m.starts_with("residency.sources \"\": empty")), "{p:?}");
        assert!(p.iter().any(|m| m.starts_with("residency.sources \"A B\": ' ' cannot")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("longer than a source id")), "{p:?}");
        assert!(p.iter().any(|m| m.starts_with("residency.pii.allow[0] \"EU West\" is not a region")), "{p:?}");
        assert!(p.iter().any(|m| m.starts_with("residency.pii.allow[2] eu-west-1 is listed twice")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("in both allow and deny")), "{p:?}");
        let mut ok = Vec::new();
        cfg(REGIONS_MD).validate(&mut ok);
        assert!(ok.is_empty(), "{ok:?}");
        assert!(toml::from_str::<ResidencyConfig>("[pii]\nalow = []\n").is_err(), "typos are refused");
        assert!(toml::from_str::<ResidencyConfig>("sources = { \"A\" = \"secret\" }").is_err());
    }
}

//! `tickmesh router`: an authoritative DNS server that answers one name with the nearest
//! healthy region's address.
//!
//! For each query of the configured name (e.g. `md.tickmesh.test.`) it takes the client's
//! subnet (the EDNS Client Subnet option when a resolver sends one, RFC 7871, otherwise
//! the source address, as a /24 or /56), maps it to a country or region through the
//! configured `[[subnets]]` table (longest prefix wins), and asks the same routing core
//! as `/v1/route` ([`crate::route::decide`]) with the subnet as affinity key: a subnet keeps
//! its region while that region is healthy, and weights split subnets in proportion. The
//! answer is one A (or AAAA) record with a short TTL (default 5 s), so clients follow a
//! drain, a failure or a weight change within seconds.
//!
//! A `route-health` thread probes every region's `/readyz` each `poll_ms` (down after
//! `down_after` silent probes, at once when it answers draining or not ready) and reads
//! each region's own weight from its `/v1/regions`, so `tickmesh admin weights` steers DNS
//! answers too. Until a region reports, the `[weights]` of the file apply.
//!
//! hickory-server does the DNS wire work (UDP and TCP, EDNS, truncation); this file only
//! decides the answer.

use anyhow::{bail, Context};
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_server::proto::rr::rdata::{A, AAAA, SOA};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::route::{self, Country, HealthTracker, RegionState, RegionView, Want, Weights};
use crate::route_http::{http_addr, poll_round, PollTarget};

/// `tickmesh router` arguments.
#[derive(Debug, clap::Args)]
pub struct RouterArgs {
    /// Router configuration (TOML; see the module docs of `tickmesh::cmd::router`).
    #[arg(long)]
    pub config: PathBuf,
    /// Listen address (UDP and TCP), overriding `listen` of the file.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Print a JSON start-up line (`router_up`) on standard output.
    #[arg(long)]
    pub json: bool,
}

/// One region the router answers with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RouterRegion {
    /// Region name.
    pub region: String,
    /// Its HTTP URL (probed at `/readyz` and `/v1/regions`).
    pub http_url: String,
    /// The address DNS answers carry; default: the host of `http_url`.
    #[serde(default)]
    pub address: Option<IpAddr>,
}

/// A client subnet and where its clients are.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SubnetRule {
    /// The subnet, e.g. `127.1.0.0/16` or `2001:db8::/32`.
    pub cidr: IpNet,
    /// Its clients' country (ISO 3166-1 alpha-2); the country map picks the region.
    #[serde(default)]
    pub country: Option<String>,
    /// Or a region named directly.
    #[serde(default)]
    pub region: Option<String>,
}

/// The router's configuration file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// UDP and TCP listen address. Default `127.0.0.1:5353`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The name answered, e.g. `md.tickmesh.test.`; the router is authoritative for it.
    pub name: String,
    /// TTL of answers, seconds. Default 5.
    #[serde(default = "default_ttl")]
    pub ttl_s: u32,
    /// How often each region is probed, ms. Default 1,000.
    #[serde(default = "default_poll")]
    pub poll_ms: u64,
    /// Silent probes in a row before a region counts as down. Default 2.
    #[serde(default = "default_down_after")]
    pub down_after: u32,
    /// Country of clients no subnet rule matches (absent: the first region is preferred).
    #[serde(default)]
    pub default_country: Option<String>,
    /// The regions.
    pub regions: Vec<RouterRegion>,
    /// Client subnets to countries or regions.
    #[serde(default)]
    pub subnets: Vec<SubnetRule>,
    /// Weights until each region reports its own (`/v1/regions`).
    #[serde(default)]
    pub weights: BTreeMap<String, u8>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5353))
}
fn default_ttl() -> u32 {
    5
}
fn default_poll() -> u64 {
    1000
}
fn default_down_after() -> u32 {
    2
}

impl RouterConfig {
    /// Reads a file (not validated: see [`RouterConfig::problems`]).
    pub fn load(path: &std::path::Path) -> anyhow::Result<RouterConfig> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!("cannot read router config {}; check the path given to --config", path.display())
        })?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("router config {} is not valid: {e}", path.display()))
    }

    /// Every problem of the configuration.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if Name::from_ascii(&self.name).is_err() || self.name.trim_end_matches('.').is_empty() {
            p.push(format!("name '{}' is not a DNS name; use e.g. md.tickmesh.test.", self.name));
        }
        if self.ttl_s == 0 || self.ttl_s > 3600 {
            p.push(format!("ttl_s = {} is outside 1..3600; short TTLs (default 5) make failover quick", self.ttl_s));
        }
        if self.poll_ms < 50 {
            p.push(format!("poll_ms = {} is below 50; use 1000 (default)", self.poll_ms));
        }
        if self.regions.is_empty() {
            p.push("regions is empty; add [[regions]] with region and http_url".into());
        }
        let names: Vec<String> = self.regions.iter().map(|r| r.region.clone()).collect();
        for (i, r) in self.regions.iter().enumerate() {
            if names.iter().filter(|n| **n == r.region).count() > 1 {
                p.push(format!("regions[{i}].region {} is listed twice", r.region));
            }
            match http_addr(&r.http_url) {
                Err(e) => p.push(format!("regions[{i}].http_url: {e}")),
                Ok(_) if r.address.is_none() && host_ip(&r.http_url).is_none() => p.push(format!(
                    "regions[{i}].http_url {} has no IP address for answers; set regions[{i}].address",
                    r.http_url
                )),
                Ok(_) => {}
            }
        }
        for (i, s) in self.subnets.iter().enumerate() {
            match (&s.country, &s.region) {
                (Some(c), None) => match Country::parse(c) {
                    Ok(cc) if route::preferred_region(cc).is_none() => {
                        p.push(format!("subnets[{i}].country {c} is not in the country map"))
                    }
                    Ok(_) => {}
                    Err(e) => p.push(format!("subnets[{i}].country: {e}")),
                },
                (None, Some(r)) if !names.contains(r) => {
                    p.push(format!("subnets[{i}].region {r} is not in regions ({})", names.join(", ")))
                }
                (None, Some(_)) => {}
                _ => p.push(format!("subnets[{i}] ({}) needs exactly one of country or region", s.cidr)),
            }
        }
        if let Some(c) = &self.default_country {
            if let Err(e) = Country::parse(c) {
                p.push(format!("default_country: {e}"));
            }
        }
        for (r, w) in &self.weights {
            if !names.contains(r) {
                p.push(format!("weights.{r}: not in regions ({})", names.join(", ")));
            }
            if *w > 100 {
                p.push(format!("weights.{r} = {w} is above 100; use 0 to 100"));
            }
        }
        p
    }
}

fn host_ip(url: &str) -> Option<IpAddr> {
    let rest = url.strip_prefix("http://")?;
    let hostport = rest.split('/').next()?;
    hostport.parse::<SocketAddr>().map(|a| a.ip()).ok().or_else(|| hostport.parse().ok())
}

/// Where a client subnet's clients are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Country(Country),
    Region(usize),
}

/// The router's decision state, shared by the DNS handler and the health thread.
pub struct RouterState {
    cfg: RouterConfig,
    name: LowerName,
    zone: Name,
    subnets: Vec<(IpNet, Place)>,
    default_place: Option<Place>,
    addresses: Vec<IpAddr>,
    health: Mutex<HealthTracker>,
    weights: Mutex<Weights>,
}

impl std::fmt::Debug for RouterState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterState").field("name", &self.cfg.name).finish_non_exhaustive()
    }
}

/// What the router answers for one client subnet now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The chosen region.
    pub region: String,
    /// Its address.
    pub address: IpAddr,
}

impl RouterState {
    /// Builds the state from a validated configuration.
    pub fn new(cfg: RouterConfig) -> anyhow::Result<RouterState> {
        let problems = cfg.problems();
        if !problems.is_empty() {
            bail!("router configuration has {} problem(s):\n  {}", problems.len(), problems.join("\n  "));
        }
        let mut zone = Name::from_ascii(&cfg.name)?;
        zone.set_fqdn(true);
        let place = |country: &Option<String>, region: &Option<String>| -> Option<Place> {
            if let Some(r) = region {
                return cfg.regions.iter().position(|x| &x.region == r).map(Place::Region);
            }
            country.as_deref().and_then(|c| Country::parse(c).ok()).map(Place::Country)
        };
        let mut subnets: Vec<(IpNet, Place)> =
            cfg.subnets.iter().filter_map(|s| Some((s.cidr.trunc(), place(&s.country, &s.region)?))).collect();
        // Longest prefix first, so the first match is the most specific.
        subnets.sort_by_key(|(n, _)| std::cmp::Reverse(n.prefix_len()));
        let default_place = place(&cfg.default_country, &None);
        let addresses =
            cfg.regions.iter().map(|r| r.address.or_else(|| host_ip(&r.http_url))).collect::<Option<Vec<_>>>();
        let Some(addresses) = addresses else { bail!("a region has no address; set regions[].address") };
        let mut weights = Weights::default();
        for (r, w) in &cfg.weights {
            weights.set(r, *w);
        }
        Ok(RouterState {
            name: LowerName::from(zone.clone()),
            zone,
            subnets,
            default_place,
            addresses,
            health: Mutex::new(HealthTracker::new(cfg.down_after)),
            weights: Mutex::new(weights),
            cfg,
        })
    }

    /// Probes every region once (the health thread calls this every `poll_ms`).
    pub fn poll(&self) {
        let targets: Vec<PollTarget> = self
            .cfg
            .regions
            .iter()
            .map(|r| PollTarget { region: r.region.clone(), http_url: r.http_url.clone() })
            .collect();
        poll_round(&targets, &self.health, Some(&self.weights));
    }

    /// The answer for a client in `subnet` (its address and prefix length), or None when
    /// no region is healthy.
    pub fn answer(&self, addr: IpAddr, prefix: u8) -> Option<Answer> {
        let net = IpNet::new(addr, prefix).map(|n| n.trunc()).unwrap_or_else(|_| IpNet::from(addr));
        let place = self.subnets.iter().find(|(n, _)| n.contains(&net.addr())).map(|(_, p)| *p).or(self.default_place);
        let want = match place {
            Some(Place::Country(c)) => Some(Want::Geo(c)),
            Some(Place::Region(i)) => Some(Want::Region(&self.cfg.regions[i].region)),
            None => None,
        };
        let views: Vec<RegionView> = {
            let h = self.health.lock().unwrap_or_else(|e| e.into_inner());
            self.cfg
                .regions
                .iter()
                .map(|r| RegionView {
                    region: r.region.clone(),
                    state: h.state(&r.region).unwrap_or(RegionState::Down),
                })
                .collect()
        };
        let weights = self.weights.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let key = net.to_string();
        let first = &self.cfg.regions[0].region;
        let r = route::decide(&views, &weights, first, want, key.as_bytes()).ok()?;
        let i = self.cfg.regions.iter().position(|x| x.region == r.region)?;
        Some(Answer { region: r.region, address: self.addresses[i] })
    }

    fn soa(&self) -> Record {
        let host = Name::from_ascii("ns").ok().and_then(|n| n.append_domain(&self.zone).ok()).unwrap_or_default();
        let mail =
            Name::from_ascii("hostmaster").ok().and_then(|n| n.append_domain(&self.zone).ok()).unwrap_or_default();
        let rdata = SOA::new(host, mail, 1, 60, 30, 600, self.cfg.ttl_s);
        Record::from_rdata(self.zone.clone(), self.cfg.ttl_s, RData::SOA(rdata))
    }
}

/// The client subnet of a request: ECS when present (and not /0), else the source address.
fn client_subnet(request: &Request) -> (IpAddr, u8, Option<ClientSubnet>) {
    if let Some(EdnsOption::Subnet(ecs)) = request.edns.as_ref().and_then(|e| e.option(EdnsCode::Subnet)) {
        if ecs.source_prefix() > 0 {
            return (ecs.addr(), ecs.source_prefix(), Some(*ecs));
        }
    }
    let ip = request.src().ip();
    let prefix = if ip.is_ipv4() { 24 } else { 56 };
    (ip, prefix, None)
}

struct Handler(Arc<RouterState>);

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, mut rh: R) -> ResponseInfo {
        let st = &self.0;
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.authoritative = true;
        let fail = |code: ResponseCode| {
            let mut m = Metadata::new(request.metadata.id, MessageType::Response, request.metadata.op_code);
            m.response_code = code;
            ResponseInfo::from(Header { metadata: m, counts: HeaderCounts::default() })
        };
        let (addr, prefix, ecs) = client_subnet(request);
        // Answer with EDNS when asked with it; echo ECS with the scope the answer is valid for.
        let edns = request.edns.as_ref().map(|_| {
            let mut e = Edns::new();
            e.set_max_payload(1232);
            if let Some(ecs) = &ecs {
                e.options_mut().insert(EdnsOption::Subnet(ClientSubnet::new(
                    ecs.addr(),
                    ecs.source_prefix(),
                    ecs.source_prefix(),
                )));
            }
            e
        });
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(e) = &edns {
            builder.edns(e);
        }
        if request.metadata.op_code != OpCode::Query || request.metadata.message_type != MessageType::Query {
            let resp = builder.error_msg(&request.metadata, ResponseCode::NotImp);
            return rh.send_response(resp).await.unwrap_or_else(|_| fail(ResponseCode::ServFail));
        }
        let Ok(info) = request.request_info() else {
            let resp = builder.error_msg(&request.metadata, ResponseCode::FormErr);
            return rh.send_response(resp).await.unwrap_or_else(|_| fail(ResponseCode::ServFail));
        };
        let qname = info.query.name();
        if !st.name.zone_of(qname) {
            // Not our zone: an authoritative-only server refuses.
            let resp = builder.error_msg(&request.metadata, ResponseCode::Refused);
            return rh.send_response(resp).await.unwrap_or_else(|_| fail(ResponseCode::ServFail));
        }
        let soa = st.soa();
        if *qname != st.name {
            meta.response_code = ResponseCode::NXDomain;
            let resp = builder.build(meta, None, Some(&soa), None, None);
            return rh.send_response(resp).await.unwrap_or_else(|_| fail(ResponseCode::ServFail));
        }
        let qtype = info.query.query_type();
        let answer = st.answer(addr, prefix);
        let label = answer.as_ref().map(|a| a.region.clone()).unwrap_or_else(|| "none".into());
        metrics::counter!("tickmesh_router_answers_total", "region" => label).increment(1);
        tracing::debug!(client = %addr, prefix, ?qtype, answer = ?answer, "dns query");
        let Some(answer) = answer else {
            // No healthy region: SERVFAIL, so resolvers retry rather than cache an empty answer.
            let resp = builder.error_msg(&request.metadata, ResponseCode::ServFail);
            return rh.send_response(resp).await.unwrap_or_else(|_| fail(ResponseCode::ServFail));
        };
        let name = Name::from(qname.clone());
        let record = match (qtype, answer.address) {
            (RecordType::A | RecordType::ANY, IpAddr::V4(a)) => {
                Some(Record::from_rdata(name, st.cfg.ttl_s, RData::A(A(a))))
            }
            (RecordType::AAAA | RecordType::ANY, IpAddr::V6(a)) => {
                Some(Record::from_rdata(name, st.cfg.ttl_s, RData::AAAA(AAAA(a))))
            }
            _ => None,
        };
        let resp = match &record {
            Some(r) => builder.build(meta, Some(r), None, None, None),
            // The name exists but has no record of this type: NODATA with the SOA.
            None => builder.build(meta, None, Some(&soa), None, None),
        };
        rh.send_response(resp).await.unwrap_or_else(|_| fail(ResponseCode::ServFail))
    }
}

/// A running router (in the demo's process or its own).
pub struct Router {
    addr: SocketAddr,
    state: Arc<RouterState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Router {
    /// Binds UDP and TCP on `cfg.listen` (port 0: a free port, the same for both), probes
    /// every region once, and starts serving on a `dns-router` thread.
    pub fn start(cfg: RouterConfig) -> anyhow::Result<Router> {
        let state = Arc::new(RouterState::new(cfg)?);
        let (udp, tcp) = bind_pair(state.cfg.listen)?;
        let addr = udp.local_addr()?;
        state.poll();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name("dns-router".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => return tracing::error!(error = %e, "cannot start the router runtime"),
                };
                rt.block_on(async move {
                    let mut server = hickory_server::Server::new(Handler(st.clone()));
                    match (tokio::net::UdpSocket::from_std(udp), tokio::net::TcpListener::from_std(tcp)) {
                        (Ok(u), Ok(t)) => {
                            server.register_socket(u);
                            server.register_listener(t, Duration::from_secs(5), 4096);
                        }
                        (Err(e), _) | (_, Err(e)) => {
                            return tracing::error!(error = %e, "cannot register router sockets")
                        }
                    }
                    let poll_every = Duration::from_millis(st.cfg.poll_ms);
                    let poller = tokio::spawn(async move {
                        loop {
                            tokio::time::sleep(poll_every).await;
                            let s = st.clone();
                            let _ = tokio::task::spawn_blocking(move || s.poll()).await;
                        }
                    });
                    let _ = stop_rx.await;
                    poller.abort();
                    let _ = server.shutdown_gracefully().await;
                });
            })
            .context("starting the dns-router thread")?;
        Ok(Router { addr, state, stop: Some(stop_tx), thread: Some(thread) })
    }

    /// The bound address (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The answered name.
    pub fn name(&self) -> &str {
        &self.state.cfg.name
    }

    /// Stops serving.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// A UDP socket and a TCP listener on the same address; with port 0, a port free for both.
fn bind_pair(listen: SocketAddr) -> anyhow::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    for _ in 0..50 {
        let udp = std::net::UdpSocket::bind(listen)
            .with_context(|| format!("binding UDP {listen} for DNS; pick another --listen address"))?;
        let addr = udp.local_addr()?;
        match std::net::TcpListener::bind(addr) {
            Ok(tcp) => {
                udp.set_nonblocking(true)?;
                tcp.set_nonblocking(true)?;
                return Ok((udp, tcp));
            }
            Err(_) if listen.port() == 0 => continue,
            Err(e) => bail!("binding TCP {addr} for DNS: {e}; pick another --listen address"),
        }
    }
    bail!("found no port free for both UDP and TCP on {}", listen.ip())
}

/// `tickmesh router --config FILE`.
pub fn run(args: RouterArgs) -> anyhow::Result<()> {
    let mut cfg = RouterConfig::load(&args.config)?;
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    let router = Router::start(cfg)?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"event":"router_up","dns_addr":router.local_addr().to_string(),"name":router.name()})
        );
    } else {
        println!("router answering {} on {} (UDP and TCP)", router.name(), router.local_addr());
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [libc::SIGINT, libc::SIGTERM] {
        crate::demo::signal_flag(sig, stop.clone())?;
    }
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    router.shutdown();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RouterConfig {
        toml::from_str(
            r#"
            name = "md.tickmesh.test."
            default_country = "US"
            [[regions]]
            region = "us-east-1"
            http_url = "http://127.0.0.1:1"
            [[regions]]
            region = "eu-west-1"
            http_url = "http://127.0.0.2:1"
            [[subnets]]
            cidr = "127.2.0.0/16"
            country = "DE"
            [[subnets]]
            cidr = "127.2.9.0/24"
            region = "us-east-1"
            "#,
        )
        .unwrap()
    }

    #[test]
    fn longest_prefix_wins_and_unmatched_clients_use_the_default() {
        let st = RouterState::new(cfg()).unwrap();
        {
            let mut h = st.health.lock().unwrap();
            h.observe("us-east-1", route::Probe::Ready);
            h.observe("eu-west-1", route::Probe::Ready);
        }
        let a = |ip: &str| st.answer(ip.parse().unwrap(), 24).unwrap().region;
        assert_eq!(a("127.2.3.4"), "eu-west-1");
        assert_eq!(a("127.2.9.4"), "us-east-1");
        assert_eq!(a("10.0.0.1"), "us-east-1");
        st.health.lock().unwrap().observe("eu-west-1", route::Probe::Draining);
        assert_eq!(a("127.2.3.4"), "us-east-1");
        st.health.lock().unwrap().observe("us-east-1", route::Probe::NotReady);
        assert!(st.answer("127.2.3.4".parse().unwrap(), 24).is_none());
    }

    #[test]
    fn config_problems_are_all_reported() {
        let mut c = cfg();
        c.name = "bad name..".into();
        c.ttl_s = 0;
        c.subnets[0].country = Some("ZZ".into());
        c.subnets[1].region = Some("mars-1".into());
        c.weights.insert("mars-1".into(), 200);
        let p = c.problems();
        assert_eq!(p.len(), 6, "{p:#?}");
    }
}

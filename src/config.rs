//! The node's configuration file (TOML): one region, every section validated at once.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tickmesh_gateway::GatewayConfig;
use tickmesh_ingest::synthetic::SyntheticConfig;
use tickmesh_journal::JournalConfig;
use tickmesh_replicate::{MeshConfig, ResidencyConfig};

/// A region this node tells clients about (the `hello` failover list and `/v1/regions`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RegionEntry {
    /// Region name.
    pub region: String,
    /// Its public WebSocket URL.
    pub ws_url: String,
    /// Its public HTTP URL.
    pub http_url: String,
}

/// Token verification keys.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Files holding HS256 secrets (raw bytes; trailing newline ignored).
    pub hs256_key_files: Vec<PathBuf>,
    /// Files holding Ed25519 public keys (PEM).
    pub eddsa_public_key_files: Vec<PathBuf>,
}

/// A feed this region ingests (its home sources).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum FeedConfig {
    /// The deterministic synthetic feed.
    Synthetic(SyntheticConfig),
    /// A recorded capture, decoded with the venue's decoder and replayed in a loop.
    Capture(CaptureFeed),
}

/// A capture replayed as a home source (`kind = "capture"`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CaptureFeed {
    /// Source id of the records.
    pub source: String,
    /// Format, as `tickmesh ingest --format` takes it.
    pub format: String,
    /// The capture file.
    pub path: PathBuf,
    /// Records per second, when `pace` is `rate`. Default 1,000.
    #[serde(default = "default_capture_rate")]
    pub rate: u32,
    /// `rate` (default: `rate` records per second), `recorded` (the capture's own event
    /// times) or `fast` (as fast as the node takes them).
    #[serde(default)]
    pub pace: Pace,
    /// Trading date (YYYY-MM-DD) for formats whose times count from midnight.
    #[serde(default)]
    pub date: Option<String>,
}

/// How a capture is replayed.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Pace {
    /// `rate` records per second.
    #[default]
    Rate,
    /// At the capture's recorded pace (gaps between event times are kept).
    Recorded,
    /// As fast as possible.
    Fast,
}

fn default_capture_rate() -> u32 {
    1000
}

impl FeedConfig {
    /// The feed's source id text.
    pub fn source(&self) -> &str {
        match self {
            FeedConfig::Synthetic(s) => &s.source,
            FeedConfig::Capture(c) => &c.source,
        }
    }
}

/// One node of one region.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's region (a name of REGIONS.md, or any DNS-label name).
    pub region: String,
    /// Where the journal and other state live.
    pub state_dir: PathBuf,
    /// What this node does in its region: `all` (default: feeds, clients, mesh), `ingest`
    /// (feeds and mesh; `/v1/ws` answers 503, health and metrics stay up) or `gateway` (no
    /// feeds; takes every record from `mesh.upstream`, its region's ingest node, and
    /// serves clients). See ARCHITECTURE.md "Roles".
    #[serde(default)]
    pub role: tickmesh_replicate::Role,
    /// Client-facing gateway.
    #[serde(default)]
    pub gateway: GatewayConfig,
    /// The journal.
    #[serde(default)]
    pub journal: JournalConfig,
    /// The inter-region mesh; absent for a single-region node.
    #[serde(default)]
    pub mesh: Option<MeshConfig>,
    /// Token keys.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Home feeds.
    #[serde(default)]
    pub feeds: Vec<FeedConfig>,
    /// Every region's public URLs, this one included.
    #[serde(default)]
    pub regions: Vec<RegionEntry>,
    /// When `/readyz` says this region should take traffic.
    #[serde(default)]
    pub ready: ReadyConfig,
    /// The trading tier (order updates on the private `orders` channel); absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trading: Option<crate::tiers::trading::TradingConfig>,
    /// The user-data tier (profiles, entitlements, preferences); absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userdata: Option<crate::tiers::userdata::UserDataConfig>,
    /// Data classes of sources and where each class may go (REGIONS.md residency rules);
    /// absent: every source is market data and goes everywhere.
    #[serde(default)]
    pub residency: ResidencyConfig,
    /// Logs and trace export (`[telemetry]`).
    #[serde(default)]
    pub telemetry: crate::telemetry::TelemetryConfig,
}

/// `/readyz` thresholds (`[ready]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ReadyConfig {
    /// A home feed without a record for longer than this makes the region not ready.
    /// Default 5,000 ms; 0 turns the check off (for feeds that are quiet by nature).
    pub max_feed_staleness_ms: u64,
    /// Fewer peers than this delivering to us makes the region not ready. Default 0: a
    /// region that lost its peers still serves its own and the journal's data.
    pub min_peers_reachable: usize,
    /// A replicated source behind its upstream (records waiting there) whose newest record
    /// here is older than this makes the node not ready: a gateway node copying its ingest
    /// node's journal, or a region catching up after a partition, takes no new clients until
    /// it is current. Default 30,000 ms; 0 turns the check off.
    pub max_replication_lag_ms: u64,
}

impl Default for ReadyConfig {
    fn default() -> Self {
        ReadyConfig { max_feed_staleness_ms: 5_000, min_peers_reachable: 0, max_replication_lag_ms: 30_000 }
    }
}

impl NodeConfig {
    /// Reads and parses a file (not validated: call [`NodeConfig::problems`]).
    pub fn load(path: &Path) -> anyhow::Result<NodeConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!("cannot read config {}: {e}; check the path given to --config", path.display())
        })?;
        let cfg: NodeConfig =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("config {} is not valid: {e}", path.display()))?;
        Ok(cfg)
    }

    /// Every problem of the configuration, each prefixed with its TOML path.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let r = &self.region;
        if r.is_empty() || r.len() > 63 || !r.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        {
            p.push(format!(
                "region '{r}' is not a valid region name; use lowercase letters, digits and '-', e.g. us-east-1"
            ));
        }
        self.gateway.validate(&mut p);
        self.journal.validate(&mut p);
        if let Some(t) = &self.trading {
            t.validate(&mut p);
            if self.feeds.iter().any(|f| f.source() == t.source) {
                p.push(format!(
                    "trading.source {} is also a feed's source; give the orders source its own id",
                    t.source
                ));
            }
        }
        if let Some(u) = &self.userdata {
            u.validate(&mut p);
        }
        self.residency.validate(&mut p);
        self.telemetry.validate(&mut p);
        if let Some(m) = &self.mesh {
            m.validate(r, &mut p);
        }
        if self.auth.hs256_key_files.is_empty() && self.auth.eddsa_public_key_files.is_empty() {
            p.push(
                "auth has no keys; set auth.hs256_key_files or auth.eddsa_public_key_files, or no client can connect"
                    .into(),
            );
        }
        let mut sources = std::collections::BTreeSet::new();
        for (i, f) in self.feeds.iter().enumerate() {
            match f {
                FeedConfig::Synthetic(s) => s.validate(&format!("feeds[{i}]"), &mut p),
                FeedConfig::Capture(c) => {
                    if let Err(e) = tickmesh_codec::SourceId::new(&c.source) {
                        p.push(format!("feeds[{i}].source: {e}"));
                    }
                    if !crate::cmd::ingest::FORMATS.split(", ").any(|f| f == c.format) {
                        p.push(format!(
                            "feeds[{i}].format {:?} is not one of {}",
                            c.format,
                            crate::cmd::ingest::FORMATS
                        ));
                    }
                    if c.rate == 0 {
                        p.push(format!("feeds[{i}].rate is 0; use at least 1 record per second (default 1000)"));
                    }
                }
            }
            if !sources.insert(f.source().to_owned()) {
                p.push(format!("feeds[{i}].source {} is used twice; give every feed its own source id", f.source()));
            }
        }
        use tickmesh_replicate::Role;
        let upstream = self.mesh.as_ref().and_then(|m| m.upstream.as_ref());
        // What `/readyz` counts: the peers a node dials (a gateway dials its upstream alone).
        let dialed = match (&self.mesh, self.role) {
            (None, _) => 0,
            (Some(m), Role::Gateway) => usize::from(m.upstream.is_some()),
            (Some(m), _) => m.peers.len(),
        };
        if self.ready.min_peers_reachable > dialed {
            p.push(if self.role == Role::Gateway {
                format!(
                    "ready.min_peers_reachable = {} but a gateway node has one peer, its mesh.upstream; use 1 (not ready while the upstream is cut) or 0",
                    self.ready.min_peers_reachable
                )
            } else {
                format!(
                    "ready.min_peers_reachable = {} but mesh.peers lists {dialed}; lower it or add peers",
                    self.ready.min_peers_reachable
                )
            });
        }
        match self.role {
            Role::Gateway => {
                if !self.feeds.is_empty() {
                    p.push("role = \"gateway\" takes no feeds; remove [[feeds]] or use role = \"all\"".into());
                }
                if upstream.is_none() {
                    p.push(
                        "role = \"gateway\" needs mesh.upstream = \"host:port\" of this region's ingest node".into(),
                    );
                }
                if self.mesh.as_ref().is_some_and(|m| !m.peers.is_empty()) {
                    p.push("role = \"gateway\" has one upstream and no mesh.peers; remove mesh.peers".into());
                }
            }
            Role::Tap => p.push("role = \"tap\" is for `tickmesh tap`, not a node; use all, ingest or gateway".into()),
            Role::All | Role::Ingest => {
                if upstream.is_some() {
                    p.push("mesh.upstream is only for role = \"gateway\"; list peer regions in mesh.peers".into());
                }
                if self.role == Role::Ingest && !self.gateway.cores.is_empty() {
                    p.push(format!(
                        "gateway.cores = {:?} but role = \"ingest\" serves no client WebSockets; remove gateway.cores (pin client cores on the gateway nodes)",
                        self.gateway.cores
                    ));
                }
            }
        }
        if !self.regions.is_empty() && !self.regions.iter().any(|e| e.region == self.region) {
            p.push(format!("regions lists no entry for this node's region {r}; add its ws_url and http_url"));
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported_at_once() {
        let cfg: NodeConfig = toml::from_str(
            r#"
            region = "US EAST"
            state_dir = "/tmp/x"
            [gateway]
            heartbeat_ms = 1
            [[feeds]]
            kind = "synthetic"
            source = "bad id"
            symbols = []
            rate = 0
            "#,
        )
        .unwrap();
        let p = cfg.problems();
        assert!(p.iter().any(|m| m.starts_with("region 'US EAST'")), "{p:?}");
        assert!(p.iter().any(|m| m.starts_with("gateway.heartbeat_ms")), "{p:?}");
        assert!(p.iter().any(|m| m.starts_with("feeds[0].source")), "{p:?}");
        assert!(p.iter().any(|m| m.starts_with("feeds[0].symbols")), "{p:?}");
        assert!(p.iter().any(|m| m.starts_with("feeds[0].rate")), "{p:?}");
        assert!(p.iter().any(|m| m.starts_with("auth has no keys")), "{p:?}");
    }

    #[test]
    fn residency_problems_are_reported() {
        let cfg: NodeConfig = toml::from_str(
            "region = \"eu-west-1\"\nstate_dir = \"/x\"\n[residency.sources]\n\"U*X\" = \"pii\"\n[residency.pii]\nallow = [\"Mars\"]\n",
        )
        .unwrap();
        let p = cfg.problems();
        assert!(p.iter().any(|m| m.starts_with("residency.sources \"U*X\"")), "{p:?}");
        assert!(p.iter().any(|m| m.starts_with("residency.pii.allow[0]")), "{p:?}");
    }

    #[test]
    fn roles_are_checked() {
        let base = "region = \"us-east-1\"\nstate_dir = \"/x\"\n[auth]\nhs256_key_files = [\"k\"]\n";
        let gw: NodeConfig = toml::from_str(&format!(
            "role = \"gateway\"\n{base}[mesh]\npeers = [{{ region = \"eu-west-1\", addr = \"h:1\" }}]\n[mesh.tls]\nca_cert = \"a\"\ncert = \"b\"\nkey = \"c\"\n[[feeds]]\nkind = \"synthetic\"\nsource = \"S\"\nsymbols = [\"A\"]\n"
        ))
        .unwrap();
        let p = gw.problems();
        assert!(p.iter().any(|m| m.contains("takes no feeds")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("needs mesh.upstream")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("no mesh.peers")), "{p:?}");
        let ok: NodeConfig = toml::from_str(&format!(
            "role = \"gateway\"\n{base}[mesh]\nupstream = \"127.0.0.1:4433\"\n[mesh.tls]\nca_cert = \"a\"\ncert = \"b\"\nkey = \"c\"\n"
        ))
        .unwrap();
        assert!(ok.problems().is_empty(), "{:?}", ok.problems());
        // A gateway may require its upstream for readiness, and no more than that.
        let ready_on_upstream: NodeConfig = toml::from_str(&format!(
            "role = \"gateway\"\n{base}[ready]\nmin_peers_reachable = 1\n[mesh]\nupstream = \"ingest:4433\"\n[mesh.tls]\nca_cert = \"a\"\ncert = \"b\"\nkey = \"c\"\n"
        ))
        .unwrap();
        assert!(ready_on_upstream.problems().is_empty(), "{:?}", ready_on_upstream.problems());
        let mut two = ready_on_upstream.clone();
        two.ready.min_peers_reachable = 2;
        let p = two.problems();
        assert!(p.len() == 1 && p[0].contains("one peer, its mesh.upstream"), "{p:?}");
        // An ingest node serves no clients: client cores there are a mistake.
        let ingest: NodeConfig = toml::from_str(&format!(
            "role = \"ingest\"\n{base}[gateway]\ncores = [0]\n[mesh]\nupstream = \"h:1\"\n[mesh.tls]\nca_cert = \"a\"\ncert = \"b\"\nkey = \"c\"\n"
        ))
        .unwrap();
        let p = ingest.problems();
        assert!(p.iter().any(|m| m.contains("role = \"ingest\" serves no client WebSockets")), "{p:?}");
        assert!(p.iter().any(|m| m.starts_with("mesh.upstream is only for role = \"gateway\"")), "{p:?}");
        let mut ingest_ok = ingest.clone();
        ingest_ok.gateway.cores.clear();
        ingest_ok.mesh.as_mut().unwrap().upstream = None;
        assert!(ingest_ok.problems().is_empty(), "{:?}", ingest_ok.problems());
        let e = toml::from_str::<NodeConfig>(&format!("role = \"router\"\n{base}")).unwrap_err();
        assert!(e.to_string().contains("router"), "{e}");
    }

    #[test]
    fn the_mesh_io_thread_section_is_read_and_checked() {
        let base = "region = \"us-east-1\"\nstate_dir = \"/x\"\n[auth]\nhs256_key_files = [\"k\"]\n[mesh.tls]\nca_cert = \"a\"\ncert = \"b\"\nkey = \"c\"\n";
        let default: NodeConfig = toml::from_str(base).unwrap();
        let io = default.mesh.as_ref().unwrap().io_thread;
        assert_eq!((io.slice_us, io.realtime_priority), (100, None), "a 100 µs slice unless told otherwise");
        let rt: NodeConfig =
            toml::from_str(&format!("{base}[mesh.io_thread]\nslice_us = 0\nrealtime_priority = 20\n")).unwrap();
        assert_eq!(rt.mesh.as_ref().unwrap().io_thread.realtime_priority, Some(20));
        assert!(rt.problems().is_empty(), "{:?}", rt.problems());
        let bad: NodeConfig = toml::from_str(&format!("{base}[mesh.io_thread]\nslice_us = 20\n")).unwrap();
        let p = bad.problems();
        assert!(p.iter().any(|m| m.starts_with("mesh.io_thread.slice_us = 20 is out of range")), "{p:?}");
        let e = toml::from_str::<NodeConfig>(&format!("{base}[mesh.io_thread]\npriority = 3\n")).unwrap_err();
        assert!(e.to_string().contains("priority"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = toml::from_str::<NodeConfig>("region = \"a\"\nstate_dir = \"/x\"\ntypo = 1\n").unwrap_err();
        assert!(e.to_string().contains("typo"), "{e}");
    }
}

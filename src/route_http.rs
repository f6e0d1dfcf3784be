//! `GET /v1/route` and `POST /v1/admin/weights` on every node, and the health poller that
//! feeds them (and the DNS router).
//!
//! The decision itself is [`crate::route::decide`]; this file gathers its inputs: the
//! configured regions, each region's health (its `/readyz`, polled every second by a
//! `route-health` thread, with this node's own drain flag and, before the first probe
//! answers, the mesh's view of peers) and the weights in force.
//!
//! # Weights are per node, set on every node
//! Each node applies the weights it was given, and keeps them in `STATE_DIR/weights.json`
//! across restarts. `POST /v1/admin/weights` replaces the whole set (a region not named goes
//! back to 100), so sending the same body to every region makes them agree whatever each
//! had before; `tickmesh admin weights` does exactly that for every region `/v1/regions`
//! lists. The DNS router learns each region's weight from that region's own `/v1/regions`.

use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;
use tickmesh_gateway::{http_error, GatewayShared};
use tickmesh_replicate::MeshStatus;

use crate::config::{NodeConfig, RegionEntry};
use crate::route::{self, Country, HealthTracker, Probe, RegionState, RegionView, RouteError, Want, Weights};

/// How long a client may cache a route answer (seconds): short, so a drain or a weight
/// change reaches new clients quickly.
pub const ROUTE_TTL_S: u32 = 5;

/// How often each region's `/readyz` is probed.
pub const POLL_EVERY: Duration = Duration::from_secs(1);

/// Failed probes in a row before a silent region counts as down (about 2 s at [`POLL_EVERY`]).
pub const DOWN_AFTER: u32 = 2;

/// One region to probe.
#[derive(Debug, Clone)]
pub struct PollTarget {
    /// Region name.
    pub region: String,
    /// Its HTTP base URL (`http://host:port`).
    pub http_url: String,
}

/// `host:port` of an `http://` URL, resolved.
pub fn http_addr(url: &str) -> Result<SocketAddr, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("URL '{url}' does not start with http://; write it as http://HOST:PORT"))?;
    let hostport = rest.split('/').next().unwrap_or("");
    let hostport = if hostport.contains(':') { hostport.to_owned() } else { format!("{hostport}:80") };
    hostport
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve '{hostport}' of URL '{url}': {e}"))?
        .next()
        .ok_or_else(|| format!("'{hostport}' of URL '{url}' resolved to no address"))
}

/// Probes one region's `/readyz`.
pub fn probe(url: &str, timeout: Duration) -> Probe {
    let Ok(addr) = http_addr(url) else { return Probe::Unreachable };
    match crate::http_get::get(addr, "/readyz", timeout) {
        Ok((200, _)) => Probe::Ready,
        Ok((_, body)) => {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let draining = v["state"] == "draining"
                || v["reasons"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|x| x.as_str().is_some_and(|s| s.contains("draining"))));
            if draining {
                Probe::Draining
            } else if v.is_object() {
                Probe::NotReady
            } else {
                Probe::Unreachable
            }
        }
        Err(_) => Probe::Unreachable,
    }
}

/// The weight a region reports for itself in its `/v1/regions` (None if it did not answer).
pub fn reported_weight(url: &str, region: &str, timeout: Duration) -> Option<u8> {
    let addr = http_addr(url).ok()?;
    let (status, body) = crate::http_get::get(addr, "/v1/regions", timeout).ok()?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let w = v.as_array()?.iter().find(|e| e["region"] == region)?["weight"].as_u64()?;
    u8::try_from(w).ok().filter(|w| *w <= 100)
}

/// Probes every target once, in parallel, and records the results (and, with `weights`,
/// the weight each region reports for itself).
pub fn poll_round(targets: &[PollTarget], tracker: &Mutex<HealthTracker>, weights: Option<&Mutex<Weights>>) {
    let timeout = Duration::from_millis(800);
    let results: Vec<(String, Probe, Option<u8>)> = std::thread::scope(|s| {
        let handles: Vec<_> = targets
            .iter()
            .map(|t| {
                s.spawn(move || {
                    let p = probe(&t.http_url, timeout);
                    let w = if weights.is_some() && p != Probe::Unreachable {
                        reported_weight(&t.http_url, &t.region, timeout)
                    } else {
                        None
                    };
                    (t.region.clone(), p, w)
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    let mut tr = tracker.lock().unwrap_or_else(|e| e.into_inner());
    for (r, p, _) in &results {
        tr.observe(r, *p);
    }
    if let Some(wm) = weights {
        let mut wm = wm.lock().unwrap_or_else(|e| e.into_inner());
        for (r, _, w) in &results {
            if let Some(w) = w {
                wm.set(r, *w);
            }
        }
    }
}

/// Routing state of one node: regions, their health, the weights in force.
pub struct RouteService {
    region: String,
    regions: Vec<RegionEntry>,
    shared: Arc<GatewayShared>,
    mesh: OnceLock<Arc<MeshStatus>>,
    health: Mutex<HealthTracker>,
    weights: Mutex<Weights>,
    weights_file: PathBuf,
}

impl std::fmt::Debug for RouteService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteService").field("region", &self.region).finish_non_exhaustive()
    }
}

impl RouteService {
    /// Routing state for the node of `cfg`; weights come back from `STATE_DIR/weights.json`.
    pub fn new(cfg: &NodeConfig, shared: Arc<GatewayShared>) -> Arc<RouteService> {
        let weights_file = cfg.state_dir.join("weights.json");
        let weights = match std::fs::read_to_string(&weights_file) {
            Ok(text) => serde_json::from_str::<Weights>(&text).unwrap_or_else(|e| {
                tracing::warn!(file = %weights_file.display(), error = %e, "ignoring unreadable weights; every region has weight 100");
                Weights::default()
            }),
            Err(_) => Weights::default(),
        };
        Arc::new(RouteService {
            region: cfg.region.clone(),
            regions: cfg.regions.clone(),
            shared,
            mesh: OnceLock::new(),
            health: Mutex::new(HealthTracker::new(DOWN_AFTER)),
            weights: Mutex::new(weights),
            weights_file,
        })
    }

    /// Lets the mesh's view of peers stand in for regions not yet probed.
    pub fn set_mesh(&self, m: Arc<MeshStatus>) {
        let _ = self.mesh.set(m);
    }

    /// Starts the `route-health` thread; it stops once the service is dropped.
    pub fn spawn_poller(self: &Arc<Self>) -> std::io::Result<()> {
        let weak: Weak<RouteService> = Arc::downgrade(self);
        let targets: Vec<PollTarget> = self
            .regions
            .iter()
            .map(|e| PollTarget { region: e.region.clone(), http_url: e.http_url.clone() })
            .collect();
        std::thread::Builder::new().name("route-health".into()).spawn(move || loop {
            let Some(me) = weak.upgrade() else { return };
            poll_round(&targets, &me.health, None);
            drop(me);
            std::thread::sleep(POLL_EVERY);
        })?;
        Ok(())
    }

    /// The weight in force for `region`.
    pub fn weight(&self, region: &str) -> u8 {
        self.weights.lock().unwrap_or_else(|e| e.into_inner()).get(region)
    }

    /// Every configured region with its state as this node sees it now.
    pub fn views(&self) -> Vec<RegionView> {
        let health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let peers = self.mesh.get().map(|m| m.peers()).unwrap_or_default();
        self.regions
            .iter()
            .map(|e| {
                let me = e.region == self.region;
                let state = if me && self.shared.is_draining() {
                    RegionState::Draining
                } else if peers.iter().any(|p| p.region == e.region && p.receiving && p.draining) {
                    // Its heartbeat says so: sooner than the next /readyz probe.
                    RegionState::Draining
                } else if let Some(s) = health.state(&e.region) {
                    s
                } else if me || peers.iter().any(|p| p.region == e.region && p.receiving) {
                    RegionState::Active
                } else {
                    RegionState::Down
                };
                RegionView { region: e.region.clone(), state }
            })
            .collect()
    }

    fn entry(&self, region: &str) -> Option<&RegionEntry> {
        self.regions.iter().find(|e| e.region == region)
    }

    fn set_weights(&self, w: Weights) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(&w).unwrap_or_default();
        let tmp = self.weights_file.with_extension("json.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.weights_file)?;
        *self.weights.lock().unwrap_or_else(|e| e.into_inner()) = w;
        Ok(())
    }

    fn weights_json(&self) -> serde_json::Value {
        let w = self.weights.lock().unwrap_or_else(|e| e.into_inner());
        let m: serde_json::Map<String, serde_json::Value> =
            self.regions.iter().map(|e| (e.region.clone(), json!(w.get(&e.region)))).collect();
        serde_json::Value::Object(m)
    }
}

/// The routes this file serves, to merge into the node's.
pub fn routes(svc: Arc<RouteService>) -> Router {
    Router::new().route("/v1/route", get(route)).route("/v1/admin/weights", post(admin_weights)).with_state(svc)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteQuery {
    geo: Option<String>,
    region: Option<String>,
    affinity: Option<String>,
}

fn bad_request(msg: &str) -> Response {
    http_error(StatusCode::BAD_REQUEST, "bad_request", msg)
}

async fn route(
    State(svc): State<Arc<RouteService>>,
    q: Result<Query<RouteQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return bad_request("unknown query parameter; use geo=CC or region=NAME, and optionally affinity=ID");
    };
    if svc.regions.is_empty() {
        return http_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_regions",
            "this node has no [[regions]] in its configuration, so it cannot route; add every region's ws_url and http_url",
        );
    }
    let country;
    let want = match (q.geo.as_deref().filter(|g| !g.is_empty()), q.region.as_deref().filter(|r| !r.is_empty())) {
        (Some(_), Some(_)) => return bad_request("give either geo or region, not both"),
        (Some(g), None) => match Country::parse(g) {
            Ok(c) => {
                country = c;
                Some(Want::Geo(country))
            }
            Err(e) => return bad_request(&e.to_string()),
        },
        (None, Some(r)) => Some(Want::Region(r)),
        (None, None) => None,
    };
    let key: Vec<u8> = match q.affinity.as_deref().filter(|a| !a.is_empty()) {
        Some(a) if a.len() > 256 => return bad_request("affinity is longer than 256 bytes; use a user or client id"),
        Some(a) => a.as_bytes().to_vec(),
        None => rand::random::<[u8; 16]>().to_vec(),
    };
    let weights = svc.weights.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let decided = route::decide(&svc.views(), &weights, &svc.region, want, &key);
    match decided {
        Ok(r) => {
            metrics::counter!("tickmesh_route_answers_total", "region" => r.region.clone()).increment(1);
            let link = |name: &str| {
                let e = svc.entry(name);
                json!({"region": name, "ws_url": e.map(|e| e.ws_url.as_str()), "http_url": e.map(|e| e.http_url.as_str())})
            };
            let mut body = link(&r.region);
            body["alternates"] = r.fallbacks.iter().map(|f| link(f)).collect();
            body["fallbacks"] = json!(r.fallbacks);
            body["ttl"] = json!(ROUTE_TTL_S);
            ([(header::CACHE_CONTROL, format!("max-age={ROUTE_TTL_S}"))], Json(body)).into_response()
        }
        Err(e @ RouteError::NoHealthyRegion) => {
            metrics::counter!("tickmesh_route_no_healthy_region_total").increment(1);
            http_error(StatusCode::SERVICE_UNAVAILABLE, "no_healthy_region", &e.to_string())
        }
        Err(e @ RouteError::UnknownRegion { .. }) => {
            http_error(StatusCode::NOT_FOUND, "unknown_region", &e.to_string())
        }
        Err(e @ RouteError::UnknownCountry(_)) => http_error(StatusCode::NOT_FOUND, "unknown_country", &e.to_string()),
        Err(e) => bad_request(&e.to_string()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightsBody {
    weights: std::collections::BTreeMap<String, serde_json::Value>,
}

/// Checks the admin token of a request: None when it has role `admin`, else the error
/// response that says what is wrong.
pub fn admin_refusal(shared: &GatewayShared, req: &Request) -> Option<Response> {
    let header = req.headers().get(header::AUTHORIZATION).and_then(|h| h.to_str().ok());
    let Some(token) = tickmesh_gateway::auth::token_from_request(None, header) else {
        return Some(http_error(
            StatusCode::UNAUTHORIZED,
            "missing_token",
            "send an admin token in the Authorization: Bearer header (tickmesh token --roles admin)",
        ));
    };
    match shared.verifier().verify(&token, tickmesh_codec::now_ns() / 1_000_000_000) {
        Ok(c) if c.has_role("admin") => None,
        Ok(_) => Some(http_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this token has no admin role; mint one with tickmesh token --roles admin",
        )),
        Err(e) => Some(http_error(
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::UNAUTHORIZED),
            e.code(),
            &e.to_string(),
        )),
    }
}

async fn admin_weights(State(svc): State<Arc<RouteService>>, req: Request) -> Response {
    if let Some(r) = admin_refusal(&svc.shared, &req) {
        return r;
    }
    let body = match axum::body::to_bytes(req.into_body(), 64 * 1024).await {
        Ok(b) => b,
        Err(_) => return bad_request("body is unreadable or over 64 KiB"),
    };
    let parsed: WeightsBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return bad_request(&format!(
                "body is not {{\"weights\":{{\"REGION\":WEIGHT,...}}}} ({e}); e.g. {{\"weights\":{{\"us-east-1\":90,\"eu-west-1\":10}}}}"
            ))
        }
    };
    let mut w = Weights::default();
    let mut problems = Vec::new();
    for (r, v) in &parsed.weights {
        match v.as_u64().filter(|v| *v <= 100) {
            Some(v) => w.set(r, v as u8),
            None => problems.push(format!("weight {v} of {r} is not a whole number from 0 to 100")),
        }
    }
    let configured: Vec<String> = svc.regions.iter().map(|e| e.region.clone()).collect();
    if let Err(e) = w.validate(&configured) {
        problems.push(e.to_string());
    }
    if !problems.is_empty() {
        return bad_request(&format!("{}; no weight was changed", problems.join("; ")));
    }
    if let Err(e) = svc.set_weights(w) {
        return http_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "storage_failed",
            &format!("cannot save {}: {e}; check the state directory", svc.weights_file.display()),
        );
    }
    tracing::info!(weights = %svc.weights_json(), "route weights changed");
    Json(json!({"region": svc.region, "weights": svc.weights_json()})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_survive_a_restart_and_self_drain_counts_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let cfg: NodeConfig = toml::from_str(&format!(
            "region = \"us-east-1\"\nstate_dir = {:?}\n[[regions]]\nregion = \"us-east-1\"\nws_url = \"ws://127.0.0.1:1/v1/ws\"\nhttp_url = \"http://127.0.0.1:1\"\n",
            dir.path()
        ))
        .unwrap();
        let shared =
            Arc::new(GatewayShared::new("us-east-1", tickmesh_gateway::auth::Verifier::new(), Box::new(String::new)));
        let svc = RouteService::new(&cfg, shared.clone());
        assert_eq!(svc.weight("us-east-1"), 100);
        svc.set_weights(Weights::parse_list("us-east-1=40").unwrap()).unwrap();
        let again = RouteService::new(&cfg, shared.clone());
        assert_eq!(again.weight("us-east-1"), 40);
        assert_eq!(again.views()[0].state, RegionState::Active);
        shared.set_draining(true);
        assert_eq!(again.views()[0].state, RegionState::Draining);
    }

    #[test]
    fn http_addr_reads_urls_and_refuses_others() {
        assert_eq!(http_addr("http://127.0.0.2:8080").unwrap(), "127.0.0.2:8080".parse::<SocketAddr>().unwrap());
        assert_eq!(http_addr("http://127.0.0.1:9/x").unwrap(), "127.0.0.1:9".parse::<SocketAddr>().unwrap());
        assert!(http_addr("https://a:1").unwrap_err().contains("http://"));
    }
}

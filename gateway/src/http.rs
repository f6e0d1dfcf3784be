//! HTTP on the client port: the WebSocket upgrade, health, metrics and the dashboard.
//!
//! Every core serves HTTP/1.1 with hyper on its own connections. `/v1/ws` checks the token
//! *before* the upgrade (401 with a JSON error), answers 101, and then takes the raw TCP
//! stream back from hyper (`Upgraded::downcast`) so the session writes pre-built frames
//! itself on this same core.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tokio::net::TcpStream;

use crate::session::{ConnectParams, Encoding};
use crate::shared::{GatewayShared, RegionLink};
use crate::{auth, core, ws};

/// A JSON error body `{"error":{"code","message"}}` with `status`.
pub fn http_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// The gateway's own routes, merged with the node's `extra` routes.
pub(crate) fn router(shared: Arc<GatewayShared>, extra: Router) -> Router {
    let own = Router::new()
        .route("/v1/ws", get(ws_upgrade))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/v1/book", get(book))
        .route("/", get(dashboard))
        .route("/dashboard/app.js", get(|| asset("text/javascript; charset=utf-8", DASHBOARD_JS)))
        .route("/dashboard/app.css", get(|| asset("text/css; charset=utf-8", DASHBOARD_CSS)))
        .route("/dashboard/chart.umd.js", get(|| asset("text/javascript; charset=utf-8", CHART_JS)))
        .with_state(shared);
    own.merge(extra).fallback(|| async {
        http_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such endpoint; see PROTOCOL.md for the endpoints of a region node",
        )
    })
}

async fn metrics(State(shared): State<Arc<GatewayShared>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], shared.metrics_text()).into_response()
}

/// `GET /v1/book?sym=SYM[&src=SRC][&depth=N]`: the book as this core holds it.
async fn book(req: Request) -> Response {
    let q = req.uri().query().map(str::to_owned);
    let q = q.as_deref();
    let Some(sym) = query_param(q, "sym").filter(|s| !s.is_empty()) else {
        return http_error(StatusCode::BAD_REQUEST, "bad_request", "sym is required, e.g. /v1/book?sym=AAPL&depth=10");
    };
    let depth = match query_param(q, "depth").map(str::parse::<u32>) {
        None => 10,
        Some(Ok(d @ 1..=1000)) => d,
        Some(_) => return http_error(StatusCode::BAD_REQUEST, "bad_request", "depth must be 1 to 1000 (default 10)"),
    };
    let src = query_param(q, "src");
    let result = core::with_current(|c| {
        let books = c.books.borrow();
        let sources = books.sources_of(sym);
        let chosen = match (src, sources.as_slice()) {
            (Some(s), _) => match sources.iter().find(|x| x.as_str() == s) {
                Some(x) => *x,
                None => {
                    return Err((
                        StatusCode::NOT_FOUND,
                        "unknown_symbol",
                        format!(
                            "source {s} has no book for {sym}; sources with one: {:?}",
                            sources.iter().map(|s| s.as_str()).collect::<Vec<_>>()
                        ),
                    ))
                }
            },
            (None, [one]) => *one,
            (None, []) => {
                return Err((
                    StatusCode::NOT_FOUND,
                    "unknown_symbol",
                    format!("no source of this region has a book for {sym}"),
                ))
            }
            (None, many) => {
                let names: Vec<&str> = many.iter().map(|s| s.as_str()).collect();
                return Err((
                    StatusCode::BAD_REQUEST,
                    "ambiguous_symbol",
                    format!("{sym} is carried by {}; add src=, e.g. src={}", names.join(", "), names[0]),
                ));
            }
        };
        let pos = c.positions.borrow().get(&chosen).copied().unwrap_or(0);
        let Ok(sym) = tickmesh_codec::Symbol::new(sym) else {
            return Err((StatusCode::BAD_REQUEST, "bad_request", "sym is not a valid symbol".to_owned()));
        };
        books.snapshot(chosen, sym, pos, depth, false).ok_or((
            StatusCode::NOT_FOUND,
            "unknown_symbol",
            "no book".to_owned(),
        ))
    });
    match result {
        Some(Ok(body)) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Some(Err((status, code, msg))) => http_error(status, code, &msg),
        None => http_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "book requested outside a gateway core"),
    }
}

/// The dashboard page: every region's rates, latency, lag and state, and the global VWAP,
/// drawn from `/v1/stats/global` and `/v1/vwap` (served by the node) with chart.js.
const DASHBOARD_HTML: &str = include_str!("../dashboard/index.html");
const DASHBOARD_JS: &str = include_str!("../dashboard/app.js");
const DASHBOARD_CSS: &str = include_str!("../dashboard/app.css");
/// chart.js from npm (version pinned in dashboard/package-lock.json), embedded by build.rs
/// so the binary serves it with no CDN; a stand-in with a notice when npm was missing.
const CHART_JS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/chart.umd.js"));

async fn dashboard() -> Response {
    asset("text/html; charset=utf-8", DASHBOARD_HTML.as_bytes()).await
}

async fn asset(content_type: &'static str, body: impl Into<axum::body::Body>) -> Response {
    let mut resp = Response::new(body.into());
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// Serves one accepted connection (HTTP/1.1, upgrades allowed).
pub(crate) async fn serve_connection(stream: TcpStream, router: Router, handshake_timeout: std::time::Duration) {
    let svc = hyper_util::service::TowerToHyperService::new(router);
    let conn = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(handshake_timeout)
        .timer(hyper_util::rt::TokioTimer::new())
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "http connection ended with an error");
    }
}

fn query_param<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then_some(v)
    })
}

/// The 503 an ingest-role node answers `/v1/ws` with: clients are served by the region's
/// gateway nodes. The body has the `next` key of a draining region's refusal, so a client
/// that follows one follows the other; there is no `Retry-After`, since retrying this node
/// never helps.
fn refuse_on_ingest_node(region: &str, gateways: Option<&RegionLink>) -> Response {
    let message = match gateways {
        Some(g) => format!(
            "this is an ingest node of region {region} and serves no client WebSockets; connect to the region's gateway nodes at {}",
            g.ws_url
        ),
        None => format!(
            "this is an ingest node of region {region} and serves no client WebSockets; connect to the region's gateway nodes (its load balancer's /v1/ws)"
        ),
    };
    let mut body = serde_json::json!({"error": {"code": "ingest_node", "message": message}});
    if let Some(g) = gateways {
        body["next"] = serde_json::json!({"region": g.region, "ws_url": g.ws_url});
    }
    (StatusCode::SERVICE_UNAVAILABLE, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn ws_upgrade(State(shared): State<Arc<GatewayShared>>, mut req: Request) -> Response {
    if let Some(gateways) = shared.clients_refused() {
        return refuse_on_ingest_node(shared.region(), gateways);
    }
    if let Some(plan) = shared.drain_plan() {
        return crate::drain::refuse_upgrade(shared.region(), &plan);
    }
    let query = req.uri().query().map(str::to_owned);
    let authz = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let Some(token) = auth::token_from_request(query.as_deref(), authz) else {
        return http_error(
            StatusCode::UNAUTHORIZED,
            "missing_token",
            "no token; pass ?token=JWT or the header Authorization: Bearer JWT",
        );
    };
    let now = tickmesh_codec::now_ns() / 1_000_000_000;
    let claims = match shared.verifier().verify(&token, now) {
        Ok(c) => c,
        Err(e) => return http_error(StatusCode::UNAUTHORIZED, e.code(), &e.to_string()),
    };
    let encoding = match query_param(query.as_deref(), "encoding") {
        None | Some("json") => Encoding::Json,
        Some("binary") => Encoding::Binary,
        Some(other) => {
            return http_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("encoding '{other}' does not exist; use json or binary"),
            )
        }
    };
    let batch = matches!(query_param(query.as_deref(), "batch"), Some("1" | "true"));
    let h = req.headers();
    let is_upgrade =
        h.get(header::UPGRADE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let version_ok = h.get(header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v == "13");
    let Some(key) = h.get(header::SEC_WEBSOCKET_KEY).and_then(|v| v.to_str().ok()).map(str::to_owned) else {
        return http_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "not a WebSocket upgrade: Sec-WebSocket-Key is missing",
        );
    };
    if !is_upgrade || !version_ok {
        return http_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "not a WebSocket upgrade; send Upgrade: websocket and Sec-WebSocket-Version: 13",
        );
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let params = ConnectParams { encoding, batch, claims };
    tokio::task::spawn_local(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade did not complete");
                return;
            }
        };
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let stream = parts.io.into_inner();
                if core::with_current(|c| c.start_session(stream, parts.read_buf, params)).is_none() {
                    tracing::error!("websocket upgraded outside a gateway core; closing");
                }
            }
            Err(_) => tracing::error!("upgraded connection is not a TCP stream; closing"),
        }
    });
    let mut resp = Response::new(axum::body::Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let hm = resp.headers_mut();
    hm.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    hm.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&ws::accept_key(&key)) {
        hm.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

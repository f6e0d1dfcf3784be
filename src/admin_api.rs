//! The admin HTTP API of a node: `POST /v1/admin/drain` and `POST /v1/admin/undrain`.
//!
//! Any region accepts a request for any region. A request for another region is passed
//! on over HTTP to that region's `http_url` (from the node's `regions` list) with the same
//! token, once (a forwarded request is never forwarded again). PROTOCOL.md says "the mesh
//! carries it"; HTTP keeps the replicate crate free of admin traffic and gives the caller
//! the named region's own answer, and the mesh between regions is the same network.
//!
//! Draining itself is the gateway's (`tickmesh_gateway::drain`): this module checks the
//! token (role `admin`), the body and the region, and calls
//! [`GatewayShared::start_drain`] / [`GatewayShared::undrain`].

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tickmesh_gateway::{http_error, GatewayShared};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::RegionEntry;

/// Marks a request one region passed on to another.
const FORWARDED: &str = "x-tickmesh-forwarded";
/// Longest grace period accepted (10 minutes).
const MAX_GRACE_MS: u64 = 600_000;

struct Admin {
    region: String,
    regions: Vec<RegionEntry>,
    shared: Arc<GatewayShared>,
}

/// The admin routes of the node of `region`.
pub(crate) fn routes(region: &str, regions: &[RegionEntry], shared: Arc<GatewayShared>) -> Router {
    let admin = Arc::new(Admin { region: region.to_owned(), regions: regions.to_vec(), shared });
    Router::new().route("/v1/admin/drain", post(drain)).route("/v1/admin/undrain", post(undrain)).with_state(admin)
}

async fn drain(State(a): State<Arc<Admin>>, headers: HeaderMap, body: Bytes) -> Response {
    handle(&a, &headers, &body, true).await
}

async fn undrain(State(a): State<Arc<Admin>>, headers: HeaderMap, body: Bytes) -> Response {
    handle(&a, &headers, &body, false).await
}

async fn handle(a: &Admin, headers: &HeaderMap, body: &[u8], drain: bool) -> Response {
    let path = if drain { "/v1/admin/drain" } else { "/v1/admin/undrain" };
    let authz = headers.get("authorization").and_then(|v| v.to_str().ok());
    let Some(token) = authz.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim) else {
        return http_error(
            StatusCode::UNAUTHORIZED,
            "missing_token",
            "no token; send the header Authorization: Bearer JWT with a token of role admin",
        );
    };
    let now = tickmesh_codec::now_ns() / 1_000_000_000;
    let claims = match a.shared.verifier().verify(token, now) {
        Ok(c) => c,
        Err(e) => return http_error(StatusCode::UNAUTHORIZED, e.code(), &e.to_string()),
    };
    if !claims.has_role("admin") {
        return http_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            &format!("token of {} has no role admin; mint one with `tickmesh token --roles admin`", claims.sub),
        );
    }
    let req: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            let example = if drain { r#"{"region":"us-east-1","grace_ms":5000}"# } else { r#"{"region":"us-east-1"}"# };
            return http_error(StatusCode::BAD_REQUEST, "bad_request", &format!("body must be JSON like {example}"));
        }
    };
    let Some(region) = req.get("region").and_then(Value::as_str) else {
        return http_error(StatusCode::BAD_REQUEST, "bad_request", "body has no \"region\"; name the region to act on");
    };
    let grace_ms = match req.get("grace_ms") {
        None | Some(Value::Null) => tickmesh_gateway::drain::DEFAULT_GRACE.as_millis() as u64,
        Some(v) => match v.as_u64() {
            Some(g) if g <= MAX_GRACE_MS => g,
            _ => {
                return http_error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    &format!("grace_ms = {v} is not a number of milliseconds from 0 to {MAX_GRACE_MS}"),
                )
            }
        },
    };
    if region != a.region {
        let Some(target) = a.regions.iter().find(|r| r.region == region) else {
            let known: Vec<&str> = a.regions.iter().map(|r| r.region.as_str()).collect();
            return http_error(
                StatusCode::NOT_FOUND,
                "unknown_region",
                &format!("region '{region}' is not in this deployment; use one of {}", known.join(", ")),
            );
        };
        if headers.contains_key(FORWARDED) {
            return http_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("{} received a forwarded request for {region}; check the regions lists", a.region),
            );
        }
        let url = format!("{}{path}", target.http_url);
        let body = String::from_utf8_lossy(body);
        return match http_request("POST", &url, Some(token), Some(&body), &[(FORWARDED, "1")], Duration::from_secs(5))
            .await
        {
            Ok((status, text)) => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                (status, [("content-type", "application/json")], text).into_response()
            }
            Err(e) => http_error(
                StatusCode::BAD_GATEWAY,
                "region_unreachable",
                &format!("could not pass the request on to {region} at {url}: {e}; is it running?"),
            ),
        };
    }
    if drain {
        let plan = a.shared.start_drain(Duration::from_millis(grace_ms));
        tracing::warn!(region = %a.region, grace_ms, next = ?plan.next.as_ref().map(|n| &n.region), by = %claims.sub, "draining");
        let next = plan.next.map(|n| json!({"region": n.region, "ws_url": n.ws_url}));
        (
            StatusCode::ACCEPTED,
            axum::Json(json!({"region": a.region, "state": "draining", "grace_ms": grace_ms, "next": next})),
        )
            .into_response()
    } else {
        a.shared.undrain();
        tracing::warn!(region = %a.region, by = %claims.sub, "undrained");
        (StatusCode::OK, axum::Json(json!({"region": a.region, "state": "active"}))).into_response()
    }
}

/// One HTTP/1.1 request over plain TCP (`http://` URLs); returns the status and body.
/// Small on purpose: admin calls are rare and loopback or in-cluster.
pub async fn http_request(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
    extra_headers: &[(&str, &str)],
    limit: Duration,
) -> Result<(u16, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("{url} is not an http:// URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(authority).await.map_err(|e| format!("connect {authority}: {e}"))?;
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
        if let Some(t) = token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        for (k, v) in extra_headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        let body = body.unwrap_or("");
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()));
        s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").ok_or("the answer has no HTTP header end")?;
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or("the answer has no status")?;
        let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
        Ok((status, if chunked { dechunk(body) } else { body.to_owned() }))
    };
    tokio::time::timeout(limit, fut).await.map_err(|_| format!("no answer from {authority} within {limit:?}"))?
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest.get(n + 2..).unwrap_or("");
    }
    out
}

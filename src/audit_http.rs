//! `GET /v1/audit`: the node's audit trail (cross-region transfers, user-data messages,
//! erasures: one hash chain), for admins.
//!
//! Query: `kind` (transfer, user_transfer, erasure), `user` (a user id, matched through
//! its pseudonym), `src`, `from`, `to`, `class` (market_data, pii, regulatory), `decision` (allow,
//! deny), `since_ns`, `until_ns`, `after` (index, for paging), `limit` (default 1,000, at
//! most 10,000). Answer: `{"region","entries":[...],"next_after","head"}`, entries oldest
//! first; `head` is the chain's anchor (archive it elsewhere to detect a rewritten log).
//! Needs a token with role `admin` (header `Authorization: Bearer`, or `token=`): 401
//! without a valid token, 403 without the role.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;
use tickmesh_gateway::auth::token_from_request;
use tickmesh_gateway::GatewayShared;
use tickmesh_replicate::{user_pseudonym, AuditFilter, AuditLog, DataClass, EntryKind};

struct AuditState {
    shared: Arc<GatewayShared>,
    audit: Option<Arc<AuditLog>>,
}

/// The `/v1/audit` route, to merge into the node's router.
pub fn router(shared: Arc<GatewayShared>, audit: Option<Arc<AuditLog>>) -> Router {
    Router::new().route("/v1/audit", get(query)).with_state(Arc::new(AuditState { shared, audit }))
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": {"code": code, "message": message.into()}}))).into_response()
}

/// The filter of a query string; unknown parameters and bad values are refused by name.
fn parse_filter(query: &str) -> Result<AuditFilter, String> {
    let mut f = AuditFilter::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        let num = |what: &str| v.parse::<u64>().map_err(|_| format!("{what} {v:?} is not a whole number"));
        match k {
            "token" => {}
            "kind" => {
                f.kind = Some(
                    serde_json::from_value::<EntryKind>(serde_json::Value::String(v.clone()))
                        .map_err(|_| format!("kind {v:?} is not known; use transfer, user_transfer or erasure"))?,
                )
            }
            "user" => f.user = Some(user_pseudonym(&v)),
            "src" => f.src = Some(v),
            "from" => f.from = Some(v),
            "to" => f.to = Some(v),
            "class" => {
                f.class = Some(
                    serde_json::from_value::<DataClass>(serde_json::Value::String(v.clone()))
                        .map_err(|_| format!("class {v:?} is not known; use market_data, pii or regulatory"))?,
                )
            }
            "decision" => f.decision = Some(v),
            "since_ns" => f.since_ns = Some(num("since_ns")?),
            "until_ns" => f.until_ns = Some(num("until_ns")?),
            "after" => f.after = Some(num("after")?),
            "limit" => f.limit = Some(num("limit")? as usize),
            other => {
                return Err(format!(
                    "query parameter {other:?} is not known; use kind, user, src, from, to, class, decision, since_ns, until_ns, after, limit"
                ))
            }
        }
    }
    let problems = f.problems();
    if problems.is_empty() {
        Ok(f)
    } else {
        Err(problems.join("; "))
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn query(State(s): State<Arc<AuditState>>, RawQuery(q): RawQuery, headers: HeaderMap) -> Response {
    let auth = headers.get(axum::http::header::AUTHORIZATION).and_then(|h| h.to_str().ok());
    let Some(token) = token_from_request(q.as_deref(), auth) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a token with role admin is required; send Authorization: Bearer <token>",
        );
    };
    let claims = match s.shared.verifier().verify(&token, tickmesh_codec::now_ns() / 1_000_000_000) {
        Ok(c) => c,
        Err(e) => {
            let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::UNAUTHORIZED);
            return error(status, e.code(), e.to_string());
        }
    };
    if !claims.has_role("admin") {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("user {} has no admin role; the audit trail needs a token with roles [\"admin\"]", claims.sub),
        );
    }
    let filter = match parse_filter(q.as_deref().unwrap_or("")) {
        Ok(f) => f,
        Err(why) => return error(StatusCode::BAD_REQUEST, "bad_request", why),
    };
    let Some(audit) = s.audit.clone() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable", "this node keeps no audit log");
    };
    let region = s.shared.region().to_owned();
    match tokio::task::spawn_blocking(move || audit.query(&filter)).await {
        Ok(Ok(page)) => Json(json!({
            "region": region, "entries": page.entries, "next_after": page.next_after, "head": page.head,
        }))
        .into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, "audit_read_failed", e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "audit_read_failed", e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_bad_ones_are_named() {
        let f = parse_filter("src=USR.EUW1&class=pii&decision=deny&since_ns=5&limit=10&token=x&to=eu-west-1").unwrap();
        assert_eq!(f.src.as_deref(), Some("USR.EUW1"));
        assert_eq!(f.class, Some(DataClass::Pii));
        assert_eq!((f.since_ns, f.limit), (Some(5), Some(10)));
        let f = parse_filter("kind=erasure&user=alice").unwrap();
        assert_eq!(f.kind, Some(EntryKind::Erasure));
        assert_eq!(f.user, Some(user_pseudonym("alice")));
        assert!(parse_filter("kind=gossip").unwrap_err().contains("transfer, user_transfer or erasure"));
        assert!(parse_filter("colour=red").unwrap_err().contains("\"colour\" is not known"));
        assert!(parse_filter("class=secret").unwrap_err().contains("market_data, pii or regulatory"));
        assert!(parse_filter("limit=abc").unwrap_err().contains("not a whole number"));
        assert!(parse_filter("decision=maybe").unwrap_err().contains("allow or deny"));
        assert_eq!(percent_decode("a%2Eb+c%zz"), "a.b c%zz");
    }
}

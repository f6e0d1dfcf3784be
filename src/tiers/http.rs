//! The user-data tier over HTTP: the node's `/v1/users` routes. Other regions are reached
//! over the mesh (`userdata::MeshHome`), never over these routes.
//!
//! | route | who | what |
//! |---|---|---|
//! | `PUT /v1/users/{id}` | admin | create or replace a user (homed elsewhere: passed on to its home over the mesh, no copy kept) |
//! | `GET /v1/users/{id}` | admin, the user | the full profile (home region only) |
//! | `GET /v1/users/{id}/view?home=R` | admin, the user | the PII-free view (cached away from home) |
//! | `PUT /v1/users/{id}/preferences?home=R` | admin, the user | set preferences (written back home) |
//! | `DELETE /v1/users/{id}` | admin | forget the user: erase at home and every cached view |
//! | `POST /v1/admin/users/{id}/forget` | admin | the same; body `{"home": R}` (optional) passes it on to R over the mesh |
//!
//! A forget answers 200 with a report (`erased_at_home`, `already_erased`, `fields`, per
//! region `regions[].ok/outcome`, `complete`); `complete: false` means some region was not
//! reached: run it again. 404 `unknown_user` when the user was never known here.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use tickmesh_gateway::auth::Claims;

use super::userdata::{UserProfile, UserTier};
use super::TierError;

/// What the routes need.
pub struct UsersState {
    /// The tier.
    pub tier: Arc<UserTier>,
    /// The gateway's shared state (its token verifier).
    pub shared: Arc<tickmesh_gateway::GatewayShared>,
}

/// The `/v1/users` and `/v1/peer/users` routes.
pub fn routes(state: Arc<UsersState>) -> Router {
    Router::new()
        .route("/v1/users/{id}", put(put_user).get(get_user).delete(forget_user))
        .route("/v1/users/{id}/view", get(get_view))
        .route("/v1/users/{id}/preferences", put(put_prefs))
        .route("/v1/admin/users/{id}/forget", axum::routing::post(admin_forget))
        .with_state(state)
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    (status, Json(json!({"error": code, "message": message}))).into_response()
}

fn tier_error(e: TierError) -> Response {
    match e {
        TierError::Invalid(m) => error(StatusCode::BAD_REQUEST, "invalid", m),
        TierError::UnknownUser(_) => error(StatusCode::NOT_FOUND, "unknown_user", e.to_string()),
        TierError::NotHome { .. } => error(StatusCode::CONFLICT, "not_home_region", e.to_string()),
        TierError::Refused(_) => error(StatusCode::FORBIDDEN, "residency_refused", e.to_string()),
        TierError::Unreachable { .. } => error(StatusCode::SERVICE_UNAVAILABLE, "region_unreachable", e.to_string()),
        other => error(StatusCode::BAD_GATEWAY, "store", other.to_string()),
    }
}

/// The caller's claims, or the response to send.
fn caller(s: &UsersState, headers: &HeaderMap) -> Result<Claims, Box<Response>> {
    let authz = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let Some(token) = tickmesh_gateway::auth::token_from_request(None, authz) else {
        return Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "no token; send the header Authorization: Bearer JWT".into(),
        )));
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    s.shared
        .verifier()
        .verify(&token, now)
        .map_err(|e| Box::new(error(StatusCode::UNAUTHORIZED, e.code(), e.to_string())))
}

fn need_admin(c: &Claims) -> Result<(), Box<Response>> {
    if c.has_role("admin") {
        Ok(())
    } else {
        Err(Box::new(error(StatusCode::FORBIDDEN, "forbidden", "this needs a token with role admin".into())))
    }
}

fn need_self_or_admin(c: &Claims, id: &str) -> Result<(), Box<Response>> {
    if c.has_role("admin") || c.sub == id {
        Ok(())
    } else {
        Err(Box::new(error(StatusCode::FORBIDDEN, "forbidden", format!("only user {id} or an admin may do this"))))
    }
}

macro_rules! try_resp {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(r) => return *r,
        }
    };
}

async fn put_user(
    State(s): State<Arc<UsersState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let c = try_resp!(caller(&s, &headers));
    try_resp!(need_admin(&c));
    let p: UserProfile = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!("body is not a user profile ({e}); send {{\"id\",\"home\",\"name\",\"email\",\"entitlements\",\"preferences\"}}"),
            )
        }
    };
    if p.id != id {
        return error(StatusCode::BAD_REQUEST, "invalid", format!("body id {:?} differs from the path's {id:?}", p.id));
    }
    let tier = s.tier.clone();
    match tokio::task::spawn_blocking(move || tier.put_anywhere(&p)).await {
        Ok(Ok(())) => (StatusCode::OK, Json(json!({"stored": id}))).into_response(),
        Ok(Err(e)) => tier_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

async fn get_user(State(s): State<Arc<UsersState>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let c = try_resp!(caller(&s, &headers));
    try_resp!(need_self_or_admin(&c, &id));
    let tier = s.tier.clone();
    match tokio::task::spawn_blocking(move || tier.profile(&id)).await {
        Ok(Ok(p)) => Json(p).into_response(),
        Ok(Err(e)) => tier_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

#[derive(serde::Deserialize)]
struct HomeQuery {
    home: Option<String>,
}

fn home_of(q: &HomeQuery, c: &Claims, here: &str) -> String {
    q.home.clone().or_else(|| c.home.clone()).unwrap_or_else(|| here.to_owned())
}

async fn get_view(
    State(s): State<Arc<UsersState>>,
    Path(id): Path<String>,
    Query(q): Query<HomeQuery>,
    headers: HeaderMap,
) -> Response {
    let c = try_resp!(caller(&s, &headers));
    try_resp!(need_self_or_admin(&c, &id));
    let home = home_of(&q, &c, s.tier.region());
    let tier = s.tier.clone();
    match tokio::task::spawn_blocking(move || tier.view(&id, &home)).await {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => tier_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

async fn put_prefs(
    State(s): State<Arc<UsersState>>,
    Path(id): Path<String>,
    Query(q): Query<HomeQuery>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let c = try_resp!(caller(&s, &headers));
    try_resp!(need_self_or_admin(&c, &id));
    let prefs: BTreeMap<String, String> = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return error(StatusCode::BAD_REQUEST, "invalid", format!("body must be a JSON object of strings ({e})"))
        }
    };
    let home = home_of(&q, &c, s.tier.region());
    let tier = s.tier.clone();
    match tokio::task::spawn_blocking(move || tier.set_preferences(&id, &home, prefs)).await {
        Ok(Ok(())) => Json(json!({"stored": true})).into_response(),
        Ok(Err(e)) => tier_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

async fn forget_user(State(s): State<Arc<UsersState>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let c = try_resp!(caller(&s, &headers));
    try_resp!(need_admin(&c));
    forget(s, id, None, c.sub).await
}

async fn forget(s: Arc<UsersState>, id: String, home: Option<String>, operator: String) -> Response {
    let tier = s.tier.clone();
    match tokio::task::spawn_blocking(move || tier.forget_anywhere(&id, home.as_deref(), Some(&operator))).await {
        Ok(Ok(r)) => Json(r).into_response(),
        Ok(Err(e)) => tier_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ForgetBody {
    #[serde(default)]
    home: Option<String>,
}

/// `POST /v1/admin/users/{id}/forget` (`tickmesh admin forget-user`).
async fn admin_forget(
    State(s): State<Arc<UsersState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let c = try_resp!(caller(&s, &headers));
    try_resp!(need_admin(&c));
    let b: ForgetBody = if body.is_empty() {
        ForgetBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => {
                return error(StatusCode::BAD_REQUEST, "invalid", format!("body must be {{\"home\": REGION}} ({e})"))
            }
        }
    };
    forget(s, id, b.home, c.sub).await
}

/// What the trading route needs.
pub struct TradingState {
    /// The tier.
    pub tier: super::trading::TradingTier,
    /// The gateway's shared state (its token verifier).
    pub shared: Arc<tickmesh_gateway::GatewayShared>,
}

/// `POST /v1/trading/orders`: the trading tier for services in another process (role
/// `trading` or `admin`). Body: `{"order_id","user","symbol","status","side","px","qty","filled_qty"}`
/// with prices and quantities as decimal strings, as on the wire.
pub fn trading_routes(state: Arc<TradingState>) -> Router {
    Router::new().route("/v1/trading/orders", axum::routing::post(post_order)).with_state(state)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderBody {
    order_id: String,
    user: String,
    symbol: String,
    status: super::trading::OrderStatus,
    side: String,
    px: String,
    qty: String,
    #[serde(default)]
    filled_qty: Option<String>,
}

impl OrderBody {
    fn into_msg(self) -> Result<super::trading::OrderUpdateMsg, String> {
        let side = match self.side.as_str() {
            "buy" => tickmesh_codec::Side::Buy,
            "sell" => tickmesh_codec::Side::Sell,
            s => return Err(format!("side {s:?} must be \"buy\" or \"sell\"")),
        };
        fn num<T: std::str::FromStr>(what: &str, v: &str) -> Result<T, String>
        where
            T::Err: std::fmt::Display,
        {
            v.parse().map_err(|e| format!("{what} {v:?} is not a decimal number: {e}"))
        }
        Ok(super::trading::OrderUpdateMsg {
            order_id: self.order_id,
            user: self.user,
            symbol: self.symbol,
            status: self.status,
            side,
            px: num("px", &self.px)?,
            qty: num("qty", &self.qty)?,
            filled_qty: match &self.filled_qty {
                Some(f) => num("filled_qty", f)?,
                None => tickmesh_codec::Qty::ZERO,
            },
            ts_event: 0,
        })
    }
}

async fn post_order(State(s): State<Arc<TradingState>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let authz = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let Some(token) = tickmesh_gateway::auth::token_from_request(None, authz) else {
        return error(StatusCode::UNAUTHORIZED, "unauthorized", "no token; send Authorization: Bearer JWT".into());
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let c = match s.shared.verifier().verify(&token, now) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::UNAUTHORIZED, e.code(), e.to_string()),
    };
    if !c.has_role("trading") && !c.has_role("admin") {
        return error(StatusCode::FORBIDDEN, "forbidden", "this needs a token with role trading or admin".into());
    }
    let msg = match serde_json::from_slice::<OrderBody>(&body).map_err(|e| e.to_string()).and_then(OrderBody::into_msg)
    {
        Ok(m) => m,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid", format!("order update: {e}")),
    };
    match s.tier.publish(&msg) {
        Ok(()) => (StatusCode::ACCEPTED, Json(json!({"accepted": msg.order_id}))).into_response(),
        Err(e @ TierError::NotEnabled) => error(StatusCode::NOT_FOUND, "trading_off", e.to_string()),
        Err(e @ TierError::Stopped) => error(StatusCode::SERVICE_UNAVAILABLE, "stopping", e.to_string()),
        Err(e) => tier_error(e),
    }
}

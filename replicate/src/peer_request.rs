//! User-data requests between regions over the mesh: the request/response channel the
//! user-data tier uses to reach a user's home region (fetch the PII-free view, write
//! preferences back) and the home region uses to reach every other region (drop a cached
//! view when a user is forgotten).
//!
//! # Wire
//! One bidirectional QUIC stream per request, on an existing mesh connection to the peer
//! (either direction), separate from the record streams: the opener writes one message
//! `u32` little-endian length, `u8` [`USER_REQUEST`], JSON [`UserMessage`], and finishes
//! its side; the peer answers with one message of type [`USER_RESPONSE`] and finishes. The
//! driver recognises the type before the stream reaches the record protocol
//! ([`crate::link`]), so the record streams are untouched.
//!
//! # Residency
//! Every message names the class of what it carries ([`DataClass::Pii`] when it holds a
//! personal field) and its user's home region. Both the sender and the receiver ask the
//! policy ([`TransferPolicy::check_user_data`]) and record the outcome, allowed or refused,
//! as a [`EntryKind::UserTransfer`] entry of the audit trail; a refused message is not
//! sent (sender) or not handed to the handler (receiver). The default rules: personal data
//! moves only toward its home region; the PII-free view moves like market data.

use std::sync::Arc;
use std::time::Duration;

use crate::audit::{user_pseudonym, EntryKind, UserDataRecord};
use crate::transfer::{DataClass, Decision, Direction, TransferAudit, TransferPolicy};

/// Message type of a request (never used by the record protocol's messages).
pub const USER_REQUEST: u8 = 0x40;
/// Message type of the answer.
pub const USER_RESPONSE: u8 = 0x41;
/// Largest request or answer accepted.
pub const MAX_USER_MESSAGE: usize = 1 << 20;

/// A request or its answer.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserMessage {
    /// Requests: `view`, `write_back`, `drop_cache`. Answers: `ok` or `error`.
    pub op: String,
    /// The user id (the token subject: a pseudonymous key).
    pub user: String,
    /// The user's home region.
    pub home: String,
    /// The class of what `body` carries: `pii` when it holds a personal field.
    pub class: DataClass,
    /// Names of the user fields in `body` (for the audit trail; never values).
    #[serde(default)]
    pub fields: Vec<String>,
    /// The payload.
    #[serde(default)]
    pub body: serde_json::Value,
    /// For `error` answers: what went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For `error` answers: a machine-readable code (`unknown_user`, `refused`, `failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

impl UserMessage {
    /// An `error` answer about `req`.
    pub fn error(req: &UserMessage, code: &str, message: impl Into<String>) -> UserMessage {
        UserMessage {
            op: "error".into(),
            user: req.user.clone(),
            home: req.home.clone(),
            class: DataClass::MarketData,
            fields: Vec::new(),
            body: serde_json::Value::Null,
            error: Some(message.into()),
            code: Some(code.into()),
        }
    }
}

/// What the node registers to answer user-data requests from peers. Called on a blocking
/// thread (it may touch a database).
pub trait UserRequestHandler: Send + Sync + 'static {
    /// Answers `req` from region `peer`.
    fn handle(&self, peer: &str, req: UserMessage) -> UserMessage;
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// No mesh connection to the region right now.
    #[error(
        "region {0} is not connected over the mesh (link down or not configured); retry once /v1/regions shows it up"
    )]
    NotConnected(String),
    /// The residency policy refused the message on this side or the peer's.
    #[error("refused by the residency policy: {0}")]
    Refused(String),
    /// The stream failed or the answer did not arrive in time.
    #[error("request to {region} failed: {reason}; retry later")]
    Failed {
        /// The peer.
        region: String,
        /// What happened.
        reason: String,
    },
    /// The mesh has stopped.
    #[error("the mesh has stopped")]
    Stopped,
}

/// What both ends of the channel share: who we are, the rules, the trail, the handler.
pub(crate) struct Channel {
    pub(crate) region: String,
    pub(crate) policy: Arc<dyn TransferPolicy>,
    pub(crate) audit: Arc<dyn TransferAudit>,
    pub(crate) handler: std::sync::RwLock<Option<Arc<dyn UserRequestHandler>>>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel").field("region", &self.region).finish_non_exhaustive()
    }
}

impl Channel {
    /// Asks the policy about `m` moving `from` → `to` on side `dir`, and audits the answer.
    fn check(&self, m: &UserMessage, bytes: usize, from: &str, to: &str, dir: Direction) -> Decision {
        let d = self.policy.check_user_data(m.class, &m.home, from, to, dir);
        let (decision, reason) = match &d {
            Decision::Allow => ("allow", None),
            Decision::Deny(r) => ("deny", Some(r.clone())),
        };
        self.audit.record_user_data(
            EntryKind::UserTransfer,
            UserDataRecord {
                op: m.op.clone(),
                user: user_pseudonym(&m.user),
                home: m.home.clone(),
                from: from.to_owned(),
                to: to.to_owned(),
                dir,
                class: m.class,
                fields: m.fields.clone(),
                regions: Vec::new(),
                operator: None,
                decision: decision.into(),
                reason,
                outcome: if d.is_allowed() { "sent".into() } else { "not sent".into() },
                bytes: bytes as u64,
            },
        );
        d
    }
}

fn encode(kind: u8, m: &UserMessage) -> Vec<u8> {
    // Strings, numbers and JSON values: serialization cannot fail.
    let body = serde_json::to_vec(m).unwrap_or_default();
    let mut out = Vec::with_capacity(5 + body.len());
    out.extend_from_slice(&((body.len() + 1) as u32).to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&body);
    out
}

/// Decodes one whole message of type `kind` (`bytes` holds the stream's full content).
fn decode(kind: u8, bytes: &[u8]) -> Result<UserMessage, String> {
    if bytes.len() < 5 {
        return Err("the message is shorter than its header".into());
    }
    let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    if len == 0 || len - 1 != bytes.len() - 5 {
        return Err(format!("the message says {len} bytes but the stream holds {}", bytes.len() - 4));
    }
    if bytes[4] != kind {
        return Err(format!("message type {} where {kind} belongs", bytes[4]));
    }
    serde_json::from_slice(&bytes[5..]).map_err(|e| format!("the message is not a user-data message: {e}"))
}

/// The requesting side: checks, sends `req` to `peer` on `conn`, waits for the answer.
pub(crate) async fn send_request(
    ch: Arc<Channel>,
    conn: quinn::Connection,
    peer: String,
    req: UserMessage,
    timeout: Duration,
) -> Result<UserMessage, RequestError> {
    let bytes = encode(USER_REQUEST, &req);
    if let Decision::Deny(why) = ch.check(&req, bytes.len() - 5, &ch.region, &peer, Direction::Send) {
        return Err(RequestError::Refused(why));
    }
    let failed = |reason: String| RequestError::Failed { region: peer.clone(), reason };
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| failed(format!("opening a stream: {e}")))?;
        send.write_all(&bytes).await.map_err(|e| failed(format!("sending: {e}")))?;
        let _ = send.finish();
        recv.read_to_end(MAX_USER_MESSAGE).await.map_err(|e| failed(format!("reading the answer: {e}")))
    };
    let answer = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| failed(format!("no answer within {} ms", timeout.as_millis())))??;
    let resp = decode(USER_RESPONSE, &answer).map_err(|e| failed(format!("bad answer: {e}")))?;
    if resp.user != req.user || resp.home != req.home {
        return Err(failed("the answer is about another user".into()));
    }
    if let Decision::Deny(why) = ch.check(&resp, answer.len() - 5, &peer, &ch.region, Direction::Receive) {
        return Err(RequestError::Refused(why));
    }
    if resp.op == "error" && resp.code.as_deref() == Some("refused") {
        return Err(RequestError::Refused(resp.error.unwrap_or_default()));
    }
    Ok(resp)
}

/// The answering side, for a stream whose first five bytes (`head`) name [`USER_REQUEST`].
pub(crate) async fn serve_request(
    ch: Arc<Channel>,
    peer: String,
    head: [u8; 5],
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len == 0 || len > MAX_USER_MESSAGE {
        tracing::warn!(peer = %peer, len, "user-data request of an impossible length; stream reset");
        let _ = send.reset(quinn::VarInt::from_u32(1));
        return;
    }
    let mut body = vec![0u8; len - 1];
    let read = tokio::time::timeout(Duration::from_secs(10), recv.read_exact(&mut body)).await;
    if !matches!(read, Ok(Ok(()))) {
        tracing::warn!(peer = %peer, "user-data request cut short; stream reset");
        let _ = send.reset(quinn::VarInt::from_u32(1));
        return;
    }
    let mut whole = head.to_vec();
    whole.extend_from_slice(&body);
    let answer = match decode(USER_REQUEST, &whole) {
        Err(e) => {
            tracing::warn!(peer = %peer, error = %e, "malformed user-data request");
            let blank = UserMessage {
                op: "error".into(),
                user: String::new(),
                home: String::new(),
                class: DataClass::MarketData,
                fields: Vec::new(),
                body: serde_json::Value::Null,
                error: None,
                code: None,
            };
            UserMessage::error(&blank, "failed", format!("malformed request: {e}"))
        }
        Ok(req) => match ch.check(&req, body.len(), &peer, &ch.region, Direction::Receive) {
            Decision::Deny(why) => UserMessage::error(&req, "refused", format!("{} refused it: {why}", ch.region)),
            Decision::Allow => {
                let handler = ch.handler.read().unwrap_or_else(|e| e.into_inner()).clone();
                let answer = match handler {
                    None => UserMessage::error(
                        &req,
                        "failed",
                        format!("{} has no user-data tier; add a [userdata] section there", ch.region),
                    ),
                    Some(h) => {
                        let (p, r) = (peer.clone(), req.clone());
                        match tokio::task::spawn_blocking(move || h.handle(&p, r)).await {
                            Ok(a) => a,
                            Err(e) => UserMessage::error(&req, "failed", format!("the handler failed: {e}")),
                        }
                    }
                };
                let size = encode(USER_RESPONSE, &answer).len() - 5;
                match ch.check(&answer, size, &ch.region, &peer, Direction::Send) {
                    Decision::Allow => answer,
                    Decision::Deny(why) => {
                        UserMessage::error(&req, "refused", format!("{} may not send the answer: {why}", ch.region))
                    }
                }
            }
        },
    };
    let _ = send.write_all(&encode(USER_RESPONSE, &answer)).await;
    let _ = send.finish();
    // Let the answer drain before the stream is dropped.
    let _ = tokio::time::timeout(Duration::from_secs(10), send.stopped()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_bad_ones_are_named() {
        let m = UserMessage {
            op: "view".into(),
            user: "alice".into(),
            home: "us-east-1".into(),
            class: DataClass::MarketData,
            fields: vec![],
            body: serde_json::json!({}),
            error: None,
            code: None,
        };
        let b = encode(USER_REQUEST, &m);
        assert_eq!(decode(USER_REQUEST, &b).unwrap(), m);
        assert!(decode(USER_RESPONSE, &b).unwrap_err().contains("message type"));
        assert!(decode(USER_REQUEST, &b[..b.len() - 1]).unwrap_err().contains("says"));
        let mut junk = b.clone();
        junk[5] = b'[';
        assert!(decode(USER_REQUEST, &junk).unwrap_err().contains("not a user-data message"));
    }
}

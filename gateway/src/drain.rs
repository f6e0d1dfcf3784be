//! Draining a region: refuse new connections, send every client `reconnect` naming the
//! next region, and close what is left with 1012 after a grace period.
//!
//! The plan ([`DrainPlan`]) lives in [`GatewayShared`](crate::GatewayShared); each core
//! carries it out for its own sessions from its heartbeat tick (`CoreDrain::tick`), so
//! nothing crosses threads per session and the per-record path is untouched. The decision
//! logic is a plain struct with time passed in (`CoreDrain::step`) and is tested alone.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::shared::RegionLink;

/// Default time between `reconnect` and the 1012 close.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// Why clients are being sent away: the `reason` of PROTOCOL.md's `reconnect` message.
/// Clients treat both the same (move to the named region and `resume`); the reason is for
/// their logs and dashboards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DrainReason {
    /// An operator drained the region (`tickmesh admin drain`).
    #[default]
    Drain,
    /// The process is stopping (SIGTERM, `Node::shutdown`): a rolling restart or a scale-down.
    Shutdown,
}

impl DrainReason {
    /// The protocol's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DrainReason::Drain => "drain",
            DrainReason::Shutdown => "shutdown",
        }
    }

    /// The text of the 1012 close frame.
    fn close_text(self) -> &'static str {
        match self {
            DrainReason::Drain => "region drained",
            DrainReason::Shutdown => "region shutting down",
        }
    }
}

/// A drain in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainPlan {
    /// Increases with every drain and undrain, so a core notices a new plan.
    pub generation: u64,
    /// Where clients are sent (none if this region is the only one).
    pub next: Option<RegionLink>,
    /// When the drain started.
    pub started: Instant,
    /// How long clients have to leave before 1012.
    pub grace: Duration,
    /// Drain or shutdown (the `reason` clients are told).
    pub reason: DrainReason,
}

impl DrainPlan {
    /// The `reconnect` message of PROTOCOL.md for this plan.
    pub fn reconnect_message(&self) -> Vec<u8> {
        let (region, ws_url) = match &self.next {
            Some(n) => (n.region.as_str(), n.ws_url.as_str()),
            None => ("", ""),
        };
        let reason = self.reason.as_str();
        serde_json::to_vec(&serde_json::json!({"type":"reconnect","reason":reason,"region":region,"ws_url":ws_url}))
            .unwrap_or_default()
    }
}

/// What a core must do now for its sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Send `reconnect` to these sessions.
    Reconnect(Vec<u64>),
    /// Close these sessions with 1012.
    Close(Vec<u64>),
}

/// One core's progress through the current plan.
#[derive(Debug, Default)]
pub(crate) struct CoreDrain {
    generation: u64,
    told: BTreeSet<u64>,
}

impl CoreDrain {
    /// Decides what to do for `sessions` (ids) under `plan` at `now`.
    pub(crate) fn step(&mut self, plan: Option<&DrainPlan>, sessions: &[u64], now: Instant) -> Option<Action> {
        let Some(plan) = plan else {
            self.told.clear();
            return None;
        };
        if plan.generation != self.generation {
            self.generation = plan.generation;
            self.told.clear();
        }
        self.told.retain(|id| sessions.contains(id));
        if now >= plan.started + plan.grace {
            return (!sessions.is_empty()).then(|| Action::Close(sessions.to_vec()));
        }
        let fresh: Vec<u64> = sessions.iter().copied().filter(|id| !self.told.contains(id)).collect();
        if fresh.is_empty() {
            return None;
        }
        self.told.extend(fresh.iter().copied());
        Some(Action::Reconnect(fresh))
    }

    /// Carries the shared plan out on `core`'s sessions (called from its heartbeat tick).
    pub(crate) fn tick(core: &crate::core::Core, now: Instant) {
        let plan = core.shared.drain_plan();
        let sessions = core.sessions.borrow();
        let ids: Vec<u64> = sessions.keys().copied().collect();
        let action = core.drain.borrow_mut().step(plan.as_ref(), &ids, now);
        match (action, plan) {
            (Some(Action::Reconnect(ids)), Some(plan)) => {
                let msg = plan.reconnect_message();
                for id in ids {
                    if let Some(s) = sessions.get(&id) {
                        s.state.borrow_mut().push_control(&msg);
                        s.wake.notify_one();
                    }
                }
            }
            (Some(Action::Close(ids)), plan) => {
                let text = plan.map(|p| p.reason).unwrap_or_default().close_text();
                for id in ids {
                    if let Some(s) = sessions.get(&id) {
                        s.state.borrow_mut().push_close(1012, text);
                        s.wake.notify_one();
                    }
                }
            }
            _ => {}
        }
    }
}

/// The 503 a draining region answers upgrades with: the protocol's error body plus the
/// region to use instead, and `Retry-After` for clients that only know this region.
pub(crate) fn refuse_upgrade(region: &str, plan: &DrainPlan) -> axum::response::Response {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    let doing = match plan.reason {
        DrainReason::Drain => "draining",
        DrainReason::Shutdown => "shutting down",
    };
    let message = match &plan.next {
        Some(n) => format!("region {region} is {doing}; connect to {} at {}", n.region, n.ws_url),
        None => format!("region {region} is {doing} and knows no other region; retry later"),
    };
    let mut body = serde_json::json!({"error": {"code": "draining", "message": message}});
    if let Some(n) = &plan.next {
        body["next"] = serde_json::json!({"region": n.region, "ws_url": n.ws_url});
    }
    let retry = plan.grace.as_secs().max(1).to_string();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, "application/json".to_owned()), (header::RETRY_AFTER, retry)],
        body.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(generation: u64, started: Instant) -> DrainPlan {
        DrainPlan {
            generation,
            next: Some(RegionLink { region: "eu-west-1".into(), ws_url: "ws://b/v1/ws".into() }),
            started,
            grace: Duration::from_secs(5),
            reason: DrainReason::Drain,
        }
    }

    #[test]
    fn reconnect_once_per_session_then_close_after_the_grace() {
        let t0 = Instant::now();
        let p = plan(1, t0);
        let mut d = CoreDrain::default();
        assert_eq!(d.step(None, &[1, 2], t0), None);
        assert_eq!(d.step(Some(&p), &[1, 2], t0), Some(Action::Reconnect(vec![1, 2])));
        assert_eq!(d.step(Some(&p), &[1, 2], t0 + Duration::from_secs(1)), None);
        // A session that slipped in during the drain is told too.
        assert_eq!(d.step(Some(&p), &[2, 3], t0 + Duration::from_secs(2)), Some(Action::Reconnect(vec![3])));
        assert_eq!(d.step(Some(&p), &[2, 3], t0 + Duration::from_secs(5)), Some(Action::Close(vec![2, 3])));
        assert_eq!(d.step(Some(&p), &[], t0 + Duration::from_secs(6)), None);
        // Undrain, then a new drain: everyone is told again.
        assert_eq!(d.step(None, &[4], t0 + Duration::from_secs(7)), None);
        let p2 = plan(3, t0 + Duration::from_secs(8));
        assert_eq!(d.step(Some(&p2), &[4], t0 + Duration::from_secs(8)), Some(Action::Reconnect(vec![4])));
    }

    #[test]
    fn reconnect_message_is_protocol_shaped() {
        let v: serde_json::Value = serde_json::from_slice(&plan(1, Instant::now()).reconnect_message()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"reconnect","reason":"drain","region":"eu-west-1","ws_url":"ws://b/v1/ws"})
        );
        let shutdown = DrainPlan { reason: DrainReason::Shutdown, ..plan(1, Instant::now()) };
        let v: serde_json::Value = serde_json::from_slice(&shutdown.reconnect_message()).unwrap();
        assert_eq!(v["reason"], "shutdown");
        assert_eq!(v["region"], "eu-west-1");
    }
}

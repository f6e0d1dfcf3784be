//! Spans of the gateway's control paths (subscribe, resume, catch-up) and W3C trace
//! context from clients.
//!
//! A client may put a W3C `traceparent` on `subscribe` (PROTOCOL extension, see
//! docs/tracing.md): the request's span then joins the client's trace. A client failing
//! over from region A to region B sends the same `traceparent` to both, so one trace holds
//! the spans of both regions. This crate stays free of OpenTelemetry: the node registers
//! [`set_remote_parent_hook`], which attaches the parsed context to the span when traces
//! are exported; without it the `traceparent` is only a span field in the logs.

use std::sync::OnceLock;

/// Attaches a validated `traceparent` to a span as its remote parent.
pub type RemoteParentHook = fn(&tracing::Span, &str);

static HOOK: OnceLock<RemoteParentHook> = OnceLock::new();

/// Registers the hook (once per process; later calls are ignored).
pub fn set_remote_parent_hook(hook: RemoteParentHook) {
    let _ = HOOK.set(hook);
}

/// Checks a W3C `traceparent` (`00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`,
/// ids not all zero); the error says what a valid one looks like.
pub fn validate_traceparent(tp: &str) -> Result<(), String> {
    let parts: Vec<&str> = tp.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let ok = parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1].bytes().any(|b| b != b'0')
        && parts[2].bytes().any(|b| b != b'0');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "traceparent '{}' is not a W3C traceparent; use 00-<32 lowercase hex trace id>-<16 hex parent id>-<2 hex flags>, e.g. 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            tp.chars().take(64).collect::<String>()
        ))
    }
}

/// The span of one `subscribe` request (named `gateway.resume` when it carries resume
/// positions), child of the client's `traceparent` when one was given.
pub fn subscribe_span(region: &str, session: u64, resume: usize, traceparent: Option<&str>) -> tracing::Span {
    let span = if resume > 0 {
        tracing::info_span!("gateway.resume", region, session, sources = resume, traceparent)
    } else {
        tracing::info_span!("gateway.subscribe", region, session, traceparent)
    };
    if let (Some(tp), Some(hook)) = (traceparent, HOOK.get()) {
        hook(&span, tp);
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_validation() {
        assert!(validate_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_ok());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let e = validate_traceparent(bad).unwrap_err();
            assert!(e.contains("is not a W3C traceparent"), "{e}");
        }
    }
}

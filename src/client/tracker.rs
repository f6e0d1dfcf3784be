//! The client's protocol state without I/O: positions per source, dedupe, liveness.
//!
//! The driver in [`super`] feeds it every message of the current connection together with
//! `now`, and asks it when the connection must be given up ([`Tracker::deadline`]). Tests
//! drive it directly with made-up messages and instants.

use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{ClientError, Event, Gap, Kind, Record, Stats};

/// Heartbeat interval assumed until a `hello` says otherwise (the server default).
pub(crate) const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(1000);
/// Missed heartbeats after which a silent connection counts as lost (PROTOCOL.md).
pub(crate) const MISSED_HEARTBEATS: u32 = 3;

/// What a control message asks the driver to do.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Control {
    /// Nothing: keep reading.
    None,
    /// The server's `hello`.
    Hello(Hello),
    /// `subscribed` with this id.
    Subscribed(Option<Value>),
    /// `error` reply.
    Error { id: Option<Value>, code: String, message: String },
    /// The server asks the client to move (`reconnect`).
    Reconnect { region: String, ws_url: String, reason: String },
}

/// The parts of `hello` the client uses.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Hello {
    pub(crate) region: String,
    pub(crate) session: String,
    pub(crate) heartbeat: Duration,
    pub(crate) regions: Vec<super::RegionLink>,
}

/// Positions, dedupe and liveness of one logical stream across connections.
#[derive(Debug)]
pub(crate) struct Tracker {
    /// Last `seq` per source that the application has been handed, or that a heartbeat
    /// after the subscription proved complete.
    positions: BTreeMap<String, u64>,
    heartbeat: Duration,
    last_rx: Instant,
    /// Heartbeats are trusted for positions only once the subscription is acknowledged on
    /// this connection: before it, they report the core's position, not what we were sent.
    subscribed: bool,
    region: Arc<str>,
    pub(crate) stats: Stats,
}

impl Tracker {
    pub(crate) fn new(now: Instant, resume: BTreeMap<String, u64>) -> Self {
        Tracker {
            positions: resume,
            heartbeat: DEFAULT_HEARTBEAT,
            last_rx: now,
            subscribed: false,
            region: Arc::from(""),
            stats: Stats::default(),
        }
    }

    /// A new connection to `region` starts now: liveness restarts, heartbeats are not
    /// trusted until the subscription is acknowledged.
    pub(crate) fn on_connect(&mut self, now: Instant, region: &str) {
        self.last_rx = now;
        self.subscribed = false;
        self.region = Arc::from(region);
    }

    /// The subscription of the current connection is acknowledged.
    pub(crate) fn on_subscribed(&mut self) {
        self.subscribed = true;
    }

    /// When the current connection counts as lost if nothing arrives before.
    pub(crate) fn deadline(&self) -> Instant {
        self.last_rx + self.heartbeat * MISSED_HEARTBEATS
    }

    /// How long a connection may stay silent.
    pub(crate) fn silence_limit(&self) -> Duration {
        self.heartbeat * MISSED_HEARTBEATS
    }

    /// The `resume` map for the next subscription.
    pub(crate) fn positions(&self) -> &BTreeMap<String, u64> {
        &self.positions
    }

    /// Handles one text frame (one message, or several lines with `batch=1`).
    pub(crate) fn on_text(
        &mut self,
        now: Instant,
        text: &str,
        out: &mut VecDeque<Event>,
    ) -> Result<Vec<Control>, ClientError> {
        self.last_rx = now;
        let mut controls = Vec::new();
        for line in text.split('\n').filter(|l| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line).map_err(|e| {
                ClientError::Protocol(format!("server sent a message that is not JSON ({e}): {line:.200}"))
            })?;
            let c = self.on_message(v, out)?;
            if c != Control::None {
                controls.push(c);
            }
        }
        Ok(controls)
    }

    /// Handles one binary frame: length-prefixed codec records.
    pub(crate) fn on_binary(
        &mut self,
        now: Instant,
        bytes: &[u8],
        out: &mut VecDeque<Event>,
    ) -> Result<(), ClientError> {
        self.last_rx = now;
        let mut json = Vec::with_capacity(256);
        for rec in tickmesh_codec::frame::Frames::new(bytes) {
            let rec = rec.map_err(|e| ClientError::Protocol(format!("server sent a bad binary record: {e}")))?;
            json.clear();
            tickmesh_codec::json::write_json(&rec, &mut json);
            let msg: Value = serde_json::from_slice(&json)
                .map_err(|e| ClientError::Protocol(format!("rendering a binary record as JSON failed: {e}")))?;
            self.deliver(rec.src().to_owned(), rec.seq(), msg, out);
        }
        Ok(())
    }

    /// Any frame (ping, pong) proves the connection alive.
    pub(crate) fn on_activity(&mut self, now: Instant) {
        self.last_rx = now;
    }

    fn on_message(&mut self, v: Value, out: &mut VecDeque<Event>) -> Result<Control, ClientError> {
        let ty = v.get("type").and_then(Value::as_str).unwrap_or("");
        match ty {
            "hello" => {
                let hb = v.get("heartbeat_ms").and_then(Value::as_u64).unwrap_or(1000).max(1);
                self.heartbeat = Duration::from_millis(hb);
                let regions = v
                    .get("regions")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|r| {
                                Some(super::RegionLink {
                                    region: r.get("region")?.as_str()?.to_owned(),
                                    ws_url: r.get("ws_url")?.as_str()?.to_owned(),
                                })
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let region = str_field(&v, "region");
                if !region.is_empty() {
                    self.region = Arc::from(region.as_str());
                }
                Ok(Control::Hello(Hello {
                    region,
                    session: str_field(&v, "session"),
                    heartbeat: self.heartbeat,
                    regions,
                }))
            }
            "heartbeat" => {
                self.stats.heartbeats += 1;
                if self.subscribed {
                    if let Some(p) = v.get("positions").and_then(Value::as_object) {
                        for (src, seq) in p {
                            if let Some(seq) = seq.as_u64() {
                                let e = self.positions.entry(src.clone()).or_insert(0);
                                *e = (*e).max(seq);
                            }
                        }
                    }
                }
                Ok(Control::None)
            }
            "subscribed" => Ok(Control::Subscribed(v.get("id").cloned())),
            "unsubscribed" | "pong" => Ok(Control::None),
            "error" => Ok(Control::Error {
                id: v.get("id").cloned(),
                code: str_field(&v, "code"),
                message: str_field(&v, "message"),
            }),
            "reconnect" => Ok(Control::Reconnect {
                region: str_field(&v, "region"),
                ws_url: str_field(&v, "ws_url"),
                reason: str_field(&v, "reason"),
            }),
            "gap" => {
                self.stats.gaps += 1;
                out.push_back(Event::Gap(Gap {
                    src: str_field(&v, "src"),
                    from: v.get("from").and_then(Value::as_u64).unwrap_or(0),
                    to: v.get("to").and_then(Value::as_u64).unwrap_or(0),
                    reason: str_field(&v, "reason"),
                }));
                Ok(Control::None)
            }
            "book_snapshot" => {
                // State, not a record: its seq may equal one already delivered, so it is
                // neither deduplicated nor allowed to move the position.
                let src = str_field(&v, "src");
                let seq = v.get("seq").and_then(Value::as_u64).unwrap_or(0);
                out.push_back(Event::Snapshot(Record {
                    src,
                    seq,
                    kind: Kind::BookSnapshot,
                    region: self.region.clone(),
                    msg: v,
                }));
                Ok(Control::None)
            }
            _ => {
                let (Some(src), Some(seq)) =
                    (v.get("src").and_then(Value::as_str), v.get("seq").and_then(Value::as_u64))
                else {
                    // A message type from a newer server: ignore rather than fail.
                    return Ok(Control::None);
                };
                let src = src.to_owned();
                self.deliver(src, seq, v, out);
                Ok(Control::None)
            }
        }
    }

    /// Hands a data record to the application unless it is at or below the position.
    fn deliver(&mut self, src: String, seq: u64, msg: Value, out: &mut VecDeque<Event>) {
        match self.positions.get_mut(&src) {
            Some(p) if seq <= *p => {
                self.stats.duplicates_dropped += 1;
                return;
            }
            Some(p) => *p = seq,
            None => {
                self.positions.insert(src.clone(), seq);
            }
        }
        self.stats.records += 1;
        let kind = Kind::from_type(msg.get("type").and_then(Value::as_str).unwrap_or(""));
        out.push_back(Event::Record(Record { src, seq, kind, region: self.region.clone(), msg }));
    }
}

fn str_field(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or("").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trade(src: &str, seq: u64) -> String {
        format!(
            r#"{{"type":"trade","src":"{src}","seq":{seq},"sym":"AAPL","ts":1,"ts_ingest":2,"px":"1.5","qty":"2","side":"buy"}}"#
        )
    }

    fn records(out: &mut VecDeque<Event>) -> Vec<(String, u64)> {
        out.drain(..)
            .filter_map(|e| match e {
                Event::Record(r) => Some((r.src, r.seq)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn records_at_or_below_the_position_are_dropped_and_counted() {
        let now = Instant::now();
        let mut t = Tracker::new(now, BTreeMap::new());
        let mut out = VecDeque::new();
        for seq in [5, 6, 6, 4, 9] {
            t.on_text(now, &trade("A", seq), &mut out).unwrap();
        }
        t.on_text(now, &trade("B", 1), &mut out).unwrap();
        assert_eq!(records(&mut out), vec![("A".into(), 5), ("A".into(), 6), ("A".into(), 9), ("B".into(), 1)]);
        assert_eq!(t.stats.duplicates_dropped, 2);
        assert_eq!(t.positions().get("A"), Some(&9));
    }

    #[test]
    fn heartbeats_move_positions_only_after_the_subscription() {
        let now = Instant::now();
        let mut t = Tracker::new(now, BTreeMap::from([("A".to_owned(), 3)]));
        let mut out = VecDeque::new();
        t.on_connect(now, "r1");
        let hb = r#"{"type":"heartbeat","ts":1,"positions":{"A":10,"B":7}}"#;
        t.on_text(now, hb, &mut out).unwrap();
        assert_eq!(t.positions().get("A"), Some(&3), "pre-subscription heartbeat must not count");
        t.on_subscribed();
        t.on_text(now, hb, &mut out).unwrap();
        assert_eq!(t.positions().get("A"), Some(&10));
        assert_eq!(t.positions().get("B"), Some(&7));
        t.on_text(now, &trade("A", 10), &mut out).unwrap();
        assert!(records(&mut out).is_empty());
        assert_eq!(t.stats.duplicates_dropped, 1);
    }

    #[test]
    fn silence_for_three_heartbeats_is_the_deadline() {
        let now = Instant::now();
        let mut t = Tracker::new(now, BTreeMap::new());
        let mut out = VecDeque::new();
        let hello = r#"{"type":"hello","protocol":1,"region":"r1","session":"s","heartbeat_ms":200,"regions":[{"region":"r1","ws_url":"ws://a"},{"region":"r2","ws_url":"ws://b"}]}"#;
        let c = t.on_text(now, hello, &mut out).unwrap();
        match &c[0] {
            Control::Hello(h) => {
                assert_eq!(h.regions.len(), 2);
                assert_eq!(h.regions[1].ws_url, "ws://b");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(t.deadline(), now + Duration::from_millis(600));
        let later = now + Duration::from_millis(500);
        t.on_text(later, r#"{"type":"heartbeat","ts":1,"positions":{}}"#, &mut out).unwrap();
        assert_eq!(t.deadline(), later + Duration::from_millis(600));
    }

    #[test]
    fn batch_lines_snapshots_gaps_and_reconnect() {
        let now = Instant::now();
        let mut t = Tracker::new(now, BTreeMap::new());
        let mut out = VecDeque::new();
        let text = format!(
            "{}\n{}\n{}\n{}",
            trade("A", 1),
            r#"{"type":"book_snapshot","src":"A","seq":1,"sym":"AAPL","ts":1,"bids":[],"asks":[]}"#,
            r#"{"type":"gap","src":"A","from":2,"to":4,"reason":"slow_consumer"}"#,
            r#"{"type":"reconnect","reason":"drain","region":"r2","ws_url":"ws://b/v1/ws"}"#
        );
        let c = t.on_text(now, &text, &mut out).unwrap();
        assert_eq!(
            c,
            vec![Control::Reconnect { region: "r2".into(), ws_url: "ws://b/v1/ws".into(), reason: "drain".into() }]
        );
        let evs: Vec<Event> = out.drain(..).collect();
        assert!(matches!(&evs[0], Event::Record(r) if r.seq == 1 && r.kind == Kind::Trade));
        assert!(matches!(&evs[1], Event::Snapshot(r) if r.seq == 1), "a snapshot at a delivered seq still arrives");
        assert!(matches!(&evs[2], Event::Gap(g) if g.from == 2 && g.to == 4));
        assert!(t.on_text(now, "not json", &mut out).is_err());
    }

    #[test]
    fn binary_frames_decode_and_dedupe() {
        use tickmesh_codec::{frame, testing, Side};
        let now = Instant::now();
        let mut t = Tracker::new(now, BTreeMap::new());
        let mut out = VecDeque::new();
        let mut buf = Vec::new();
        for seq in [1, 2, 2] {
            frame::put_frame(&testing::trade(seq, "AAPL", "320.14", "100", Side::Buy).to_bytes(), &mut buf);
        }
        t.on_binary(now, &buf, &mut out).unwrap();
        let evs: Vec<Event> = out.drain(..).collect();
        assert_eq!(evs.len(), 2);
        match &evs[0] {
            Event::Record(r) => {
                assert_eq!(r.kind, Kind::Trade);
                assert_eq!(r.msg["px"], "320.14");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(t.stats.duplicates_dropped, 1);
        assert!(t.on_binary(now, &[1, 0, 0, 0, 9], &mut out).is_err());
    }
}

//! Client requests and server replies of PROTOCOL.md, without I/O.
//!
//! Requests are parsed into a `serde_json::Value` first and checked field by field, so
//! every malformed request gets a message naming the field and the allowed values.

use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

use crate::config::SlowPolicy;
use crate::error::ClientError;

/// The data channels of the protocol.
pub const CHANNELS: [&str; 5] = ["trades", "quotes", "book", "status", "orders"];
/// What `"*"` expands to (every public channel; never `orders`).
pub const PUBLIC_CHANNELS: [&str; 4] = ["trades", "quotes", "book", "status"];

/// A parsed request.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `subscribe`.
    Subscribe(Subscribe),
    /// `unsubscribe`.
    Unsubscribe {
        /// Echoed id.
        id: Option<Value>,
        /// Channels as sent.
        channels: Value,
        /// Symbols as sent.
        symbols: Value,
        /// Expanded channels.
        channel_list: Vec<&'static str>,
        /// Symbols or patterns.
        symbol_list: Vec<String>,
    },
    /// `ping`.
    Ping {
        /// Echoed id.
        id: Option<Value>,
    },
}

/// A `subscribe` request.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscribe {
    /// Echoed id.
    pub id: Option<Value>,
    /// Channels as sent (echoed).
    pub channels: Value,
    /// Symbols as sent (echoed).
    pub symbols: Value,
    /// Expanded channel list.
    pub channel_list: Vec<&'static str>,
    /// Symbols or patterns.
    pub symbol_list: Vec<String>,
    /// Book depth (default 10, at most 1000).
    pub depth: u32,
    /// Resume positions: source id to last processed `seq`.
    pub resume: BTreeMap<String, u64>,
    /// Slow-consumer policy, if given.
    pub slow: Option<SlowPolicy>,
    /// W3C trace context the request's span joins (docs/tracing.md), if given.
    pub traceparent: Option<String>,
}

/// A request that cannot be served: reply with `error`.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The id, if one could be read.
    pub id: Option<Value>,
    /// The code.
    pub code: ClientError,
    /// What to do about it.
    pub message: String,
}

impl Refusal {
    fn new(id: &Option<Value>, code: ClientError, message: impl Into<String>) -> Self {
        Refusal { id: id.clone(), code, message: message.into() }
    }
}

/// Parses one client text message.
pub fn parse_request(text: &str) -> Result<Request, Refusal> {
    let v: Value = serde_json::from_str(text).map_err(|e| Refusal {
        id: None,
        code: ClientError::BadRequest,
        message: format!(
            "message is not valid JSON ({e}); send one JSON object per message, e.g. {{\"op\":\"ping\",\"id\":1}}"
        ),
    })?;
    let Value::Object(obj) = v else {
        return Err(Refusal {
            id: None,
            code: ClientError::BadRequest,
            message: "message must be a JSON object with an \"op\" field".into(),
        });
    };
    let id = obj.get("id").cloned();
    let op = match obj.get("op") {
        Some(Value::String(op)) => op.as_str(),
        Some(_) => {
            return Err(Refusal::new(
                &id,
                ClientError::BadRequest,
                "\"op\" must be a string: subscribe, unsubscribe or ping",
            ))
        }
        None => {
            return Err(Refusal::new(
                &id,
                ClientError::BadRequest,
                "message has no \"op\"; use subscribe, unsubscribe or ping",
            ))
        }
    };
    match op {
        "ping" => Ok(Request::Ping { id }),
        "subscribe" | "unsubscribe" => {
            let channels = obj.get("channels").cloned().unwrap_or(Value::Null);
            let symbols = obj.get("symbols").cloned().unwrap_or(Value::Null);
            let channel_list = parse_channels(&id, &channels)?;
            let symbol_list = parse_symbols(&id, &symbols)?;
            if op == "unsubscribe" {
                return Ok(Request::Unsubscribe { id, channels, symbols, channel_list, symbol_list });
            }
            let depth = match obj.get("depth") {
                None | Some(Value::Null) => 10,
                Some(Value::Number(n)) => match n.as_u64() {
                    Some(d @ 1..=1000) => d as u32,
                    _ => {
                        return Err(Refusal::new(
                            &id,
                            ClientError::BadRequest,
                            format!("depth {n} is out of range; use 1 to 1000 (default 10)"),
                        ))
                    }
                },
                Some(_) => {
                    return Err(Refusal::new(&id, ClientError::BadRequest, "depth must be a number from 1 to 1000"))
                }
            };
            let mut resume = BTreeMap::new();
            match obj.get("resume") {
                None | Some(Value::Null) => {}
                Some(Value::Object(m)) => {
                    for (src, seq) in m {
                        let Some(seq) = seq.as_u64() else {
                            return Err(Refusal::new(
                                &id,
                                ClientError::BadRequest,
                                format!(
                                    "resume[\"{}\"] must be the last seq you processed, a non-negative integer",
                                    src.chars().take(40).collect::<String>()
                                ),
                            ));
                        };
                        resume.insert(src.clone(), seq);
                    }
                }
                Some(_) => {
                    return Err(Refusal::new(
                        &id,
                        ClientError::BadRequest,
                        "resume must be an object of source id to last processed seq",
                    ))
                }
            }
            let slow = match obj.get("slow") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => match SlowPolicy::parse(s) {
                    Some(p) => Some(p),
                    None => {
                        return Err(Refusal::new(
                            &id,
                            ClientError::BadRequest,
                            format!(
                                "slow policy '{}' does not exist; use one of conflate, drop, disconnect",
                                s.chars().take(40).collect::<String>()
                            ),
                        ))
                    }
                },
                Some(_) => {
                    return Err(Refusal::new(
                        &id,
                        ClientError::BadRequest,
                        "slow must be one of conflate, drop, disconnect",
                    ))
                }
            };
            let traceparent =
                match obj.get("traceparent") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(tp)) => {
                        crate::trace::validate_traceparent(tp)
                            .map_err(|m| Refusal::new(&id, ClientError::BadRequest, m))?;
                        Some(tp.clone())
                    }
                    Some(_) => return Err(Refusal::new(
                        &id,
                        ClientError::BadRequest,
                        "traceparent must be a string such as 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                    )),
                };
            Ok(Request::Subscribe(Subscribe {
                id,
                channels,
                symbols,
                channel_list,
                symbol_list,
                depth,
                resume,
                slow,
                traceparent,
            }))
        }
        other => Err(Refusal::new(
            &id,
            ClientError::UnknownOp,
            format!(
                "op '{}' does not exist; use one of subscribe, unsubscribe, ping",
                other.chars().take(40).collect::<String>()
            ),
        )),
    }
}

fn parse_channels(id: &Option<Value>, v: &Value) -> Result<Vec<&'static str>, Refusal> {
    let list: Vec<&str> = match v {
        Value::String(s) if s == "*" => return Ok(PUBLIC_CHANNELS.to_vec()),
        Value::Array(a) if !a.is_empty() => {
            let mut out = Vec::with_capacity(a.len());
            for c in a {
                match c.as_str() {
                    Some(s) => out.push(s),
                    None => {
                        return Err(Refusal::new(
                            id,
                            ClientError::BadRequest,
                            "channels must be a list of strings or \"*\"",
                        ))
                    }
                }
            }
            out
        }
        _ => {
            return Err(Refusal::new(
                id,
                ClientError::BadRequest,
                "channels must be a non-empty list such as [\"trades\",\"quotes\"] or \"*\"",
            ))
        }
    };
    let mut out = Vec::with_capacity(list.len());
    for c in list {
        if c == "*" {
            out.extend(PUBLIC_CHANNELS);
            continue;
        }
        match CHANNELS.iter().find(|k| **k == c) {
            Some(k) => out.push(*k),
            None => {
                return Err(Refusal::new(
                    id,
                    ClientError::UnknownChannel,
                    format!(
                        "channel '{}' does not exist; use one of trades, quotes, book, status, orders",
                        c.chars().take(40).collect::<String>()
                    ),
                ))
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn parse_symbols(id: &Option<Value>, v: &Value) -> Result<Vec<String>, Refusal> {
    match v {
        Value::String(s) if s == "*" => Ok(vec!["*".into()]),
        Value::Array(a) if !a.is_empty() => {
            let mut out = Vec::with_capacity(a.len());
            for s in a {
                match s.as_str() {
                    Some(s) if !s.is_empty() && s.len() <= 32 => out.push(s.to_owned()),
                    _ => {
                        return Err(Refusal::new(
                            id,
                            ClientError::BadRequest,
                            "symbols must be a list of symbols (1 to 32 characters) or prefix patterns like \"BTC-*\", or \"*\"",
                        ))
                    }
                }
            }
            Ok(out)
        }
        _ => Err(Refusal::new(
            id,
            ClientError::BadRequest,
            "symbols must be a non-empty list such as [\"AAPL\",\"BTC-*\"] or \"*\"",
        )),
    }
}

/// True for `"*"` and prefix patterns like `"BTC-*"`.
pub fn is_pattern(s: &str) -> bool {
    s.ends_with('*')
}

/// The symbols of one channel a connection is subscribed to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SymbolSet {
    all: bool,
    exact: BTreeSet<String>,
    prefixes: BTreeSet<String>,
}

impl SymbolSet {
    /// Adds a symbol or pattern.
    pub fn add(&mut self, s: &str) {
        if s == "*" {
            self.all = true;
        } else if let Some(p) = s.strip_suffix('*') {
            self.prefixes.insert(p.to_owned());
        } else {
            self.exact.insert(s.to_owned());
        }
    }
    /// Removes a symbol or pattern (`"*"` removes everything).
    pub fn remove(&mut self, s: &str) {
        if s == "*" {
            *self = SymbolSet::default();
        } else if let Some(p) = s.strip_suffix('*') {
            self.prefixes.remove(p);
        } else {
            self.exact.remove(s);
        }
    }
    /// True if `sym` is covered.
    pub fn matches(&self, sym: &str) -> bool {
        self.all || self.exact.contains(sym) || self.prefixes.iter().any(|p| sym.starts_with(p.as_str()))
    }
    /// Entries held (for the subscription limit).
    pub fn len(&self) -> usize {
        usize::from(self.all) + self.exact.len() + self.prefixes.len()
    }
    /// Every entry: `"*"` as the empty prefix, patterns as their prefix, exact symbols.
    /// The gateway's subscriber index is built from these.
    pub fn entries(&self) -> impl Iterator<Item = SymbolEntry<'_>> + '_ {
        let all = self.all.then_some(SymbolEntry::Prefix(""));
        all.into_iter()
            .chain(self.prefixes.iter().map(|p| SymbolEntry::Prefix(p.as_str())))
            .chain(self.exact.iter().map(|e| SymbolEntry::Exact(e.as_str())))
    }
    /// True when nothing is subscribed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One entry of a [`SymbolSet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SymbolEntry<'a> {
    /// Symbols starting with this prefix (`""` for `"*"`).
    Prefix(&'a str),
    /// Exactly this symbol.
    Exact(&'a str),
}

/// All subscriptions of a connection, per channel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscriptions {
    by_channel: BTreeMap<&'static str, SymbolSet>,
}

impl Subscriptions {
    /// Adds the cross product of `channels` and `symbols`.
    pub fn add(&mut self, channels: &[&'static str], symbols: &[String]) {
        for c in channels {
            let set = self.by_channel.entry(c).or_default();
            for s in symbols {
                set.add(s);
            }
        }
    }
    /// Removes the cross product.
    pub fn remove(&mut self, channels: &[&'static str], symbols: &[String]) {
        for c in channels {
            if let Some(set) = self.by_channel.get_mut(c) {
                for s in symbols {
                    set.remove(s);
                }
                if set.is_empty() {
                    self.by_channel.remove(c);
                }
            }
        }
    }
    /// Entries held across channels.
    pub fn len(&self) -> usize {
        self.by_channel.values().map(SymbolSet::len).sum()
    }
    /// True when nothing is subscribed.
    pub fn is_empty(&self) -> bool {
        self.by_channel.is_empty()
    }
    /// Entries that adding the cross product would hold.
    pub fn len_after_add(&self, channels: &[&'static str], symbols: &[String]) -> usize {
        let mut c = self.clone();
        c.add(channels, symbols);
        c.len()
    }
    /// Each subscribed channel and its symbols.
    pub fn channels(&self) -> impl Iterator<Item = (&'static str, &SymbolSet)> + '_ {
        self.by_channel.iter().map(|(c, s)| (*c, s))
    }
    /// True if `sym` is subscribed on any channel.
    pub fn matches_any(&self, sym: &str) -> bool {
        self.by_channel.values().any(|s| s.matches(sym))
    }

    /// True if a record of `channel` and `sym` is subscribed.
    pub fn matches(&self, channel: &str, sym: &str) -> bool {
        self.by_channel.get(channel).is_some_and(|s| s.matches(sym))
    }
}

/// `{"type":"subscribed",...}` / `unsubscribed`.
pub fn ack(kind: &str, id: &Option<Value>, channels: &Value, symbols: &Value) -> Vec<u8> {
    let mut m = serde_json::Map::new();
    m.insert("type".into(), Value::String(kind.into()));
    if let Some(id) = id {
        m.insert("id".into(), id.clone());
    }
    m.insert("channels".into(), channels.clone());
    m.insert("symbols".into(), symbols.clone());
    serde_json::to_vec(&Value::Object(m)).unwrap_or_default()
}

/// `{"type":"error",...}`; no `id` key when none could be read.
pub fn error_reply(id: &Option<Value>, code: ClientError, message: &str) -> Vec<u8> {
    let mut m = serde_json::Map::new();
    m.insert("type".into(), Value::String("error".into()));
    if let Some(id) = id {
        m.insert("id".into(), id.clone());
    }
    m.insert("code".into(), Value::String(code.code().into()));
    m.insert("message".into(), Value::String(message.into()));
    serde_json::to_vec(&Value::Object(m)).unwrap_or_default()
}

/// `{"type":"pong",...}`.
pub fn pong(id: &Option<Value>, ts: u64) -> Vec<u8> {
    let mut m = serde_json::Map::new();
    m.insert("type".into(), Value::String("pong".into()));
    if let Some(id) = id {
        m.insert("id".into(), id.clone());
    }
    m.insert("ts".into(), json!(ts));
    serde_json::to_vec(&Value::Object(m)).unwrap_or_default()
}

/// `{"type":"heartbeat","ts":…,"positions":{…}}`.
pub fn heartbeat<'a>(ts: u64, positions: impl Iterator<Item = (&'a str, u64)>) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"{\"type\":\"heartbeat\",\"ts\":");
    out.extend_from_slice(itoa::Buffer::new().format(ts).as_bytes());
    out.extend_from_slice(b",\"positions\":{");
    let mut first = true;
    for (src, seq) in positions {
        if !first {
            out.push(b',');
        }
        first = false;
        tickmesh_codec::json::write_str(src, &mut out);
        out.push(b':');
        out.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
    }
    out.extend_from_slice(b"}}");
    out
}

/// `{"type":"gap",...,"reason":"venue_gap","sym":…}`: the venue's own feed skipped for
/// `sym`; `from` = `to` = the `seq` of the status record that marks it.
pub fn venue_gap(src: &str, sym: &str, seq: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({"type":"gap","src":src,"from":seq,"to":seq,"reason":"venue_gap","sym":sym}))
        .unwrap_or_default()
}

/// `{"type":"gap",...}`.
pub fn gap(src: &str, from: u64, to: u64, reason: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"type":"gap","src":src,"from":from,"to":to,"reason":reason})).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_examples_parse() {
        let r = parse_request(
            r#"{"op":"subscribe","id":1,"channels":["trades","quotes","book"],"symbols":["AAPL","BTC-USD"],"depth":10,"resume":{"XNAS.ITCH":48211},"slow":"conflate"}"#,
        )
        .unwrap();
        let Request::Subscribe(s) = r else { panic!("not a subscribe") };
        assert_eq!(s.channel_list, vec!["book", "quotes", "trades"]);
        assert_eq!(s.resume.get("XNAS.ITCH"), Some(&48211));
        assert_eq!(s.slow, Some(SlowPolicy::Conflate));
        assert!(matches!(parse_request(r#"{"op":"ping","id":3}"#), Ok(Request::Ping { .. })));
        assert!(matches!(
            parse_request(r#"{"op":"unsubscribe","id":2,"channels":["book"],"symbols":["AAPL"]}"#),
            Ok(Request::Unsubscribe { .. })
        ));
    }

    #[test]
    fn refusals_carry_codes_and_ids() {
        let e = parse_request("not json").unwrap_err();
        assert_eq!((e.code, e.id), (ClientError::BadRequest, None));
        let e = parse_request(r#"{"id":4}"#).unwrap_err();
        assert_eq!((e.code, e.id), (ClientError::BadRequest, Some(json!(4))));
        let e = parse_request(r#"{"op":"fly","id":5}"#).unwrap_err();
        assert_eq!(e.code, ClientError::UnknownOp);
        let e = parse_request(r#"{"op":"subscribe","id":1,"channels":["tradez"],"symbols":["AAPL"]}"#).unwrap_err();
        assert_eq!(e.code, ClientError::UnknownChannel);
        assert_eq!(e.message, "channel 'tradez' does not exist; use one of trades, quotes, book, status, orders");
        let e = parse_request(r#"{"op":"subscribe","id":1,"channels":"*","symbols":"*","depth":5000}"#).unwrap_err();
        assert_eq!(e.code, ClientError::BadRequest);
    }

    #[test]
    fn star_never_includes_orders() {
        let Ok(Request::Subscribe(s)) = parse_request(r#"{"op":"subscribe","channels":"*","symbols":"*"}"#) else {
            panic!()
        };
        assert!(!s.channel_list.contains(&"orders"));
        let Ok(Request::Subscribe(s)) = parse_request(r#"{"op":"subscribe","channels":["*","orders"],"symbols":"*"}"#)
        else {
            panic!()
        };
        assert!(s.channel_list.contains(&"orders"));
    }

    #[test]
    fn subscriptions_match_symbols_and_patterns() {
        let mut subs = Subscriptions::default();
        subs.add(&["trades"], &["AAPL".into(), "BTC-*".into()]);
        assert!(subs.matches("trades", "AAPL"));
        assert!(subs.matches("trades", "BTC-USD"));
        assert!(!subs.matches("trades", "ETH-USD"));
        assert!(!subs.matches("quotes", "AAPL"));
        subs.remove(&["trades"], &["BTC-*".into()]);
        assert!(!subs.matches("trades", "BTC-USD"));
        subs.add(&["quotes"], &["*".into()]);
        assert!(subs.matches("quotes", "ANY"));
        assert_eq!(subs.len(), 2);
        subs.remove(&["trades", "quotes"], &["*".into()]);
        assert!(subs.is_empty());
    }

    #[test]
    fn heartbeat_shape() {
        let hb = heartbeat(7, [("A", 1u64), ("B", 2)].into_iter());
        let v: Value = serde_json::from_slice(&hb).unwrap();
        assert_eq!(v, json!({"type":"heartbeat","ts":7,"positions":{"A":1,"B":2}}));
    }
}

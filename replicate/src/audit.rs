//! [`AuditLog`]: the hash-chained, append-only trail of cross-region transfers, user-data
//! messages between regions and erasures.
//!
//! # Kinds of entry
//! One chain holds every kind ([`EntryKind`]):
//! ```text
//! transfer       {"index","time_ns","src","first_seq","last_seq","count","bytes","from","to",
//!                 "class","dir","decision"[,"reason"],"prev_hash","hash"}       (no "kind")
//! user_transfer  {"index","time_ns","kind":"user_transfer","event":{UserDataRecord},"prev_hash","hash"}
//! erasure        {"index","time_ns","kind":"erasure","event":{UserDataRecord},"prev_hash","hash"}
//! ```
//! Transfers keep the format they had before kinds existed (a line without `kind` is a
//! transfer), so logs written by older nodes verify unchanged and continue. User-data
//! entries name the user only by [`user_pseudonym`].
//!
//! # On disk
//! ```text
//! <state_dir>/audit/audit.jsonl   one JSON object a line (an AuditEntry), index 0, 1, 2, ...
//! <state_dir>/audit/head          {"index":N,"hash":"..."}: the newest entry written and fsynced
//! ```
//!
//! # The chain
//! Each entry carries `prev_hash` (the previous entry's `hash`; 64 zeros for index 0) and
//! `hash = SHA-256(prev_hash as 32 raw bytes || canonical bytes)`, where the canonical bytes
//! are the entry's line (above) as compact JSON without the `hash` field, fields in the
//! order shown. Like a transparency log, an entry commits to every entry before it: an
//! edited entry no longer matches its hash, a removed, inserted or moved one breaks the
//! `index` sequence or the `prev_hash` link. The `head` file anchors the newest hash, so
//! cutting entries off the tail (which leaves a valid shorter chain) is detected too.
//! Someone who can rewrite both files can forge a whole new chain; to guard against that,
//! copy the head elsewhere (`GET /v1/audit` returns it with every answer, and backups keep it).
//!
//! # Threads, back-pressure, durability
//! [`TransferAudit::record`] stamps the time and hands the transfer to the `audit-writer`
//! thread over a bounded channel (65,536 entries), so the mesh thread never waits for the
//! disk. Losing an audit entry is not acceptable, so when the channel is full `record`
//! counts it (`tickmesh_audit_backpressure_total`) and **blocks** until the writer makes
//! room: a stuck disk slows replication down instead of letting transfers go unrecorded.
//! The writer takes whatever is queued (up to 4,096 entries), appends the lines, fsyncs the
//! file once (fdatasync), then replaces `head` atomically (write, fsync, rename). So after
//! a crash the log holds at least what `head` names; an entry is durable within one batch
//! of being recorded. A failed write is rolled back to the last good length and retried
//! every second (entries wait in the channel meanwhile). Rotation is not done: at the
//! mesh's aggregation (one entry per peer and source per second) a year is a few GB.

use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::transfer::{DataClass, Decision, Direction, Transfer, TransferAudit};

/// File name of the log inside the audit directory.
pub const LOG_FILE: &str = "audit.jsonl";
/// File name of the head anchor inside the audit directory.
pub const HEAD_FILE: &str = "head";
/// `prev_hash` of entry 0.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const CHANNEL: usize = 65_536;
const BATCH: usize = 4_096;

/// What an entry records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// Records of a source moved (or were refused) between regions: the mesh's entries.
    /// Lines without a `kind` field (every line written before kinds existed) are transfers.
    #[default]
    Transfer,
    /// A user-data message crossed a region boundary over the mesh (a view request and its
    /// answer, a write-back, a cache drop): what it carried, between which regions, and
    /// the residency decision.
    UserTransfer,
    /// A user's personal data was erased (`forget`): at home, or a cached view elsewhere.
    Erasure,
}

impl EntryKind {
    /// The kind's name as written in the log and accepted by filters.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Transfer => "transfer",
            EntryKind::UserTransfer => "user_transfer",
            EntryKind::Erasure => "erasure",
        }
    }

    fn is_transfer(&self) -> bool {
        *self == EntryKind::Transfer
    }
}

/// A user-data event (kinds [`EntryKind::UserTransfer`] and [`EntryKind::Erasure`]).
///
/// The user is named only by a pseudonym ([`user_pseudonym`]): the audit trail of every
/// region may hold it, and it must not become a way to keep a forgotten user's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserDataRecord {
    /// What happened: `view_request`, `view`, `write_back`, `drop_cache` (transfers);
    /// `forget`, `forget_cached` (erasures).
    pub op: String,
    /// The user's pseudonym ([`user_pseudonym`]), never the id or a personal field.
    pub user: String,
    /// The user's home region.
    pub home: String,
    /// Region the data (or the erasure request) came from.
    pub from: String,
    /// Region it went to (for an erasure: the region where data was erased).
    pub to: String,
    /// Which side wrote this entry.
    pub dir: Direction,
    /// `pii` when the message carried personal fields, `market_data` for the PII-free view
    /// and for messages that carry no user fields at all.
    pub class: DataClass,
    /// The fields carried, or erased (names only, never values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
    /// For an erasure at home: every region told to drop its cached view.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<String>,
    /// Who asked (the token subject of the operator), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    /// `allow` or `deny` (the residency decision for transfers; `allow` for erasures).
    pub decision: String,
    /// Why it was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What came of it (`erased`, `nothing stored`, `failed: ...`, `sent`).
    pub outcome: String,
    /// Payload bytes moved (0 for erasures).
    #[serde(default)]
    pub bytes: u64,
}

/// The pseudonym the audit trail uses for a user id: `u:` and the first 128 bits of
/// SHA-256 over a fixed label and the id, in hex. Stable (so an operator can find a user's
/// entries by computing it), not the id itself.
pub fn user_pseudonym(id: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"tickmesh-audit-user\0");
    h.update(id.as_bytes());
    format!("u:{}", hex(&h.finalize()[..16]))
}

/// One line of the audit log.
///
/// A transfer line has the transfer fields below and no `kind`; other kinds are written as
/// `{"index","time_ns","kind","event":{...},"prev_hash","hash"}`. In memory, entries of
/// other kinds mirror their event's `from`, `to`, `class`, `dir` and `decision` into the
/// fields of the same name (and leave `src` empty), so one filter serves every kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Position in the chain, from 0, without gaps.
    pub index: u64,
    /// When the transfer was recorded (ns since the Unix epoch).
    pub time_ns: u64,
    /// What the entry records.
    pub kind: EntryKind,
    /// Source id (empty for entries that are not transfers).
    pub src: String,
    /// First `seq` moved (0 for a refused attempt).
    pub first_seq: u64,
    /// Last `seq` moved (0 for a refused attempt).
    pub last_seq: u64,
    /// Records moved.
    pub count: u64,
    /// Record bytes moved.
    pub bytes: u64,
    /// Sending region.
    pub from: String,
    /// Receiving region.
    pub to: String,
    /// The source's class.
    pub class: DataClass,
    /// Which side wrote the entry.
    pub dir: Direction,
    /// `allow` or `deny`.
    pub decision: String,
    /// Why a transfer was refused.
    pub reason: Option<String>,
    /// The user-data event, for kinds other than transfers.
    pub event: Option<UserDataRecord>,
    /// The previous entry's hash (hex).
    pub prev_hash: String,
    /// SHA-256 of `prev_hash` and this entry's canonical bytes (hex).
    pub hash: String,
}

/// A transfer's line, fields in the order the hash covers (the original format).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferLine<'a> {
    index: u64,
    time_ns: u64,
    src: std::borrow::Cow<'a, str>,
    first_seq: u64,
    last_seq: u64,
    count: u64,
    bytes: u64,
    from: std::borrow::Cow<'a, str>,
    to: std::borrow::Cow<'a, str>,
    class: DataClass,
    dir: Direction,
    decision: std::borrow::Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<std::borrow::Cow<'a, str>>,
    prev_hash: std::borrow::Cow<'a, str>,
    /// Absent in the canonical bytes.
    #[serde(default, skip_serializing_if = "str::is_empty")]
    hash: std::borrow::Cow<'a, str>,
}

/// Any other kind's line.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventLine<'a> {
    index: u64,
    time_ns: u64,
    kind: EntryKind,
    event: std::borrow::Cow<'a, UserDataRecord>,
    prev_hash: std::borrow::Cow<'a, str>,
    #[serde(default, skip_serializing_if = "str::is_empty")]
    hash: std::borrow::Cow<'a, str>,
}

impl AuditEntry {
    fn line_json(&self, with_hash: bool) -> Vec<u8> {
        use std::borrow::Cow;
        let hash = if with_hash { Cow::Borrowed(self.hash.as_str()) } else { Cow::Borrowed("") };
        // Plain strings and integers: serialization cannot fail.
        match (&self.event, self.kind) {
            (Some(ev), kind) if !kind.is_transfer() => serde_json::to_vec(&EventLine {
                index: self.index,
                time_ns: self.time_ns,
                kind,
                event: Cow::Borrowed(ev),
                prev_hash: Cow::Borrowed(&self.prev_hash),
                hash,
            }),
            _ => serde_json::to_vec(&TransferLine {
                index: self.index,
                time_ns: self.time_ns,
                src: Cow::Borrowed(&self.src),
                first_seq: self.first_seq,
                last_seq: self.last_seq,
                count: self.count,
                bytes: self.bytes,
                from: Cow::Borrowed(&self.from),
                to: Cow::Borrowed(&self.to),
                class: self.class,
                dir: self.dir,
                decision: Cow::Borrowed(&self.decision),
                reason: self.reason.as_deref().map(Cow::Borrowed),
                prev_hash: Cow::Borrowed(&self.prev_hash),
                hash,
            }),
        }
        .unwrap_or_default()
    }
}

impl Serialize for AuditEntry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let v: serde_json::Value = serde_json::from_slice(&self.line_json(true)).map_err(serde::ser::Error::custom)?;
        v.serialize(s)
    }
}

impl<'de> Deserialize<'de> for AuditEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let v = serde_json::Value::deserialize(d)?;
        if v.get("kind").is_some_and(|k| k != "transfer") {
            let l: EventLine<'static> = serde_json::from_value(v).map_err(D::Error::custom)?;
            let ev = l.event.into_owned();
            Ok(AuditEntry::event_entry(l.index, l.time_ns, l.kind, ev, l.prev_hash.into_owned(), l.hash.into_owned()))
        } else {
            if v.get("kind").is_some() {
                return Err(D::Error::custom(
                    "a transfer line carries no kind field (kind \"transfer\" is implied by its absence)",
                ));
            }
            let l: TransferLine<'static> = serde_json::from_value(v).map_err(D::Error::custom)?;
            Ok(AuditEntry {
                index: l.index,
                time_ns: l.time_ns,
                kind: EntryKind::Transfer,
                src: l.src.into_owned(),
                first_seq: l.first_seq,
                last_seq: l.last_seq,
                count: l.count,
                bytes: l.bytes,
                from: l.from.into_owned(),
                to: l.to.into_owned(),
                class: l.class,
                dir: l.dir,
                decision: l.decision.into_owned(),
                reason: l.reason.map(|r| r.into_owned()),
                event: None,
                prev_hash: l.prev_hash.into_owned(),
                hash: l.hash.into_owned(),
            })
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(D[(b >> 4) as usize] as char);
        s.push(D[(b & 15) as usize] as char);
    }
    s
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks(2).enumerate() {
        let v = |c: u8| (c as char).to_digit(16).filter(|_| !c.is_ascii_uppercase()).map(|d| d as u8);
        out[i] = v(pair[0])? << 4 | v(pair[1])?;
    }
    Some(out)
}

impl AuditEntry {
    /// Builds entry `index` for `t`, chained to `prev_hash`.
    pub fn new(index: u64, time_ns: u64, t: &Transfer, prev_hash: &str) -> AuditEntry {
        let (decision, reason) = match &t.decision {
            Decision::Allow => ("allow".to_owned(), None),
            Decision::Deny(why) => ("deny".to_owned(), Some(why.clone())),
        };
        let mut e = AuditEntry {
            index,
            time_ns,
            kind: EntryKind::Transfer,
            src: t.src.clone(),
            first_seq: t.first_seq,
            last_seq: t.last_seq,
            count: t.count,
            bytes: t.bytes,
            from: t.from.clone(),
            to: t.to.clone(),
            class: t.class,
            dir: t.dir,
            decision,
            reason,
            event: None,
            prev_hash: prev_hash.to_owned(),
            hash: String::new(),
        };
        e.hash = e.compute_hash();
        e
    }

    /// Builds entry `index` of `kind` (not [`EntryKind::Transfer`]) for a user-data event.
    pub fn new_event(index: u64, time_ns: u64, kind: EntryKind, ev: &UserDataRecord, prev_hash: &str) -> AuditEntry {
        let mut e = Self::event_entry(index, time_ns, kind, ev.clone(), prev_hash.to_owned(), String::new());
        e.hash = e.compute_hash();
        e
    }

    /// An entry of a user-data event; the transfer columns repeat the event's, so a reader
    /// of the common columns sees every cross-region movement alike.
    fn event_entry(
        index: u64,
        time_ns: u64,
        kind: EntryKind,
        ev: UserDataRecord,
        prev_hash: String,
        hash: String,
    ) -> AuditEntry {
        AuditEntry {
            index,
            time_ns,
            kind,
            src: String::new(),
            first_seq: 0,
            last_seq: 0,
            count: 0,
            bytes: ev.bytes,
            from: ev.from.clone(),
            to: ev.to.clone(),
            class: ev.class,
            dir: ev.dir,
            decision: ev.decision.clone(),
            reason: ev.reason.clone(),
            event: Some(ev),
            prev_hash,
            hash,
        }
    }

    /// The bytes the hash covers: the line's compact JSON without `hash`.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        self.line_json(false)
    }

    /// SHA-256 over the previous hash (raw bytes; the hex text when it is not valid hex)
    /// and the canonical bytes, as hex.
    pub fn compute_hash(&self) -> String {
        let mut h = Sha256::new();
        match unhex32(&self.prev_hash) {
            Some(raw) => h.update(raw),
            None => h.update(self.prev_hash.as_bytes()),
        }
        h.update(self.canonical_bytes());
        hex(&h.finalize())
    }

    /// The transfer this entry records (for entries of other kinds: their regions, class
    /// and decision, with no source).
    pub fn transfer(&self) -> Transfer {
        Transfer {
            src: self.src.clone(),
            first_seq: self.first_seq,
            last_seq: self.last_seq,
            count: self.count,
            bytes: self.bytes,
            from: self.from.clone(),
            to: self.to.clone(),
            class: self.class,
            dir: self.dir,
            decision: match &self.reason {
                Some(r) if self.decision == "deny" => Decision::Deny(r.clone()),
                _ if self.decision == "deny" => Decision::Deny(String::new()),
                _ => Decision::Allow,
            },
        }
    }
}

/// The `head` anchor: the newest entry known to be written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    /// Index of the newest entry.
    pub index: u64,
    /// Its hash.
    pub hash: String,
}

/// Where the chain first breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Broken {
    /// The first index whose entry is missing, altered or out of place.
    pub index: u64,
    /// 1-based line of the file where it was noticed (0 for the head anchor).
    pub line: u64,
    /// What is wrong.
    pub reason: String,
    /// What an operator should do.
    pub action: String,
}

/// The outcome of [`AuditLog::verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// The file checked.
    pub path: PathBuf,
    /// Entries read before the first break (all of them when intact).
    pub entries: u64,
    /// Hash of the last intact entry.
    pub last_hash: Option<String>,
    /// The head anchor, when the file exists.
    pub head: Option<Head>,
    /// The last line had no newline (a crash during a write): it is not counted, and the
    /// node cuts it at its next start.
    pub torn_tail: bool,
    /// The first break, if any.
    pub broken: Option<Broken>,
}

impl VerifyReport {
    /// Whether every entry is in place and the head anchor matches.
    pub fn is_intact(&self) -> bool {
        self.broken.is_none()
    }
}

const ACTION: &str = "keep this file unchanged as evidence; entries before the broken index are intact \
(their hashes still chain); compare the file with the copy in your latest backup (tickmesh restore) and \
with any head you archived, and start a new chain only by moving the file aside (the node refuses to \
append to a broken chain)";

/// What to look for in the log (`GET /v1/audit`, `tickmesh audit show`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditFilter {
    /// Kind of entry (`transfer`, `user_transfer`, `erasure`).
    pub kind: Option<EntryKind>,
    /// User pseudonym ([`user_pseudonym`]) of user-data entries.
    pub user: Option<String>,
    /// Source id.
    pub src: Option<String>,
    /// Sending region.
    pub from: Option<String>,
    /// Receiving region.
    pub to: Option<String>,
    /// Class.
    pub class: Option<DataClass>,
    /// `allow` or `deny`.
    pub decision: Option<String>,
    /// Entries recorded at or after this time (ns).
    pub since_ns: Option<u64>,
    /// Entries recorded before this time (ns).
    pub until_ns: Option<u64>,
    /// Entries after this index (paging: pass the last index of the previous page).
    pub after: Option<u64>,
    /// At most this many entries (default 1,000, at most [`AuditFilter::MAX_LIMIT`]).
    pub limit: Option<usize>,
}

impl AuditFilter {
    /// Largest `limit`.
    pub const MAX_LIMIT: usize = 10_000;
    /// `limit` when none is given.
    pub const DEFAULT_LIMIT: usize = 1_000;

    /// Every problem of the filter, as messages for the caller.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Some(d) = &self.decision {
            if d != "allow" && d != "deny" {
                p.push(format!("decision {d:?} is not known; use allow or deny"));
            }
        }
        if let Some(l) = self.limit {
            if l == 0 || l > Self::MAX_LIMIT {
                p.push(format!("limit {l} is out of range; use 1 to {}", Self::MAX_LIMIT));
            }
        }
        if let (Some(a), Some(b)) = (self.since_ns, self.until_ns) {
            if a >= b {
                p.push(format!("since_ns {a} is not before until_ns {b}; the range is empty"));
            }
        }
        p
    }

    /// Whether `e` passes the filter.
    pub fn matches(&self, e: &AuditEntry) -> bool {
        self.kind.is_none_or(|k| k == e.kind)
            && self.user.as_ref().is_none_or(|u| e.event.as_ref().is_some_and(|ev| ev.user == *u))
            && self.src.as_ref().is_none_or(|s| *s == e.src)
            && self.from.as_ref().is_none_or(|s| *s == e.from)
            && self.to.as_ref().is_none_or(|s| *s == e.to)
            && self.class.is_none_or(|c| c == e.class)
            && self.decision.as_ref().is_none_or(|d| *d == e.decision)
            && self.since_ns.is_none_or(|t| e.time_ns >= t)
            && self.until_ns.is_none_or(|t| e.time_ns < t)
            && self.after.is_none_or(|a| e.index > a)
    }
}

/// One page of a query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditPage {
    /// Matching entries, oldest first.
    pub entries: Vec<AuditEntry>,
    /// Pass as `after` for the next page; `None` when this page is the last.
    pub next_after: Option<u64>,
    /// The head anchor when the query ran.
    pub head: Option<Head>,
}

enum Msg {
    Entry(u64, Box<Transfer>),
    Event(u64, EntryKind, Box<UserDataRecord>),
    Flush(Sender<()>),
}

#[derive(Debug, Default)]
struct Stats {
    written: AtomicU64,
    backpressure: AtomicU64,
}

/// The node's audit trail: a [`TransferAudit`] that appends hash-chained entries to
/// `<dir>/audit.jsonl` from its own thread. See the module docs for the guarantees.
#[derive(Debug)]
pub struct AuditLog {
    dir: PathBuf,
    tx: Option<Sender<Msg>>,
    stats: Arc<Stats>,
    thread: Option<JoinHandle<()>>,
}

fn audit_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Audit { path: path.to_owned(), reason: reason.into() }
}

fn read_head(path: &Path) -> Result<Option<Head>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            audit_err(path, format!("the head anchor is not valid ({e}); it was edited or damaged: {ACTION}"))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(audit_err(path, format!("cannot read the head anchor: {e}"))),
    }
}

impl AuditLog {
    /// Opens (creating it if needed) the log in `dir` (normally `<state_dir>/audit`),
    /// verifies the existing chain, and starts the `audit-writer` thread.
    ///
    /// A torn last line (a crash during a write) is cut. A broken chain is refused with
    /// the index and reason of the break: appending to it would hide the damage.
    pub fn open(dir: &Path) -> Result<AuditLog> {
        std::fs::create_dir_all(dir)
            .map_err(|e| audit_err(dir, format!("cannot create the audit directory: {e}; check permissions")))?;
        let path = dir.join(LOG_FILE);
        let report = AuditLog::verify(&path)?;
        if let Some(b) = &report.broken {
            return Err(audit_err(
                &path,
                format!(
                    "the chain is broken at index {} (line {}): {}; the node does not append to a broken chain: {}",
                    b.index, b.line, b.reason, b.action
                ),
            ));
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| audit_err(&path, format!("cannot open for appending: {e}")))?;
        if report.torn_tail {
            let good = good_length(&mut file).map_err(|e| audit_err(&path, format!("cannot read: {e}")))?;
            file.set_len(good).map_err(|e| audit_err(&path, format!("cannot cut the torn last line: {e}")))?;
            tracing::warn!(path = %path.display(), "audit log: cut a torn last line left by a crash");
        }
        let good_len = file.metadata().map_err(|e| audit_err(&path, e.to_string()))?.len();
        let (tx, rx) = crossbeam_channel::bounded(CHANNEL);
        let stats = Arc::new(Stats::default());
        let writer = Writer {
            file,
            path: path.clone(),
            head_path: dir.join(HEAD_FILE),
            next_index: report.entries,
            prev_hash: report.last_hash.unwrap_or_else(|| GENESIS.to_owned()),
            good_len,
            stats: stats.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| audit_err(&path, format!("cannot start the audit-writer thread: {e}")))?;
        Ok(AuditLog { dir: dir.to_owned(), tx: Some(tx), stats, thread: Some(thread) })
    }

    /// The log file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    /// Entries written so far by this process.
    pub fn written(&self) -> u64 {
        self.stats.written.load(Ordering::Relaxed)
    }

    /// Times `record` found the channel full and waited.
    pub fn backpressure_waits(&self) -> u64 {
        self.stats.backpressure.load(Ordering::Relaxed)
    }

    /// Waits until every entry recorded before this call is written and fsynced.
    pub fn flush(&self) {
        let Some(tx) = &self.tx else { return };
        let (ack_tx, ack_rx) = crossbeam_channel::bounded(1);
        if tx.send(Msg::Flush(ack_tx)).is_ok() {
            let _ = ack_rx.recv();
        }
    }

    /// Entries of the log matching `f` (what is written so far), oldest first.
    pub fn query(&self, f: &AuditFilter) -> Result<AuditPage> {
        AuditLog::query_file(&self.path(), f)
    }

    /// [`AuditLog::query`] on a file, for tools. Lines that do not parse are skipped
    /// (`verify` is the tool that reports them).
    pub fn query_file(path: &Path, f: &AuditFilter) -> Result<AuditPage> {
        let limit = f.limit.unwrap_or(AuditFilter::DEFAULT_LIMIT).clamp(1, AuditFilter::MAX_LIMIT);
        let head = read_head(&path.with_file_name(HEAD_FILE)).ok().flatten();
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(AuditPage { entries: Vec::new(), next_after: None, head })
            }
            Err(e) => return Err(audit_err(path, format!("cannot read: {e}"))),
        };
        let mut entries = Vec::new();
        let mut more = false;
        for line in BufReader::new(file).split(b'\n') {
            let line = line.map_err(|e| audit_err(path, format!("cannot read: {e}")))?;
            let Ok(e) = serde_json::from_slice::<AuditEntry>(&line) else { continue };
            if f.matches(&e) {
                if entries.len() == limit {
                    more = true;
                    break;
                }
                entries.push(e);
            }
        }
        let next_after = if more { entries.last().map(|e| e.index) } else { None };
        Ok(AuditPage { entries, next_after, head })
    }

    /// Checks the chain of the log at `path` and its head anchor (`head` next to it).
    /// An `Err` only for a file that cannot be read; a damaged chain is an `Ok` report
    /// with [`VerifyReport::broken`] set to the first broken index.
    pub fn verify(path: &Path) -> Result<VerifyReport> {
        let head_path = path.with_file_name(HEAD_FILE);
        let mut report = VerifyReport {
            path: path.to_owned(),
            entries: 0,
            last_hash: None,
            head: None,
            torn_tail: false,
            broken: None,
        };
        let head = match read_head(&head_path) {
            Ok(h) => h,
            Err(Error::Audit { reason, .. }) if reason.starts_with("the head anchor is not valid") => {
                report.broken = Some(Broken {
                    index: 0,
                    line: 0,
                    reason: format!("{}: {reason}", head_path.display()),
                    action: ACTION.into(),
                });
                return Ok(report);
            }
            Err(e) => return Err(e),
        };
        report.head = head.clone();
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(audit_err(path, format!("cannot read: {e}"))),
        };
        let mut body: &[u8] = &bytes;
        if !body.is_empty() && !body.ends_with(b"\n") {
            report.torn_tail = true;
            let cut = body.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
            body = &body[..cut];
        }
        let mut prev = GENESIS.to_owned();
        let mut hashes_at_head = None;
        // `body` is empty or ends with a newline: every piece before the last is a line.
        let lines: Vec<&[u8]> =
            if body.is_empty() { Vec::new() } else { body[..body.len() - 1].split(|b| *b == b'\n').collect() };
        for (i, line) in lines.into_iter().enumerate() {
            let expect = i as u64;
            let lineno = expect + 1;
            let brk = |reason: String| Broken { index: expect, line: lineno, reason, action: ACTION.into() };
            let e: AuditEntry = match serde_json::from_slice(line) {
                Ok(e) => e,
                Err(err) => {
                    report.broken = Some(brk(format!(
                        "line {lineno} is not a valid audit entry ({err}): entry {expect} was edited, or a forged line was inserted"
                    )));
                    return Ok(report);
                }
            };
            if e.index > expect {
                report.broken = Some(brk(format!(
                    "line {lineno} holds index {} where index {expect} belongs: entry {expect} was removed, or entries were reordered",
                    e.index
                )));
                return Ok(report);
            }
            if e.index < expect {
                report.broken = Some(brk(format!(
                    "line {lineno} holds index {} again where index {expect} belongs: a line was inserted before it, or entries were reordered",
                    e.index
                )));
                return Ok(report);
            }
            if e.compute_hash() != e.hash {
                report.broken =
                    Some(brk(format!("entry {expect} does not match its hash: its fields (or its hash) were edited")));
                return Ok(report);
            }
            if e.prev_hash != prev {
                report.broken = Some(brk(format!(
                    "entry {expect}'s prev_hash is not the hash of entry {}: the entry before it was replaced, or a line was inserted or removed there",
                    expect.saturating_sub(1)
                )));
                return Ok(report);
            }
            if head.as_ref().is_some_and(|h| h.index == expect) {
                hashes_at_head = Some(e.hash.clone());
            }
            prev = e.hash;
            report.entries += 1;
        }
        report.last_hash = (report.entries > 0).then_some(prev);
        if let Some(h) = &head {
            if h.index >= report.entries {
                report.broken = Some(Broken {
                    index: report.entries,
                    line: report.entries + 1,
                    reason: format!(
                        "the log ends before index {}, which the head anchor records as written: entries {}..={} were removed from the tail",
                        h.index, report.entries, h.index
                    ),
                    action: ACTION.into(),
                });
            } else if hashes_at_head.as_deref() != Some(h.hash.as_str()) {
                report.broken = Some(Broken {
                    index: h.index,
                    line: 0,
                    reason: format!(
                        "entry {} does not have the hash the head anchor recorded: the log was rewritten after that entry was anchored",
                        h.index
                    ),
                    action: ACTION.into(),
                });
            }
        }
        Ok(report)
    }
}

/// Length of the file up to its last newline.
fn good_length(file: &mut File) -> std::io::Result<u64> {
    use std::io::Seek;
    file.seek(std::io::SeekFrom::Start(0))?;
    let mut b = Vec::new();
    file.read_to_end(&mut b)?;
    Ok(b.iter().rposition(|c| *c == b'\n').map_or(0, |p| p as u64 + 1))
}

impl TransferAudit for AuditLog {
    fn record(&self, t: Transfer) {
        self.send(Msg::Entry(tickmesh_codec::now_ns(), Box::new(t)));
    }

    fn record_user_data(&self, kind: EntryKind, ev: UserDataRecord) {
        self.send(Msg::Event(tickmesh_codec::now_ns(), kind, Box::new(ev)));
    }
}

impl AuditLog {
    /// Hands an entry to the writer; waits (never drops) when the channel is full.
    fn send(&self, msg: Msg) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(msg)) => {
                self.stats.backpressure.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("tickmesh_audit_backpressure_total").increment(1);
                if tx.send(msg).is_err() {
                    tracing::error!("audit writer is gone; a transfer could not be recorded");
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                tracing::error!("audit writer is gone; a transfer could not be recorded")
            }
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs `f` until it succeeds, backing off to one try a second: entries wait in the
/// channel (and the mesh behind them) rather than being dropped.
fn retry(path: &Path, index: u64, mut f: impl FnMut() -> std::io::Result<()>) {
    let mut delay = Duration::from_millis(100);
    while let Err(e) = f() {
        metrics::counter!("tickmesh_audit_write_errors_total").increment(1);
        tracing::error!(path = %path.display(), error = %e, index,
            "audit log write failed; retrying (transfers wait, none is dropped)");
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

struct Writer {
    file: File,
    path: PathBuf,
    head_path: PathBuf,
    next_index: u64,
    prev_hash: String,
    good_len: u64,
    stats: Arc<Stats>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        let mut buf = Vec::new();
        let mut acks = Vec::new();
        while let Ok(first) = rx.recv() {
            buf.clear();
            let start_index = self.next_index;
            let mut n = 0u64;
            for msg in std::iter::once(first).chain(rx.try_iter().take(BATCH)) {
                match msg {
                    Msg::Entry(time_ns, t) => {
                        let e = AuditEntry::new(self.next_index, time_ns, &t, &self.prev_hash);
                        buf.extend_from_slice(&e.line_json(true));
                        buf.push(b'\n');
                        self.next_index += 1;
                        self.prev_hash = e.hash;
                        n += 1;
                    }
                    Msg::Event(time_ns, kind, ev) => {
                        let e = AuditEntry::new_event(self.next_index, time_ns, kind, &ev, &self.prev_hash);
                        buf.extend_from_slice(&e.line_json(true));
                        buf.push(b'\n');
                        self.next_index += 1;
                        self.prev_hash = e.hash;
                        n += 1;
                    }
                    Msg::Flush(ack) => acks.push(ack),
                }
            }
            if n > 0 {
                let (path, head_path) = (self.path.clone(), self.head_path.clone());
                retry(&path, start_index, || {
                    let r = self.write_log(&buf);
                    if r.is_err() {
                        // Roll back a partial line so the retry does not leave garbage.
                        let _ = self.file.set_len(self.good_len);
                    }
                    r
                });
                retry(&head_path, start_index, || self.write_head());
                self.stats.written.fetch_add(n, Ordering::Relaxed);
                metrics::counter!("tickmesh_audit_entries_total").increment(n);
            }
            for a in acks.drain(..) {
                let _ = a.send(());
            }
        }
    }

    fn write_log(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.file.write_all(buf)?;
        self.file.sync_data()?;
        self.good_len += buf.len() as u64;
        Ok(())
    }

    fn write_head(&mut self) -> std::io::Result<()> {
        let head = Head { index: self.next_index - 1, hash: self.prev_hash.clone() };
        let tmp = self.head_path.with_extension("tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(&head).unwrap_or_default())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.head_path)?;
        if let Some(dir) = self.head_path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

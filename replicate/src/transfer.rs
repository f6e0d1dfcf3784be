//! What the mesh asks before a record crosses a region boundary, and what it reports after.
//!
//! The mesh does not know the residency rules or where the audit trail lives: the node
//! hands it a [`TransferPolicy`] (checked when serving a source to a peer and again when
//! receiving one) and a [`TransferAudit`] (told about every cross-region transfer, allowed
//! or refused). `policy` and `audit` hold the implementations the node uses.

use tickmesh_codec::SourceId;

/// The data class of a source (and of the records it carries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataClass {
    /// Public market data: replicated to every region.
    MarketData,
    /// Personal data (user profiles, a user's order updates): stays in its home region
    /// unless the policy's allow-list names the destination.
    Pii,
    /// Regulatory data (for example audit copies a regulator requires to stay in
    /// jurisdiction): stays in its home region unless allow-listed.
    Regulatory,
}

impl DataClass {
    /// The class's name as written in configuration and in the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            DataClass::MarketData => "market_data",
            DataClass::Pii => "pii",
            DataClass::Regulatory => "regulatory",
        }
    }
}

/// Which side of a transfer is asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// This region is about to send records to `to`.
    Send,
    /// This region received (or is about to request) records from `from`.
    Receive,
}

/// The policy's answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "decision", content = "reason")]
pub enum Decision {
    /// The transfer may happen.
    Allow,
    /// The transfer must not happen, and why (written to the audit log and the node's log).
    Deny(String),
}

impl Decision {
    /// Whether the transfer may happen.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

/// Residency rules as the mesh sees them.
pub trait TransferPolicy: Send + Sync + 'static {
    /// The class of `src`'s records.
    fn class_of(&self, src: &SourceId) -> DataClass;
    /// May records of `src` move from region `from` to region `to`? `dir` says whether the
    /// sender or the receiver is asking; both ask, so one misconfigured side is not enough
    /// for data to leave its region.
    fn check(&self, src: &SourceId, from: &str, to: &str, dir: Direction) -> Decision;

    /// May a user-data message of class `class` about a user homed in `home` move from
    /// `from` to `to` (over the mesh's request channel, [`crate::peer_request`])? The
    /// default: personal data only toward its home region (or within a region), anything
    /// else everywhere. [`crate::ResidencyPolicy`] applies its configured rules too.
    fn check_user_data(&self, class: DataClass, home: &str, from: &str, to: &str, _dir: Direction) -> Decision {
        if class == DataClass::MarketData || from == to || to == home {
            Decision::Allow
        } else {
            Decision::Deny(format!(
                "user data of class {} homed in {home} may move only toward {home}, not from {from} to {to}",
                class.as_str()
            ))
        }
    }
}

/// One cross-region transfer (or refused attempt), as written to the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Transfer {
    /// The source.
    pub src: String,
    /// First `seq` moved (0 for a refused request that moved nothing).
    pub first_seq: u64,
    /// Last `seq` moved (0 for a refused request).
    pub last_seq: u64,
    /// Records moved.
    pub count: u64,
    /// Bytes moved (record bytes, before QUIC framing).
    pub bytes: u64,
    /// Sending region.
    pub from: String,
    /// Receiving region.
    pub to: String,
    /// The source's class.
    pub class: DataClass,
    /// Which side wrote this entry.
    pub dir: Direction,
    /// Allowed, or refused and why.
    pub decision: Decision,
}

/// Where the mesh reports transfers. Implementations must not block for long: the mesh
/// calls this from its I/O thread (aggregate, then write in the background if needed).
pub trait TransferAudit: Send + Sync + 'static {
    /// Records one transfer.
    fn record(&self, t: Transfer);

    /// Records a user-data event (a user-data message between regions, an erasure) in the
    /// same trail. The default discards it: only for audits that keep no trail
    /// ([`NoAudit`]); [`crate::AuditLog`] writes it to its hash chain.
    fn record_user_data(&self, _kind: crate::audit::EntryKind, _ev: crate::audit::UserDataRecord) {}
}

/// Allows everything and classes every source as market data: for tests and single-region
/// nodes without a `[residency]` section.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl TransferPolicy for AllowAll {
    fn class_of(&self, _src: &SourceId) -> DataClass {
        DataClass::MarketData
    }
    fn check(&self, _src: &SourceId, _from: &str, _to: &str, _dir: Direction) -> Decision {
        Decision::Allow
    }
}

/// Discards audit entries: for tests that do not look at the trail.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAudit;

impl TransferAudit for NoAudit {
    fn record(&self, _t: Transfer) {}
}

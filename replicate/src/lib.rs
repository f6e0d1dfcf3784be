//! tickmesh-replicate: moves records between regions over a QUIC mesh (quinn, mutual TLS).
//!
//! # Layout
//! * [`link`]: [`link::MeshCore`], the sans-I/O mesh protocol: hello, heartbeats with
//!   positions and link tables, one stream per subscribed source, batches, routing around
//!   cut links, policy checks and audit aggregation.
//! * [`mesh`]: [`Mesh`], the `replicate-io` thread: the quinn driver of the core.
//! * [`tls`]: the private CA, per-region certificates, rustls configurations.
//! * [`peer_request`]: the user-data request/response channel between regions.
//! * [`store`]: [`RecordStore`], what the mesh needs from the journal.
//! * [`transfer`]: the residency policy and audit hooks the mesh calls on every transfer.
//! * [`audit`]: [`AuditLog`], the hash-chained audit trail of cross-region transfers.
//! * [`policy`]: [`ResidencyPolicy`], REGIONS.md's residency rules from `[residency]`.
//! * [`wan`]: user-space WAN emulation (delay, jitter, loss, cuts) for the demo and tests.
//!
//! Every record received from a peer is validated (`codec::access_untrusted`) before the
//! node sees it.

pub mod audit;
pub mod error;
pub mod link;
pub mod mesh;
pub mod peer_request;
pub mod policy;
pub mod sched;
pub mod store;
pub mod tls;
pub mod transfer;
pub mod wan;

pub use audit::{
    user_pseudonym, AuditEntry, AuditFilter, AuditLog, AuditPage, EntryKind, UserDataRecord, VerifyReport,
};
pub use error::{Error, Result};
pub use link::{HomeView, Role, SourceView};
pub use mesh::{Delivery, Inbound, Mesh, MeshConfig, MeshHandle, MeshParams, MeshStatus, PeerConfig, PeerState};
pub use peer_request::{RequestError, UserMessage, UserRequestHandler};
pub use policy::{ClassRule, ResidencyConfig, ResidencyPolicy};
pub use sched::ThreadSched;
pub use store::{Cursor, MemoryStore, RecordStore};
pub use transfer::{AllowAll, DataClass, Decision, Direction, NoAudit, Transfer, TransferAudit, TransferPolicy};

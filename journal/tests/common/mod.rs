//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset

use tickmesh_codec::{Body, InstrumentId, Meta, Px, Qty, Record, Seq, Side, SourceId, Symbol, Trade};
use tickmesh_journal::{FsyncPolicy, JournalConfig, Reader};

pub fn sid(s: &str) -> SourceId {
    SourceId::new(s).unwrap()
}

/// A trade of source `src` with `seq` and `ts_ingest`.
pub fn rec(src: &str, seq: u64, ts_ingest: u64) -> Vec<u8> {
    let meta = Meta {
        src: sid(src),
        seq: Seq(seq),
        instrument: InstrumentId(7),
        sym: Symbol::new("AAPL").unwrap(),
        ts_event: ts_ingest.saturating_sub(1_000),
        ts_ingest,
    };
    let body = Body::Trade(Trade { px: Px(seq as i64 * 1_000), qty: Qty(100), side: Side::Buy, match_id: seq });
    Record::new(meta, body).to_bytes()
}

/// Framed size of one `rec` record.
pub fn frame_len() -> u64 {
    8 + rec("A", 1, 1).len() as u64
}

/// Tiny segments and a dense index, so a few hundred records cross many segments and
/// index points.
pub fn small_cfg() -> JournalConfig {
    JournalConfig { segment_bytes: 8_192, fsync: FsyncPolicy::Never, index_every: 7, ..JournalConfig::default() }
}

/// Seqs a reader returns until it has nothing more now.
pub fn drain(r: &mut Reader) -> Vec<u64> {
    let mut out = Vec::new();
    while let Some(rec) = r.next().unwrap() {
        out.push(rec.seq());
    }
    out
}

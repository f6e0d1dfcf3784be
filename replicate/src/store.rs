//! What the mesh needs from a region's record store (the journal in a node; a memory
//! store in tests), as a trait so the mesh never depends on how records are kept.

use tickmesh_codec::SourceId;

use crate::error::Result;

/// A region's records, per source, in `seq` order.
pub trait RecordStore: Send + Sync + 'static {
    /// Highest `seq` held for every source.
    fn positions(&self) -> Vec<(SourceId, u64)>;
    /// A cursor over the records of `src` with `seq > after`.
    fn cursor(&self, src: &SourceId, after: u64) -> Result<Box<dyn Cursor>>;
}

/// Reads records forward; picks up records appended after it was made.
pub trait Cursor: Send {
    /// Appends length-prefixed records (codec `frame` format) to `out` until it holds at
    /// least `max_bytes` or the store has nothing more now; returns how many were appended.
    fn fill(&mut self, out: &mut Vec<u8>, max_bytes: usize) -> Result<usize>;
}

/// Records of each source as `(seq, bytes)`, in order.
type BySource = std::collections::BTreeMap<SourceId, Vec<(u64, Vec<u8>)>>;

/// An in-memory store, for tests and simulations.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: std::sync::RwLock<BySource>,
}

impl MemoryStore {
    /// Appends a record (bytes of a valid codec record); refuses `seq` at or below the last.
    pub fn append(&self, rec: &[u8]) -> Result<bool> {
        let r = tickmesh_codec::access_untrusted(rec)?;
        let mut m = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let v = m.entry(r.source_id()).or_default();
        if v.last().is_some_and(|(s, _)| *s >= r.seq()) {
            return Ok(false);
        }
        v.push((r.seq(), rec.to_vec()));
        Ok(true)
    }
}

impl RecordStore for std::sync::Arc<MemoryStore> {
    fn positions(&self) -> Vec<(SourceId, u64)> {
        let m = self.inner.read().unwrap_or_else(|e| e.into_inner());
        m.iter().filter_map(|(s, v)| v.last().map(|(q, _)| (*s, *q))).collect()
    }
    fn cursor(&self, src: &SourceId, after: u64) -> Result<Box<dyn Cursor>> {
        Ok(Box::new(MemCursor { store: self.clone(), src: *src, after }))
    }
}

struct MemCursor {
    store: std::sync::Arc<MemoryStore>,
    src: SourceId,
    after: u64,
}

impl Cursor for MemCursor {
    fn fill(&mut self, out: &mut Vec<u8>, max_bytes: usize) -> Result<usize> {
        let m = self.store.inner.read().unwrap_or_else(|e| e.into_inner());
        let Some(v) = m.get(&self.src) else { return Ok(0) };
        let start = v.partition_point(|(s, _)| *s <= self.after);
        let mut n = 0;
        for (s, b) in &v[start..] {
            if out.len() >= max_bytes {
                break;
            }
            tickmesh_codec::frame::put_frame(b, out);
            self.after = *s;
            n += 1;
        }
        Ok(n)
    }
}

//! One source's log: its segments, its writer, its positions.
//!
//! # Locks and who publishes what
//! * `writer` (a `Mutex`) serialises appends to this source only; other sources never
//!   wait for it.
//! * `segments` (an `RwLock`) is the list readers, retention and the sync thread look at.
//!   The writer takes it for writing only to push a new segment, after that segment holds
//!   its first record.
//! * Publication order on append: bytes written (`pwrite`), index entries pushed, then
//!   the segment's `len` stored with Release, then the source's `last_seq`. On roll, the
//!   old segment is fsynced *before* the new one is pushed. So whoever reads `last_seq`
//!   and then takes the last segment holds the file that contains that seq, and every
//!   earlier segment is already on disk: that is what lets the sync thread fsync without
//!   the writer lock.

use crate::config::{FsyncPolicy, JournalConfig};
use crate::error::{Error, IoContext, Result};
use crate::segment::{
    create_rw, idx_path, put_frame, remove_if_exists, seg_name, sync_dir, IdxFile, IndexEntry, Segment, FRAME_HEADER,
};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use tickmesh_codec::SourceId;

/// Takes a mutex even if a thread panicked while holding it: every structure guarded here
/// is left consistent between statements that can panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One record to append, already validated.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Item<'a> {
    pub(crate) seq: u64,
    pub(crate) ts_ingest: u64,
    pub(crate) bytes: &'a [u8],
}

/// Where one record was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The record's seq.
    pub seq: u64,
    /// First seq of the segment it went to (the segment's file name).
    pub segment: u64,
    /// Byte offset of its frame in that segment.
    pub offset: u64,
}

#[derive(Debug)]
struct Writer {
    /// The segment appends go to: the last published one, or a new one not yet published
    /// because its first write has not completed.
    active: Option<Arc<Segment>>,
    /// Records in `active`.
    count: u64,
    /// Largest `ts_ingest` in `active` so far.
    ts_run: u64,
    /// Frames of one write, reused.
    frames: Vec<u8>,
    /// Index entries of one write, reused.
    entries: Vec<IndexEntry>,
    /// The source directory exists.
    dir_ready: bool,
}

/// The fsync failure that stopped this source.
#[derive(Debug)]
struct Failure {
    path: PathBuf,
    reason: String,
}

#[derive(Debug)]
pub(crate) struct SourceLog {
    pub(crate) id: SourceId,
    pub(crate) dir: PathBuf,
    pub(crate) segments: RwLock<Vec<Arc<Segment>>>,
    writer: Mutex<Writer>,
    /// Last appended seq; 0 when the source is empty (seq 0 is never journaled).
    last_seq: AtomicU64,
    /// Highest seq known fsynced (or, with `FsyncPolicy::Never`, handed to the OS).
    /// SeqCst: `Journal::wait_durable` pairs it with a waiter count.
    durable_seq: AtomicU64,
    /// Records appended since the sync thread last started a round on this source.
    unsynced: AtomicU64,
    /// Largest seq in any segment retention deleted: lets a reader moving to the next
    /// segment tell whether segments it had not read yet were deleted.
    deleted_through: AtomicU64,
    failed: AtomicBool,
    failure: Mutex<Option<Failure>>,
}

impl SourceLog {
    /// A source from the segments found on open (last one active), or none.
    pub(crate) fn new(id: SourceId, dir: PathBuf, segments: Vec<Arc<Segment>>) -> SourceLog {
        let active = segments.last().cloned();
        let (last, count, ts) = active.as_ref().map_or((0, 0, 0), |s| {
            (s.last_seq.load(Ordering::Acquire), s.count.load(Ordering::Acquire), s.ts_max.load(Ordering::Acquire))
        });
        let dir_ready = dir.is_dir();
        SourceLog {
            id,
            dir,
            segments: RwLock::new(segments),
            writer: Mutex::new(Writer {
                active,
                count,
                ts_run: ts,
                frames: Vec::with_capacity(64 << 10),
                entries: Vec::new(),
                dir_ready,
            }),
            last_seq: AtomicU64::new(last),
            durable_seq: AtomicU64::new(last),
            unsynced: AtomicU64::new(0),
            deleted_through: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
        }
    }

    pub(crate) fn last_seq(&self) -> Option<u64> {
        Some(self.last_seq.load(Ordering::Acquire)).filter(|s| *s != 0)
    }

    pub(crate) fn durable_seq(&self) -> Option<u64> {
        Some(self.durable_seq.load(Ordering::SeqCst)).filter(|s| *s != 0)
    }

    pub(crate) fn segments(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Segment>>> {
        self.segments.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn segments_mut(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Arc<Segment>>> {
        self.segments.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn deleted_through(&self) -> u64 {
        self.deleted_through.load(Ordering::Acquire)
    }

    pub(crate) fn first_seq(&self) -> Option<u64> {
        self.segments().first().map(|s| s.first_seq)
    }

    /// The segment after the one starting at `first_seq`, if any.
    pub(crate) fn next_segment(&self, first_seq: u64) -> Option<Arc<Segment>> {
        let segs = self.segments();
        let i = segs.partition_point(|s| s.first_seq <= first_seq);
        segs.get(i).cloned()
    }

    fn check_failed(&self) -> Result<()> {
        if !self.failed.load(Ordering::Acquire) {
            return Ok(());
        }
        let f = lock(&self.failure);
        let (path, reason) =
            f.as_ref().map_or((self.dir.clone(), String::new()), |f| (f.path.clone(), f.reason.clone()));
        Err(Error::Failed { source_id: self.id, path, reason })
    }

    /// Records an fsync failure: from now on appends are refused (see `Error::Failed`).
    fn fail(&self, path: &Path, e: &std::io::Error) -> Error {
        let mut f = lock(&self.failure);
        if f.is_none() {
            tracing::error!(source = %self.id, path = %path.display(), error = %e, "journal fsync failed; source stops accepting appends");
            *f = Some(Failure { path: path.to_owned(), reason: e.to_string() });
        }
        self.failed.store(true, Ordering::Release);
        Error::Failed { source_id: self.id, path: path.to_owned(), reason: e.to_string() }
    }

    /// Appends one record; `OutOfOrder` if its seq is not above the last one.
    pub(crate) fn append(&self, cfg: &JournalConfig, item: Item<'_>) -> Result<(Appended, bool)> {
        let mut w = lock(&self.writer);
        self.check_failed()?;
        let last = self.last_seq.load(Ordering::Relaxed);
        if item.seq <= last {
            return Err(Error::OutOfOrder { source_id: self.id, last, got: item.seq });
        }
        let at = self.write(&mut w, cfg, &[item])?;
        let kick = self.after_write(cfg, &w, 1)?;
        Ok((at, kick))
    }

    /// Appends records of this source in order, skipping (and counting) those whose seq is
    /// not above the last one. Returns (appended, duplicates, kick the sync thread).
    pub(crate) fn append_many(&self, cfg: &JournalConfig, items: &[Item<'_>]) -> Result<(u64, u64, bool)> {
        let mut w = lock(&self.writer);
        self.check_failed()?;
        let mut last = self.last_seq.load(Ordering::Relaxed);
        let mut kept: Vec<Item<'_>> = Vec::with_capacity(items.len());
        for it in items {
            if it.seq > last {
                last = it.seq;
                kept.push(*it);
            }
        }
        let dups = (items.len() - kept.len()) as u64;
        if kept.is_empty() {
            return Ok((0, dups, false));
        }
        self.write(&mut w, cfg, &kept)?;
        let kick = self.after_write(cfg, &w, kept.len() as u64)?;
        Ok((kept.len() as u64, dups, kick))
    }

    /// Applies the fsync policy after a successful write. Returns true when the sync
    /// thread should start a round now.
    fn after_write(&self, cfg: &JournalConfig, w: &Writer, n: u64) -> Result<bool> {
        let last = self.last_seq.load(Ordering::Relaxed);
        match cfg.fsync {
            FsyncPolicy::Never => {
                self.durable_seq.fetch_max(last, Ordering::SeqCst);
                Ok(false)
            }
            FsyncPolicy::Always => {
                if let Some(seg) = &w.active {
                    seg.file.sync_data().map_err(|e| self.fail(&seg.path, &e))?;
                }
                self.durable_seq.fetch_max(last, Ordering::SeqCst);
                Ok(false)
            }
            FsyncPolicy::Group => {
                let pending = self.unsynced.fetch_add(n, Ordering::Relaxed) + n;
                Ok(pending >= cfg.group_commit_records)
            }
        }
    }

    /// Writes `items` (seqs already checked), rolling segments as needed: one `pwrite` per
    /// segment touched.
    fn write(&self, w: &mut Writer, cfg: &JournalConfig, items: &[Item<'_>]) -> Result<Appended> {
        let every = u64::from(cfg.index_every);
        let mut at = Appended { seq: 0, segment: 0, offset: 0 };
        let mut i = 0;
        while i < items.len() {
            let need = (FRAME_HEADER + items[i].bytes.len()) as u64;
            let (seg, fresh) = match &w.active {
                Some(seg) if seg.len.load(Ordering::Relaxed) + need <= cfg.segment_bytes => (seg.clone(), false),
                _ => (self.roll(w, cfg, items[i].seq)?, true),
            };
            let base = seg.len.load(Ordering::Relaxed);
            let (count0, ts0) = (w.count, w.ts_run);
            w.frames.clear();
            w.entries.clear();
            let mut pos = base;
            let mut j = i;
            while j < items.len() {
                let it = items[j];
                let len = (FRAME_HEADER + it.bytes.len()) as u64;
                if j > i && pos + len > cfg.segment_bytes {
                    break;
                }
                if w.count.is_multiple_of(every) {
                    w.entries.push(IndexEntry { seq: it.seq, ts_max_before: w.ts_run, offset: pos });
                }
                put_frame(it.bytes, &mut w.frames);
                at = Appended { seq: it.seq, segment: seg.first_seq, offset: pos };
                w.count += 1;
                w.ts_run = w.ts_run.max(it.ts_ingest);
                pos += len;
                j += 1;
            }
            if let Err(e) = seg.file.write_all_at(&w.frames, base) {
                // Leave the file as it was: the next write goes to `base` again.
                let _ = seg.file.set_len(base);
                (w.count, w.ts_run) = (count0, ts0);
                if fresh {
                    self.abandon(w, &seg);
                }
                return Err(Error::io("writing segment", &seg.path, e));
            }
            let last = items[j - 1].seq;
            if !w.entries.is_empty() {
                seg.index.write().unwrap_or_else(PoisonError::into_inner).extend_from_slice(&w.entries);
            }
            seg.count.store(w.count, Ordering::Release);
            seg.ts_max.store(w.ts_run, Ordering::Release);
            seg.last_seq.store(last, Ordering::Release);
            seg.len.store(pos, Ordering::Release);
            if fresh {
                self.segments_mut().push(seg.clone());
            }
            self.last_seq.store(last, Ordering::Release);
            i = j;
        }
        Ok(at)
    }

    /// A new segment's first write failed: delete its file and go back to the last
    /// published segment (which is sealed, so the next append rolls again).
    fn abandon(&self, w: &mut Writer, seg: &Segment) {
        let _ = std::fs::remove_file(&seg.path);
        w.active = self.segments().last().cloned();
        (w.count, w.ts_run) =
            w.active.as_ref().map_or((0, 0), |s| (s.count.load(Ordering::Acquire), s.ts_max.load(Ordering::Acquire)));
    }

    /// Seals the active segment (fsync, then its `.idx`) and creates the next one, named
    /// after `first_seq`. The new segment is published by `write` after its first record.
    fn roll(&self, w: &mut Writer, cfg: &JournalConfig, first_seq: u64) -> Result<Arc<Segment>> {
        if let Some(old) = &w.active {
            // Sealed segments are fsynced under every policy, so only the last segment can
            // ever be torn; one fsync per segment is cheap next to the appends that filled it.
            old.file.sync_data().map_err(|e| self.fail(&old.path, &e))?;
            self.durable_seq.fetch_max(old.last_seq.load(Ordering::Acquire), Ordering::SeqCst);
            if let Err(e) = IdxFile::of(old).store(&old.path) {
                tracing::warn!(error = %e, "journal index not written; open() rebuilds it by scanning the segment");
            }
        }
        if !w.dir_ready {
            std::fs::create_dir_all(&self.dir).ctx("creating source directory", &self.dir)?;
            if cfg.fsync != FsyncPolicy::Never {
                if let Some(parent) = self.dir.parent() {
                    sync_dir(parent)?;
                }
            }
            w.dir_ready = true;
        }
        let path = self.dir.join(seg_name(first_seq));
        let file = create_rw(&path)?;
        if cfg.fsync != FsyncPolicy::Never {
            // Make the new name durable before any record in it is reported durable.
            sync_dir(&self.dir)?;
        }
        let seg = Arc::new(Segment {
            first_seq,
            path,
            file,
            len: AtomicU64::new(0),
            last_seq: AtomicU64::new(0),
            ts_max: AtomicU64::new(0),
            count: AtomicU64::new(0),
            index: RwLock::new(Vec::new()),
            verified: true,
        });
        w.active = Some(seg.clone());
        w.count = 0;
        w.ts_run = 0;
        Ok(seg)
    }

    /// fsyncs the last segment without the writer lock, if records wait for it or if
    /// `force` (with `FsyncPolicy::Never`, `durable_seq` never lags, but `Journal::sync`
    /// still means "on disk now"). Used by the `journal-sync` thread and `Journal::sync`.
    pub(crate) fn sync(&self, force: bool) -> Result<()> {
        self.check_failed()?;
        // Read the seq first, then the segment list: see the module doc.
        let written = self.last_seq.load(Ordering::Acquire);
        if written == 0 || (!force && self.durable_seq.load(Ordering::SeqCst) >= written) {
            return Ok(());
        }
        self.unsynced.store(0, Ordering::Relaxed);
        let seg = self.segments().last().cloned();
        if let Some(seg) = seg {
            seg.file.sync_data().map_err(|e| self.fail(&seg.path, &e))?;
        }
        self.durable_seq.fetch_max(written, Ordering::SeqCst);
        Ok(())
    }

    /// True when the sync thread has something to do here.
    pub(crate) fn needs_sync(&self) -> bool {
        !self.failed.load(Ordering::Acquire)
            && self.durable_seq.load(Ordering::SeqCst) < self.last_seq.load(Ordering::Acquire)
    }

    /// Deletes the oldest sealed segments that retention allows. Never the last one.
    pub(crate) fn retain(&self, cfg: &JournalConfig, now_ns: u64) -> Result<Option<SourceRetention>> {
        let cutoff = match cfg.retain_age_secs {
            0 => None,
            s => Some(now_ns.saturating_sub(s.saturating_mul(1_000_000_000))),
        };
        let removed: Vec<Arc<Segment>> = {
            let mut segs = self.segments_mut();
            let mut remaining: u64 = segs.iter().map(|s| s.len.load(Ordering::Acquire)).sum();
            let mut k = 0;
            while k + 1 < segs.len() {
                let s = &segs[k];
                let by_size = cfg.retain_bytes != 0 && remaining > cfg.retain_bytes;
                let by_age = cutoff.is_some_and(|c| s.ts_max.load(Ordering::Acquire) < c);
                if !(by_size || by_age) {
                    break;
                }
                remaining -= s.len.load(Ordering::Acquire);
                self.deleted_through.fetch_max(s.last_seq.load(Ordering::Acquire), Ordering::AcqRel);
                k += 1;
            }
            segs.drain(..k).collect()
        };
        if removed.is_empty() {
            return Ok(None);
        }
        let mut bytes = 0;
        for s in &removed {
            // Readers holding this segment keep reading it through their open handle.
            remove_if_exists(&s.path)?;
            remove_if_exists(&idx_path(&s.path))?;
            bytes += s.len.load(Ordering::Acquire);
        }
        if cfg.fsync != FsyncPolicy::Never {
            sync_dir(&self.dir)?;
        }
        Ok(Some(SourceRetention {
            source_id: self.id,
            segments_deleted: removed.len(),
            bytes_freed: bytes,
            first_seq: self.first_seq(),
        }))
    }

    pub(crate) fn stats(&self) -> SourceStats {
        let segs = self.segments();
        SourceStats {
            source_id: self.id,
            segments: segs.len(),
            bytes: segs.iter().map(|s| s.len.load(Ordering::Acquire)).sum(),
            records: segs.iter().map(|s| s.count.load(Ordering::Acquire)).sum(),
            first_seq: segs.first().map(|s| s.first_seq),
            last_seq: self.last_seq(),
            durable_seq: self.durable_seq(),
        }
    }
}

/// What retention removed from one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRetention {
    /// The source.
    pub source_id: SourceId,
    /// Segments deleted (oldest first).
    pub segments_deleted: usize,
    /// Bytes of segment files deleted.
    pub bytes_freed: u64,
    /// Oldest seq still held afterwards.
    pub first_seq: Option<u64>,
}

/// Sizes and positions of one source, for metrics and `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceStats {
    /// The source.
    pub source_id: SourceId,
    /// Segment files, the active one included.
    pub segments: usize,
    /// Bytes in those files (frames included).
    pub bytes: u64,
    /// Records held.
    pub records: u64,
    /// Oldest seq held.
    pub first_seq: Option<u64>,
    /// Newest seq held.
    pub last_seq: Option<u64>,
    /// Newest seq known durable (see [`crate::Journal::durable_seq`]).
    pub durable_seq: Option<u64>,
}

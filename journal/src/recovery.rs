//! What [`crate::Journal::open`] does to each source directory, and the report it returns.
//!
//! Sealed segments were fsynced when they were sealed, so they must be intact: each is
//! loaded from its `.idx` sidecar, or scanned in full when that is missing or stale, and
//! any bad frame in one is an [`Error::Corrupt`] naming the file and byte (nothing is
//! changed on disk). The last segment is always scanned, because a crash or power loss can
//! leave a torn or garbled tail there: everything from the first bad frame on is cut
//! (the file is truncated and fsynced) and reported. If the cut region still holds intact
//! records (damage in the middle of the tail, as a power loss with `fsync = "never"` can
//! leave), its bytes are first saved next to the segment as `<first-seq>.<offset>.cut`, so
//! nothing is destroyed without a copy. A last segment left with no records is deleted and
//! the one before it becomes the tail.

use crate::config::JournalConfig;
use crate::error::{Error, IoContext, Result};
use crate::segment::{
    count_intact, idx_path, open_rw, parse_name, remove_if_exists, scan, sync_dir, IdxFile, Scan, Segment,
};
use crate::source::SourceLog;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use tickmesh_codec::SourceId;

/// What open found and repaired, per source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// One entry per source directory, sorted by source id.
    pub sources: Vec<SourceRecovery>,
    /// Entries in the journal directories that are not journal files (left untouched).
    pub ignored: Vec<PathBuf>,
}

impl RecoveryReport {
    /// The entry of one source.
    pub fn source(&self, id: &SourceId) -> Option<&SourceRecovery> {
        self.sources.iter().find(|s| s.source_id == *id)
    }

    /// True when no bytes were cut anywhere.
    pub fn is_clean(&self) -> bool {
        self.sources.iter().all(|s| s.cuts.is_empty())
    }
}

impl std::fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "journal opened {} source(s)", self.sources.len())?;
        for s in &self.sources {
            for c in &s.cuts {
                write!(
                    f,
                    "; source {}: cut {} byte(s) ({} intact record(s)) at byte {} of {}: {}",
                    s.source_id,
                    c.bytes,
                    c.records,
                    c.offset,
                    c.path.display(),
                    c.reason
                )?;
                if let Some(p) = &c.saved_to {
                    write!(f, " (cut bytes saved to {})", p.display())?;
                }
            }
        }
        if !self.ignored.is_empty() {
            write!(f, "; ignored {} unknown entr(ies)", self.ignored.len())?;
        }
        Ok(())
    }
}

/// Recovery of one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRecovery {
    /// The source.
    pub source_id: SourceId,
    /// Segments after recovery.
    pub segments: usize,
    /// Oldest seq held after recovery.
    pub first_seq: Option<u64>,
    /// Newest seq held after recovery: appends continue above it.
    pub last_seq: Option<u64>,
    /// Bytes cut from the tail, over all cuts.
    pub bytes_cut: u64,
    /// Intact records (CRC and codec validation pass) found in the cut bytes. 0 for a
    /// plain torn write; more means damage *before* the end of the tail (see the module doc).
    pub records_cut: u64,
    /// Each cut, in the order made (more than one only if a whole last segment was
    /// removed and the one before it then needed a cut too).
    pub cuts: Vec<TailCut>,
    /// `.idx` sidecars rebuilt by scanning their segment.
    pub indexes_rebuilt: usize,
}

/// One truncation of a segment's tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailCut {
    /// The segment.
    pub path: PathBuf,
    /// New length of the file: the first bad frame started here.
    pub offset: u64,
    /// Bytes removed.
    pub bytes: u64,
    /// Intact records among them.
    pub records: u64,
    /// What was wrong at `offset`.
    pub reason: String,
    /// Where the removed bytes were saved (only when `records > 0`).
    pub saved_to: Option<PathBuf>,
    /// The segment held no record before `offset` and was deleted.
    pub file_removed: bool,
}

/// Most cut bytes read to count intact records and save them; a larger tail than this is
/// not a torn write of ours.
const MAX_CUT_READ: u64 = 1 << 30;

fn segment_from(first_seq: u64, path: PathBuf, file: std::fs::File, s: &Scan, verified: bool) -> Segment {
    Segment {
        first_seq,
        path,
        file,
        len: AtomicU64::new(s.valid_len),
        last_seq: AtomicU64::new(s.last_seq),
        ts_max: AtomicU64::new(s.ts_max),
        count: AtomicU64::new(s.count),
        index: RwLock::new(s.index.clone()),
        verified,
    }
}

/// Opens one source directory: loads sealed segments, repairs the tail.
pub(crate) fn open_source(
    dir: &Path,
    id: SourceId,
    cfg: &JournalConfig,
    ignored: &mut Vec<PathBuf>,
) -> Result<(SourceLog, SourceRecovery)> {
    let mut segs: Vec<(u64, PathBuf)> = Vec::new();
    let mut idxs: Vec<(u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).ctx("listing source directory", dir)? {
        let entry = entry.ctx("listing source directory", dir)?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(seq) = parse_name(&name, "seg") {
            segs.push((seq, path));
        } else if let Some(seq) = parse_name(&name, "idx") {
            idxs.push((seq, path));
        } else if name.ends_with(".idx.tmp") {
            remove_if_exists(&path)?;
        } else if !name.ends_with(".cut") {
            ignored.push(path);
        }
    }
    segs.sort();
    for (seq, path) in &idxs {
        if segs.binary_search_by_key(seq, |s| s.0).is_err() {
            // Left behind when retention or recovery deleted its segment.
            remove_if_exists(path)?;
        }
    }

    let mut rec = SourceRecovery {
        source_id: id,
        segments: 0,
        first_seq: None,
        last_seq: None,
        bytes_cut: 0,
        records_cut: 0,
        cuts: Vec::new(),
        indexes_rebuilt: 0,
    };
    let mut loaded: Vec<Arc<Segment>> = Vec::new();
    let sealed = segs.len().saturating_sub(1);
    for (first, path) in &segs[..sealed] {
        let seg = open_sealed(*first, path, &id, cfg, &mut rec)?;
        check_follows(loaded.last(), &seg)?;
        loaded.push(Arc::new(seg));
    }

    let mut tail = segs.last().cloned();
    while let Some((first, path)) = tail.take() {
        let file = open_rw(&path)?;
        let file_len = file.metadata().ctx("reading metadata of segment", &path)?.len();
        let s = scan(&file, &path, &id, first, cfg.index_every)?;
        if file_len > s.valid_len {
            let reason = s.damage.as_ref().map_or_else(|| "bytes after the last frame".to_string(), |d| d.1.clone());
            let cut = cut_tail(&file, &path, s.valid_len, file_len, reason, s.count == 0)?;
            rec.bytes_cut += cut.bytes;
            rec.records_cut += cut.records;
            rec.cuts.push(cut);
        }
        if s.count == 0 {
            drop(file);
            remove_if_exists(&path)?;
            remove_if_exists(&idx_path(&path))?;
            sync_dir(dir)?;
            // The segment before becomes the tail; scan it as one.
            tail = loaded.pop().map(|p| (p.first_seq, p.path.clone()));
            continue;
        }
        let seg = segment_from(first, path, file, &s, true);
        check_follows(loaded.last(), &seg)?;
        // The active segment has no sidecar: it would be stale after the next append.
        remove_if_exists(&idx_path(&seg.path))?;
        // What open reports as durable must be on disk, whatever wrote it before.
        seg.file.sync_data().ctx("syncing segment", &seg.path)?;
        loaded.push(Arc::new(seg));
    }

    rec.segments = loaded.len();
    rec.first_seq = loaded.first().map(|s| s.first_seq);
    let log = SourceLog::new(id, dir.to_owned(), loaded);
    rec.last_seq = log.last_seq();
    Ok((log, rec))
}

/// Loads a sealed segment from its sidecar, or scans it (strictly) and rebuilds the sidecar.
fn open_sealed(
    first: u64,
    path: &Path,
    id: &SourceId,
    cfg: &JournalConfig,
    rec: &mut SourceRecovery,
) -> Result<Segment> {
    let file = open_rw(path)?;
    let file_len = file.metadata().ctx("reading metadata of segment", path)?.len();
    if let Some(idx) = IdxFile::load(path, first, file_len) {
        // A sidecar from an older `index_every` is still correct, only denser or sparser.
        return Ok(Segment {
            first_seq: first,
            path: path.to_owned(),
            file,
            len: AtomicU64::new(idx.seg_len),
            last_seq: AtomicU64::new(idx.last_seq),
            ts_max: AtomicU64::new(idx.ts_max),
            count: AtomicU64::new(idx.count),
            index: RwLock::new(idx.index),
            verified: false,
        });
    }
    let s = scan(&file, path, id, first, cfg.index_every)?;
    if let Some((offset, reason)) = s.damage {
        return Err(Error::Corrupt {
            path: path.to_owned(),
            offset,
            reason: format!("{reason} (in a sealed segment, so this is not a torn write)"),
        });
    }
    if s.count == 0 {
        return Err(Error::Corrupt {
            path: path.to_owned(),
            offset: 0,
            reason: "the sealed segment is empty but later segments exist".to_string(),
        });
    }
    let seg = segment_from(first, path.to_owned(), file, &s, true);
    if let Err(e) = IdxFile::of(&seg).store(path) {
        tracing::warn!(error = %e, "journal index not written; the next open scans the segment again");
    }
    rec.indexes_rebuilt += 1;
    Ok(seg)
}

/// Seqs must rise across segments too.
fn check_follows(prev: Option<&Arc<Segment>>, seg: &Segment) -> Result<()> {
    let Some(prev) = prev else { return Ok(()) };
    let last = prev.last_seq.load(std::sync::atomic::Ordering::Acquire);
    if seg.first_seq <= last {
        return Err(Error::Corrupt {
            path: seg.path.clone(),
            offset: 0,
            reason: format!(
                "its first seq {} is not above the last seq {last} of the previous segment {}",
                seg.first_seq,
                prev.path.display()
            ),
        });
    }
    Ok(())
}

/// Truncates `file` to `valid_len`, first saving the cut bytes if they hold intact records.
fn cut_tail(
    file: &std::fs::File,
    path: &Path,
    valid_len: u64,
    file_len: u64,
    reason: String,
    file_removed: bool,
) -> Result<TailCut> {
    let bytes = file_len - valid_len;
    let mut region = vec![0u8; bytes.min(MAX_CUT_READ) as usize];
    file.read_exact_at(&mut region, valid_len).ctx("reading the damaged tail of segment", path)?;
    let records = count_intact(&region);
    let saved_to = if records > 0 {
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let cut_path = path.with_file_name(format!("{stem}.{valid_len}.cut"));
        let mut f = std::fs::File::create(&cut_path).ctx("saving cut bytes to", &cut_path)?;
        f.write_all(&region).ctx("saving cut bytes to", &cut_path)?;
        f.sync_all().ctx("syncing", &cut_path)?;
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
        Some(cut_path)
    } else {
        None
    };
    tracing::warn!(
        path = %path.display(), offset = valid_len, bytes, records, reason = %reason,
        "journal tail cut on open"
    );
    file.set_len(valid_len).ctx("truncating segment", path)?;
    file.sync_all().ctx("syncing segment", path)?;
    Ok(TailCut { path: path.to_owned(), offset: valid_len, bytes, records, reason, saved_to, file_removed })
}

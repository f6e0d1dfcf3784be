//! [`Journal`]: the set of sources in one directory, the append API, and the
//! `journal-sync` thread for group commit.

use crate::config::{FsyncPolicy, JournalConfig};
use crate::error::{Error, IoContext, Result};
use crate::reader::Reader;
use crate::recovery::{open_source, RecoveryReport};
use crate::source::{lock, Appended, Item, SourceLog, SourceRetention, SourceStats};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tickmesh_codec::{access_untrusted, SourceId};

/// Outcome of [`Journal::append_batch`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchAppended {
    /// Records written.
    pub appended: u64,
    /// Records skipped because their seq was not above their source's last seq (the
    /// batch form of [`Error::OutOfOrder`]).
    pub duplicates: u64,
}

/// What [`Journal::apply_retention`] deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Sources that lost at least one segment, sorted by source id.
    pub sources: Vec<SourceRetention>,
}

impl RetentionReport {
    /// Bytes deleted over all sources.
    pub fn bytes_freed(&self) -> u64 {
        self.sources.iter().map(|s| s.bytes_freed).sum()
    }
}

/// Wakes the `journal-sync` thread early (record threshold) or for shutdown.
#[derive(Debug, Default)]
struct SyncSignal {
    /// Set by appenders when a round is due; saves them the mutex while one is pending.
    kicked: AtomicBool,
    stop: Mutex<bool>,
    cv: Condvar,
}

/// Lets [`Journal::wait_durable`] sleep until a durable seq moves. Notifiers take the
/// mutex only when someone waits (`waiters`, SeqCst on both sides with `durable_seq`).
#[derive(Debug, Default)]
struct DurableSignal {
    waiters: AtomicUsize,
    m: Mutex<()>,
    cv: Condvar,
}

impl DurableSignal {
    fn notify(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            drop(lock(&self.m));
            self.cv.notify_all();
        }
    }
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    cfg: JournalConfig,
    sources: RwLock<BTreeMap<SourceId, Arc<SourceLog>>>,
    sync: SyncSignal,
    durable: DurableSignal,
    /// Holds the directory's `LOCK` file locked for the journal's lifetime.
    _lock: File,
}

impl Inner {
    fn get(&self, id: &SourceId) -> Option<Arc<SourceLog>> {
        self.sources.read().unwrap_or_else(PoisonError::into_inner).get(id).cloned()
    }

    fn all(&self) -> Vec<Arc<SourceLog>> {
        self.sources.read().unwrap_or_else(PoisonError::into_inner).values().cloned().collect()
    }

    /// The source's log, created (in memory; its directory on first append) if new.
    fn get_or_create(&self, id: &SourceId) -> Result<Arc<SourceLog>> {
        if let Some(log) = self.get(id) {
            return Ok(log);
        }
        if matches!(id.as_str(), "." | "..") {
            return Err(Error::ReservedSourceId { source_id: *id });
        }
        let mut map = self.sources.write().unwrap_or_else(PoisonError::into_inner);
        let log =
            map.entry(*id).or_insert_with(|| Arc::new(SourceLog::new(*id, self.dir.join(id.as_str()), Vec::new())));
        Ok(log.clone())
    }

    fn kick(&self) {
        if !self.sync.kicked.swap(true, Ordering::AcqRel) {
            let _g = lock(&self.sync.stop);
            self.sync.cv.notify_one();
        }
    }
}

/// An append-only, segmented log of codec records per source, in one directory.
///
/// `Send + Sync`: share it with `Arc`. Appends to different sources run in parallel (one
/// lock per source); readers never take a source's append lock.
///
/// Dropping the journal stops the `journal-sync` thread after a last round, so with
/// `fsync = "group"` everything appended before the drop is durable when it returns.
#[derive(Debug)]
pub struct Journal {
    inner: Arc<Inner>,
    syncer: Option<JoinHandle<()>>,
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir`: validates `cfg`, takes the
    /// directory's lock file, loads every source, repairs torn tails (see
    /// [`crate::recovery`]) and, with `fsync = "group"`, starts the `journal-sync` thread.
    pub fn open(dir: &Path, cfg: JournalConfig) -> Result<(Journal, RecoveryReport)> {
        let mut problems = Vec::new();
        cfg.validate(&mut problems);
        if !problems.is_empty() {
            return Err(Error::Config { problems });
        }
        std::fs::create_dir_all(dir).ctx("creating journal directory", dir)?;
        let lock_path = dir.join("LOCK");
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .ctx("opening lock file", &lock_path)?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(Error::Locked { path: dir.to_owned() }),
            Err(TryLockError::Error(e)) => return Err(Error::io("locking", lock_path, e)),
        }

        let mut entries = Vec::new();
        for entry in std::fs::read_dir(dir).ctx("listing journal directory", dir)? {
            let entry = entry.ctx("listing journal directory", dir)?;
            let is_dir = entry.file_type().ctx("reading type of", &entry.path())?.is_dir();
            entries.push((entry.file_name().to_string_lossy().into_owned(), entry.path(), is_dir));
        }
        entries.sort();
        let mut report = RecoveryReport::default();
        let mut sources = BTreeMap::new();
        for (name, path, is_dir) in entries {
            if name == "LOCK" {
                continue;
            }
            match SourceId::new(&name) {
                Ok(id) if is_dir && !matches!(name.as_str(), "." | "..") => {
                    let (log, rec) = open_source(&path, id, &cfg, &mut report.ignored)?;
                    sources.insert(id, Arc::new(log));
                    report.sources.push(rec);
                }
                _ => report.ignored.push(path),
            }
        }
        report.sources.sort_by_key(|s| s.source_id);

        let inner = Arc::new(Inner {
            dir: dir.to_owned(),
            cfg,
            sources: RwLock::new(sources),
            sync: SyncSignal::default(),
            durable: DurableSignal::default(),
            _lock: lock_file,
        });
        let syncer = if inner.cfg.fsync == FsyncPolicy::Group {
            let inner = inner.clone();
            let handle = std::thread::Builder::new()
                .name("journal-sync".to_string())
                .spawn(move || run_syncer(&inner))
                .ctx("starting the journal-sync thread for", dir)?;
            Some(handle)
        } else {
            None
        };
        Ok((Journal { inner, syncer }, report))
    }

    /// The directory this journal lives in.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The config it was opened with.
    pub fn config(&self) -> &JournalConfig {
        &self.inner.cfg
    }

    /// Appends one record (bytes from `Record::encode`) to its source's log.
    ///
    /// The bytes are validated with `codec::access_untrusted` first. A seq not above the
    /// source's last is [`Error::OutOfOrder`] (callers dedupe with it); seq 0 is
    /// [`Error::Unsequenced`]. Holes are fine. Returns when the bytes are written to the OS,
    /// and with `fsync = "always"` when they are on disk.
    pub fn append(&self, record: &[u8]) -> Result<Appended> {
        let rec = access_untrusted(record).map_err(|source| Error::InvalidRecord { index: 0, source })?;
        let source_id = rec.source_id();
        let item = Item { seq: rec.seq(), ts_ingest: rec.ts_ingest(), bytes: record };
        if item.seq == 0 {
            return Err(Error::Unsequenced { source_id });
        }
        let log = self.inner.get_or_create(&source_id)?;
        let (at, kick) = log.append(&self.inner.cfg, item)?;
        if kick {
            self.inner.kick();
        }
        self.inner.durable.notify();
        Ok(at)
    }

    /// Appends many records, possibly of several sources, with one write (and, with
    /// `fsync = "always"`, one fsync) per source and segment touched.
    ///
    /// Every record is validated before anything is written: an invalid one fails the
    /// whole call with [`Error::InvalidRecord`] naming its position. Records whose seq is
    /// not above their source's last seq (in the journal or earlier in the batch) are
    /// skipped and counted in [`BatchAppended::duplicates`]. Sources are written one after
    /// another; if a write fails, sources before it in id order are already written
    /// (their `last_seq` shows it).
    pub fn append_batch<'a>(&self, records: impl IntoIterator<Item = &'a [u8]>) -> Result<BatchAppended> {
        let mut items: Vec<(SourceId, Item<'a>)> = Vec::new();
        for (index, bytes) in records.into_iter().enumerate() {
            let rec = access_untrusted(bytes).map_err(|source| Error::InvalidRecord { index, source })?;
            let source_id = rec.source_id();
            if rec.seq() == 0 {
                return Err(Error::Unsequenced { source_id });
            }
            items.push((source_id, Item { seq: rec.seq(), ts_ingest: rec.ts_ingest(), bytes }));
        }
        // Stable: records of one source keep their order.
        items.sort_by_key(|(id, _)| *id);
        let mut out = BatchAppended::default();
        let mut run: Vec<Item<'a>> = Vec::new();
        let mut kick = false;
        let mut i = 0;
        while i < items.len() {
            let id = items[i].0;
            run.clear();
            while i < items.len() && items[i].0 == id {
                run.push(items[i].1);
                i += 1;
            }
            let log = self.inner.get_or_create(&id)?;
            let (n, dups, k) = log.append_many(&self.inner.cfg, &run)?;
            out.appended += n;
            out.duplicates += dups;
            kick |= k;
        }
        if kick {
            self.inner.kick();
        }
        self.inner.durable.notify();
        Ok(out)
    }

    /// Newest seq held for `src`, `None` if it has no record.
    pub fn last_seq(&self, src: &SourceId) -> Option<u64> {
        self.inner.get(src)?.last_seq()
    }

    /// Oldest seq held for `src` (it rises as retention deletes segments). A caller asked
    /// to serve from a seq below it can tell the journal no longer holds that point.
    pub fn first_seq(&self, src: &SourceId) -> Option<u64> {
        self.inner.get(src)?.first_seq()
    }

    /// Highest seq of `src` known to be on disk. With `fsync = "never"` it is the highest
    /// seq written to the OS (safe from a process crash, not from a power loss), which is
    /// [`Journal::last_seq`]. After [`Journal::open`] it is the last seq recovered.
    pub fn durable_seq(&self, src: &SourceId) -> Option<u64> {
        self.inner.get(src)?.durable_seq()
    }

    /// `(source, last seq)` of every source holding records, sorted by source id: what a
    /// node advertises to its peers for catch-up.
    pub fn positions(&self) -> Vec<(SourceId, u64)> {
        let map = self.inner.sources.read().unwrap_or_else(PoisonError::into_inner);
        map.iter().filter_map(|(id, log)| Some((*id, log.last_seq()?))).collect()
    }

    /// Sizes and positions of every source, sorted by source id.
    pub fn stats(&self) -> Vec<SourceStats> {
        self.inner.all().iter().map(|l| l.stats()).collect()
    }

    /// fsyncs every source with unsynced records, whatever the policy; on return every
    /// record appended before the call is durable. Returns the first failure after trying
    /// every source.
    pub fn sync(&self) -> Result<()> {
        let mut first_err = None;
        for log in self.inner.all() {
            if let Err(e) = log.sync(true) {
                first_err.get_or_insert(e);
            }
        }
        self.inner.durable.notify();
        first_err.map_or(Ok(()), Err)
    }

    /// Waits until `seq` of `src` is durable or `timeout` passes; returns whether it is.
    /// For callers that must not acknowledge a record before it is on disk under
    /// `fsync = "group"` (with the other policies `append` already returned durable).
    pub fn wait_durable(&self, src: &SourceId, seq: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let sig = &self.inner.durable;
        let mut guard = lock(&sig.m);
        sig.waiters.fetch_add(1, Ordering::SeqCst);
        let done = loop {
            if self.durable_seq(src).is_some_and(|d| d >= seq) {
                break true;
            }
            let now = Instant::now();
            if now >= deadline {
                break false;
            }
            guard = sig.cv.wait_timeout(guard, deadline - now).unwrap_or_else(PoisonError::into_inner).0;
        };
        sig.waiters.fetch_sub(1, Ordering::SeqCst);
        done
    }

    /// A reader of `src` from the first record with `seq >= from_seq` (a seq in a hole
    /// starts at the next record; one beyond the end waits for it). A source with no
    /// record yet gives a reader that picks up its first appends.
    pub fn reader(&self, src: &SourceId, from_seq: u64) -> Result<Reader> {
        Ok(Reader::from_seq(self.inner.get_or_create(src)?, from_seq))
    }

    /// A reader of `src` from the first record (in seq order) with
    /// `ts_ingest >= ts_ingest_ns`.
    pub fn reader_from_time(&self, src: &SourceId, ts_ingest_ns: u64) -> Result<Reader> {
        Ok(Reader::from_time(self.inner.get_or_create(src)?, ts_ingest_ns))
    }

    /// Deletes, per source, the oldest sealed segments beyond `retain_bytes` or whose
    /// newest record is older than `retain_age_secs` before `now_unix_ns`. Never the
    /// active segment, never part of a segment. Readers positioned in a deleted segment
    /// finish it. Call it periodically (say once a minute); time is passed in so tests and
    /// replays control it.
    pub fn apply_retention(&self, now_unix_ns: u64) -> Result<RetentionReport> {
        let mut report = RetentionReport::default();
        if self.inner.cfg.retain_bytes == 0 && self.inner.cfg.retain_age_secs == 0 {
            return Ok(report);
        }
        for log in self.inner.all() {
            if let Some(r) = log.retain(&self.inner.cfg, now_unix_ns)? {
                report.sources.push(r);
            }
        }
        Ok(report)
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        if let Some(handle) = self.syncer.take() {
            *lock(&self.inner.sync.stop) = true;
            self.inner.sync.cv.notify_one();
            // A panic in the sync thread was already reported by the panic hook.
            let _ = handle.join();
        }
    }
}

/// The `journal-sync` thread: every `group_commit_us` (or sooner when an appender kicks),
/// fsync each source with unsynced records, without taking any append lock. Failures are
/// logged once and make that source refuse appends (`Error::Failed`).
fn run_syncer(inner: &Inner) {
    let period = Duration::from_micros(inner.cfg.group_commit_us);
    loop {
        let stop = {
            let mut stop = lock(&inner.sync.stop);
            if !*stop && !inner.sync.kicked.load(Ordering::Acquire) {
                stop = inner.sync.cv.wait_timeout(stop, period).unwrap_or_else(PoisonError::into_inner).0;
            }
            *stop
        };
        inner.sync.kicked.store(false, Ordering::Release);
        for log in inner.all() {
            if log.needs_sync() {
                // The error is logged and remembered by the source itself.
                let _ = log.sync(false);
            }
        }
        inner.durable.notify();
        if stop {
            return;
        }
    }
}

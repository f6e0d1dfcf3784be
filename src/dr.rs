//! Disaster recovery at the journal level: backup, point-in-time restore, and recovery as a
//! plan an operator approves (`tickmesh backup`, `restore`, `recover plan | apply`).
//!
//! # A backup
//! ```text
//! <target>/manifest.json               the newest manifest (written last: a backup is complete once it is there)
//! <target>/manifests/<NNNNNN>.json     every backup's manifest, numbered from 1
//! <target>/journal/<src>/<seq>.seg     a copy of each segment's intact frames
//! <target>/audit/audit.jsonl, head     the audit trail (head copied first, so the log is never behind it)
//! ```
//! The first backup to a target is full; later ones are incremental: a segment whose intact
//! length is what the previous manifest recorded is not copied again (journal segments are
//! append-only, so the same length means the same bytes). A growing active segment is copied
//! again whole. Segments that retention removed from the journal stay in the backup and in
//! the manifest. Each manifest lists, per source, the seq and `ts_ingest` ranges and, per
//! segment, its length and SHA-256; an older manifest stays restorable because an object
//! only ever grows and its recorded prefix is checked by hash.
//!
//! Backups read the files, not the journal API, so they run next to a live node (the
//! journal's lock is not needed): a frame being written is not intact yet and is left for
//! the next run.
//!
//! # Targets
//! A directory path or a `file://` URL (objects are written to a temporary file, synced and
//! renamed into place), or `s3://BUCKET/PREFIX` through the `object_store` crate (one PUT
//! per object: S3 objects appear whole). Credentials, region and endpoint come from the
//! standard AWS environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`, `AWS_REGION` / `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL` for
//! S3-compatible stores such as MinIO, `AWS_ALLOW_HTTP=true` for a plain-HTTP endpoint).
//! The layout under the prefix is the directory layout above.
//!
//! # Daily full, continuous incremental
//! `tickmesh backup --every SECS` runs until SIGINT/SIGTERM: an incremental backup every
//! `SECS`, and a full one (every segment copied again, whatever the last manifest says)
//! when the last full backup is older than `--full-every` (default 86,400 s). Each manifest
//! records when the last full backup was made, so the schedule survives restarts of the
//! backup process.

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use tickmesh_codec::frame::MAX_RECORD_LEN;
use tickmesh_codec::HEADER_LEN;
use tickmesh_replicate::audit::{Head, HEAD_FILE, LOG_FILE};

/// Left in the state directory by `restore` and `recover apply`. A node that finds it holds
/// its home feeds until a mesh peer has reported how far it holds them (and the node has
/// taken whatever it lacks): a backup is older than what the peers received, and the feeds
/// must continue after the peers' last `seq`, never reuse one. The node removes it then;
/// `tickmesh node --home-without-peers` removes it at start (the operator's override).
pub const RESTORED_MARKER: &str = "restored-from-backup.json";

/// Writes [`RESTORED_MARKER`] (what was restored, for the operator who finds it).
fn mark_restored(state_dir: &Path, from: &[String], at: Option<u64>) -> anyhow::Result<()> {
    let body = serde_json::json!({
        "restored_ns": tickmesh_codec::now_ns(), "from": from, "at": at,
        "meaning": "the node holds its home feeds until a mesh peer reports their positions; see tickmesh node --home-without-peers",
    });
    let path = state_dir.join(RESTORED_MARKER);
    std::fs::write(&path, serde_json::to_vec_pretty(&body)?).with_context(|| format!("writing {}", path.display()))
}

/// `tickmesh node --home-without-peers`: removes [`RESTORED_MARKER`], so the node starts
/// its home feeds after its own journal if no peer reports within a few seconds.
pub fn start_home_without_peers(state_dir: &Path) -> anyhow::Result<()> {
    let path = state_dir.join(RESTORED_MARKER);
    match std::fs::remove_file(&path) {
        Ok(()) => {
            tracing::warn!(file = %path.display(), "--home-without-peers: home feeds will not wait for a peer; seqs peers already hold may be reused");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// One segment in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentEntry {
    /// File name (`<first seq, 20 digits>.seg`).
    pub name: String,
    /// Bytes of intact frames.
    pub len: u64,
    /// SHA-256 of those bytes (hex).
    pub sha256: String,
    /// Records in it.
    pub records: u64,
    /// First and last seq.
    pub first_seq: u64,
    /// Last seq.
    pub last_seq: u64,
    /// Smallest and largest `ts_ingest` (ns).
    pub min_ts: u64,
    /// Largest `ts_ingest`.
    pub max_ts: u64,
}

/// One source in a manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceEntry {
    /// First seq held.
    pub first_seq: u64,
    /// Last seq held.
    pub last_seq: u64,
    /// Records held.
    pub records: u64,
    /// Smallest `ts_ingest` (ns).
    pub min_ts: u64,
    /// Largest `ts_ingest` (ns).
    pub max_ts: u64,
    /// Its segments, oldest first.
    pub segments: Vec<SegmentEntry>,
}

/// A whole file (audit log, head) in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Bytes.
    pub len: u64,
    /// SHA-256 (hex).
    pub sha256: String,
}

/// What one backup holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version (1).
    pub version: u32,
    /// Backup number at this target, from 1.
    pub number: u64,
    /// `full` (the first) or `incremental`.
    pub kind: String,
    /// When it was made (ns).
    pub created_ns: u64,
    /// Sources by id.
    pub sources: BTreeMap<String, SourceEntry>,
    /// The audit log, if the state directory had one.
    pub audit_log: Option<FileEntry>,
    /// Its head anchor.
    pub audit_head: Option<FileEntry>,
    /// When the newest full backup at this target was made (ns; 0 in manifests older
    /// than this field).
    #[serde(default)]
    pub last_full_ns: u64,
}

/// Where backups go: a directory or an object store (see the module docs).
#[derive(Clone)]
pub struct Target {
    /// As given, for messages.
    url: String,
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Dir(PathBuf),
    Object {
        store: std::sync::Arc<dyn object_store::ObjectStore>,
        prefix: String,
        /// object_store is async; the backup and restore commands are not.
        rt: std::sync::Arc<tokio::runtime::Runtime>,
    },
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("url", &self.url).finish_non_exhaustive()
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

impl Target {
    /// Parses a `--to` / `--from` value: a directory, `file://PATH` or `s3://BUCKET[/PREFIX]`.
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        if let Some(p) = url.strip_prefix("file://") {
            return Ok(Target { url: url.to_owned(), backend: Backend::Dir(PathBuf::from(p)) });
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                bail!("backup target {url} names no bucket; write it as s3://BUCKET/PREFIX");
            }
            // reqwest's TLS needs a process-wide rustls provider; ring is the tree's one
            // (an error only means one is installed already).
            let _ = rustls::crypto::ring::default_provider().install_default();
            let store =
                object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket).build().with_context(|| {
                    format!(
                        "backup target {url}: cannot configure S3; set AWS_REGION, AWS_ACCESS_KEY_ID and \
                         AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for an S3-compatible store)"
                    )
                })?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the runtime for object storage")?;
            return Ok(Target {
                url: url.to_owned(),
                backend: Backend::Object {
                    store: std::sync::Arc::new(store),
                    prefix: prefix.trim_matches('/').to_owned(),
                    rt: std::sync::Arc::new(rt),
                },
            });
        }
        if let Some((scheme, _)) = url.split_once("://") {
            bail!("backup target {url}: {scheme}:// is not supported; use a directory path, file://PATH or s3://BUCKET/PREFIX");
        }
        if url.is_empty() {
            bail!("the backup target is empty; give a directory path, file://PATH or s3://BUCKET/PREFIX");
        }
        Ok(Target { url: url.to_owned(), backend: Backend::Dir(PathBuf::from(url)) })
    }

    fn object_path(prefix: &str, key: &str) -> object_store::path::Path {
        if prefix.is_empty() {
            object_store::path::Path::from(key)
        } else {
            object_store::path::Path::from(format!("{prefix}/{key}"))
        }
    }

    /// Where `key` lives, for messages.
    fn describe(&self, key: &str) -> String {
        match &self.backend {
            Backend::Dir(root) => root.join(key).display().to_string(),
            Backend::Object { .. } => format!("{}/{key}", self.url.trim_end_matches('/')),
        }
    }

    /// Writes an object atomically (directory: temporary file, fsync, rename; object store:
    /// one PUT).
    fn put(&self, key: &str, bytes: &[u8]) -> anyhow::Result<()> {
        use object_store::ObjectStoreExt;
        let root = match &self.backend {
            Backend::Dir(root) => root,
            Backend::Object { store, prefix, rt } => {
                let path = Self::object_path(prefix, key);
                rt.block_on(store.put(&path, object_store::PutPayload::from(bytes.to_vec())))
                    .with_context(|| format!("uploading {}", self.describe(key)))?;
                return Ok(());
            }
        };
        let path = root.join(key);
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let tmp = path.with_extension("part");
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(bytes).and_then(|()| f.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming {} into place", tmp.display()))?;
        Ok(())
    }

    fn get(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        use object_store::ObjectStoreExt;
        match &self.backend {
            Backend::Dir(root) => match std::fs::read(root.join(key)) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e).with_context(|| format!("reading {}", self.describe(key))),
            },
            Backend::Object { store, prefix, rt } => {
                let path = Self::object_path(prefix, key);
                rt.block_on(async {
                    match store.get(&path).await {
                        Ok(r) => Ok(Some(r.bytes().await?.to_vec())),
                        Err(object_store::Error::NotFound { .. }) => Ok(None),
                        Err(e) => Err(e),
                    }
                })
                .with_context(|| format!("downloading {}", self.describe(key)))
            }
        }
    }

    /// The newest manifest, if any backup was made here.
    pub fn manifest(&self) -> anyhow::Result<Option<(Manifest, String)>> {
        let Some(b) = self.get("manifest.json")? else { return Ok(None) };
        let m = serde_json::from_slice(&b)
            .with_context(|| format!("{} is not a tickmesh backup manifest", self.describe("manifest.json")))?;
        Ok(Some((m, sha256_hex(&b))))
    }
}

/// SHA-256 as hex.
pub fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

/// What a scan of segment bytes found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scan {
    /// Bytes of intact frames (up to `at`, if given).
    pub len: u64,
    /// Records.
    pub records: u64,
    /// First seq.
    pub first_seq: u64,
    /// Last seq.
    pub last_seq: u64,
    /// Smallest `ts_ingest`.
    pub min_ts: u64,
    /// Largest `ts_ingest`.
    pub max_ts: u64,
}

/// Scans journal frames (u32 length, u32 CRC32C, record) and stops at the first frame that
/// is incomplete or bad, or (with `at`) at the first record whose `ts_ingest` is after `at`.
pub fn scan_frames(bytes: &[u8], at: Option<u64>) -> Scan {
    let mut s = Scan { min_ts: u64::MAX, ..Scan::default() };
    let mut off = 0usize;
    while let Some(head) = bytes.get(off..off + 8) {
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if !(HEADER_LEN..=MAX_RECORD_LEN).contains(&len) {
            break;
        }
        let Some(rec) = bytes.get(off + 8..off + 8 + len) else { break };
        if crc32c::crc32c(rec) != crc {
            break;
        }
        let Ok(r) = tickmesh_codec::access_untrusted(rec) else { break };
        let ts = r.ts_ingest();
        if at.is_some_and(|t| ts > t) {
            break;
        }
        if s.records == 0 {
            s.first_seq = r.seq();
        }
        s.last_seq = r.seq();
        s.records += 1;
        s.min_ts = s.min_ts.min(ts);
        s.max_ts = s.max_ts.max(ts);
        off += 8 + len;
    }
    s.len = off as u64;
    if s.records == 0 {
        s.min_ts = 0;
    }
    s
}

/// The `.seg` files of each source directory under `journal_dir`, sorted.
fn local_segments(journal_dir: &Path) -> anyhow::Result<BTreeMap<String, Vec<PathBuf>>> {
    let mut out = BTreeMap::new();
    let rd = match std::fs::read_dir(journal_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", journal_dir.display())),
    };
    for d in rd {
        let d = d?;
        if !d.file_type()?.is_dir() {
            continue;
        }
        let src = d.file_name().to_string_lossy().into_owned();
        let mut segs: Vec<PathBuf> = std::fs::read_dir(d.path())?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        segs.sort();
        if !segs.is_empty() {
            out.insert(src, segs);
        }
    }
    Ok(out)
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn summarize(segments: Vec<SegmentEntry>) -> SourceEntry {
    let mut e = SourceEntry { segments, ..Default::default() };
    if let (Some(f), Some(l)) = (e.segments.first(), e.segments.last()) {
        e.first_seq = f.first_seq;
        e.last_seq = l.last_seq;
    }
    e.records = e.segments.iter().map(|s| s.records).sum();
    e.min_ts = e.segments.iter().map(|s| s.min_ts).min().unwrap_or(0);
    e.max_ts = e.segments.iter().map(|s| s.max_ts).max().unwrap_or(0);
    e
}

/// What [`backup`] did.
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    /// The manifest written.
    pub manifest: Manifest,
    /// Segments copied this time.
    pub segments_copied: u64,
    /// Segments left as they were (unchanged since the last backup).
    pub segments_unchanged: u64,
    /// Bytes copied.
    pub bytes_copied: u64,
}

/// Backs up `state_dir` (its journal and audit log) to `target`: full the first time,
/// incremental after.
pub fn backup(state_dir: &Path, target: &Target) -> anyhow::Result<BackupReport> {
    backup_with(state_dir, target, false)
}

/// Like [`backup`]; with `full`, every segment is copied again whatever the last manifest
/// says (the daily full backup of `tickmesh backup --every`: it does not depend on the
/// objects earlier runs left).
pub fn backup_with(state_dir: &Path, target: &Target, full: bool) -> anyhow::Result<BackupReport> {
    let journal_dir = state_dir.join("journal");
    if !journal_dir.is_dir() {
        bail!(
            "{} holds no journal; pass the node's --state-dir (the directory with journal/ in it)",
            state_dir.display()
        );
    }
    let prev = target.manifest()?.map(|(m, _)| m);
    let mut sources = BTreeMap::new();
    let (mut copied, mut unchanged, mut bytes_copied) = (0u64, 0u64, 0u64);
    let local = local_segments(&journal_dir)?;
    let mut ids: Vec<String> = local.keys().cloned().collect();
    if let Some(p) = &prev {
        ids.extend(p.sources.keys().filter(|k| !local.contains_key(*k)).cloned());
    }
    ids.sort();
    ids.dedup();
    for src in ids {
        let old: BTreeMap<String, SegmentEntry> = prev
            .as_ref()
            .and_then(|p| p.sources.get(&src))
            .map(|s| s.segments.iter().map(|e| (e.name.clone(), e.clone())).collect())
            .unwrap_or_default();
        let mut segs: BTreeMap<String, SegmentEntry> = old.clone();
        for path in local.get(&src).into_iter().flatten() {
            let name = file_name(path);
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let scan = scan_frames(&bytes, None);
            if scan.records == 0 {
                continue;
            }
            if !full && old.get(&name).is_some_and(|e| e.len == scan.len) {
                unchanged += 1;
                continue;
            }
            let data = &bytes[..scan.len as usize];
            target.put(&format!("journal/{src}/{name}"), data)?;
            copied += 1;
            bytes_copied += scan.len;
            segs.insert(
                name.clone(),
                SegmentEntry {
                    name,
                    len: scan.len,
                    sha256: sha256_hex(data),
                    records: scan.records,
                    first_seq: scan.first_seq,
                    last_seq: scan.last_seq,
                    min_ts: scan.min_ts,
                    max_ts: scan.max_ts,
                },
            );
        }
        if !segs.is_empty() {
            sources.insert(src, summarize(segs.into_values().collect()));
        }
    }
    // Head before log: the copied log is then never shorter than the copied head says.
    let audit_dir = state_dir.join("audit");
    let mut audit_head = prev.as_ref().and_then(|p| p.audit_head.clone());
    let mut audit_log = prev.as_ref().and_then(|p| p.audit_log.clone());
    if let Ok(head) = std::fs::read(audit_dir.join(HEAD_FILE)) {
        let log = std::fs::read(audit_dir.join(LOG_FILE)).unwrap_or_default();
        let cut = log.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
        let log = &log[..cut];
        let (h, l) = (sha256_hex(&head), sha256_hex(log));
        if full || audit_head.as_ref().is_none_or(|e| e.sha256 != h) {
            target.put("audit/head", &head)?;
            bytes_copied += head.len() as u64;
        }
        if full || audit_log.as_ref().is_none_or(|e| e.sha256 != l) {
            target.put("audit/audit.jsonl", log)?;
            bytes_copied += log.len() as u64;
        }
        audit_head = Some(FileEntry { len: head.len() as u64, sha256: h });
        audit_log = Some(FileEntry { len: log.len() as u64, sha256: l });
    }
    let number = prev.as_ref().map_or(1, |p| p.number + 1);
    let is_full = full || prev.is_none();
    let created_ns = tickmesh_codec::now_ns();
    let manifest = Manifest {
        version: 1,
        number,
        kind: if is_full { "full".into() } else { "incremental".into() },
        created_ns,
        sources,
        audit_log,
        audit_head,
        last_full_ns: if is_full { created_ns } else { prev.as_ref().map_or(0, |p| p.last_full_ns) },
    };
    let text = serde_json::to_vec_pretty(&manifest)?;
    target.put(&format!("manifests/{number:06}.json"), &text)?;
    target.put("manifest.json", &text)?;
    Ok(BackupReport { manifest, segments_copied: copied, segments_unchanged: unchanged, bytes_copied })
}

/// One restored source.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RestoredSource {
    /// First seq restored.
    pub first_seq: u64,
    /// Last seq restored.
    pub last_seq: u64,
    /// Records restored.
    pub records: u64,
}

/// Writes `src`'s segments from the backup into `dir/<src>/`, verifying each checksum and
/// cutting at the first record after `at`. `None` when nothing is at or before `at`.
fn restore_source(
    target: &Target,
    src: &str,
    entry: &SourceEntry,
    dir: &Path,
    at: Option<u64>,
) -> anyhow::Result<Option<RestoredSource>> {
    let mut out: Option<RestoredSource> = None;
    for seg in &entry.segments {
        let key = format!("journal/{src}/{}", seg.name);
        let data = target.get(&key)?.with_context(|| {
            format!(
                "{} is missing from the backup; restore from an older manifest or another copy",
                target.describe(&key)
            )
        })?;
        let Some(data) = data.get(..seg.len as usize) else {
            bail!(
                "{} is shorter than its manifest says ({} bytes); the backup is damaged",
                target.describe(&key),
                seg.len
            )
        };
        if sha256_hex(data) != seg.sha256 {
            bail!(
                "{}: checksum mismatch (manifest {}); the backup is damaged: restore from another copy",
                target.describe(&key),
                seg.sha256
            );
        }
        let scan = scan_frames(data, at);
        if scan.records == 0 {
            break;
        }
        let sdir = dir.join(src);
        std::fs::create_dir_all(&sdir).with_context(|| format!("creating {}", sdir.display()))?;
        let path = sdir.join(&seg.name);
        let mut f = std::fs::File::create(&path).with_context(|| format!("writing {}", path.display()))?;
        f.write_all(&data[..scan.len as usize])
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", path.display()))?;
        let r = out.get_or_insert(RestoredSource { first_seq: scan.first_seq, last_seq: 0, records: 0 });
        r.last_seq = scan.last_seq;
        r.records += scan.records;
        if scan.len < seg.len {
            break;
        }
    }
    Ok(out)
}

/// Restores the audit log into `dir` (its `audit/`), cut at entries recorded after `at`
/// (the head is then re-anchored at the last entry kept), and verifies the chain.
fn restore_audit(target: &Target, m: &Manifest, audit_dir: &Path, at: Option<u64>) -> anyhow::Result<u64> {
    let (Some(le), Some(he)) = (&m.audit_log, &m.audit_head) else { return Ok(0) };
    let log = target.get("audit/audit.jsonl")?.context("audit/audit.jsonl is missing from the backup")?;
    let head = target.get("audit/head")?.context("audit/head is missing from the backup")?;
    let log = log.get(..le.len as usize).context("audit/audit.jsonl is shorter than its manifest says")?;
    if sha256_hex(log) != le.sha256 || sha256_hex(&head) != he.sha256 {
        bail!("the audit log in the backup does not match its checksum; the backup is damaged");
    }
    std::fs::create_dir_all(audit_dir)?;
    let (log, head): (Vec<u8>, Vec<u8>) = match at {
        None => (log.to_vec(), head),
        Some(t) => {
            let mut kept = Vec::new();
            let mut last: Option<Head> = None;
            for line in log.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let e: tickmesh_replicate::AuditEntry =
                    serde_json::from_slice(line).context("the audit log in the backup has a bad line")?;
                if e.time_ns > t {
                    break;
                }
                kept.extend_from_slice(line);
                kept.push(b'\n');
                last = Some(Head { index: e.index, hash: e.hash });
            }
            let head = match last {
                Some(h) => serde_json::to_vec(&h)?,
                None => Vec::new(),
            };
            (kept, head)
        }
    };
    std::fs::write(audit_dir.join(LOG_FILE), &log)?;
    if head.is_empty() {
        let _ = std::fs::remove_file(audit_dir.join(HEAD_FILE));
    } else {
        std::fs::write(audit_dir.join(HEAD_FILE), &head)?;
    }
    let r = tickmesh_replicate::AuditLog::verify(&audit_dir.join(LOG_FILE))?;
    if let Some(b) = r.broken {
        bail!("the restored audit log is broken at index {}: {}", b.index, b.reason);
    }
    Ok(r.entries)
}

/// What [`restore`] did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    /// The manifest restored from.
    pub manifest: u64,
    /// Sources restored.
    pub sources: BTreeMap<String, RestoredSource>,
    /// Audit entries restored.
    pub audit_entries: u64,
}

fn has_segments(journal_dir: &Path) -> anyhow::Result<bool> {
    Ok(!local_segments(journal_dir)?.is_empty())
}

/// Opens the journal in `dir` once, so a restore that the journal would not accept fails here.
fn check_journal(dir: &Path) -> anyhow::Result<()> {
    let (j, report) = tickmesh_journal::Journal::open(dir, tickmesh_journal::JournalConfig::default())
        .with_context(|| format!("the restored journal in {} does not open", dir.display()))?;
    if !report.is_clean() {
        tracing::warn!(?report, "restored journal needed repair");
    }
    drop(j);
    Ok(())
}

/// Restores the newest backup at `target` into `state_dir`, every source up to its records
/// with `ts_ingest <= at` when `at` is given. Refuses a state directory that holds a journal.
pub fn restore(target: &Target, state_dir: &Path, at: Option<u64>) -> anyhow::Result<RestoreReport> {
    let (m, _) =
        target.manifest()?.with_context(|| format!("{} holds no manifest.json; is it a tickmesh backup?", target))?;
    let journal_dir = state_dir.join("journal");
    if has_segments(&journal_dir)? {
        bail!(
            "{} already holds a journal; restore into an empty state directory, move it aside, or use \
             `tickmesh recover plan` to merge with what is there",
            journal_dir.display()
        );
    }
    let tmp = state_dir.join("journal.restoring");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut sources = BTreeMap::new();
    for (src, entry) in &m.sources {
        if let Some(r) = restore_source(target, src, entry, &tmp, at)? {
            sources.insert(src.clone(), r);
        }
    }
    check_journal(&tmp)?;
    let _ = std::fs::remove_dir_all(&journal_dir);
    std::fs::rename(&tmp, &journal_dir)
        .with_context(|| format!("moving the restored journal to {}", journal_dir.display()))?;
    let audit_dir = state_dir.join("audit");
    let audit_entries = if audit_dir.join(LOG_FILE).exists() {
        tracing::warn!("{} exists and is kept; the backup's audit log was not restored", audit_dir.display());
        0
    } else {
        restore_audit(target, &m, &audit_dir, at)?
    };
    mark_restored(state_dir, &[target.to_string()], at)?;
    Ok(RestoreReport { manifest: m.number, sources, audit_entries })
}

/// A source's state in a local journal, as a plan records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalSource {
    /// First seq.
    pub first_seq: u64,
    /// Last seq.
    pub last_seq: u64,
    /// Segment file names and lengths.
    pub files: Vec<(String, u64)>,
}

/// What a plan was made from; `apply` refuses when it changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanInputs {
    /// SHA-256 of each backup's manifest.json, in `--from` order.
    pub manifest_sha256: Vec<String>,
    /// Each backup's number.
    pub manifest_number: Vec<u64>,
    /// The local journal's sources.
    pub local: BTreeMap<String, LocalSource>,
    /// Whether the state directory has an audit log.
    pub local_audit: bool,
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanStep {
    /// Source id.
    pub src: String,
    /// `restore` (nothing local), `replace` (a backup is ahead: local moved aside), `keep` (local is as far or further).
    pub action: String,
    /// Local seq range.
    pub local: Option<(u64, u64)>,
    /// The chosen backup's seq range (up to `at`, when given).
    pub backup: Option<(u64, u64)>,
    /// The chosen backup (one of `from`): the one that holds the source furthest.
    pub backup_from: Option<String>,
    /// Segments fetched from it.
    pub fetch: Vec<String>,
    /// What the mesh does after the node starts.
    pub then: String,
}

/// A recovery plan (`tickmesh recover plan`), applied by `tickmesh recover apply`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoverPlan {
    /// Format version (1).
    pub version: u32,
    /// When it was made (ns).
    pub created_ns: u64,
    /// The state directory.
    pub state_dir: PathBuf,
    /// The backups: this region's own first, then any others (a peer region's backup holds
    /// this region's home sources as the peer received them, often further than our own).
    pub from: Vec<String>,
    /// Point in time (ns), if any.
    pub at: Option<u64>,
    /// Inputs.
    pub inputs: PlanInputs,
    /// Steps, one per source.
    pub steps: Vec<PlanStep>,
    /// Whether the first backup's audit log is restored (only when there is none locally;
    /// another region's audit log is never taken).
    pub restore_audit: bool,
}

fn plan_inputs(state_dir: &Path, targets: &[Target]) -> anyhow::Result<(PlanInputs, Vec<Manifest>)> {
    let mut manifests = Vec::new();
    let (mut shas, mut numbers) = (Vec::new(), Vec::new());
    for t in targets {
        let (m, sha) =
            t.manifest()?.with_context(|| format!("{} holds no manifest.json; is it a tickmesh backup?", t))?;
        shas.push(sha);
        numbers.push(m.number);
        manifests.push(m);
    }
    let mut local = BTreeMap::new();
    for (src, segs) in local_segments(&state_dir.join("journal"))? {
        let mut files = Vec::new();
        let (mut first, mut last) = (None, 0);
        for p in segs {
            let bytes = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
            let s = scan_frames(&bytes, None);
            files.push((file_name(&p), bytes.len() as u64));
            if s.records > 0 {
                first.get_or_insert(s.first_seq);
                last = s.last_seq;
            }
        }
        if let Some(first) = first {
            local.insert(src, LocalSource { first_seq: first, last_seq: last, files });
        }
    }
    let local_audit = state_dir.join("audit").join(LOG_FILE).exists();
    Ok((PlanInputs { manifest_sha256: shas, manifest_number: numbers, local, local_audit }, manifests))
}

/// The last seq of `entry` at or before `at`, and the segments needed for it.
fn backup_range(entry: &SourceEntry, at: Option<u64>) -> Option<((u64, u64), Vec<String>)> {
    let mut fetch = Vec::new();
    let mut last = None;
    for s in &entry.segments {
        if at.is_some_and(|t| s.min_ts > t) {
            break;
        }
        fetch.push(s.name.clone());
        last = Some(s.last_seq);
        if at.is_some_and(|t| s.max_ts > t) {
            // Cut inside this segment; the exact seq is found when it is read.
            break;
        }
    }
    last.map(|l| ((entry.first_seq, l), fetch))
}

/// Makes a plan: per source, restore from the backup that holds it furthest, replace the
/// local copy with it, or keep the local copy.
pub fn plan(state_dir: &Path, from: &[String], at: Option<u64>) -> anyhow::Result<RecoverPlan> {
    if from.is_empty() {
        bail!("give at least one backup with --from");
    }
    let targets = from.iter().map(|f| Target::parse(f)).collect::<anyhow::Result<Vec<_>>>()?;
    let (inputs, manifests) = plan_inputs(state_dir, &targets)?;
    let mut ids: Vec<&String> = manifests.iter().flat_map(|m| m.sources.keys()).chain(inputs.local.keys()).collect();
    ids.sort();
    ids.dedup();
    let mut steps = Vec::new();
    for src in ids {
        let local = inputs.local.get(src).map(|l| (l.first_seq, l.last_seq));
        // The first backup wins ties: it is this region's own.
        let mut best: Option<(usize, (u64, u64), Vec<String>)> = None;
        for (i, m) in manifests.iter().enumerate() {
            if let Some((range, fetch)) = m.sources.get(src).and_then(|e| backup_range(e, at)) {
                if best.as_ref().is_none_or(|b| range.1 > b.1 .1) {
                    best = Some((i, range, fetch));
                }
            }
        }
        let (action, fetch) = match (&local, &best) {
            (None, Some((_, _, f))) => ("restore", f.clone()),
            (Some((_, l)), Some((_, (_, b), f))) if b > l => ("replace", f.clone()),
            _ => ("keep", Vec::new()),
        };
        let have = match action {
            "keep" => local.map(|l| l.1),
            _ => best.as_ref().map(|b| b.1 .1),
        };
        let then = match have {
            Some(s) => format!(
                "after start the mesh backfills records after seq {s} from the peers that hold them; a home source continues at seq {} when no peer holds more",
                s + 1
            ),
            None => "after start the mesh backfills the source from its peers".into(),
        };
        let backup_from = if action == "keep" { None } else { best.as_ref().map(|b| from[b.0].clone()) };
        steps.push(PlanStep {
            src: src.clone(),
            action: action.into(),
            local,
            backup: best.map(|b| b.1),
            backup_from,
            fetch,
            then,
        });
    }
    let restore_audit = !inputs.local_audit && manifests[0].audit_log.is_some();
    Ok(RecoverPlan {
        version: 1,
        created_ns: tickmesh_codec::now_ns(),
        state_dir: state_dir.to_owned(),
        from: from.to_vec(),
        at,
        inputs,
        steps,
        restore_audit,
    })
}

/// What [`apply`] did: per source, the action and the restored range.
#[derive(Debug, Clone, Serialize)]
pub struct ApplyReport {
    /// Sources restored or replaced.
    pub restored: BTreeMap<String, RestoredSource>,
    /// Sources kept as they were.
    pub kept: Vec<String>,
    /// Where replaced local sources were moved.
    pub moved_aside: Option<PathBuf>,
    /// Audit entries restored.
    pub audit_entries: u64,
}

/// Applies a plan, after checking that the backup and the state directory are what the plan
/// saw and that no node holds the journal.
pub fn apply(p: &RecoverPlan) -> anyhow::Result<ApplyReport> {
    let targets = p.from.iter().map(|f| Target::parse(f)).collect::<anyhow::Result<Vec<_>>>()?;
    let (now, manifests) = plan_inputs(&p.state_dir, &targets)?;
    if now != p.inputs {
        bail!(
            "the inputs changed since the plan was made (a backup at {} or the journal in {}); nothing was changed: \
             make a new plan with `tickmesh recover plan` and review it",
            p.from.join(", "),
            p.state_dir.display()
        );
    }
    let journal_dir = p.state_dir.join("journal");
    std::fs::create_dir_all(&journal_dir)?;
    // Fails while a node holds the journal's lock.
    drop(
        tickmesh_journal::Journal::open(&journal_dir, tickmesh_journal::JournalConfig::default())
            .with_context(|| format!("{} is in use or damaged; stop the node first", journal_dir.display()))?,
    );
    let tmp = p.state_dir.join("journal.recovering");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let mut restored = BTreeMap::new();
    let mut kept = Vec::new();
    for step in &p.steps {
        if step.action == "keep" {
            kept.push(step.src.clone());
            continue;
        }
        let i = step
            .backup_from
            .as_ref()
            .and_then(|f| p.from.iter().position(|x| x == f))
            .with_context(|| format!("the plan names no backup for {}; make a new plan", step.src))?;
        let entry =
            manifests[i].sources.get(&step.src).with_context(|| format!("source {} is not in the backup", step.src))?;
        if let Some(r) = restore_source(&targets[i], &step.src, entry, &tmp, p.at)? {
            restored.insert(step.src.clone(), r);
        }
    }
    check_journal(&tmp)?;
    let aside = p.state_dir.join(format!("journal.before-recover-{}", tickmesh_codec::now_ns()));
    let mut moved = false;
    for src in restored.keys() {
        let cur = journal_dir.join(src);
        if cur.exists() {
            std::fs::create_dir_all(&aside)?;
            std::fs::rename(&cur, aside.join(src)).with_context(|| format!("moving {} aside", cur.display()))?;
            moved = true;
        }
        std::fs::rename(tmp.join(src), &cur).with_context(|| format!("moving the restored {src} into place"))?;
    }
    let _ = std::fs::remove_dir_all(&tmp);
    let audit_entries =
        if p.restore_audit { restore_audit(&targets[0], &manifests[0], &p.state_dir.join("audit"), p.at)? } else { 0 };
    check_journal(&journal_dir)?;
    mark_restored(&p.state_dir, &p.from, p.at)?;
    Ok(ApplyReport { restored, kept, moved_aside: moved.then_some(aside), audit_entries })
}

/// How one source's records agree between two state directories (`tickmesh recover
/// compare`): after a restore, a region and a peer must hold the same bytes under every
/// `seq` both have (a differing one is a reused `seq`), and the region no holes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Comparison {
    /// Source.
    pub src: String,
    /// Last seq in the first directory's journal.
    pub last_seq: u64,
    /// Last seq in the second's.
    pub other_last_seq: u64,
    /// Seqs both hold.
    pub overlap: u64,
    /// Of those, seqs whose records differ (reused seqs).
    pub differing: u64,
    /// The first differing seq.
    pub first_differing: Option<u64>,
    /// Seqs the second holds, up to the first's last seq, that the first lacks.
    pub missing: u64,
}

/// Intact records of `src` in the segment files under `state_dir/journal`, by seq. Reads
/// the files, not the journal API (like a backup), so it runs next to live nodes.
fn journal_records(state_dir: &Path, src: &str) -> anyhow::Result<BTreeMap<u64, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let segs = local_segments(&state_dir.join("journal"))?;
    for path in segs.get(src).into_iter().flatten() {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let len = scan_frames(&bytes, None).len as usize;
        let mut off = 0;
        while off + 8 <= len {
            let n = u32::from_le_bytes([bytes[off], bytes[off + 1], bytes[off + 2], bytes[off + 3]]) as usize;
            let rec = &bytes[off + 8..off + 8 + n];
            // scan_frames checked every frame up to `len`.
            let seq = tickmesh_codec::access_untrusted(rec).map(|r| r.seq()).unwrap_or(0);
            out.insert(seq, rec.to_vec());
            off += 8 + n;
        }
    }
    Ok(out)
}

/// Compares `src` between two state directories (see [`Comparison`]).
pub fn compare(first: &Path, second: &Path, src: &str) -> anyhow::Result<Comparison> {
    let a = journal_records(first, src)?;
    let b = journal_records(second, src)?;
    let mut c = Comparison {
        src: src.to_owned(),
        last_seq: a.keys().next_back().copied().unwrap_or(0),
        other_last_seq: b.keys().next_back().copied().unwrap_or(0),
        ..Comparison::default()
    };
    for (seq, theirs) in &b {
        match a.get(seq) {
            Some(ours) => {
                c.overlap += 1;
                if ours != theirs {
                    c.differing += 1;
                    c.first_differing.get_or_insert(*seq);
                }
            }
            None if *seq <= c.last_seq => c.missing += 1,
            None => {}
        }
    }
    Ok(c)
}

/// Parses `--at`: nanoseconds since the Unix epoch, or seconds with an `s` suffix.
pub fn parse_time(s: &str) -> anyhow::Result<u64> {
    let bad = || {
        anyhow::anyhow!("--at {s} is not a time; give ns since the Unix epoch (1764080000000000000) or seconds with s (1764080000s)")
    };
    match s.strip_suffix('s') {
        Some(secs) => secs.parse::<u64>().ok().and_then(|v| v.checked_mul(1_000_000_000)).ok_or_else(bad),
        None => s.parse::<u64>().map_err(|_| bad()),
    }
}

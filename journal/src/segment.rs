//! One segment file: framing, the sparse index, its `.idx` sidecar, and scanning.
//!
//! # Files
//! `<dir>/<source-id>/<first-seq as 20 digits>.seg` holds frames back to back:
//!
//! ```text
//! u32 LE  record length (codec HEADER_LEN ..= MAX_RECORD_LEN)
//! u32 LE  CRC32C of the record bytes
//! [u8]    the record, exactly as `Record::encode` wrote it
//! ```
//!
//! The first record's seq equals the number in the file name. Seqs rise strictly within
//! a source, across segments too.
//!
//! `<first-seq>.idx` is written when a segment is sealed. It is a cache of the segment's
//! sparse index, never the source of truth: it records the segment length it describes
//! and ends with a CRC32C, and a missing, stale or damaged one is rebuilt by scanning the
//! segment on open. The active (last) segment has none; open scans it anyway to check its
//! tail.

use crate::error::{Error, IoContext, Result};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use tickmesh_codec::frame::MAX_RECORD_LEN;
use tickmesh_codec::{access_untrusted, SourceId, HEADER_LEN};

/// Bytes before each record: length and CRC.
pub(crate) const FRAME_HEADER: usize = 8;

/// Appends one frame (length, CRC32C, bytes) to `out`.
pub(crate) fn put_frame(record: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(record.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(record).to_le_bytes());
    out.extend_from_slice(record);
}

/// What is at the front of a buffer of frames.
#[derive(Debug)]
pub(crate) enum Frame {
    /// Not enough bytes for the frame that starts here.
    Need,
    /// The frame is bad: a length out of range or a CRC mismatch.
    Bad(String),
    /// A frame whose CRC matches: the record occupies `buf[8..8 + len]`.
    Ok { len: usize },
}

/// Parses the frame at the front of `buf`.
pub(crate) fn parse_frame(buf: &[u8]) -> Frame {
    let Some(head) = buf.get(..FRAME_HEADER) else {
        return Frame::Need;
    };
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if !(HEADER_LEN..=MAX_RECORD_LEN).contains(&len) {
        return Frame::Bad(format!("length field {len} is outside {HEADER_LEN}..={MAX_RECORD_LEN}"));
    }
    let Some(rec) = buf.get(FRAME_HEADER..FRAME_HEADER + len) else {
        return Frame::Need;
    };
    let got = crc32c::crc32c(rec);
    if got != crc {
        return Frame::Bad(format!("CRC32C mismatch (stored {crc:#010x}, computed {got:#010x})"));
    }
    Frame::Ok { len }
}

/// File name of the segment starting at `first_seq`.
pub(crate) fn seg_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

/// Path of the `.idx` sidecar of a segment path.
pub(crate) fn idx_path(seg: &Path) -> PathBuf {
    seg.with_extension("idx")
}

/// Parses `<20 digits>.<ext>` into the seq.
pub(crate) fn parse_name(name: &str, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// One sparse index point: the record at `offset` has `seq`, and every record of the
/// segment before it has `ts_ingest <= ts_max_before` (a running maximum, so entries are
/// ordered by it even when a source's clock steps back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub(crate) seq: u64,
    pub(crate) ts_max_before: u64,
    pub(crate) offset: u64,
}

/// A segment as the journal holds it: shared by the writer (while active), readers and the
/// `journal-sync` thread through `Arc`.
///
/// Readers never read past `len`, and the writer stores `len` (Release) only after the
/// bytes are written, so a reader never sees a partial frame. A segment deleted by
/// retention stays readable through this open handle until the last reader drops it.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) first_seq: u64,
    pub(crate) path: PathBuf,
    /// Opened read+write: readers use `read_at`, the writer `write_all_at`, the sync
    /// thread `sync_data`. All take `&File`.
    pub(crate) file: File,
    /// Committed bytes: every frame below this offset is complete.
    pub(crate) len: AtomicU64,
    /// Seq of the last committed record.
    pub(crate) last_seq: AtomicU64,
    /// Largest `ts_ingest` of the committed records (used by retention and time lookup).
    pub(crate) ts_max: AtomicU64,
    /// Committed records.
    pub(crate) count: AtomicU64,
    /// Sparse index; only grows (the writer pushes while the segment is active).
    pub(crate) index: RwLock<Vec<IndexEntry>>,
    /// True when every record was checked with `codec::access_untrusted` by this process
    /// (appended here, or scanned at open). False for a sealed segment whose index came
    /// from its `.idx` file: readers then validate each record they return.
    pub(crate) verified: bool,
}

impl Segment {
    /// Index entries as they are now.
    pub(crate) fn index_snapshot(&self) -> Vec<IndexEntry> {
        self.index.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Offset of the last index entry with `seq <= target`, or 0.
    pub(crate) fn offset_for_seq(&self, target: u64) -> u64 {
        let idx = self.index.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let i = idx.partition_point(|e| e.seq <= target);
        i.checked_sub(1).map_or(0, |i| idx[i].offset)
    }

    /// Offset of the last index entry whose preceding records are all older than `ts`:
    /// the first record with `ts_ingest >= ts` cannot be before it.
    pub(crate) fn offset_for_time(&self, ts: u64) -> u64 {
        let idx = self.index.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let i = idx.partition_point(|e| e.ts_max_before < ts);
        i.checked_sub(1).map_or(0, |i| idx[i].offset)
    }
}

/// Opens an existing segment file read+write.
pub(crate) fn open_rw(path: &Path) -> Result<File> {
    OpenOptions::new().read(true).write(true).open(path).ctx("opening segment", path)
}

/// Creates a new, empty segment file; fails if it exists.
pub(crate) fn create_rw(path: &Path) -> Result<File> {
    OpenOptions::new().read(true).write(true).create_new(true).open(path).ctx("creating segment", path)
}

/// fsyncs a directory, so that files created or removed in it survive a power loss.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).ctx("syncing directory", dir)
}

/// Reads frames from a file in chunks, without reading past a limit the caller supplies.
/// Shared by [`crate::Reader`] and the open-time scan.
#[derive(Debug)]
pub(crate) struct FrameCursor {
    buf: Box<[u8]>,
    /// Unconsumed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// File offset of `buf[end]`: the next byte to read from the file.
    file_off: u64,
}

/// Read size: many frames per `pread`, and always more than one maximum frame.
const CHUNK: usize = 64 << 10;
const _: () = assert!(CHUNK >= FRAME_HEADER + MAX_RECORD_LEN);

impl FrameCursor {
    pub(crate) fn new(offset: u64) -> Self {
        FrameCursor { buf: vec![0u8; CHUNK].into_boxed_slice(), start: 0, end: 0, file_off: offset }
    }

    /// Drops buffered bytes and continues from `offset`.
    pub(crate) fn seek(&mut self, offset: u64) {
        self.start = 0;
        self.end = 0;
        self.file_off = offset;
    }

    /// File offset of the first unconsumed byte.
    pub(crate) fn offset(&self) -> u64 {
        self.file_off - (self.end - self.start) as u64
    }

    /// File offset up to which bytes have been read into the buffer.
    pub(crate) fn read_to(&self) -> u64 {
        self.file_off
    }

    /// Index in [`Self::buf`] of the first unconsumed byte.
    pub(crate) fn start(&self) -> usize {
        self.start
    }

    /// The whole buffer; bytes before [`Self::start`] stay valid until the next `fill`.
    pub(crate) fn buf(&self) -> &[u8] {
        &self.buf
    }

    /// The unconsumed bytes.
    pub(crate) fn peek(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub(crate) fn consume(&mut self, n: usize) {
        self.start += n;
    }

    /// Reads more of `file`, but not past `limit`. Returns the number of bytes read (0 at
    /// the limit, or when the file is shorter than `limit`).
    pub(crate) fn fill(&mut self, file: &File, limit: u64) -> std::io::Result<usize> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let room = self.buf.len() - self.end;
        let want = room.min(usize::try_from(limit.saturating_sub(self.file_off)).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = loop {
            match file.read_at(&mut self.buf[self.end..self.end + want], self.file_off) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        self.end += n;
        self.file_off += n as u64;
        Ok(n)
    }
}

/// What a scan of a segment found.
#[derive(Debug)]
pub(crate) struct Scan {
    /// Bytes of intact frames from the start.
    pub(crate) valid_len: u64,
    pub(crate) count: u64,
    pub(crate) last_seq: u64,
    pub(crate) ts_max: u64,
    pub(crate) index: Vec<IndexEntry>,
    /// Where the first bad frame starts and why, if the file does not end cleanly.
    pub(crate) damage: Option<(u64, String)>,
}

/// Reads the whole file, checking every frame (length, CRC), every record
/// (`codec::access_untrusted`), that it belongs to `src`, that the first seq matches the
/// file name and that seqs rise. Stops at the first problem.
pub(crate) fn scan(file: &File, path: &Path, src: &SourceId, first_seq: u64, index_every: u32) -> Result<Scan> {
    let file_len = file.metadata().ctx("reading metadata of segment", path)?.len();
    let mut cur = FrameCursor::new(0);
    let mut s = Scan { valid_len: 0, count: 0, last_seq: 0, ts_max: 0, index: Vec::new(), damage: None };
    loop {
        let off = cur.offset();
        let len = match parse_frame(cur.peek()) {
            Frame::Ok { len } => len,
            Frame::Bad(why) => {
                s.damage = Some((off, why));
                break;
            }
            Frame::Need => {
                if cur.fill(file, file_len).ctx("reading segment", path)? > 0 {
                    continue;
                }
                if !cur.peek().is_empty() {
                    let have = cur.peek().len();
                    s.damage = Some((off, format!("the file ends inside a frame ({have} bytes of it present)")));
                }
                break;
            }
        };
        let bytes = &cur.peek()[FRAME_HEADER..FRAME_HEADER + len];
        let rec = match access_untrusted(bytes) {
            Ok(r) => r,
            Err(e) => {
                s.damage = Some((off, format!("the record fails validation: {e}")));
                break;
            }
        };
        if rec.src() != src.as_str() {
            s.damage = Some((off, format!("the record belongs to source '{}', not '{src}'", rec.src())));
            break;
        }
        let seq = rec.seq();
        if s.count == 0 && seq != first_seq {
            s.damage = Some((off, format!("the first record has seq {seq} but the file name says {first_seq}")));
            break;
        }
        if s.count > 0 && seq <= s.last_seq {
            s.damage = Some((off, format!("seq {seq} is not above the previous record's seq {}", s.last_seq)));
            break;
        }
        if s.count.is_multiple_of(u64::from(index_every)) {
            s.index.push(IndexEntry { seq, ts_max_before: s.ts_max, offset: off });
        }
        s.ts_max = s.ts_max.max(rec.ts_ingest());
        s.count += 1;
        s.last_seq = seq;
        cur.consume(FRAME_HEADER + len);
        s.valid_len = cur.offset();
    }
    Ok(s)
}

/// Counts the intact frames (CRC and codec validation pass) in `bytes`, resynchronising
/// byte by byte after damage. Used to say how many whole records a tail cut discards.
pub(crate) fn count_intact(bytes: &[u8]) -> u64 {
    let mut n = 0;
    let mut i = 0;
    while i < bytes.len() {
        if let Frame::Ok { len } = parse_frame(&bytes[i..]) {
            if access_untrusted(&bytes[i + FRAME_HEADER..i + FRAME_HEADER + len]).is_ok() {
                n += 1;
                i += FRAME_HEADER + len;
                continue;
            }
        }
        i += 1;
    }
    n
}

const IDX_MAGIC: &[u8; 8] = b"TMJIDX01";

/// The `.idx` sidecar's content.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct IdxFile {
    pub(crate) seg_len: u64,
    pub(crate) first_seq: u64,
    pub(crate) last_seq: u64,
    pub(crate) count: u64,
    pub(crate) ts_max: u64,
    pub(crate) index: Vec<IndexEntry>,
}

impl IdxFile {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 6 * 8 + self.index.len() * 24 + 4);
        out.extend_from_slice(IDX_MAGIC);
        for v in [self.seg_len, self.first_seq, self.last_seq, self.count, self.ts_max, self.index.len() as u64] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for e in &self.index {
            for v in [e.seq, e.ts_max_before, e.offset] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses an `.idx` file; `None` for anything malformed (the caller rebuilds it).
    fn decode(b: &[u8]) -> Option<IdxFile> {
        let (body, crc) = b.split_at_checked(b.len().checked_sub(4)?)?;
        if crc32c::crc32c(body).to_le_bytes() != crc || body.get(..8)? != IDX_MAGIC {
            return None;
        }
        let mut words = body[8..].chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])));
        let mut next = || words.next();
        let (seg_len, first_seq, last_seq, count, ts_max, n) = (next()?, next()?, next()?, next()?, next()?, next()?);
        if body.len() != 8 + 48 + usize::try_from(n).ok()?.checked_mul(24)? {
            return None;
        }
        let mut index = Vec::with_capacity(n as usize);
        for _ in 0..n {
            index.push(IndexEntry { seq: next()?, ts_max_before: next()?, offset: next()? });
        }
        Some(IdxFile { seg_len, first_seq, last_seq, count, ts_max, index })
    }

    /// Reads and checks the sidecar of `seg_path` against the segment's actual length and
    /// name. `None` when it is missing, damaged or stale.
    pub(crate) fn load(seg_path: &Path, first_seq: u64, seg_len: u64) -> Option<IdxFile> {
        let bytes = std::fs::read(idx_path(seg_path)).ok()?;
        let idx = IdxFile::decode(&bytes)?;
        let first_ok = idx.index.first().is_some_and(|e| e.seq == first_seq && e.offset == 0);
        let sorted = idx.index.windows(2).all(|w| w[0].seq < w[1].seq && w[0].offset < w[1].offset);
        (idx.seg_len == seg_len && idx.first_seq == first_seq && idx.count > 0 && first_ok && sorted).then_some(idx)
    }

    /// Writes the sidecar through a temporary file and a rename, so a reader of the
    /// directory never sees half of one. Not fsynced: a lost `.idx` is rebuilt on open.
    pub(crate) fn store(&self, seg_path: &Path) -> Result<()> {
        let path = idx_path(seg_path);
        let tmp = path.with_extension("idx.tmp");
        let mut f = File::create(&tmp).ctx("creating index", &tmp)?;
        f.write_all(&self.encode()).ctx("writing index", &tmp)?;
        drop(f);
        std::fs::rename(&tmp, &path).ctx("renaming index into place", &path)
    }

    /// The sidecar describing `seg` as it is now.
    pub(crate) fn of(seg: &Segment) -> IdxFile {
        IdxFile {
            seg_len: seg.len.load(Ordering::Acquire),
            first_seq: seg.first_seq,
            last_seq: seg.last_seq.load(Ordering::Acquire),
            count: seg.count.load(Ordering::Acquire),
            ts_max: seg.ts_max.load(Ordering::Acquire),
            index: seg.index_snapshot(),
        }
    }
}

/// Removes a file, treating "already gone" as success.
pub(crate) fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("removing", path, e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(seg_name(42), "00000000000000000042.seg");
        assert_eq!(parse_name(&seg_name(42), "seg"), Some(42));
        assert_eq!(parse_name(&seg_name(u64::MAX), "seg"), Some(u64::MAX));
        assert_eq!(parse_name("00000000000000000042.idx", "idx"), Some(42));
        assert_eq!(parse_name("0042.seg", "seg"), None);
        assert_eq!(parse_name("0000000000000000004x.seg", "seg"), None);
        assert_eq!(parse_name("00000000000000000042.seg.cut", "seg"), None);
        assert_eq!(parse_name("99999999999999999999.seg", "seg"), None);
    }

    #[test]
    fn idx_round_trips_and_rejects_damage() {
        let idx = IdxFile {
            seg_len: 1000,
            first_seq: 5,
            last_seq: 90,
            count: 30,
            ts_max: 7,
            index: vec![
                IndexEntry { seq: 5, ts_max_before: 0, offset: 0 },
                IndexEntry { seq: 40, ts_max_before: 6, offset: 500 },
            ],
        };
        let b = idx.encode();
        assert_eq!(IdxFile::decode(&b), Some(idx));
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x10;
            assert_eq!(IdxFile::decode(&c), None, "flip at {i}");
            assert_eq!(IdxFile::decode(&b[..i]), None, "cut at {i}");
        }
    }

    #[test]
    fn frames_check_length_and_crc() {
        let rec = tickmesh_codec::testing::trade(1, "AAPL", "1", "1", tickmesh_codec::Side::Buy).to_bytes();
        let mut buf = Vec::new();
        put_frame(&rec, &mut buf);
        assert!(matches!(parse_frame(&buf), Frame::Ok { len } if len == rec.len()));
        assert!(matches!(parse_frame(&buf[..buf.len() - 1]), Frame::Need));
        assert!(matches!(parse_frame(&buf[..3]), Frame::Need));
        let mut bad = buf.clone();
        bad[20] ^= 1;
        assert!(matches!(parse_frame(&bad), Frame::Bad(_)));
        assert!(matches!(parse_frame(&[0xff; 16]), Frame::Bad(_)));
        buf.extend_from_slice(&[0u8; 5]);
        assert_eq!(count_intact(&buf), 1);
    }
}

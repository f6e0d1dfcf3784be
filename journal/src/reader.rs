//! [`Reader`]: one source's records in seq order, from a seq or a time, following the tail.

use crate::error::{Error, IoContext, Result};
use crate::segment::{parse_frame, Frame, FrameCursor, Segment, FRAME_HEADER};
use crate::source::SourceLog;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tickmesh_codec::{access_trusted, access_untrusted, RecordRef, SourceId};

/// Which leading records to pass over before the first one returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skip {
    Nothing,
    /// Records with `seq` below this.
    BelowSeq(u64),
    /// Records with `ts_ingest` below this.
    BeforeTime(u64),
}

/// Reads one source's records in order. Made by [`crate::Journal::reader`] and
/// [`crate::Journal::reader_from_time`].
///
/// [`Reader::next`] returning `Ok(None)` means "nothing more for now": call it again later
/// to get records appended since. A reader never sees a partly written record, and one
/// holding a segment that retention deletes keeps reading it through its open handle.
/// Each record's CRC is checked as it is read; a mismatch is [`Error::Corrupt`], returned
/// again on every later call (the reader does not skip damage). If retention deletes
/// segments before the reader gets to them, it returns [`Error::Lapped`] once and then
/// continues with the oldest segment still held.
///
/// A reader is independent of the journal's locks except for brief looks at the segment
/// list, so a slow reader never slows appends.
#[derive(Debug)]
pub struct Reader {
    source: Arc<SourceLog>,
    seg: Option<Arc<Segment>>,
    cursor: FrameCursor,
    skip: Skip,
}

impl Reader {
    /// Positioned at the first record with `seq >= from_seq`: found through the sparse
    /// index, then at most `index_every` records are read and skipped.
    pub(crate) fn from_seq(source: Arc<SourceLog>, from_seq: u64) -> Reader {
        let (seg, offset) = {
            let segs = source.segments();
            let i = segs.partition_point(|s| s.first_seq <= from_seq).saturating_sub(1);
            match segs.get(i) {
                Some(s) => (Some(s.clone()), s.offset_for_seq(from_seq)),
                None => (None, 0),
            }
        };
        Reader { source, seg, cursor: FrameCursor::new(offset), skip: Skip::BelowSeq(from_seq) }
    }

    /// Positioned at the first record with `ts_ingest >= ts`. Each segment knows its
    /// largest `ts_ingest`, and each index entry the largest before it, so the answer is
    /// found without scanning even when a source's clock stepped back. If no record is that
    /// recent yet, the reader waits at the tail and returns the first later append that is.
    pub(crate) fn from_time(source: Arc<SourceLog>, ts: u64) -> Reader {
        let (seg, offset) = {
            let segs = source.segments();
            // Take the tail length before looking at `ts_max`: the writer stores `ts_max`
            // before `len`, so a record below this length with ts >= `ts` is seen below.
            let tail = segs.last().map(|s| (s.clone(), s.len.load(Ordering::Acquire)));
            match segs.iter().find(|s| s.ts_max.load(Ordering::Acquire) >= ts) {
                Some(s) => (Some(s.clone()), s.offset_for_time(ts)),
                None => tail.map_or((None, 0), |(s, len)| (Some(s), len)),
            }
        };
        Reader { source, seg, cursor: FrameCursor::new(offset), skip: Skip::BeforeTime(ts) }
    }

    /// The source this reader reads.
    pub fn source_id(&self) -> &SourceId {
        &self.source.id
    }

    /// The next record, `Ok(None)` if there is none yet.
    // Not `Iterator::next`: the record borrows the reader's buffer (a lending iterator).
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<RecordRef<'_>>> {
        let (start, len) = loop {
            let Some(seg) = self.seg.as_ref() else {
                // The source had no segment when the reader was made.
                match self.source.segments().first().cloned() {
                    Some(s) => {
                        self.seg = Some(s);
                        self.cursor.seek(0);
                        continue;
                    }
                    None => return Ok(None),
                }
            };
            let offset = self.cursor.offset();
            match parse_frame(self.cursor.peek()) {
                Frame::Ok { len } => {
                    let bytes = &self.cursor.peek()[FRAME_HEADER..FRAME_HEADER + len];
                    let rec = if seg.verified {
                        // SAFETY: the CRC just matched, and every record of a verified segment
                        // passed `access_untrusted` in this process (on append or open scan).
                        unsafe { access_trusted(bytes) }
                    } else {
                        access_untrusted(bytes).map_err(|e| Error::Corrupt {
                            path: seg.path.clone(),
                            offset,
                            reason: format!("the record fails validation: {e}"),
                        })?
                    };
                    let keep = match self.skip {
                        Skip::Nothing => true,
                        Skip::BelowSeq(s) => rec.seq() >= s,
                        Skip::BeforeTime(t) => rec.ts_ingest() >= t,
                    };
                    let start = self.cursor.start() + FRAME_HEADER;
                    self.cursor.consume(FRAME_HEADER + len);
                    if keep {
                        self.skip = Skip::Nothing;
                        break (start, len);
                    }
                }
                Frame::Bad(reason) => return Err(Error::Corrupt { path: seg.path.clone(), offset, reason }),
                Frame::Need => {
                    // Look for a successor before loading `len`: a segment is sealed (its
                    // `len` final) before the next one is published.
                    let next = self.source.next_segment(seg.first_seq);
                    let limit = seg.len.load(Ordering::Acquire);
                    if self.cursor.read_to() < limit {
                        if self.cursor.fill(&seg.file, limit).ctx("reading segment", &seg.path)? == 0 {
                            return Err(Error::Corrupt {
                                path: seg.path.clone(),
                                offset: self.cursor.read_to(),
                                reason: format!("the file is shorter than the {limit} bytes written to it"),
                            });
                        }
                        continue;
                    }
                    if !self.cursor.peek().is_empty() {
                        return Err(Error::Corrupt {
                            path: seg.path.clone(),
                            offset,
                            reason: "the segment ends inside a frame".to_string(),
                        });
                    }
                    let Some(next) = next else { return Ok(None) };
                    // Retention deletes oldest first, so if it deleted a record newer than
                    // this segment's last, the segments between were never read here.
                    let after = seg.last_seq.load(Ordering::Acquire);
                    let lapped = self.source.deleted_through() > after;
                    let resume_at = next.first_seq;
                    self.seg = Some(next);
                    self.cursor.seek(0);
                    if lapped {
                        return Err(Error::Lapped { source_id: self.source.id, after, resume_at });
                    }
                }
            }
        };
        let bytes = &self.cursor.buf()[start..start + len];
        // SAFETY: these bytes were opened in the loop above, either from a verified
        // segment after a CRC match or through `access_untrusted`, and are unchanged.
        Ok(Some(unsafe { access_trusted(bytes) }))
    }

    /// The next record as an owned copy of its bytes.
    pub fn next_owned(&mut self) -> Result<Option<Vec<u8>>> {
        Ok(self.next()?.map(|r| r.bytes().to_vec()))
    }
}

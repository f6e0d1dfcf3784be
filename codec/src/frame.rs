//! Length-prefixed record streams: `u32` little-endian length, then the record bytes.
//!
//! The same framing carries records in binary WebSocket messages, on mesh streams and in
//! the analytics tap, so one reader serves all three.

use crate::error::{Error, Result};
use crate::record::{access_untrusted, RecordRef, HEADER_LEN};

/// Largest record this build will accept in a frame (far above any kind's size; a guard
/// against a corrupt length making a reader allocate or wait for gigabytes).
pub const MAX_RECORD_LEN: usize = 4096;

/// Appends one length-prefixed record.
pub fn put_frame(record: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(record.len() as u32).to_le_bytes());
    out.extend_from_slice(record);
}

/// Splits a buffer of length-prefixed records, validating each.
#[derive(Debug, Clone)]
pub struct Frames<'a> {
    buf: &'a [u8],
}

impl<'a> Frames<'a> {
    /// Iterates the frames of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Frames { buf }
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<RecordRef<'a>>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        match split_frame(self.buf) {
            Ok(Some((rec, rest))) => {
                self.buf = rest;
                Some(access_untrusted(rec))
            }
            Ok(None) => {
                let got = self.buf.len();
                self.buf = &[];
                Some(Err(Error::Truncated { got, need: got + 1 }))
            }
            Err(e) => {
                self.buf = &[];
                Some(Err(e))
            }
        }
    }
}

/// Takes one frame off the front of `buf`: `Ok(None)` when more bytes are needed.
pub fn split_frame(buf: &[u8]) -> Result<Option<(&[u8], &[u8])>> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if !(HEADER_LEN..=MAX_RECORD_LEN).contains(&len) {
        return Err(Error::Invalid(format!(
            "frame length {len} is outside {HEADER_LEN}..={MAX_RECORD_LEN}; the stream is corrupt or not tickmesh records"
        )));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    Ok(Some((&buf[4..4 + len], &buf[4 + len..])))
}

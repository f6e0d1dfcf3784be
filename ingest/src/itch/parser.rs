//! The length-prefixed ITCH byte stream (NASDAQ's binary files: each message preceded by its
//! length as a 2-byte big-endian integer), split into messages without copying.
//!
//! Input may arrive in pieces cut anywhere. Whole messages are read straight from the input
//! slice; only a message cut by a piece boundary is copied, into a small carry buffer that
//! is completed from the next piece. So a file read in 64 KiB blocks costs one copy of a
//! few dozen bytes per block.

use crate::error::{Error, Result};
use crate::itch::message::Message;

const FORMAT: &str = "itch";

/// Splits a length-prefixed ITCH stream into [`Message`]s.
#[derive(Debug, Default, Clone)]
pub struct Parser {
    /// Bytes of messages not yet handed out (a cut message, or input kept after an error).
    carry: Vec<u8>,
    /// Stream offset of the first byte not yet consumed (the start of `carry` when it holds
    /// bytes).
    offset: u64,
    messages: u64,
}

impl Parser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Parser { carry: Vec::with_capacity(128), offset: 0, messages: 0 }
    }

    /// Stream offset of the next byte to consume.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Messages handed out so far.
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// Bytes held back (the start of a message cut by the end of the last input).
    pub fn pending(&self) -> usize {
        self.carry.len()
    }

    /// Feeds the next piece of the stream and calls `on_message(offset, message)` for every
    /// message it completes, in order; `offset` is the stream offset of the message's length
    /// prefix.
    ///
    /// The first error (a malformed message, or one `on_message` returns) stops the call.
    /// The parser is then positioned after the offending message, and the rest of `input`
    /// is kept: calling `feed` again (with more input or none) continues from there.
    pub fn feed<F>(&mut self, mut input: &[u8], mut on_message: F) -> Result<()>
    where
        F: FnMut(u64, Message<'_>) -> Result<()>,
    {
        // Slow path: finish the frames held in `carry`, borrowing bytes from `input`.
        while !self.carry.is_empty() {
            if self.carry.len() < 2 {
                let take = (2 - self.carry.len()).min(input.len());
                self.carry.extend_from_slice(&input[..take]);
                input = &input[take..];
                if self.carry.len() < 2 {
                    return Ok(());
                }
            }
            let need = 2 + usize::from(u16::from_be_bytes([self.carry[0], self.carry[1]]));
            if self.carry.len() < need {
                let take = (need - self.carry.len()).min(input.len());
                self.carry.extend_from_slice(&input[..take]);
                input = &input[take..];
                if self.carry.len() < need {
                    return Ok(());
                }
            }
            let at = self.offset;
            self.offset += need as u64;
            self.messages += 1;
            let r = frame(at, &self.carry[2..need], &mut on_message);
            self.carry.drain(..need);
            if let Err(e) = r {
                self.carry.extend_from_slice(input);
                return Err(e);
            }
        }
        // Fast path: whole frames straight from `input`.
        let mut pos = 0;
        while input.len() - pos >= 2 {
            let need = 2 + usize::from(u16::from_be_bytes([input[pos], input[pos + 1]]));
            if input.len() - pos < need {
                break;
            }
            let at = self.offset;
            self.offset += need as u64;
            self.messages += 1;
            let r = frame(at, &input[pos + 2..pos + need], &mut on_message);
            pos += need;
            if let Err(e) = r {
                self.carry.extend_from_slice(&input[pos..]);
                return Err(e);
            }
        }
        self.carry.extend_from_slice(&input[pos..]);
        Ok(())
    }

    /// End of the stream: an error if it ended inside a message.
    pub fn finish(&self) -> Result<()> {
        if self.carry.is_empty() {
            return Ok(());
        }
        let what = if self.carry.len() < 2 {
            format!(
                "the stream ends 1 byte into a length prefix; the file is truncated (cut at byte {})",
                self.offset + 1
            )
        } else {
            let need = 2 + usize::from(u16::from_be_bytes([self.carry[0], self.carry[1]]));
            format!(
                "the stream ends {} bytes into a {need}-byte message (length prefix included); the file is truncated",
                self.carry.len()
            )
        };
        Err(Error::Parse { format: FORMAT, offset: self.offset, what })
    }

    /// Forgets any partial message and restarts offsets at 0 (a new stream).
    pub fn reset(&mut self) {
        self.carry.clear();
        self.offset = 0;
        self.messages = 0;
    }
}

#[inline]
fn frame<F>(at: u64, body: &[u8], on_message: &mut F) -> Result<()>
where
    F: FnMut(u64, Message<'_>) -> Result<()>,
{
    match Message::parse(body) {
        Ok(m) => on_message(at, m),
        Err(e) => Err(Error::Parse { format: FORMAT, offset: at, what: e.to_string() }),
    }
}

/// Iterates over the messages of a complete length-prefixed buffer (no carry, no copy): the
/// fastest way through a file already in memory. Yields an error for a malformed message
/// and continues after it; a cut message at the end yields an error and ends.
pub fn messages(buf: &[u8]) -> Messages<'_> {
    Messages { buf, pos: 0 }
}

/// Iterator returned by [`messages`].
#[derive(Debug, Clone)]
pub struct Messages<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<(u64, Message<'a>)>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.buf.get(self.pos..)?;
        if rest.is_empty() {
            return None;
        }
        let at = self.pos as u64;
        if rest.len() < 2 {
            self.pos = self.buf.len();
            return Some(Err(Error::Parse {
                format: FORMAT,
                offset: at,
                what: "the buffer ends inside a length prefix".into(),
            }));
        }
        let need = 2 + usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        if rest.len() < need {
            self.pos = self.buf.len();
            return Some(Err(Error::Parse {
                format: FORMAT,
                offset: at,
                what: format!("the buffer ends {} bytes into a {need}-byte message; it is truncated", rest.len()),
            }));
        }
        self.pos += need;
        Some(Message::parse(&rest[2..need]).map(|m| (at, m)).map_err(|e| Error::Parse {
            format: FORMAT,
            offset: at,
            what: e.to_string(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> Vec<u8> {
        let mut v = Vec::new();
        for (i, t) in [b'S', b'D', b'W'].into_iter().enumerate() {
            let len = crate::itch::message::MESSAGE_TYPES.iter().find(|m| m.0 == t).unwrap().2;
            v.extend_from_slice(&(len as u16).to_be_bytes());
            let mut m = vec![i as u8; len];
            m[0] = t;
            v.extend_from_slice(&m);
        }
        v
    }

    fn collect(p: &mut Parser, input: &[u8], got: &mut Vec<(u64, u8)>) -> Result<()> {
        p.feed(input, |at, m| {
            got.push((at, m.msg_type()));
            Ok(())
        })
    }

    #[test]
    fn any_split_gives_the_same_messages() {
        let s = stream();
        let mut want = Vec::new();
        collect(&mut Parser::new(), &s, &mut want).unwrap();
        assert_eq!(want, vec![(0, b'S'), (14, b'D'), (35, b'W')]);
        for cut in 0..=s.len() {
            for cut2 in cut..=s.len() {
                let mut p = Parser::new();
                let mut got = Vec::new();
                for part in [&s[..cut], &s[cut..cut2], &s[cut2..]] {
                    collect(&mut p, part, &mut got).unwrap();
                }
                p.finish().unwrap();
                assert_eq!(got, want, "cuts at {cut} and {cut2}");
            }
        }
        let all: Vec<_> = messages(&s).map(|r| r.map(|(at, m)| (at, m.msg_type()))).collect::<Result<_>>().unwrap();
        assert_eq!(all, want);
    }

    #[test]
    fn truncated_stream_and_bad_message_are_errors_that_keep_position() {
        let s = stream();
        let mut p = Parser::new();
        collect(&mut p, &s[..s.len() - 3], &mut Vec::new()).unwrap();
        assert!(p.finish().unwrap_err().to_string().contains("truncated"));

        // A zero-length frame between good ones: an error, then the rest still parses.
        let mut bad = s[..14].to_vec();
        bad.extend_from_slice(&[0, 0]);
        bad.extend_from_slice(&s[14..]);
        let mut p = Parser::new();
        let mut got = Vec::new();
        let e = collect(&mut p, &bad, &mut got).unwrap_err();
        assert!(e.to_string().contains("itch input at 14"), "{e}");
        collect(&mut p, &[], &mut got).unwrap();
        assert_eq!(got, vec![(0, b'S'), (16, b'D'), (37, b'W')]);
    }
}

//! The shape every venue decoder has: bytes in, records out, no I/O and no clock.
//!
//! A decoder turns one unit of venue input (a file chunk, a UDP datagram, a WebSocket
//! message) into codec records of its source. Records leave with `seq` 0 and `ts_ingest`
//! 0: the node's [`crate::Sequencer`] stamps both. A decoder that keeps books emits the
//! derived records itself, in venue order, so one venue event that changes an order, a
//! level and the best bid/offer gives three consecutive records.

use tickmesh_codec::Record;

use crate::error::Result;

/// A sans-I/O venue decoder.
pub trait Decoder: Send {
    /// Feeds input; appends every record it completes to `out`. Input may end in the
    /// middle of a venue message: the decoder keeps the rest for the next call.
    fn feed(&mut self, input: &[u8], out: &mut Vec<Record>) -> Result<()>;

    /// End of input: anything incomplete is an error, and end-of-stream records (if the
    /// format has any) are appended.
    fn finish(&mut self, out: &mut Vec<Record>) -> Result<()> {
        let _ = out;
        Ok(())
    }

    /// Counts of venue messages seen, by the venue's own message type name, for `--stats`.
    fn message_counts(&self) -> Vec<(String, u64)> {
        Vec::new()
    }
}

//! The sequencer: the one place a record's `seq` is assigned.

use tickmesh_codec::{Record, Seq, SourceId};

/// Stamps each record of one source with the source's next `seq` and the ingest time.
///
/// It starts after the highest `seq` the journal holds for the source, so a restarted
/// region continues its sources without ever reusing a number.
#[derive(Debug, Clone)]
pub struct Sequencer {
    src: SourceId,
    last: Seq,
}

impl Sequencer {
    /// A sequencer for `src` whose last assigned number was `last` (`Seq(0)` if none).
    pub fn new(src: SourceId, last: Seq) -> Self {
        Sequencer { src, last }
    }

    /// The source.
    pub fn source(&self) -> SourceId {
        self.src
    }

    /// The last number assigned.
    pub fn last(&self) -> Seq {
        self.last
    }

    /// Assigns the next number and `ts_ingest` to `rec`, which must belong to this source.
    pub fn stamp(&mut self, rec: &mut Record, ts_ingest: u64) -> Seq {
        debug_assert_eq!(rec.header.src, self.src, "record of another source given to the sequencer");
        self.last = self.last.next();
        rec.header.src = self.src;
        rec.header.seq = self.last;
        rec.header.ts_ingest = ts_ingest;
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tickmesh_codec::{testing, Side};

    #[test]
    fn continues_after_last() {
        let src = SourceId::new("TEST.SRC").unwrap();
        let mut s = Sequencer::new(src, Seq(41));
        let mut r = testing::trade(0, "AAPL", "1", "1", Side::Buy);
        assert_eq!(s.stamp(&mut r, 5), Seq(42));
        assert_eq!(r.header.seq, Seq(42));
        assert_eq!(r.header.ts_ingest, 5);
        assert_eq!(s.stamp(&mut r, 6), Seq(43));
    }
}

//! Newtypes for identifiers, each with a fixed inline size so records stay fixed-layout.

use crate::error::Error;
use std::fmt;

macro_rules! ascii_id {
    ($(#[$m:meta])* $name:ident, $arch:ident, $len:expr, $valid:expr, $err:ident) => {
        $(#[$m])*
        #[derive(
            Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash,
            rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
        )]
        #[rkyv(derive(Debug, Clone, Copy, PartialEq, Eq))]
        #[rkyv(archived = $arch)]
        pub struct $name([u8; $len]);

        impl $name {
            /// Inline capacity in bytes (zero-padded).
            pub const LEN: usize = $len;

            /// Validates and stores `s`.
            pub fn new(s: &str) -> Result<Self, Error> {
                let b = s.as_bytes();
                let ok: fn(u8) -> bool = $valid;
                if b.is_empty() || b.len() > $len || !b.iter().all(|c| ok(*c)) {
                    // Escaped: the text is untrusted and ends up in log lines and client
                    // replies, where a raw newline or control character would forge lines.
                    return Err(Error::$err(s.chars().take(64).flat_map(char::escape_debug).collect()));
                }
                let mut v = [0u8; $len];
                v[..b.len()].copy_from_slice(b);
                Ok(Self(v))
            }
            /// The text, without padding.
            pub fn as_str(&self) -> &str {
                id_str(&self.0)
            }
            /// The padded bytes as stored in a record.
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }
            /// From stored bytes, validating them (used on untrusted records).
            pub fn from_bytes(b: &[u8; $len]) -> Result<Self, Error> {
                let id = Self::new(id_str(b))?;
                // The bytes after the text must be the zero padding `new` writes: otherwise
                // two different byte strings decode to the same id, and a record relayed
                // byte for byte would differ between regions that hold "the same" record.
                if id.0 != *b {
                    return Err(Error::Invalid(format!(
                        "{} '{}' is followed by non-zero padding bytes; pad ids with zeros",
                        stringify!($name),
                        id.as_str()
                    )));
                }
                Ok(id)
            }
        }

        impl $arch {
            /// The text, without padding. Valid UTF-8 is guaranteed for records that
            /// passed [`crate::access_untrusted`]; anything else renders as an empty string.
            pub fn as_str(&self) -> &str {
                id_str(&self.0)
            }
            /// The padded bytes as stored.
            pub fn padded(&self) -> &[u8; $len] {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.as_str())
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl std::str::FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                Self::new(s)
            }
        }
        impl serde_like::AsStr for $name {
            fn as_str(&self) -> &str {
                self.as_str()
            }
        }
    };
}

fn id_str(b: &[u8]) -> &str {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    std::str::from_utf8(&b[..end]).unwrap_or("")
}

/// Small helper trait so generic code can take any id as text.
pub mod serde_like {
    /// An id with a text form.
    pub trait AsStr {
        /// The text form.
        fn as_str(&self) -> &str;
    }
}

ascii_id!(
    /// The id of one source: one venue feed ingested in one region (`XNAS.ITCH`,
    /// `COINBASE`, `SYN.us-east-1`). Its records carry one strictly increasing `seq`.
    SourceId,
    ArchivedSourceId,
    16,
    |c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || c == b'-',
    BadSourceId
);
ascii_id!(
    /// A venue's own symbol (`AAPL`, `BTC-USD`, `ESH4`), carried in every record so that
    /// every record is self-describing for clients that join mid-stream.
    Symbol,
    ArchivedSymbol,
    24,
    |c| (0x21..=0x7e).contains(&c) || c == b' ',
    BadSymbol
);

/// A source's own numeric id for an instrument (ITCH stock locate, DBN instrument id,
/// an index into a crypto venue's product list). Unique within one source.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug, Clone, Copy, PartialEq, Eq))]
pub struct InstrumentId(pub u32);

/// A position in one source's sequence. Assigned once, at ingestion; the first record of a
/// source has `Seq(1)`, so `Seq(0)` means "before the first record".
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug, Clone, Copy, PartialEq, Eq))]
pub struct Seq(pub u64);

impl Seq {
    /// The next position.
    pub const fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_validate() {
        assert_eq!(SourceId::new("XNAS.ITCH").unwrap().as_str(), "XNAS.ITCH");
        assert!(SourceId::new("").is_err());
        assert!(SourceId::new("way-too-long-source-id").is_err());
        assert!(SourceId::new("bad id").is_err());
        assert_eq!(Symbol::new("BRK A").unwrap().as_str(), "BRK A");
        assert!(Symbol::new("é").is_err());
        assert!(Symbol::new("a\"b").is_ok());
    }
}

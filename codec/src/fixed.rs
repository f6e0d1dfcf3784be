//! Fixed-point decimals: prices and quantities are `i64` counts of 1e-9.
//!
//! Floats never appear inside tickmesh: a price is parsed once at the edge (venue text, a
//! venue's own fixed-point integer) into [`Px`] and rendered once at the other edge (client
//! JSON) as a decimal string. Nine decimals cover every venue we ingest (ITCH uses 4, DBN 9,
//! crypto venues up to 8) and leave ±9.2e9 units of range.

use crate::error::Error;
use std::fmt;

/// Scale of every fixed-point value: one unit is 1e-9.
pub const SCALE: i64 = 1_000_000_000;

macro_rules! fixed_newtype {
    ($(#[$m:meta])* $name:ident, $arch:ident) => {
        $(#[$m])*
        #[derive(
            Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash,
            rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
        )]
        #[rkyv(derive(Debug, Clone, Copy, PartialEq, Eq))]
        #[rkyv(archived = $arch)]
        pub struct $name(pub i64);

        impl $name {
            /// Zero.
            pub const ZERO: Self = Self(0);
            /// Sentinel for "no value" (an empty side of a quote), as DBN uses `i64::MAX`.
            pub const NULL: Self = Self(i64::MAX);

            /// From a venue integer with `decimals` implied decimal places (ITCH prices have 4).
            pub const fn from_scaled(raw: i64, decimals: u32) -> Self {
                Self(raw * 10i64.pow(9 - decimals))
            }
            /// From whole units.
            pub const fn from_units(units: i64) -> Self {
                Self(units * SCALE)
            }
            /// The raw count of 1e-9 units.
            pub const fn raw(self) -> i64 {
                self.0
            }
            /// True for the [`Self::NULL`] sentinel.
            pub const fn is_null(self) -> bool {
                self.0 == i64::MAX
            }
            /// Parses a decimal string such as `"320.14"`, `"-0.5"`, `"100"` or `"1e-3"`-free
            /// venue text. More than nine significant decimals is an error, never a silent
            /// rounding.
            pub fn parse(s: &str) -> Result<Self, Error> {
                parse_fixed(s).map(Self)
            }
            /// Appends the decimal text (no trailing zeros, no exponent) to `out`.
            pub fn write_to(self, out: &mut Vec<u8>) {
                write_fixed(self.0, out)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut v = Vec::with_capacity(24);
                self.write_to(&mut v);
                // write_fixed only emits ASCII digits, '-' and '.'.
                f.write_str(std::str::from_utf8(&v).map_err(|_| fmt::Error)?)
            }
        }

        impl std::str::FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                Self::parse(s)
            }
        }
    };
}

fixed_newtype!(
    /// A price in units of 1e-9 of the quote currency.
    Px,
    ArchivedPx
);
fixed_newtype!(
    /// A quantity (shares, contracts, coins) in units of 1e-9.
    Qty,
    ArchivedQty
);

impl ArchivedPx {
    /// The native value.
    pub fn get(&self) -> Px {
        Px(self.0.to_native())
    }
}
impl ArchivedQty {
    /// The native value.
    pub fn get(&self) -> Qty {
        Qty(self.0.to_native())
    }
}

fn parse_fixed(s: &str) -> Result<i64, Error> {
    let bad =
        |why: &'static str| Error::BadDecimal { text: s.chars().take(40).flat_map(char::escape_debug).collect(), why };
    let b = s.as_bytes();
    if b.is_empty() {
        return Err(bad("empty"));
    }
    let (neg, digits) = match b[0] {
        b'-' => (true, &b[1..]),
        b'+' => (false, &b[1..]),
        _ => (false, b),
    };
    if digits.is_empty() {
        return Err(bad("no digits"));
    }
    let mut int: i128 = 0;
    let mut frac: i128 = 0;
    let mut frac_digits = 0u32;
    let mut seen_dot = false;
    let mut any_digit = false;
    for &c in digits {
        match c {
            b'0'..=b'9' => {
                any_digit = true;
                let d = i128::from(c - b'0');
                if seen_dot {
                    if frac_digits < 9 {
                        frac = frac * 10 + d;
                        frac_digits += 1;
                    } else if d != 0 {
                        return Err(bad("more than 9 decimal places"));
                    }
                } else {
                    int = int * 10 + d;
                    if int > i128::from(i64::MAX) {
                        return Err(bad("out of range (at most 9223372036 units)"));
                    }
                }
            }
            b'.' if !seen_dot => seen_dot = true,
            _ => return Err(bad("not a plain decimal number")),
        }
    }
    if !any_digit {
        return Err(bad("no digits"));
    }
    let v = int * i128::from(SCALE) + frac * 10i128.pow(9 - frac_digits);
    let v = if neg { -v } else { v };
    i64::try_from(v).ok().filter(|v| *v != i64::MAX).ok_or_else(|| bad("out of range (at most 9223372036 units)"))
}

fn write_fixed(v: i64, out: &mut Vec<u8>) {
    let neg = v < 0;
    let mag = v.unsigned_abs();
    let int = mag / SCALE as u64;
    let mut frac = mag % SCALE as u64;
    if neg {
        out.push(b'-');
    }
    let mut buf = itoa::Buffer::new();
    out.extend_from_slice(buf.format(int).as_bytes());
    if frac != 0 {
        let mut width = 9;
        while frac.is_multiple_of(10) {
            frac /= 10;
            width -= 1;
        }
        out.push(b'.');
        let digits = buf.format(frac).as_bytes();
        out.extend(std::iter::repeat_n(b'0', width - digits.len()));
        out.extend_from_slice(digits);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_without_trailing_zeros() {
        assert_eq!(Px::parse("320.14").unwrap().to_string(), "320.14");
        assert_eq!(Px::parse("320.1400").unwrap().to_string(), "320.14");
        assert_eq!(Qty::parse("100").unwrap().to_string(), "100");
        assert_eq!(Qty::parse("0.0025").unwrap().to_string(), "0.0025");
        assert_eq!(Px::parse("-0.5").unwrap().to_string(), "-0.5");
        assert_eq!(Px::parse("0.000000001").unwrap().raw(), 1);
        assert_eq!(Px::from_scaled(3_201_400, 4).to_string(), "320.14");
        assert_eq!(Px(i64::MIN).to_string(), "-9223372036.854775808");
    }

    #[test]
    fn refuses_what_it_cannot_hold_exactly() {
        assert!(Px::parse("1.0000000001").is_err());
        assert!(Px::parse("1.0000000000").is_ok());
        assert!(Px::parse("1e5").is_err());
        assert!(Px::parse("").is_err());
        assert!(Px::parse("-").is_err());
        assert!(Px::parse(".").is_err());
        assert!(Px::parse("1.2.3").is_err());
        assert!(Px::parse("99999999999").is_err());
    }

    proptest::proptest! {
        #[test]
        fn text_round_trips(v in (i64::MIN + 1)..i64::MAX) {
            let s = Px(v).to_string();
            proptest::prop_assert_eq!(Px::parse(&s).unwrap(), Px(v));
        }
    }
}

//! ITCH 5.0 messages as zero-copy views over their bytes.
//!
//! [`Message::parse`] checks the type byte and the length once; each view then reads its
//! fields straight from the bytes on demand (big-endian, at the offsets of the NASDAQ
//! TotalView-ITCH 5.0 specification). Nothing is copied or allocated, so a consumer that
//! looks only at the order reference of a `D` pays for nothing else.
//!
//! Field accessors return the wire values: prices as the raw integers with their implied
//! decimals (`Price(4)` is a `u32` of ten-thousandths, `Price(8)` in `V` a `u64` of 1e-8),
//! alpha fields as their space-padded bytes, one-character fields as the byte. [`px4`] and
//! [`px8`] turn prices into codec [`Px`]; [`trim_alpha`] strips the padding.
//!
//! A message longer than its specified length is accepted and the extra bytes are ignored:
//! NASDAQ has appended fields to ITCH 5.0 messages in place before, and a feed handler that
//! rejected them would stop on the day of the change. A shorter one is an error.

use std::fmt;

use tickmesh_codec::{Px, SCALE};

/// Length of the header every message starts with: type (1), stock locate (2), tracking
/// number (2), timestamp (6).
pub const HEADER_LEN: usize = 11;

// Readers. Every call site's offset and width are inside the length that `Message::parse`
// checked for that message type, so the indexing below never fails.
#[inline]
fn ch(b: &[u8], o: usize) -> u8 {
    b[o]
}
#[inline]
fn u16be(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([b[o], b[o + 1]])
}
#[inline]
fn u32be(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
#[inline]
fn u48be(b: &[u8], o: usize) -> u64 {
    (u64::from(u16be(b, o)) << 32) | u64::from(u32be(b, o + 2))
}
#[inline]
fn u64be(b: &[u8], o: usize) -> u64 {
    (u64::from(u32be(b, o)) << 32) | u64::from(u32be(b, o + 4))
}
#[inline]
fn a2(b: &[u8], o: usize) -> [u8; 2] {
    [b[o], b[o + 1]]
}
#[inline]
fn a4(b: &[u8], o: usize) -> [u8; 4] {
    [b[o], b[o + 1], b[o + 2], b[o + 3]]
}
#[inline]
fn a8(b: &[u8], o: usize) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    a
}

/// A `Price(4)` field as a codec price (exact: 1e-4 is a whole number of 1e-9 units).
#[inline]
pub fn px4(raw: u32) -> Px {
    Px(i64::from(raw) * 100_000)
}

/// A `Price(8)` field (`V` messages) as a codec price, or `None` if it exceeds the codec's
/// range (about 9.2e9 dollars).
#[inline]
pub fn px8(raw: u64) -> Option<Px> {
    i64::try_from(raw).ok().and_then(|v| v.checked_mul(10)).map(Px)
}

/// A share count as whole units in codec fixed point, or `None` past the codec's range
/// (about 9.2e9 shares; only the 8-byte share fields of `Q` and `I` can get there).
#[inline]
pub fn shares(n: u64) -> Option<tickmesh_codec::Qty> {
    i64::try_from(n).ok().and_then(|v| v.checked_mul(SCALE)).map(tickmesh_codec::Qty)
}

/// An alpha field without its right padding (spaces; NULs too, for robustness).
pub fn trim_alpha(b: &[u8]) -> &[u8] {
    let end = b.iter().rposition(|c| *c != b' ' && *c != 0).map_or(0, |i| i + 1);
    &b[..end]
}

/// Why bytes are not an ITCH 5.0 message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageError {
    /// No bytes at all.
    Empty,
    /// The first byte is not an ITCH 5.0 message type.
    UnknownType(u8),
    /// Fewer bytes than the type's specified length.
    Short {
        /// The type byte.
        msg_type: u8,
        /// Bytes present.
        len: usize,
        /// Bytes the specification gives this type.
        need: usize,
    },
}

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MessageError::Empty => f.write_str("empty message; the framing (length prefix) is out of step with the data"),
            MessageError::UnknownType(t) => write!(
                f,
                "message type {} ({t:#04x}) is not an ITCH 5.0 type; check that the input is TotalView-ITCH 5.0 \
                 (not 4.1 or another NASDAQ feed) and that its framing is right",
                show(t)
            ),
            MessageError::Short { msg_type, len, need } => write!(
                f,
                "{} message of {len} bytes; ITCH 5.0 gives it {need}: the message is truncated or the input is not ITCH 5.0",
                show(msg_type)
            ),
        }
    }
}

impl std::error::Error for MessageError {}

/// A byte as a quoted character if printable.
fn show(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("'{}'", b as char)
    } else {
        format!("{b:#04x}")
    }
}

macro_rules! messages {
    ($(
        $(#[$doc:meta])*
        $tag:literal, $len:literal, $name:ident {
            $( $(#[$fdoc:meta])* $field:ident : $ty:ty = $read:ident($off:literal) ),* $(,)?
        }
    )*) => {
        $(
            $(#[$doc])*
            #[derive(Clone, Copy, PartialEq, Eq)]
            pub struct $name<'a>(&'a [u8]);

            impl<'a> $name<'a> {
                /// The message type byte.
                pub const TYPE: u8 = $tag;
                /// The specified length in bytes.
                pub const LEN: usize = $len;

                /// The message's bytes (at least [`Self::LEN`] of them).
                #[inline]
                pub fn bytes(&self) -> &'a [u8] {
                    self.0
                }
                /// Stock locate: the day's numeric id of the security (0 for market-wide messages).
                #[inline]
                pub fn stock_locate(&self) -> u16 {
                    u16be(self.0, 1)
                }
                /// NASDAQ internal tracking number.
                #[inline]
                pub fn tracking_number(&self) -> u16 {
                    u16be(self.0, 3)
                }
                /// Nanoseconds since midnight US/Eastern.
                #[inline]
                pub fn timestamp(&self) -> u64 {
                    u48be(self.0, 5)
                }
                $(
                    $(#[$fdoc])*
                    #[inline]
                pub fn $field(&self) -> $ty {
                        $read(self.0, $off)
                    }
                )*
            }

            impl fmt::Debug for $name<'_> {
                fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.debug_struct(stringify!($name))
                        .field("stock_locate", &self.stock_locate())
                        .field("tracking_number", &self.tracking_number())
                        .field("timestamp", &self.timestamp())
                        $(.field(stringify!($field), &self.$field()))*
                        .finish()
                }
            }
        )*

        /// One ITCH 5.0 message, borrowed from the bytes it was parsed from.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Message<'a> {
            $(
                #[doc = concat!("`", stringify!($tag), "`: [`", stringify!($name), "`].")]
                $name($name<'a>),
            )*
        }

        impl<'a> Message<'a> {
            /// Views `bytes` (one whole message, type byte first) as a message: checks the type
            /// and that the bytes cover the type's specified length. Nothing is copied.
            #[inline]
            pub fn parse(bytes: &'a [u8]) -> Result<Self, MessageError> {
                let Some(&t) = bytes.first() else { return Err(MessageError::Empty) };
                match t {
                    $(
                        $tag => if bytes.len() >= $len {
                            Ok(Message::$name($name(bytes)))
                        } else {
                            Err(MessageError::Short { msg_type: t, len: bytes.len(), need: $len })
                        },
                    )*
                    other => Err(MessageError::UnknownType(other)),
                }
            }

            /// The message type byte.
            #[inline]
            pub fn msg_type(&self) -> u8 {
                match self { $(Message::$name(_) => $tag,)* }
            }

            /// The message's bytes.
            #[inline]
            pub fn bytes(&self) -> &'a [u8] {
                match self { $(Message::$name(m) => m.0,)* }
            }

            /// The name of the message kind (as in this module).
            pub fn name(&self) -> &'static str {
                match self { $(Message::$name(_) => stringify!($name),)* }
            }

            /// Stock locate.
            #[inline]
            pub fn stock_locate(&self) -> u16 {
                u16be(self.bytes(), 1)
            }
            /// Tracking number.
            #[inline]
            pub fn tracking_number(&self) -> u16 {
                u16be(self.bytes(), 3)
            }
            /// Nanoseconds since midnight US/Eastern.
            #[inline]
            pub fn timestamp(&self) -> u64 {
                u48be(self.bytes(), 5)
            }
        }

        /// Every ITCH 5.0 message type: (type byte, name, specified length).
        pub const MESSAGE_TYPES: &[(u8, &str, usize)] = &[$(($tag, stringify!($name), $len),)*];
    };
}

messages! {
    /// `S` System Event: start/end of messages, system hours, market hours.
    b'S', 12, SystemEvent {
        /// `O` start of messages, `S` start of system hours, `Q` start of market hours,
        /// `M` end of market hours, `E` end of system hours, `C` end of messages.
        event_code: u8 = ch(11),
    }
    /// `R` Stock Directory: one per security at the start of the day.
    b'R', 39, StockDirectory {
        /// Symbol, space-padded.
        stock: [u8; 8] = a8(11),
        /// Listing market category.
        market_category: u8 = ch(19),
        /// Financial status indicator.
        financial_status_indicator: u8 = ch(20),
        /// Round lot size in shares.
        round_lot_size: u32 = u32be(21),
        /// `Y` if only round lots are accepted.
        round_lots_only: u8 = ch(25),
        /// Issue classification.
        issue_classification: u8 = ch(26),
        /// Issue sub-type.
        issue_sub_type: [u8; 2] = a2(27),
        /// `P` live/production, `T` test.
        authenticity: u8 = ch(29),
        /// Short sale threshold indicator.
        short_sale_threshold_indicator: u8 = ch(30),
        /// IPO flag.
        ipo_flag: u8 = ch(31),
        /// LULD reference price tier.
        luld_reference_price_tier: u8 = ch(32),
        /// ETP flag.
        etp_flag: u8 = ch(33),
        /// ETP leverage factor.
        etp_leverage_factor: u32 = u32be(34),
        /// Inverse indicator.
        inverse_indicator: u8 = ch(38),
    }
    /// `H` Stock Trading Action: halts, pauses, quotation-only periods, resumption.
    b'H', 25, StockTradingAction {
        /// Symbol.
        stock: [u8; 8] = a8(11),
        /// `H` halted, `P` paused, `Q` quotation only, `T` trading.
        trading_state: u8 = ch(19),
        /// Reserved.
        reserved: u8 = ch(20),
        /// Reason code, space-padded.
        reason: [u8; 4] = a4(21),
    }
    /// `Y` Reg SHO Short Sale Price Test Restricted Indicator.
    b'Y', 20, RegShoRestriction {
        /// Symbol.
        stock: [u8; 8] = a8(11),
        /// `0` no test, `1` restriction in effect (intra-day drop), `2` in effect (continued).
        reg_sho_action: u8 = ch(19),
    }
    /// `L` Market Participant Position.
    b'L', 26, MarketParticipantPosition {
        /// Market participant id.
        mpid: [u8; 4] = a4(11),
        /// Symbol.
        stock: [u8; 8] = a8(15),
        /// `Y` primary market maker.
        primary_market_maker: u8 = ch(23),
        /// Market maker mode.
        market_maker_mode: u8 = ch(24),
        /// Market participant state.
        market_participant_state: u8 = ch(25),
    }
    /// `V` Market-Wide Circuit Breaker Decline Level (prices are `Price(8)`).
    b'V', 35, MwcbDeclineLevel {
        /// Level 1, `Price(8)`.
        level1: u64 = u64be(11),
        /// Level 2, `Price(8)`.
        level2: u64 = u64be(19),
        /// Level 3, `Price(8)`.
        level3: u64 = u64be(27),
    }
    /// `W` Market-Wide Circuit Breaker Status.
    b'W', 12, MwcbStatus {
        /// `1`, `2` or `3`.
        breached_level: u8 = ch(11),
    }
    /// `K` IPO Quoting Period Update.
    b'K', 28, IpoQuotingPeriodUpdate {
        /// Symbol.
        stock: [u8; 8] = a8(11),
        /// Seconds since midnight of the anticipated quotation release.
        ipo_quotation_release_time: u32 = u32be(19),
        /// `A` anticipated, `C` cancelled or postponed.
        ipo_quotation_release_qualifier: u8 = ch(23),
        /// IPO price, `Price(4)`.
        ipo_price: u32 = u32be(24),
    }
    /// `J` Limit Up-Limit Down Auction Collar.
    b'J', 35, LuldAuctionCollar {
        /// Symbol.
        stock: [u8; 8] = a8(11),
        /// Reference price, `Price(4)`.
        auction_collar_reference_price: u32 = u32be(19),
        /// Upper collar, `Price(4)`.
        upper_auction_collar_price: u32 = u32be(23),
        /// Lower collar, `Price(4)`.
        lower_auction_collar_price: u32 = u32be(27),
        /// Number of extensions.
        auction_collar_extension: u32 = u32be(31),
    }
    /// `h` Operational Halt (one market of NASDAQ's: `Q` Nasdaq, `B` BX, `X` PSX).
    b'h', 21, OperationalHalt {
        /// Symbol.
        stock: [u8; 8] = a8(11),
        /// `Q`, `B` or `X`.
        market_code: u8 = ch(19),
        /// `H` halted, `T` resumed.
        operational_halt_action: u8 = ch(20),
    }
    /// `A` Add Order, no MPID attribution.
    b'A', 36, AddOrder {
        /// Order reference number, unique for the day.
        order_ref: u64 = u64be(11),
        /// `B` buy, `S` sell.
        side: u8 = ch(19),
        /// Shares.
        shares: u32 = u32be(20),
        /// Symbol.
        stock: [u8; 8] = a8(24),
        /// Limit price, `Price(4)`.
        price: u32 = u32be(32),
    }
    /// `F` Add Order with MPID attribution.
    b'F', 40, AddOrderMpid {
        /// Order reference number.
        order_ref: u64 = u64be(11),
        /// `B` buy, `S` sell.
        side: u8 = ch(19),
        /// Shares.
        shares: u32 = u32be(20),
        /// Symbol.
        stock: [u8; 8] = a8(24),
        /// Limit price, `Price(4)`.
        price: u32 = u32be(32),
        /// Market participant id.
        attribution: [u8; 4] = a4(36),
    }
    /// `E` Order Executed (at the order's price).
    b'E', 31, OrderExecuted {
        /// Order reference number.
        order_ref: u64 = u64be(11),
        /// Shares executed.
        executed_shares: u32 = u32be(19),
        /// Match number.
        match_number: u64 = u64be(23),
    }
    /// `C` Order Executed With Price (at a price other than the order's).
    b'C', 36, OrderExecutedWithPrice {
        /// Order reference number.
        order_ref: u64 = u64be(11),
        /// Shares executed.
        executed_shares: u32 = u32be(19),
        /// Match number.
        match_number: u64 = u64be(23),
        /// `Y` printable (counts toward volume), `N` not.
        printable: u8 = ch(31),
        /// Execution price, `Price(4)`.
        execution_price: u32 = u32be(32),
    }
    /// `X` Order Cancel (partial).
    b'X', 23, OrderCancel {
        /// Order reference number.
        order_ref: u64 = u64be(11),
        /// Shares removed.
        cancelled_shares: u32 = u32be(19),
    }
    /// `D` Order Delete.
    b'D', 19, OrderDelete {
        /// Order reference number.
        order_ref: u64 = u64be(11),
    }
    /// `U` Order Replace: the original order leaves, a new one takes its side.
    b'U', 35, OrderReplace {
        /// The order replaced.
        original_order_ref: u64 = u64be(11),
        /// The new order.
        new_order_ref: u64 = u64be(19),
        /// New shares.
        shares: u32 = u32be(27),
        /// New price, `Price(4)`.
        price: u32 = u32be(31),
    }
    /// `P` Trade (non-cross): an execution against a non-displayed order.
    b'P', 44, Trade {
        /// Order reference number (0 since 2014 for most).
        order_ref: u64 = u64be(11),
        /// Side of the non-displayed order; `B` for every trade since 2014-07-14.
        side: u8 = ch(19),
        /// Shares.
        shares: u32 = u32be(20),
        /// Symbol.
        stock: [u8; 8] = a8(24),
        /// Price, `Price(4)`.
        price: u32 = u32be(32),
        /// Match number.
        match_number: u64 = u64be(36),
    }
    /// `Q` Cross Trade: the bulk print of an opening, closing, IPO or halt cross.
    b'Q', 40, CrossTrade {
        /// Shares (8 bytes).
        shares: u64 = u64be(11),
        /// Symbol.
        stock: [u8; 8] = a8(19),
        /// Cross price, `Price(4)`.
        cross_price: u32 = u32be(27),
        /// Match number.
        match_number: u64 = u64be(31),
        /// `O` opening, `C` closing, `H` halt/IPO, `I` intraday (retired).
        cross_type: u8 = ch(39),
    }
    /// `B` Broken Trade.
    b'B', 19, BrokenTrade {
        /// Match number of the broken execution.
        match_number: u64 = u64be(11),
    }
    /// `I` Net Order Imbalance Indicator.
    b'I', 50, Noii {
        /// Shares paired at the reference price.
        paired_shares: u64 = u64be(11),
        /// Shares not paired.
        imbalance_shares: u64 = u64be(19),
        /// `B` buy, `S` sell, `N` none, `O` insufficient orders.
        imbalance_direction: u8 = ch(27),
        /// Symbol.
        stock: [u8; 8] = a8(28),
        /// Far clearing price, `Price(4)`.
        far_price: u32 = u32be(36),
        /// Near clearing price, `Price(4)`.
        near_price: u32 = u32be(40),
        /// Current reference price, `Price(4)`.
        current_reference_price: u32 = u32be(44),
        /// `O` opening, `C` closing, `H` halt/IPO.
        cross_type: u8 = ch(48),
        /// Price variation indicator.
        price_variation_indicator: u8 = ch(49),
    }
    /// `N` Retail Price Improvement Indicator.
    b'N', 20, RetailPriceImprovement {
        /// Symbol.
        stock: [u8; 8] = a8(11),
        /// `B`, `S`, `A` (both) or `N` (none).
        interest_flag: u8 = ch(19),
    }
    /// `O` Direct Listing with Capital Raise price discovery.
    b'O', 48, DirectListing {
        /// Symbol.
        stock: [u8; 8] = a8(11),
        /// `N` not eligible, `Y` eligible.
        open_eligibility_status: u8 = ch(19),
        /// Minimum allowable price, `Price(4)`.
        minimum_allowable_price: u32 = u32be(20),
        /// Maximum allowable price, `Price(4)`.
        maximum_allowable_price: u32 = u32be(24),
        /// Near execution price, `Price(4)`.
        near_execution_price: u32 = u32be(28),
        /// Near execution time, ns since midnight.
        near_execution_time: u64 = u64be(32),
        /// Lower price range collar, `Price(4)`.
        lower_price_range_collar: u32 = u32be(40),
        /// Upper price range collar, `Price(4)`.
        upper_price_range_collar: u32 = u32be(44),
    }
}

/// Index of a message type byte among [`MESSAGE_TYPES`], or `None`.
pub fn type_index(t: u8) -> Option<usize> {
    MESSAGE_TYPES.iter().position(|(b, _, _)| *b == t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_parses_at_its_length_and_not_shorter() {
        assert_eq!(MESSAGE_TYPES.len(), 23);
        for &(t, name, len) in MESSAGE_TYPES {
            let mut b = vec![0u8; len];
            b[0] = t;
            let m = Message::parse(&b).unwrap();
            assert_eq!((m.msg_type(), m.name(), m.bytes().len()), (t, name, len));
            assert_eq!(
                Message::parse(&b[..len - 1]),
                Err(MessageError::Short { msg_type: t, len: len - 1, need: len })
            );
            b.push(0);
            assert!(Message::parse(&b).is_ok(), "longer than specified is accepted");
        }
        assert_eq!(Message::parse(&[]), Err(MessageError::Empty));
        assert_eq!(Message::parse(b"Z123"), Err(MessageError::UnknownType(b'Z')));
    }

    #[test]
    fn add_order_fields() {
        let mut b = vec![b'A'];
        b.extend_from_slice(&13u16.to_be_bytes());
        b.extend_from_slice(&7u16.to_be_bytes());
        b.extend_from_slice(&(0x0102_0304_0506u64.to_be_bytes()[2..]));
        b.extend_from_slice(&42u64.to_be_bytes());
        b.push(b'S');
        b.extend_from_slice(&100u32.to_be_bytes());
        b.extend_from_slice(b"AAPL    ");
        b.extend_from_slice(&3_201_400u32.to_be_bytes());
        let Ok(Message::AddOrder(a)) = Message::parse(&b) else { panic!("not an add") };
        assert_eq!((a.stock_locate(), a.tracking_number(), a.timestamp()), (13, 7, 0x0102_0304_0506));
        assert_eq!(
            (a.order_ref(), a.side(), a.shares(), trim_alpha(&a.stock()), a.price()),
            (42, b'S', 100, &b"AAPL"[..], 3_201_400)
        );
        assert_eq!(px4(a.price()), Px::parse("320.14").unwrap());
        assert_eq!(px8(u64::MAX), None);
        assert_eq!(shares(u64::MAX), None);
    }
}

//! pcap captures of MoldUDP64/ITCH feeds.
//!
//! * [`PcapReader`] (sans-I/O) reads the classic libpcap format, little- or big-endian,
//!   with microsecond or nanosecond timestamps, from input cut anywhere, and hands out
//!   packets. pcapng is recognised and refused with the command that converts it.
//! * [`udp_payload`] takes a captured frame apart down to its UDP payload: link types
//!   Ethernet (with 802.1Q/802.1ad VLAN tags), Linux cooked (SLL and SLL2), BSD loopback
//!   and raw IP; IPv4 without fragmentation (a fragment is skipped: a MoldUDP64 datagram
//!   fits one Ethernet frame, so fragments mean another protocol) and IPv6 whose next
//!   header is UDP. Anything else is a [`Skip`] with its reason, never an error.
//! * [`PcapDecoder`] (a [`Decoder`]) runs every UDP payload (optionally only those to one
//!   port) through [`MoldDecoder`] and so through ITCH. Unless the configuration gives the
//!   trading date, it is the US/Eastern date of the first UDP packet's capture time: a
//!   capture of a feed is taken on the feed's day.
//!
//! Hand-written rather than through the `pcap-file` crate: the format is a 24-byte header
//! and 16-byte record headers, and owning the loop gives input split anywhere without a
//! reader, offsets in every error, and errors that say what to do.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tickmesh_codec::Record;

use crate::decoder::Decoder;
use crate::error::{Error, Result};
use crate::itch::{EasternDate, NormalizerConfig};
use crate::moldudp64::{MoldDecoder, SessionEvent};

const FORMAT: &str = "pcap";

/// Largest packet record accepted (pcap's own snap length limit is 256 KiB; captures of
/// jumbo or TSO frames stay far below this).
const MAX_RECORD: u32 = 16 << 20;

/// The pcap global header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileHeader {
    /// Byte order of the file's integers.
    pub big_endian: bool,
    /// Timestamps in nanoseconds (magic `a1b23c4d`) rather than microseconds.
    pub nanos: bool,
    /// Format version (major, minor), normally (2, 4).
    pub version: (u16, u16),
    /// Snap length.
    pub snaplen: u32,
    /// Link-layer header type (LINKTYPE_*; 1 is Ethernet).
    pub link_type: u32,
}

/// One captured packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PcapPacket<'a> {
    /// Index in the file, from 0.
    pub index: u64,
    /// Offset of its record header in the file.
    pub offset: u64,
    /// Capture time, ns since the Unix epoch.
    pub ts_ns: u64,
    /// Length on the wire (more than `data.len()` if the capture cut it).
    pub orig_len: u32,
    /// The captured bytes, from the link-layer header on.
    pub data: &'a [u8],
}

/// Reads packets from a pcap byte stream (sans-I/O).
#[derive(Debug, Clone, Default)]
pub struct PcapReader {
    buf: Vec<u8>,
    pos: usize,
    /// File offset of `buf[pos]`.
    offset: u64,
    header: Option<FileHeader>,
    packets: u64,
}

fn rd32(b: &[u8], o: usize, be: bool) -> u32 {
    let a = [b[o], b[o + 1], b[o + 2], b[o + 3]];
    if be {
        u32::from_be_bytes(a)
    } else {
        u32::from_le_bytes(a)
    }
}

fn rd16(b: &[u8], o: usize, be: bool) -> u16 {
    let a = [b[o], b[o + 1]];
    if be {
        u16::from_be_bytes(a)
    } else {
        u16::from_le_bytes(a)
    }
}

impl PcapReader {
    /// A reader at the start of a file.
    pub fn new() -> Self {
        Self::default()
    }

    /// The global header, once read.
    pub fn header(&self) -> Option<&FileHeader> {
        self.header.as_ref()
    }

    /// Packets handed out so far.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// Feeds the next piece of the file and calls `on_packet` for every packet it
    /// completes. On an error (a malformed file, or one `on_packet` returns) the reader is
    /// positioned after the offending packet and keeps the rest of the input: calling
    /// `feed` again continues.
    pub fn feed<F>(&mut self, input: &[u8], mut on_packet: F) -> Result<()>
    where
        F: FnMut(&FileHeader, PcapPacket<'_>) -> Result<()>,
    {
        self.buf.extend_from_slice(input);
        let r = self.drain(&mut on_packet);
        // Drop what was consumed; keep a cut record for the next piece.
        self.buf.drain(..self.pos);
        self.pos = 0;
        r
    }

    fn drain<F>(&mut self, on_packet: &mut F) -> Result<()>
    where
        F: FnMut(&FileHeader, PcapPacket<'_>) -> Result<()>,
    {
        let hdr = match self.header {
            Some(h) => h,
            None => {
                let Some(b) = self.buf.get(..24) else { return Ok(()) };
                let h = parse_header(b)?;
                self.header = Some(h);
                self.pos = 24;
                self.offset = 24;
                h
            }
        };
        let be = hdr.big_endian;
        loop {
            let rest = &self.buf[self.pos..];
            if rest.len() < 16 {
                return Ok(());
            }
            let incl = rd32(rest, 8, be);
            if incl > MAX_RECORD {
                return Err(Error::Parse {
                    format: FORMAT,
                    offset: self.offset,
                    what: format!(
                        "packet record {} claims {incl} captured bytes (snap length {}); the file is corrupt or cut \
                         short by a copy",
                        self.packets, hdr.snaplen
                    ),
                });
            }
            let need = 16 + incl as usize;
            if rest.len() < need {
                return Ok(());
            }
            let secs = u64::from(rd32(rest, 0, be));
            let frac = u64::from(rd32(rest, 4, be));
            let ts_ns = secs * 1_000_000_000 + if hdr.nanos { frac } else { frac * 1_000 };
            let pkt = PcapPacket {
                index: self.packets,
                offset: self.offset,
                ts_ns,
                orig_len: rd32(rest, 12, be),
                data: &rest[16..need],
            };
            self.packets += 1;
            self.pos += need;
            self.offset += need as u64;
            on_packet(&hdr, pkt)?;
        }
    }

    /// End of the file: an error if it ended inside the header or a packet record.
    pub fn finish(&self) -> Result<()> {
        let left = self.buf.len() - self.pos;
        if self.header.is_none() {
            return Err(Error::Parse {
                format: FORMAT,
                offset: 0,
                what: format!("the file has {left} bytes, fewer than pcap's 24-byte header; it is empty or truncated"),
            });
        }
        if left > 0 {
            return Err(Error::Parse {
                format: FORMAT,
                offset: self.offset,
                what: format!(
                    "the file ends {left} bytes into packet record {}; it is truncated (the packets before it were read)",
                    self.packets
                ),
            });
        }
        Ok(())
    }
}

fn parse_header(b: &[u8]) -> Result<FileHeader> {
    let (big_endian, nanos) = match [b[0], b[1], b[2], b[3]] {
        [0xd4, 0xc3, 0xb2, 0xa1] => (false, false),
        [0xa1, 0xb2, 0xc3, 0xd4] => (true, false),
        [0x4d, 0x3c, 0xb2, 0xa1] => (false, true),
        [0xa1, 0xb2, 0x3c, 0x4d] => (true, true),
        [0x0a, 0x0d, 0x0d, 0x0a] => {
            return Err(Error::Parse {
                format: FORMAT,
                offset: 0,
                what: "this is a pcapng file, which is not supported; convert it with \
                       `editcap -F pcap IN.pcapng OUT.pcap` (or `tcpdump -r IN -w OUT`)"
                    .into(),
            })
        }
        m => {
            return Err(Error::Parse {
                format: FORMAT,
                offset: 0,
                what: format!(
                    "magic {:02x}{:02x}{:02x}{:02x} is not a pcap file's (a1b2c3d4 or a1b23c4d, either byte order); \
                     check the file and the --format",
                    m[0], m[1], m[2], m[3]
                ),
            })
        }
    };
    Ok(FileHeader {
        big_endian,
        nanos,
        version: (rd16(b, 4, big_endian), rd16(b, 6, big_endian)),
        snaplen: rd32(b, 16, big_endian),
        // The upper bits may carry FCS information; the link type is the low 16.
        link_type: rd32(b, 20, big_endian) & 0xFFFF,
    })
}

/// Why a packet gave no UDP payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Skip {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...).
    NotIp,
    /// IP, but not UDP (TCP, ICMP, IGMP, IPv6 extension headers).
    NotUdp,
    /// An IPv4 fragment.
    Fragment,
    /// The capture cut the packet before the end of its UDP payload.
    Truncated,
    /// A header that contradicts itself.
    Malformed,
    /// A link type this reader does not take apart.
    LinkType,
}

impl Skip {
    /// Every reason, in counter order.
    pub const ALL: [Skip; 6] =
        [Skip::NotIp, Skip::NotUdp, Skip::Fragment, Skip::Truncated, Skip::Malformed, Skip::LinkType];

    /// Counter name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Skip::NotIp => "not_ip",
            Skip::NotUdp => "not_udp",
            Skip::Fragment => "ipv4_fragment",
            Skip::Truncated => "truncated",
            Skip::Malformed => "malformed",
            Skip::LinkType => "link_type",
        }
    }
}

/// A UDP datagram found in a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Udp<'a> {
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port (for a feed: the multicast group).
    pub dst: SocketAddr,
    /// The UDP payload.
    pub payload: &'a [u8],
}

/// The UDP datagram in a captured frame of link type `link_type`, or why there is none.
pub fn udp_payload(link_type: u32, frame: &[u8]) -> std::result::Result<Udp<'_>, Skip> {
    match link_type {
        // Ethernet.
        1 => {
            let mut et = frame.get(12..14).map(|b| u16::from_be_bytes([b[0], b[1]])).ok_or(Skip::Malformed)?;
            let mut off = 14;
            while matches!(et, 0x8100 | 0x88a8 | 0x9100) {
                et = frame.get(off + 2..off + 4).map(|b| u16::from_be_bytes([b[0], b[1]])).ok_or(Skip::Malformed)?;
                off += 4;
            }
            by_ethertype(et, &frame[off..])
        }
        // Linux cooked capture v1: protocol at 14, header 16.
        113 => {
            let et = frame.get(14..16).map(|b| u16::from_be_bytes([b[0], b[1]])).ok_or(Skip::Malformed)?;
            by_ethertype(et, frame.get(16..).ok_or(Skip::Malformed)?)
        }
        // Linux cooked capture v2: protocol at 0, header 20.
        276 => {
            let et = frame.get(0..2).map(|b| u16::from_be_bytes([b[0], b[1]])).ok_or(Skip::Malformed)?;
            by_ethertype(et, frame.get(20..).ok_or(Skip::Malformed)?)
        }
        // BSD loopback: a 4-byte address family in the capturing host's order (0), or in
        // network order (108).
        0 | 108 => {
            let f = frame.get(0..4).ok_or(Skip::Malformed)?;
            let fam = if link_type == 108 || f[0] == 0 {
                u32::from_be_bytes([f[0], f[1], f[2], f[3]])
            } else {
                u32::from_le_bytes([f[0], f[1], f[2], f[3]])
            };
            match fam {
                2 => ipv4(&frame[4..]),
                24 | 28 | 30 => ipv6(&frame[4..]),
                _ => Err(Skip::NotIp),
            }
        }
        // Raw IP.
        101 | 12 | 14 | 228 | 229 => match frame.first().map(|b| b >> 4) {
            Some(4) => ipv4(frame),
            Some(6) => ipv6(frame),
            _ => Err(Skip::NotIp),
        },
        _ => Err(Skip::LinkType),
    }
}

fn by_ethertype(et: u16, b: &[u8]) -> std::result::Result<Udp<'_>, Skip> {
    match et {
        0x0800 => ipv4(b),
        0x86dd => ipv6(b),
        _ => Err(Skip::NotIp),
    }
}

fn ipv4(b: &[u8]) -> std::result::Result<Udp<'_>, Skip> {
    if b.len() < 20 || b[0] >> 4 != 4 {
        return Err(Skip::Malformed);
    }
    let ihl = usize::from(b[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([b[2], b[3]]));
    if ihl < 20 || total < ihl || b.len() < ihl {
        return Err(Skip::Malformed);
    }
    let frag = u16::from_be_bytes([b[6], b[7]]);
    if frag & 0x2000 != 0 || frag & 0x1fff != 0 {
        return Err(Skip::Fragment);
    }
    if b[9] != 17 {
        return Err(Skip::NotUdp);
    }
    let src = IpAddr::V4(Ipv4Addr::new(b[12], b[13], b[14], b[15]));
    let dst = IpAddr::V4(Ipv4Addr::new(b[16], b[17], b[18], b[19]));
    // The IP total length bounds the datagram (Ethernet pads short frames).
    udp(src, dst, &b[ihl..total.min(b.len())], total > b.len())
}

fn ipv6(b: &[u8]) -> std::result::Result<Udp<'_>, Skip> {
    if b.len() < 40 || b[0] >> 4 != 6 {
        return Err(Skip::Malformed);
    }
    if b[6] != 17 {
        return Err(Skip::NotUdp);
    }
    let plen = usize::from(u16::from_be_bytes([b[4], b[5]]));
    let addr = |o: usize| {
        let mut a = [0u8; 16];
        a.copy_from_slice(&b[o..o + 16]);
        IpAddr::V6(Ipv6Addr::from(a))
    };
    let end = (40 + plen).min(b.len());
    udp(addr(8), addr(24), &b[40..end], 40 + plen > b.len())
}

fn udp(src: IpAddr, dst: IpAddr, b: &[u8], cut: bool) -> std::result::Result<Udp<'_>, Skip> {
    if b.len() < 8 {
        return Err(if cut { Skip::Truncated } else { Skip::Malformed });
    }
    let ulen = usize::from(u16::from_be_bytes([b[4], b[5]]));
    if ulen < 8 {
        return Err(Skip::Malformed);
    }
    if ulen > b.len() {
        return Err(if cut { Skip::Truncated } else { Skip::Malformed });
    }
    Ok(Udp {
        src: SocketAddr::new(src, u16::from_be_bytes([b[0], b[1]])),
        dst: SocketAddr::new(dst, u16::from_be_bytes([b[2], b[3]])),
        payload: &b[8..ulen],
    })
}

/// Settings of a [`PcapDecoder`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PcapConfig {
    /// The ITCH normalizer's settings (source id, date, strictness). Default: source
    /// `XNAS.ITCH`, the date from the capture, not strict (captures join mid-session).
    pub itch: NormalizerConfig,
    /// Only UDP datagrams to this destination port are MoldUDP64; others are counted and
    /// skipped. Default none: every UDP datagram is taken as MoldUDP64, so a capture with
    /// other UDP traffic needs the feed's port here.
    pub port: Option<u16>,
}

/// Counters of a [`PcapDecoder`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PcapStats {
    /// Packets read.
    pub packets: u64,
    /// UDP datagrams decoded as MoldUDP64.
    pub udp: u64,
    /// UDP datagrams to another port than the configured one.
    pub other_port: u64,
    /// Packets skipped, by [`Skip::ALL`] order.
    pub skipped: [u64; 6],
}

/// A [`Decoder`] of pcap captures of MoldUDP64/ITCH: pcap, then [`MoldDecoder`].
#[derive(Debug)]
pub struct PcapDecoder {
    reader: PcapReader,
    mold: MoldDecoder,
    port: Option<u16>,
    date_known: bool,
    stats: PcapStats,
}

impl PcapDecoder {
    /// A decoder at the start of a capture.
    pub fn new(config: PcapConfig) -> Self {
        let date_known = config.itch.date.is_some();
        PcapDecoder {
            reader: PcapReader::new(),
            mold: MoldDecoder::new(config.itch),
            port: config.port,
            date_known,
            stats: PcapStats::default(),
        }
    }

    /// The MoldUDP64 decoder (sequencing, books).
    pub fn mold(&self) -> &MoldDecoder {
        &self.mold
    }

    /// The next sequencing event (gaps, duplicates, session changes), oldest first.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.mold.poll_event()
    }

    /// Counters.
    pub fn stats(&self) -> PcapStats {
        self.stats
    }

    /// The pcap global header, once read.
    pub fn header(&self) -> Option<&FileHeader> {
        self.reader.header()
    }
}

impl Decoder for PcapDecoder {
    fn feed(&mut self, input: &[u8], out: &mut Vec<Record>) -> Result<()> {
        let (mold, stats, port, date_known) = (&mut self.mold, &mut self.stats, self.port, &mut self.date_known);
        self.reader.feed(input, |hdr, pkt| {
            stats.packets += 1;
            let udp = match udp_payload(hdr.link_type, pkt.data) {
                Ok(u) => u,
                Err(skip) => {
                    stats.skipped[skip as usize] += 1;
                    return Ok(());
                }
            };
            if port.is_some_and(|p| p != udp.dst.port()) {
                stats.other_port += 1;
                return Ok(());
            }
            stats.udp += 1;
            if !*date_known {
                mold.set_date(EasternDate::from_unix_ns(pkt.ts_ns));
                *date_known = true;
            }
            mold.datagram(udp.payload, out).map_err(|e| {
                let hint = if matches!(e, Error::Parse { format: "moldudp64", .. }) && port.is_none() {
                    "; if the capture carries other UDP traffic, select the feed's port (PcapConfig::port, `--port`)"
                } else {
                    ""
                };
                Error::Parse {
                    format: FORMAT,
                    offset: pkt.offset,
                    what: format!("packet {} (UDP {} -> {}): {e}{hint}", pkt.index, udp.src, udp.dst),
                }
            })
        })
    }

    fn finish(&mut self, out: &mut Vec<Record>) -> Result<()> {
        // Packets kept after an error are processed now.
        self.feed(&[], out)?;
        self.reader.finish()
    }

    /// ITCH and MoldUDP64 counts, then `pcap_packets`, `pcap_udp`, and the skip counters
    /// (`pcap_skipped_not_udp`, ...) that are not zero.
    fn message_counts(&self) -> Vec<(String, u64)> {
        let mut v = self.mold.message_counts();
        v.push(("pcap_packets".into(), self.stats.packets));
        v.push(("pcap_udp".into(), self.stats.udp));
        if self.stats.other_port > 0 {
            v.push(("pcap_other_port".into(), self.stats.other_port));
        }
        for (s, n) in Skip::ALL.iter().zip(self.stats.skipped) {
            if n > 0 {
                v.push((format!("pcap_skipped_{}", s.as_str()), n));
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth_ipv4_udp(payload: &[u8], frag: u16, proto: u8) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x81, 0x00, 0x00, 0x8d, 0x08, 0x00]); // one VLAN tag, then IPv4
        let total = (20 + 8 + payload.len()) as u16;
        f.extend_from_slice(&[
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            (frag >> 8) as u8,
            frag as u8,
            64,
            proto,
            0,
            0,
        ]);
        f.extend_from_slice(&[10, 0, 0, 1, 233, 54, 12, 111]);
        let ulen = (8 + payload.len()) as u16;
        f.extend_from_slice(&[0x30, 0x39, 0x67, 0x6d, (ulen >> 8) as u8, ulen as u8, 0, 0]);
        f.extend_from_slice(payload);
        f.extend_from_slice(&[0; 6]); // Ethernet padding, outside the IP length
        f
    }

    fn pcap(frames: &[Vec<u8>], be: bool, nanos: bool) -> Vec<u8> {
        let w32 = |v: &mut Vec<u8>, x: u32| v.extend_from_slice(&if be { x.to_be_bytes() } else { x.to_le_bytes() });
        let w16 = |v: &mut Vec<u8>, x: u16| v.extend_from_slice(&if be { x.to_be_bytes() } else { x.to_le_bytes() });
        let mut v = Vec::new();
        w32(&mut v, if nanos { 0xa1b2_3c4d } else { 0xa1b2_c3d4 });
        w16(&mut v, 2);
        w16(&mut v, 4);
        w32(&mut v, 0);
        w32(&mut v, 0);
        w32(&mut v, 65535);
        w32(&mut v, 1);
        for (i, f) in frames.iter().enumerate() {
            w32(&mut v, 1_692_711_000 + i as u32);
            w32(&mut v, 5);
            w32(&mut v, f.len() as u32);
            w32(&mut v, f.len() as u32);
            v.extend_from_slice(f);
        }
        v
    }

    #[test]
    fn both_byte_orders_and_resolutions_any_split() {
        let frames = vec![eth_ipv4_udp(b"hello", 0x4000, 17), eth_ipv4_udp(b"x", 0x2000, 17), eth_ipv4_udp(b"t", 0, 6)];
        for (be, nanos) in [(false, false), (true, false), (false, true), (true, true)] {
            let file = pcap(&frames, be, nanos);
            for cut in 0..file.len() {
                let mut r = PcapReader::new();
                let mut got = Vec::new();
                for part in [&file[..cut], &file[cut..]] {
                    r.feed(part, |h, p| {
                        got.push((p.index, p.ts_ns, udp_payload(h.link_type, p.data).map(|u| u.payload.to_vec())));
                        Ok(())
                    })
                    .unwrap();
                }
                r.finish().unwrap();
                let frac = if nanos { 5 } else { 5_000 };
                assert_eq!(got.len(), 3);
                assert_eq!(got[0], (0, 1_692_711_000_000_000_000 + frac, Ok(b"hello".to_vec())));
                assert_eq!(got[1].2, Err(Skip::Fragment));
                assert_eq!(got[2].2, Err(Skip::NotUdp));
            }
        }
    }

    #[test]
    fn bad_files_say_what_to_do() {
        let e = PcapReader::new()
            .feed(&[0x0a, 0x0d, 0x0d, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], |_, _| Ok(()));
        assert!(e.unwrap_err().to_string().contains("editcap"));
        let e = PcapReader::new().feed(&[b'x'; 24], |_, _| Ok(()));
        assert!(e.unwrap_err().to_string().contains("not a pcap file"));
        let file = pcap(&[eth_ipv4_udp(b"hello", 0, 17)], false, false);
        let mut r = PcapReader::new();
        r.feed(&file[..file.len() - 2], |_, _| Ok(())).unwrap();
        assert!(r.finish().unwrap_err().to_string().contains("truncated"));
    }
}

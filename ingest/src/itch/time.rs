//! Trading dates in US/Eastern time, for turning ITCH timestamps into Unix time.
//!
//! ITCH (and LOBSTER) timestamps count nanoseconds since midnight US/Eastern of the trading
//! day, and nothing in the feed says which day that is: it comes from the file name (NASDAQ
//! names its files `MMDDYYYY.NASDAQ_ITCH50`), the capture time of a pcap, or the caller.
//!
//! The UTC offset is the one in force at that midnight: UTC-5 (EST), or UTC-4 (EDT) from the
//! second Sunday of March to the first Sunday of November (the rule since 2007; 1987-2006:
//! first Sunday of April to last Sunday of October; 1970-1986: last Sunday of April to last
//! Sunday of October, which ignores the 1974-75 energy-crisis exceptions). The changes happen
//! at 02:00 on a Sunday, when no US equity market trades, so one offset holds for a whole
//! trading session and `unix = midnight + timestamp` is exact. The golden tests check these
//! midnights against the system time-zone database for every day of 1990-2035.
//!
//! Written here rather than taken from a date crate: it is forty lines, it never allocates,
//! and the one rule it needs is the US one.

use std::fmt;

use crate::error::{Error, Result};

const NS_PER_SEC: i64 = 1_000_000_000;
const SECS_PER_DAY: i64 = 86_400;

/// A calendar date whose midnight is taken in US/Eastern time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EasternDate {
    year: i32,
    month: u8,
    day: u8,
}

impl EasternDate {
    /// The date `year-month-day`; years 1970 to 2500 (so that ns since the epoch fit a `u64`).
    pub fn new(year: i32, month: u8, day: u8) -> Result<Self> {
        if !(1970..=2500).contains(&year) || !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month)
        {
            return Err(Error::Config(format!(
                "{year:04}-{month:02}-{day:02} is not a valid trading date; give a real calendar date from 1970 to 2500"
            )));
        }
        Ok(EasternDate { year, month, day })
    }

    /// Parses `YYYY-MM-DD` or `YYYYMMDD`.
    pub fn parse(s: &str) -> Result<Self> {
        let digits: Vec<u8> = s.bytes().filter(|b| *b != b'-').collect();
        let well_formed = digits.len() == 8
            && digits.iter().all(u8::is_ascii_digit)
            && (s.len() == 8 || (s.len() == 10 && s.as_bytes()[4] == b'-' && s.as_bytes()[7] == b'-'));
        if !well_formed {
            return Err(Error::Config(format!(
                "date {s:?} is not YYYY-MM-DD or YYYYMMDD; give the trading date, e.g. 2020-01-30"
            )));
        }
        let n = |r: std::ops::Range<usize>| digits[r].iter().fold(0u32, |a, d| a * 10 + u32::from(d - b'0'));
        Self::new(n(0..4) as i32, n(4..6) as u8, n(6..8) as u8)
    }

    /// The trading date named in a capture's file name or path, if there is one: NASDAQ's
    /// `MMDDYYYY.NASDAQ_ITCH50[.gz]`, or an embedded `YYYY-MM-DD` or `YYYYMMDD` (as in
    /// `Nasdaq.Equities.TotalView.Itch.v5.0.20230822/...`). Looks at the file name, then at
    /// the directory that holds it; no further up, where a date would more likely belong to
    /// something else (a backup, a job directory) than to the capture.
    pub fn from_file_name(path: &str) -> Option<Self> {
        path.rsplit(['/', '\\']).filter(|p| !p.is_empty()).take(2).find_map(Self::from_name_part)
    }

    fn from_name_part(name: &str) -> Option<Self> {
        let b = name.as_bytes();
        // NASDAQ's own naming: the name starts with MMDDYYYY followed by a dot.
        if b.len() > 9 && b[..8].iter().all(u8::is_ascii_digit) && b[8] == b'.' {
            let n = |r: std::ops::Range<usize>| b[r].iter().fold(0u32, |a, d| a * 10 + u32::from(d - b'0'));
            if let Ok(d) = Self::new(n(4..8) as i32, n(0..2) as u8, n(2..4) as u8) {
                return Some(d);
            }
        }
        // Otherwise the first run of exactly 8 digits (YYYYMMDD) or a YYYY-MM-DD.
        let mut i = 0;
        while i < b.len() {
            if !b[i].is_ascii_digit() {
                i += 1;
                continue;
            }
            let start = i;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'-') {
                i += 1;
            }
            let run = &name[start..i];
            let run = run.trim_end_matches('-');
            if run.len() == 8 || run.len() == 10 {
                if let Ok(d) = Self::parse(run) {
                    return Some(d);
                }
            }
        }
        None
    }

    /// The US/Eastern date at the instant `unix_ns` (ns since the Unix epoch).
    pub fn from_unix_ns(unix_ns: u64) -> Self {
        let t = unix_ns.min(i64::MAX as u64) as i64;
        // Local time is UTC-4 or UTC-5, so the local date is the UTC date of t - 4h or the
        // day before it.
        let days = (t - 4 * 3600 * NS_PER_SEC).div_euclid(SECS_PER_DAY * NS_PER_SEC);
        let cand = Self::from_days(days.max(0));
        if (t as i128) < cand.midnight_unix_ns_i128() && days > 0 {
            Self::from_days(days - 1)
        } else {
            cand
        }
    }

    /// Year.
    pub fn year(&self) -> i32 {
        self.year
    }
    /// Month, 1-12.
    pub fn month(&self) -> u8 {
        self.month
    }
    /// Day of the month, 1-31.
    pub fn day(&self) -> u8 {
        self.day
    }

    /// True if daylight saving time (EDT) is in force at this date's midnight.
    pub fn is_dst(&self) -> bool {
        let (start, end) = dst_bounds(self.year);
        let md = (self.month, self.day);
        // At the start day's midnight EST still holds; at the end day's midnight EDT does.
        md > start && md <= end
    }

    /// Offset of local time from UTC at this date's midnight, in seconds (-18000 or -14400).
    pub fn utc_offset_secs(&self) -> i64 {
        if self.is_dst() {
            -4 * 3600
        } else {
            -5 * 3600
        }
    }

    /// Midnight US/Eastern of this date as ns since the Unix epoch.
    pub fn midnight_unix_ns(&self) -> u64 {
        // Years 1970-2500 (all `new` accepts) give 0 <= v < 1.1e19 ns, inside u64.
        let v = self.midnight_unix_ns_i128();
        v.clamp(0, i128::from(u64::MAX)) as u64
    }

    fn midnight_unix_ns_i128(&self) -> i128 {
        let secs = days_from_civil(self.year, self.month, self.day) * SECS_PER_DAY - self.utc_offset_secs();
        i128::from(secs) * i128::from(NS_PER_SEC)
    }

    /// Days since 1970-01-01.
    fn days(&self) -> i64 {
        days_from_civil(self.year, self.month, self.day)
    }

    fn from_days(days: i64) -> Self {
        let (year, month, day) = civil_from_days(days);
        EasternDate { year, month, day }
    }

    /// The next calendar day.
    pub fn succ(&self) -> Self {
        Self::from_days(self.days() + 1)
    }
}

impl fmt::Display for EasternDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

impl std::str::FromStr for EasternDate {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

fn is_leap(y: i32) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i32, m: u8) -> u8 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days from 1970-01-01 to `y-m-d` (proleptic Gregorian), by counting in 400-year eras that
/// start on March 1st, so the leap day is the last day of its era-year.
fn days_from_civil(y: i32, m: u8, d: u8) -> i64 {
    let (m, d) = (i64::from(m), i64::from(d));
    let y = i64::from(y) - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // 0..=399
    let mp = (m + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + d - 1; // 0..=365
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // 0..=146096
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i32, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as i32, m as u8, d as u8)
}

/// 0 = Sunday.
fn weekday(y: i32, m: u8, d: u8) -> i64 {
    (days_from_civil(y, m, d) + 4).rem_euclid(7)
}

/// The `n`th (1-based) Sunday of a month.
fn nth_sunday(y: i32, m: u8, n: u8) -> u8 {
    let first = (7 - weekday(y, m, 1)) % 7 + 1;
    first as u8 + 7 * (n - 1)
}

fn last_sunday(y: i32, m: u8) -> u8 {
    let last = days_in_month(y, m);
    last - weekday(y, m, last) as u8
}

/// (month, day) of the Sundays on which EDT starts and ends.
fn dst_bounds(y: i32) -> ((u8, u8), (u8, u8)) {
    if y >= 2007 {
        ((3, nth_sunday(y, 3, 2)), (11, nth_sunday(y, 11, 1)))
    } else if y >= 1987 {
        ((4, nth_sunday(y, 4, 1)), (10, last_sunday(y, 10)))
    } else {
        ((4, last_sunday(y, 4)), (10, last_sunday(y, 10)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip() {
        for z in -1000..200_000 {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2020, 1, 30), 18_291);
        assert_eq!(weekday(2020, 1, 30), 4, "2020-01-30 was a Thursday");
    }

    #[test]
    fn known_midnights() {
        // 2020-01-30 00:00 EST = 05:00 UTC.
        let d = EasternDate::new(2020, 1, 30).unwrap();
        assert_eq!(d.midnight_unix_ns(), 1_580_360_400 * 1_000_000_000);
        // 2023-08-22 00:00 EDT = 04:00 UTC.
        let d = EasternDate::new(2023, 8, 22).unwrap();
        assert_eq!(d.midnight_unix_ns(), 1_692_676_800 * 1_000_000_000);
        // Transition Sundays of 2023: March 12 and November 5.
        assert!(!EasternDate::new(2023, 3, 12).unwrap().is_dst());
        assert!(EasternDate::new(2023, 3, 13).unwrap().is_dst());
        assert!(EasternDate::new(2023, 11, 5).unwrap().is_dst());
        assert!(!EasternDate::new(2023, 11, 6).unwrap().is_dst());
    }

    #[test]
    fn dates_from_names_and_instants() {
        let p = |s: &str| EasternDate::from_file_name(s).map(|d| d.to_string());
        assert_eq!(p("/data/01302020.NASDAQ_ITCH50.gz").as_deref(), Some("2020-01-30"));
        assert_eq!(p("x/Nasdaq.Equities.TotalView.Itch.v5.0.20230822/CrossTrade.pcap").as_deref(), Some("2023-08-22"));
        assert_eq!(p("AMZN_2012-06-21_34200000_57600000_message_1.csv").as_deref(), Some("2012-06-21"));
        assert_eq!(p("itch/locate-13-10k.bin"), None);
        assert_eq!(p("/backup.20240101/itch/locate-13-10k.bin"), None);
        assert!(EasternDate::parse("2020-13-01").is_err());
        assert!(EasternDate::parse("2020-02-30").is_err());
        assert_eq!(EasternDate::parse("20240229").unwrap().to_string(), "2024-02-29");
        // 2023-08-22 13:29:59 UTC is 09:29:59 EDT the same day; 03:00 UTC is the day before.
        assert_eq!(EasternDate::from_unix_ns(1_692_710_999 * 1_000_000_000).to_string(), "2023-08-22");
        assert_eq!(EasternDate::from_unix_ns(1_692_673_200 * 1_000_000_000).to_string(), "2023-08-21");
        for day in 0..20_000i64 {
            let d = EasternDate::from_days(day + 1);
            let m = d.midnight_unix_ns();
            assert_eq!(EasternDate::from_unix_ns(m), d);
            assert_eq!(EasternDate::from_unix_ns(m - 1), EasternDate::from_days(day));
        }
    }
}

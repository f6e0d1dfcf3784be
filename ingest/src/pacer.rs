//! Pacing: how many records are due at `now` for a target rate (sans-I/O, time passed in).

/// Emits `rate` records per second on average, in bursts sized by how late the caller is.
#[derive(Debug, Clone)]
pub struct Pacer {
    rate: u64,
    start_ns: u64,
    emitted: u64,
    /// Most records released in one call, so a stalled thread does not dump a huge burst.
    max_burst: u64,
}

impl Pacer {
    /// A pacer starting at `start_ns`.
    pub fn new(rate: u32, start_ns: u64) -> Self {
        let rate = u64::from(rate.max(1));
        Pacer { rate, start_ns, emitted: 0, max_burst: (rate / 10).max(1) }
    }

    /// Records due now (and counts them as emitted).
    pub fn due(&mut self, now_ns: u64) -> u64 {
        let elapsed = now_ns.saturating_sub(self.start_ns);
        let target = (u128::from(elapsed) * u128::from(self.rate) / 1_000_000_000) as u64;
        let mut n = target.saturating_sub(self.emitted);
        if n > self.max_burst {
            // Behind by more than a burst: drop the backlog instead of flooding.
            self.emitted = target - self.max_burst;
            n = self.max_burst;
        }
        self.emitted += n;
        n
    }

    /// Nanoseconds until the next record is due.
    pub fn wait_ns(&self, now_ns: u64) -> u64 {
        let next_at = self.start_ns + ((u128::from(self.emitted + 1) * 1_000_000_000) / u128::from(self.rate)) as u64;
        next_at.saturating_sub(now_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_rate_per_second() {
        let mut p = Pacer::new(1000, 0);
        let mut total = 0;
        for ms in 1..=1000u64 {
            total += p.due(ms * 1_000_000);
        }
        assert_eq!(total, 1000);
        assert_eq!(p.wait_ns(1_000_000_000), 1_000_000);
    }

    #[test]
    fn caps_bursts_after_a_stall() {
        let mut p = Pacer::new(1000, 0);
        assert_eq!(p.due(10_000_000_000), 100);
        assert_eq!(p.due(10_000_000_000), 0);
    }
}

//! The host-wide rate at which memory moves: a token bucket in bytes.
//!
//! A chunk is paid for before it moves and the part that did not move
//! (pages already on target, absent, or that the kernel refused) is paid
//! back after, so what really moves never exceeds the rate over any
//! window longer than a second, and a pass over memory already in place
//! costs nothing. A restrictive nodeset change, which libvirt migrates in
//! one call, is charged after the fact: the bucket goes into debt and the
//! mover waits it out. So is what the rest of a process (migrate_pages(2))
//! moved beyond its estimate.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Rate {
    bytes_per_sec: f64,
    /// Tokens in bytes; negative while in debt.
    tokens: f64,
    /// The most a quiet second saves up.
    capacity: f64,
    at: Instant,
}

impl Rate {
    /// `mib_per_sec` of at least 1; the bucket starts full (one second).
    pub fn new(mib_per_sec: u64, now: Instant) -> Self {
        let bytes_per_sec = (mib_per_sec.max(1) as f64) * 1024.0 * 1024.0;
        Self {
            bytes_per_sec,
            tokens: bytes_per_sec,
            capacity: bytes_per_sec,
            at: now,
        }
    }

    pub fn mib_per_sec(&self) -> f64 {
        self.bytes_per_sec / (1024.0 * 1024.0)
    }

    /// A new rate from now on; what was saved or owed stays.
    pub fn set_mib_per_sec(&mut self, mib_per_sec: u64, now: Instant) {
        self.refill(now);
        self.bytes_per_sec = (mib_per_sec.max(1) as f64) * 1024.0 * 1024.0;
        self.capacity = self.bytes_per_sec;
        self.tokens = self.tokens.min(self.capacity);
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.bytes_per_sec).min(self.capacity);
        self.at = self.at.max(now);
    }

    /// How long until `bytes` may move; zero when they may move now. More
    /// than a second's worth waits for a full bucket and goes into debt
    /// (see [`Rate::charge`]), which the next waits pay off.
    pub fn wait_for(&mut self, bytes: u64, now: Instant) -> Duration {
        self.refill(now);
        let short = (bytes as f64).min(self.capacity) - self.tokens;
        if short <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(short / self.bytes_per_sec)
        }
    }

    /// Pays for `bytes` now, into debt if need be.
    pub fn charge(&mut self, bytes: u64, now: Instant) {
        self.refill(now);
        self.tokens -= bytes as f64;
    }

    /// Pays back what a chunk was charged and did not move.
    pub fn refund(&mut self, bytes: u64) {
        self.tokens = (self.tokens + bytes as f64).min(self.capacity);
    }

    /// Squares a task charged `charged` bytes up front with the `moved`
    /// bytes it turned out to move: pays back the difference, or charges
    /// it, into debt if need be (a call that moves the rest of a process
    /// is charged an estimate before it runs).
    pub fn settle(&mut self, charged: u64, moved: u64, now: Instant) {
        if moved <= charged {
            self.refund(charged - moved);
        } else {
            self.charge(moved - charged, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn a_full_bucket_lets_one_second_through_then_paces() {
        let t0 = Instant::now();
        let mut r = Rate::new(100, t0);
        assert_eq!(r.wait_for(100 * MIB, t0), Duration::ZERO);
        r.charge(100 * MIB, t0);
        let wait = r.wait_for(50 * MIB, t0);
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        // Half a second later, the 50 MiB may go.
        assert_eq!(
            r.wait_for(50 * MIB, t0 + Duration::from_millis(500)),
            Duration::ZERO
        );
    }

    #[test]
    fn what_is_moved_over_a_window_stays_within_rate_times_window_plus_a_second() {
        // A mover that moves whenever allowed, 16 MiB at a time, for 10 s.
        let t0 = Instant::now();
        let mut r = Rate::new(64, t0);
        let mut now = t0;
        let mut moved = 0u64;
        while now < t0 + Duration::from_secs(10) {
            let wait = r.wait_for(16 * MIB, now);
            now += wait;
            r.charge(16 * MIB, now);
            moved += 16 * MIB;
        }
        let limit = (64 * 10 + 64 + 16) * MIB;
        assert!(moved <= limit, "{} MiB", moved / MIB);
        assert!(moved >= 64 * 10 * MIB, "{} MiB", moved / MIB);
    }

    #[test]
    fn a_refund_gives_back_what_did_not_move_and_debt_is_waited_out() {
        let t0 = Instant::now();
        let mut r = Rate::new(10, t0);
        r.charge(10 * MIB, t0);
        r.refund(10 * MIB);
        assert_eq!(r.wait_for(10 * MIB, t0), Duration::ZERO);
        // A nodeset change of 30 MiB: 3 s of debt, then 1 s for the next.
        r.charge(30 * MIB, t0);
        let wait = r.wait_for(10 * MIB, t0);
        assert!((wait.as_secs_f64() - 3.0).abs() < 1e-6, "{wait:?}");
    }

    #[test]
    fn more_than_a_second_s_worth_waits_for_a_full_bucket_then_goes_into_debt() {
        let t0 = Instant::now();
        let mut r = Rate::new(2, t0);
        // 64 MiB at 2 MiB/s: allowed once the bucket is full (now), then
        // 31 s of debt before the next MiB.
        assert_eq!(r.wait_for(64 * MIB, t0), Duration::ZERO);
        r.charge(64 * MIB, t0);
        let wait = r.wait_for(MIB, t0);
        assert!((wait.as_secs_f64() - 31.5).abs() < 1e-6, "{wait:?}");
    }

    #[test]
    fn settling_pays_back_an_overestimate_and_charges_an_underestimate() {
        let t0 = Instant::now();
        let mut r = Rate::new(10, t0);
        // Charged 10 MiB, moved 4: 6 MiB back, the next 6 MiB go now.
        r.charge(10 * MIB, t0);
        r.settle(10 * MIB, 4 * MIB, t0);
        assert_eq!(r.wait_for(6 * MIB, t0), Duration::ZERO);
        // Charged 6 MiB (all there was), moved 26: 2 s of debt on top.
        r.charge(6 * MIB, t0);
        r.settle(6 * MIB, 26 * MIB, t0);
        let wait = r.wait_for(10 * MIB, t0);
        assert!((wait.as_secs_f64() - 3.0).abs() < 1e-6, "{wait:?}");
    }

    #[test]
    fn a_new_rate_applies_from_now() {
        let t0 = Instant::now();
        let mut r = Rate::new(10, t0);
        r.charge(10 * MIB, t0);
        r.set_mib_per_sec(20, t0);
        let wait = r.wait_for(20 * MIB, t0);
        assert!((wait.as_secs_f64() - 1.0).abs() < 1e-6, "{wait:?}");
        assert_eq!(r.mib_per_sec(), 20.0);
    }
}

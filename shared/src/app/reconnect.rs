//! When to reconnect (spec §3.5, DESIGN §5, issue 12 "Nothing acked is ever lost"): retry on
//! 1xxx/40xx (and any unlisted code) with capped exponential backoff and full jitter, forever;
//! stop and tell the user only on 41xx or a CSP `close-error` whose can-reconnect byte is false.
//!
//! Never giving up matters because an acked-but-unsent message or an unacked incoming one only
//! moves on while connected: a device that stopped after a long outage (a mediator deploy, a
//! train tunnel) would sit offline with work queued until a human noticed. Only a close that
//! reconnecting unchanged cannot fix (41xx, a refused login) waits for the user.
//!
//! The jitter is drawn from the caller's rng (sans-IO, like every other `App` input), so tests
//! are reproducible with a seeded rng and the browser uses `crypto.getRandomValues`.

use rand_core::CryptoRngCore;

use crate::d2m::{CloseCode, Reconnect};

/// The knobs of the backoff: the n-th failure in a row waits a uniformly random time in
/// `[floor_ms, max(floor_ms, min(cap_ms, base_ms · 2^(n-1)))]` ("full jitter").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// Upper bound of the first failure's window; the bound doubles with each failure in a row.
    pub base_ms: u64,
    /// Largest upper bound.
    pub cap_ms: u64,
    /// Shortest delay, so that a server that accepts and drops at once is not hammered.
    pub floor_ms: u64,
}

impl Default for ReconnectPolicy {
    /// base 1 s, cap 60 s, floor 250 ms.
    ///
    /// - 1 s: a single blip (a mediator Durable Object restarting, a Wi-Fi hand-over) is over in
    ///   well under a second on average, so the first retry comes back quickly.
    /// - 60 s: the bound reaches it at the 7th failure in a row (64 s), about a minute of
    ///   outage; an offline device then still notices the server's return within a minute,
    ///   while N devices cut together arrive at about N/60 per second instead of all at once.
    /// - 250 ms: a device looping through accept-then-close costs a server at most four
    ///   handshakes a second, and two or three failures in a row spread it further.
    ///
    /// Full jitter (uniform over the whole window, not "bound ± a little") is what spreads a
    /// herd best: every device cut by the same restart draws its own point in the window, so the
    /// reconnects arrive evenly instead of on the same marks (Brooker, "Exponential Backoff
    /// And Jitter", AWS Architecture Blog 2015: full jitter needs the fewest calls and
    /// finishes about as early as any variant).
    fn default() -> Self {
        Self {
            base_ms: 1_000,
            cap_ms: 60_000,
            floor_ms: 250,
        }
    }
}

impl ReconnectPolicy {
    /// The upper bound of the window for the `failures`-th failure in a row (1 is the first):
    /// `min(cap, base · 2^(failures-1))`, never below the floor. Saturates instead of
    /// overflowing, however many failures there were.
    #[must_use]
    pub fn bound_ms(&self, failures: u32) -> u64 {
        let doublings = failures.saturating_sub(1).min(63);
        self.base_ms
            .saturating_mul(1_u64 << doublings)
            .min(self.cap_ms)
            .max(self.floor_ms)
    }

    /// A delay for the `failures`-th failure in a row, uniform in `[floor, bound_ms(failures)]`.
    /// The modulo's bias is below 2^-40 for any window under 2^24 ms (4.6 hours): irrelevant.
    pub fn delay_ms(&self, failures: u32, rng: &mut impl CryptoRngCore) -> u64 {
        let span = self.bound_ms(failures) - self.floor_ms;
        let jitter = match span.checked_add(1) {
            Some(values) => rng.next_u64() % values,
            None => rng.next_u64(),
        };
        self.floor_ms.saturating_add(jitter)
    }
}

/// Why reconnecting stopped: only reasons that reconnecting unchanged cannot fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// A 41xx close code: reconnecting unchanged cannot work (spec §3.5).
    NeedsUserAction(CloseCode),
    /// The chat server's `close-error` said not to reconnect.
    ChatServerRefused,
}

/// What to do after a close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconnectDecision {
    /// Reconnect at this time (Unix ms).
    RetryAt(u64),
    /// Wait for the user.
    Stop(StopReason),
}

/// Consecutive failures and the decision they lead to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconnector {
    policy: ReconnectPolicy,
    failures: u32,
}

impl Reconnector {
    /// A reconnector with no failures yet.
    #[must_use]
    pub const fn new(policy: ReconnectPolicy) -> Self {
        Self {
            policy,
            failures: 0,
        }
    }

    /// Failures in a row since the last accepted connection (or reset).
    #[must_use]
    pub const fn failures(&self) -> u32 {
        self.failures
    }

    /// The connection was accepted (`ServerInfo`): the failure count starts over.
    pub fn on_connected(&mut self) {
        self.failures = 0;
    }

    /// The user asked to connect now (after a stop, or to skip a pending retry): the backoff
    /// starts over, since the user's attempt says the cause may be gone.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// The connection closed with `code`; `csp_can_reconnect` is the `close-error` byte if the
    /// chat server sent one, which then decides alone (spec §3.5). Anything else retries, after
    /// a delay drawn from `rng` (see [`ReconnectPolicy`]); there is no failure limit.
    pub fn on_closed(
        &mut self,
        code: CloseCode,
        csp_can_reconnect: Option<bool>,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> ReconnectDecision {
        match csp_can_reconnect {
            Some(false) => return ReconnectDecision::Stop(StopReason::ChatServerRefused),
            Some(true) => {}
            None => {
                if code.reconnect() == Reconnect::NeedsUserAction {
                    return ReconnectDecision::Stop(StopReason::NeedsUserAction(code));
                }
            }
        }
        self.failures = self.failures.saturating_add(1);
        let delay = self.policy.delay_ms(self.failures, rng);
        ReconnectDecision::RetryAt(now_ms.saturating_add(delay))
    }
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;

    fn rng(seed: u64) -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(seed)
    }

    fn retry_at(decision: ReconnectDecision) -> u64 {
        match decision {
            ReconnectDecision::RetryAt(at) => at,
            ReconnectDecision::Stop(reason) => panic!("stopped: {reason:?}"),
        }
    }

    #[test]
    fn bounds_grow_exponentially_and_cap() {
        let p = ReconnectPolicy::default();
        let bounds: Vec<u64> = (1..=9).map(|n| p.bound_ms(n)).collect();
        assert_eq!(
            bounds,
            [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000]
        );
        assert_eq!(p.bound_ms(0), 1_000, "0 counts as the first failure");
        assert_eq!(p.bound_ms(64), 60_000);
        assert_eq!(p.bound_ms(u32::MAX), 60_000, "no overflow");
        let tiny = ReconnectPolicy {
            base_ms: 10,
            cap_ms: 50,
            floor_ms: 30,
        };
        assert_eq!(tiny.bound_ms(1), 30, "never below the floor");
        assert_eq!(tiny.bound_ms(3), 40);
        assert_eq!(tiny.bound_ms(4), 50);
        let huge = ReconnectPolicy {
            base_ms: u64::MAX / 2,
            cap_ms: u64::MAX,
            floor_ms: 0,
        };
        assert_eq!(huge.bound_ms(5), u64::MAX, "saturates");
        // A window of all of u64 has no `span + 1`: drawn without the modulo, no overflow.
        let _ = huge.delay_ms(5, &mut rng(1));
    }

    #[test]
    fn delays_stay_in_their_window() {
        let p = ReconnectPolicy::default();
        let mut r = Reconnector::new(p);
        let mut g = rng(7);
        let code = CloseCode::from_u16(1006);
        for n in 1..=40_u32 {
            let now = u64::from(n) * 1_000_000;
            let delay = retry_at(r.on_closed(code, None, now, &mut g)) - now;
            assert_eq!(r.failures(), n);
            assert!(
                (p.floor_ms..=p.bound_ms(n)).contains(&delay),
                "failure {n}: {delay} ms outside [{}, {}]",
                p.floor_ms,
                p.bound_ms(n)
            );
        }
        // Each window is used up to both ends over many draws.
        for n in [1, 3, 7, 30] {
            let draws: Vec<u64> = (0..2_000).map(|_| p.delay_ms(n, &mut g)).collect();
            let (lo, hi) = (draws.iter().min(), draws.iter().max());
            let bound = p.bound_ms(n);
            let slack = (bound - p.floor_ms) / 50;
            assert!(
                lo.is_some_and(|&lo| lo <= p.floor_ms + slack),
                "{n}: {lo:?}"
            );
            assert!(hi.is_some_and(|&hi| hi >= bound - slack), "{n}: {hi:?}");
        }
    }

    #[test]
    fn many_failures_never_stop() {
        let p = ReconnectPolicy::default();
        let mut r = Reconnector::new(p);
        let mut g = rng(3);
        for n in 1..=1_000_u32 {
            let delay = retry_at(r.on_closed(CloseCode::from_u16(1006), None, 0, &mut g));
            assert!(delay <= p.cap_ms, "failure {n}: {delay}");
        }
        assert_eq!(r.failures(), 1_000);
        // Close-error with can-reconnect=true keeps retrying too, as do 40xx and unlisted codes.
        for code in [4000, 4008, 3999, 1000, 1001, 5001] {
            retry_at(r.on_closed(CloseCode::from_u16(code), None, 0, &mut g));
            retry_at(r.on_closed(CloseCode::from_u16(code), Some(true), 0, &mut g));
        }
        let mut saturated = Reconnector {
            policy: p,
            failures: u32::MAX,
        };
        let at = retry_at(saturated.on_closed(CloseCode::Normal, None, 5, &mut g));
        assert!((5 + p.floor_ms..=5 + p.cap_ms).contains(&at));
        assert_eq!(saturated.failures(), u32::MAX);
    }

    #[test]
    fn codes_41xx_stop() {
        let mut r = Reconnector::default();
        let mut g = rng(1);
        for code in [4110, 4111, 4112, 4113, 4114, 4115] {
            let code = CloseCode::from_u16(code);
            assert_eq!(
                r.on_closed(code, None, 0, &mut g),
                ReconnectDecision::Stop(StopReason::NeedsUserAction(code))
            );
        }
        assert_eq!(r.failures(), 0, "a stop is not counted as a failure");
        let at = retry_at(r.on_closed(CloseCode::from_u16(3999), None, 0, &mut g));
        assert!((250..=1_000).contains(&at), "{at}");
    }

    #[test]
    fn close_error_decides_alone() {
        let mut r = Reconnector::default();
        let mut g = rng(2);
        assert_eq!(
            r.on_closed(CloseCode::Normal, Some(false), 0, &mut g),
            ReconnectDecision::Stop(StopReason::ChatServerRefused)
        );
        // Even after many failures, can-reconnect=false stops.
        for _ in 0..100 {
            retry_at(r.on_closed(CloseCode::AbnormalClosure, None, 0, &mut g));
        }
        assert_eq!(
            r.on_closed(CloseCode::AbnormalClosure, Some(false), 0, &mut g),
            ReconnectDecision::Stop(StopReason::ChatServerRefused)
        );
        // can-reconnect=true overrides a 41xx code.
        retry_at(r.on_closed(CloseCode::DeviceDropped, Some(true), 0, &mut g));
    }

    #[test]
    fn on_connected_and_reset_start_over() {
        let p = ReconnectPolicy::default();
        let mut r = Reconnector::new(p);
        let mut g = rng(4);
        for _ in 0..20 {
            retry_at(r.on_closed(CloseCode::AbnormalClosure, None, 0, &mut g));
        }
        r.on_connected();
        assert_eq!(r.failures(), 0);
        for _ in 0..50 {
            let mut again = r.clone();
            let at = retry_at(again.on_closed(CloseCode::from_u16(4000), None, 10, &mut g));
            assert!((10 + p.floor_ms..=10 + p.base_ms).contains(&at), "{at}");
        }
        for _ in 0..20 {
            retry_at(r.on_closed(CloseCode::AbnormalClosure, None, 0, &mut g));
        }
        r.reset();
        assert_eq!(r.failures(), 0);
        let at = retry_at(r.on_closed(CloseCode::AbnormalClosure, None, 0, &mut g));
        assert!(at <= p.base_ms, "{at}");
    }

    #[test]
    fn different_rngs_draw_different_delays() {
        let p = ReconnectPolicy::default();
        let mut a = Reconnector::new(p);
        let mut b = Reconnector::new(p);
        let (mut ga, mut gb) = (rng(10), rng(11));
        let code = CloseCode::AbnormalClosure;
        let da: Vec<u64> = (0..10)
            .map(|_| retry_at(a.on_closed(code, None, 0, &mut ga)))
            .collect();
        let db: Vec<u64> = (0..10)
            .map(|_| retry_at(b.on_closed(code, None, 0, &mut gb)))
            .collect();
        assert_ne!(da, db);
        // The same seed gives the same delays: the rng is the only source of randomness.
        let mut c = Reconnector::new(p);
        let mut gc = rng(10);
        let dc: Vec<u64> = (0..10)
            .map(|_| retry_at(c.on_closed(code, None, 0, &mut gc)))
            .collect();
        assert_eq!(da, dc);
    }

    /// 1 000 devices cut by the same close, each with its own rng: their retries spread evenly
    /// over the window instead of landing on the same mark (what linear backoff did).
    #[test]
    fn a_herd_spreads_over_the_window() {
        let p = ReconnectPolicy::default();
        for failures in [1_u32, 4, 7, 12] {
            let now = 1_700_000_000_000;
            let times: Vec<u64> = (0..1_000_u64)
                .map(|device| {
                    let mut r = Reconnector::new(p);
                    let mut g = rng(device.wrapping_mul(0x9E37_79B9).wrapping_add(17));
                    let mut at = 0;
                    for _ in 0..failures {
                        at = retry_at(r.on_closed(CloseCode::AbnormalClosure, None, now, &mut g));
                    }
                    at - now
                })
                .collect();
            let (floor, bound) = (p.floor_ms, p.bound_ms(failures));
            assert!(times.iter().all(|t| (floor..=bound).contains(t)));
            // Ten equal buckets of the window: each expects 100; none may be empty or hold
            // more than twice its share.
            let width = (bound - floor) / 10 + 1;
            let mut buckets = [0_u32; 10];
            for t in &times {
                let i = usize::try_from((t - floor) / width).unwrap_or(9).min(9);
                buckets[i] += 1;
            }
            assert!(
                buckets.iter().all(|&b| (50..=200).contains(&b)),
                "failures {failures}: {buckets:?}"
            );
            let mut distinct = times.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert!(
                distinct.len() > 400,
                "failures {failures}: only {} distinct times",
                distinct.len()
            );
        }
    }
}

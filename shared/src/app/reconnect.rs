//! When to reconnect (spec §3.5, DESIGN §5): linear backoff on 1xxx/40xx (and any unlisted code),
//! stop and tell the user on 41xx, obey a CSP `close-error`'s can-reconnect byte, and give up
//! after too many failures in a row.

use crate::d2m::{CloseCode, Reconnect};

/// The knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// Delay after the first failure; the n-th failure in a row waits n times this.
    pub step_ms: u64,
    /// Longest delay.
    pub max_delay_ms: u64,
    /// Failures in a row after which the user must act.
    pub max_attempts: u32,
}

impl Default for ReconnectPolicy {
    /// Desktop waits a fixed 5 s; we step by 5 s up to a minute and ask the user after 30 tries.
    fn default() -> Self {
        Self {
            step_ms: 5_000,
            max_delay_ms: 60_000,
            max_attempts: 30,
        }
    }
}

/// Why reconnecting stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// A 41xx close code: reconnecting unchanged cannot work (spec §3.5).
    NeedsUserAction(CloseCode),
    /// The chat server's `close-error` said not to reconnect.
    ChatServerRefused,
    /// Too many failures in a row.
    TooManyFailures(u32),
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

    /// The connection was accepted (`ServerInfo`): the failure count starts over.
    pub fn on_connected(&mut self) {
        self.failures = 0;
    }

    /// The user asked to connect again after a stop.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// The connection closed with `code`; `csp_can_reconnect` is the `close-error` byte if the
    /// chat server sent one, which then decides alone (spec §3.5).
    pub fn on_closed(
        &mut self,
        code: CloseCode,
        csp_can_reconnect: Option<bool>,
        now_ms: u64,
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
        if self.failures > self.policy.max_attempts {
            return ReconnectDecision::Stop(StopReason::TooManyFailures(self.failures));
        }
        let delay = self
            .policy
            .step_ms
            .saturating_mul(u64::from(self.failures))
            .min(self.policy.max_delay_ms);
        ReconnectDecision::RetryAt(now_ms.saturating_add(delay))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_linear_and_capped() {
        let mut r = Reconnector::new(ReconnectPolicy {
            step_ms: 1_000,
            max_delay_ms: 2_500,
            max_attempts: 10,
        });
        let code = CloseCode::from_u16(1006);
        assert_eq!(
            r.on_closed(code, None, 0),
            ReconnectDecision::RetryAt(1_000)
        );
        assert_eq!(
            r.on_closed(code, None, 0),
            ReconnectDecision::RetryAt(2_000)
        );
        assert_eq!(
            r.on_closed(code, None, 0),
            ReconnectDecision::RetryAt(2_500)
        );
        r.on_connected();
        assert_eq!(
            r.on_closed(CloseCode::from_u16(4000), None, 10),
            ReconnectDecision::RetryAt(1_010)
        );
    }

    #[test]
    fn codes_41xx_stop() {
        let mut r = Reconnector::default();
        for code in [4110, 4111, 4112, 4113, 4114, 4115] {
            let code = CloseCode::from_u16(code);
            assert_eq!(
                r.on_closed(code, None, 0),
                ReconnectDecision::Stop(StopReason::NeedsUserAction(code))
            );
        }
        assert!(matches!(
            r.on_closed(CloseCode::from_u16(3999), None, 0),
            ReconnectDecision::RetryAt(5_000)
        ));
    }

    #[test]
    fn close_error_decides_alone() {
        let mut r = Reconnector::default();
        assert_eq!(
            r.on_closed(CloseCode::Normal, Some(false), 0),
            ReconnectDecision::Stop(StopReason::ChatServerRefused)
        );
        assert_eq!(
            r.on_closed(CloseCode::DeviceDropped, Some(true), 0),
            ReconnectDecision::RetryAt(5_000)
        );
    }

    #[test]
    fn too_many_failures_stop() {
        let mut r = Reconnector::new(ReconnectPolicy {
            step_ms: 1,
            max_delay_ms: 10,
            max_attempts: 2,
        });
        r.on_closed(CloseCode::Normal, None, 0);
        r.on_closed(CloseCode::Normal, None, 0);
        assert_eq!(
            r.on_closed(CloseCode::Normal, None, 0),
            ReconnectDecision::Stop(StopReason::TooManyFailures(3))
        );
        r.reset();
        assert_eq!(
            r.on_closed(CloseCode::Normal, None, 0),
            ReconnectDecision::RetryAt(1)
        );
    }
}

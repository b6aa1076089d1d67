//! The clock check current clients run on login-ack (spec §12): the server sends its time, the
//! client compares it with its own and tells the user when they differ by more than 20 minutes
//! (message timestamps, and anything else a peer checks against its own clock, would be off).
//! Pure: the caller supplies its clock.

use super::handshake::LoginAck;

/// How far the local clock may be from the server's before the user is told: 20 minutes, the
/// bound Threema's current clients use.
pub const MAX_CLOCK_OFFSET_MS: u64 = 20 * 60 * 1000;

/// The local clock minus the server's, in ms (positive: the local clock is ahead), or `None`
/// when the server sent no time (the old login-ack layout: unknown, never a warning).
#[must_use]
pub fn clock_offset_ms(ack: &LoginAck, local_now_ms: u64) -> Option<i64> {
    let server = i128::from(ack.server_time_ms()?);
    let offset = i128::from(local_now_ms).saturating_sub(server);
    Some(i64::try_from(offset).unwrap_or(if offset < 0 { i64::MIN } else { i64::MAX }))
}

/// The offset when it is large enough to tell the user (more than [`MAX_CLOCK_OFFSET_MS`]).
#[must_use]
pub fn clock_warning(ack: &LoginAck, local_now_ms: u64) -> Option<i64> {
    clock_offset_ms(ack, local_now_ms).filter(|offset| offset.unsigned_abs() > MAX_CLOCK_OFFSET_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_796_655_600_000;

    fn ack(server_time_ms: u64) -> LoginAck {
        LoginAck {
            server_time_ms,
            queued_messages: 0,
        }
    }

    #[test]
    fn zero_server_time_is_unknown_and_never_warns() {
        assert_eq!(clock_offset_ms(&ack(0), NOW), None);
        assert_eq!(clock_warning(&ack(0), NOW), None);
        assert_eq!(clock_warning(&ack(0), 0), None);
    }

    #[test]
    fn warns_only_beyond_twenty_minutes_either_way() {
        let limit = MAX_CLOCK_OFFSET_MS;
        assert_eq!(clock_offset_ms(&ack(NOW), NOW), Some(0));
        assert_eq!(clock_warning(&ack(NOW - limit), NOW), None);
        assert_eq!(clock_warning(&ack(NOW + limit), NOW), None);
        // Local clock ahead of the server: positive.
        assert_eq!(clock_warning(&ack(NOW - limit - 1), NOW), Some(1_200_001));
        // Local clock behind the server: negative.
        assert_eq!(clock_warning(&ack(NOW + limit + 1), NOW), Some(-1_200_001));
        // A local clock at the epoch (what a zero login-ack made current clients believe of
        // the server, the other way round): about 57 years behind.
        let far = clock_warning(&ack(NOW), 1).unwrap();
        assert!(far < -(56 * 365 * 24 * 3600 * 1000), "{far}");
        assert_eq!(clock_offset_ms(&ack(u64::MAX), 0), Some(i64::MIN));
    }
}

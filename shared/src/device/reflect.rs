//! Reflect-id bookkeeping (spec §5): own reflects wait for their `ReflectAck` in order, and
//! received `Reflected` frames wait for the app's ack.

use std::collections::{BTreeSet, VecDeque};

use super::event::DeviceError;

/// Own reflects and received reflections of one connection.
#[derive(Debug, Default)]
pub(super) struct Reflections {
    /// The last reflect id handed out (desktop pre-increments from 0, so the first is 1).
    last_id: u32,
    /// Non-ephemeral reflects not yet acked, oldest first.
    unacked: VecDeque<u32>,
    /// Non-ephemeral `Reflected` ids delivered to the app and not yet acked.
    awaiting_ack: BTreeSet<u32>,
}

impl Reflections {
    /// The id the next reflect gets; fails once the u32 counter is used up (desktop throws).
    pub(super) fn peek_next(&self) -> Result<u32, DeviceError> {
        self.last_id
            .checked_add(1)
            .ok_or(DeviceError::ReflectIdsExhausted)
    }

    /// Records a sent reflect; ephemeral ones use the same counter but wait for no ack.
    pub(super) fn commit(&mut self, id: u32, ephemeral: bool) {
        self.last_id = id;
        if !ephemeral {
            self.unacked.push_back(id);
        }
    }

    /// A `ReflectAck` must name the oldest unacked reflect.
    pub(super) fn on_ack(&mut self, got: u32) -> Result<(), DeviceError> {
        match self.unacked.front() {
            Some(&expected) if expected == got => {
                self.unacked.pop_front();
                Ok(())
            }
            expected => Err(DeviceError::ReflectAckOutOfOrder {
                expected: expected.copied(),
                got,
            }),
        }
    }

    pub(super) fn delivered(&mut self, reflected_id: u32) {
        self.awaiting_ack.insert(reflected_id);
    }

    /// The app acks; an id not awaiting an ack would earn a 4012 close, so it is refused here.
    pub(super) fn take_for_ack(&mut self, reflected_id: u32) -> Result<(), DeviceError> {
        if self.awaiting_ack.remove(&reflected_id) {
            Ok(())
        } else {
            Err(DeviceError::NotAwaitingAck(reflected_id))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_start_at_one_and_share_the_counter_with_ephemeral() {
        let mut r = Reflections::default();
        for (expected, ephemeral) in [(1, false), (2, true), (3, false)] {
            let id = r.peek_next().unwrap();
            assert_eq!(id, expected);
            r.commit(id, ephemeral);
        }
        r.on_ack(1).unwrap();
        assert_eq!(
            r.on_ack(2),
            Err(DeviceError::ReflectAckOutOfOrder {
                expected: Some(3),
                got: 2
            })
        );
    }

    #[test]
    fn overflow_is_an_error() {
        let mut r = Reflections::default();
        r.commit(u32::MAX - 1, false);
        assert_eq!(r.peek_next().unwrap(), u32::MAX);
        r.commit(u32::MAX, true);
        assert_eq!(r.peek_next(), Err(DeviceError::ReflectIdsExhausted));
    }

    #[test]
    fn ack_without_reflect_is_out_of_order() {
        let mut r = Reflections::default();
        assert_eq!(
            r.on_ack(1),
            Err(DeviceError::ReflectAckOutOfOrder {
                expected: None,
                got: 1
            })
        );
    }

    #[test]
    fn reflected_is_acked_once() {
        let mut r = Reflections::default();
        r.delivered(7);
        r.take_for_ack(7).unwrap();
        assert_eq!(r.take_for_ack(7), Err(DeviceError::NotAwaitingAck(7)));
        assert_eq!(r.take_for_ack(8), Err(DeviceError::NotAwaitingAck(8)));
    }
}

//! The leader role (spec §4, DESIGN §3 "Leader"): exactly one, and only a device whose queue
//! has been delivered.

use super::effect::ConnId;
use super::group::{Conn, Group};
use super::store::GroupStore;
use crate::proto::d2m as pb;

impl<S: GroupStore> Group<S> {
    /// A connection's queue just went dry: it leads if nobody does.
    pub(super) fn on_dry(&mut self, conn: ConnId) {
        if self.leader.is_none() {
            self.promote(conn);
        }
    }

    /// The leader left: the longest-connected dry device takes over; if none is dry, the next
    /// one to go dry will.
    pub(super) fn promote_next(&mut self) {
        let next = self
            .conns
            .iter()
            .filter_map(|(&conn, c)| match c {
                Conn::Online(session) if session.delivery.dry => {
                    Some((session.connected_since, conn))
                }
                _ => None,
            })
            .min()
            .map(|(_, conn)| conn);
        if let Some(conn) = next {
            self.promote(conn);
        }
    }

    fn promote(&mut self, conn: ConnId) {
        self.leader = Some(conn);
        self.send(conn, pb::RolePromotedToLeader {});
    }
}

#[cfg(test)]
mod tests {
    use crate::d2m::D2mMessage;
    use crate::mediator::testkit::{names, reflected, Harness};
    use crate::mediator::{DeviceId, GroupConfig};

    fn promoted(messages: &[D2mMessage]) -> bool {
        messages
            .iter()
            .any(|m| matches!(m, D2mMessage::RolePromotedToLeader(_)))
    }

    #[test]
    fn the_first_dry_device_leads_and_the_second_does_not() {
        let mut h = Harness::new();
        let a = h.login(1);
        let b = h.login(2);
        assert!(promoted(&h.take(a)));
        assert!(!promoted(&h.take(b)));
        assert_eq!(h.group.leader(), Some(DeviceId(1)));
    }

    #[test]
    fn when_the_leader_goes_the_longest_connected_dry_device_leads() {
        let mut h = Harness::new();
        let a = h.login(1);
        h.tick(1);
        let b = h.login(2);
        h.tick(1);
        let c = h.login(3);
        h.take(b);
        h.take(c);
        h.disconnect(a);
        assert!(promoted(&h.take(b)));
        assert!(!promoted(&h.take(c)));
        assert_eq!(h.group.leader(), Some(DeviceId(2)));
    }

    #[test]
    fn a_device_still_draining_its_queue_is_promoted_only_after_dry() {
        let config = GroupConfig {
            max_in_flight: 1,
            ..GroupConfig::default()
        };
        let mut h = Harness::with_config(config);
        let a = h.login(1);
        let b = h.login(2);
        h.disconnect(b);
        h.reflect(a, b"1");
        h.reflect(a, b"2");
        let b = h.login(2);
        let first = h.take(b);
        assert_eq!(names(&first), ["ServerInfo", "Reflected"]);
        h.disconnect(a);
        assert_eq!(h.group.leader(), None, "b is not dry yet");
        assert!(h.take(b).is_empty());
        h.ack(b, reflected(&first)[0].reflected_id);
        assert_eq!(
            names(&h.take(b)),
            ["Reflected", "ReflectionQueueDry", "RolePromotedToLeader"]
        );
        assert_eq!(h.group.leader(), Some(DeviceId(2)));
    }

    #[test]
    fn the_device_replacing_the_leader_by_id_reuse_is_promoted_after_its_dry() {
        let mut h = Harness::new();
        let a = h.login(1);
        let b = h.login(2);
        h.take(b);
        let a2 = h.login(1);
        assert!(h.closed(a).is_some());
        // b was dry and connected longest: it leads; the new connection of 1 does not.
        assert!(promoted(&h.take(b)));
        assert!(!promoted(&h.take(a2)));
        assert_eq!(h.group.leader(), Some(DeviceId(2)));
    }
}

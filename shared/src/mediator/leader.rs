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

//! Groups (spec §9.5 group containers, §8.4 `sync.Group`).

use rand_core::CryptoRngCore;

use super::core::App;
use super::event::Dropped;
use super::incoming::IncomingAck;
use super::model::{GroupId, Identity, UserState};
use super::reflected::ApplyResult;
use crate::csp::{E2eMessageType, OpenedMessage};
use crate::proto::d2d::envelope::Content;

impl App {
    /// Whether a group text from `sender` belongs to a group this user is in with them.
    pub(super) fn group_accepts(&self, group: &GroupId, sender: &Identity) -> bool {
        self.state.group(group).is_some_and(|g| {
            g.user_state == UserState::Member
                && (g.id.creator == *sender || g.members.contains(sender))
        })
    }

    pub(super) fn on_group_control(
        &mut self,
        _sender: Identity,
        opened: &OpenedMessage,
        _content: Content,
        ack: IncomingAck,
        _now_ms: u64,
        _rng: &mut impl CryptoRngCore,
    ) {
        self.drop_ack(ack, Dropped::Unsupported(opened.message_type));
    }

    pub(super) fn apply_group_control(
        &mut self,
        _sender: Identity,
        _message_type: E2eMessageType,
        _body: &[u8],
    ) -> ApplyResult {
        Ok(())
    }
}

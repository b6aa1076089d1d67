//! New device sync (DESIGN §2.4).

use rand_core::CryptoRngCore;

use super::core::{App, Pending};
use super::event::AppEvent;
use super::sync::SyncOp;
use crate::proto::d2d::{envelope::Content, NewDeviceSyncRequest};

impl App {
    /// A device created empty asks its siblings once, after its queue is dry.
    pub(super) fn request_new_device_sync(&mut self, rng: &mut impl CryptoRngCore) {
        if !self.state.own().wants_new_device_sync || self.conn.new_device_sync_requested {
            return;
        }
        let content = Content::NewDeviceSyncRequest(NewDeviceSyncRequest {
            max_history_messages: self.config.max_history_messages,
        });
        if self
            .reflect(content, false, Some(Pending::NewDeviceSyncRequest), rng)
            .is_some()
        {
            self.conn.new_device_sync_requested = true;
        }
    }

    pub(super) fn on_new_device_sync_request(
        &mut self,
        device_id: u64,
        max_history_messages: u32,
        _rng: &mut impl CryptoRngCore,
    ) {
        self.enqueue_sync(SyncOp::NewDeviceSync {
            device_id,
            max_history_messages,
        });
    }

    pub(super) fn new_device_sync_envelopes(&self, _max_history_messages: u32) -> Vec<Content> {
        Vec::new()
    }

    pub(super) fn new_device_sync_done(&mut self, device_id: u64, messages: u32) {
        self.events.push_back(AppEvent::NewDeviceSyncSent {
            device_id,
            messages,
        });
    }
}

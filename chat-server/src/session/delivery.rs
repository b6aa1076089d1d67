//! Delivery to the receiving session of an identity (DESIGN §4): the queue in order, at most
//! [`WINDOW`] unacked messages at a time, then queue-send-complete once the backlog present at
//! unblock has been sent. No I/O: it returns [`Action`]s for the session to carry out.
//!
//! ```text
//!  start ──Fetch(backlog)──► Loading ──page complete──► Following ◄─┐ new message committed
//!                               │                         │         └─ (appended to `ready`)
//!                               └──page full──► Paging ◄──┘ inbox or `ready` overflowed
//!                                                  │ ready empty: Fetch(after cursor)
//!                                                  └──page complete──► Following
//! ```
//!
//! The cursor is the highest sequence number taken into `ready`. A notification at or below it is
//! a duplicate; one that arrives while not `Following` is ignored because the next page (read
//! after it was committed) contains it.
//!
//! With several nodes (PostgreSQL) a receiver's sequence numbers are gapless and another node
//! may commit some of them: a notification is taken only if it follows the cursor directly,
//! otherwise the queue is read again. A hint (another node committed, or the catch-up sweep)
//! reads the queue again too; one that arrives while a page is being read makes the next page
//! follow, since the page in flight may have been read before the hinted commit. A hint that
//! carries the committed message itself is taken like a local notification when it follows
//! the cursor directly (no queue read), and is a plain hint otherwise.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use tandem_shared::csp::MessageFlags;

use crate::types::{Identity, QueuedMessage};

/// Most messages sent and not yet acked.
pub const WINDOW: usize = 256;
/// Messages per page read from the database.
pub const PAGE: usize = 256;
/// Most messages held in memory waiting for the window.
pub const MAX_READY: usize = 1024;

/// What the session must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this message (payload 0x02).
    Send(Arc<QueuedMessage>),
    /// Read a page of the queue.
    Fetch {
        /// After this sequence number.
        after: u64,
        /// At most this many.
        limit: usize,
        /// Whether this is the first read after unblock.
        backlog: bool,
    },
    /// Remove a message from the queue (acked, sent without ack, or expired).
    Remove(u64),
    /// Send queue-send-complete (0xd0).
    QueueSendComplete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Loading,
    Paging,
    Following,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backlog {
    /// The first page has not arrived.
    Awaiting,
    /// The first page said where the backlog ends (`None`: empty); `fetched` once every message
    /// up to there is in `ready` or sent.
    Pending { end: Option<u64>, fetched: bool },
    /// queue-send-complete was sent.
    Done,
}

/// The receiving side of one session.
#[derive(Debug)]
pub struct Delivery {
    phase: Phase,
    fetching: bool,
    cursor: u64,
    ready: VecDeque<Arc<QueuedMessage>>,
    in_flight: HashMap<(Identity, u64), u64>,
    backlog: Backlog,
    /// Sequence numbers per receiver are gapless (PostgreSQL): only cursor + 1 may be taken
    /// from a notification.
    gapless: bool,
    /// A hint arrived while a page was being read: read again after it.
    hinted: bool,
}

impl Delivery {
    /// Starts after unblock: the first action reads the backlog.
    #[must_use]
    pub fn start() -> (Self, Action) {
        Self::start_with(false)
    }

    /// Starts after unblock on a backend whose sequence numbers are gapless per receiver.
    #[must_use]
    pub fn start_gapless() -> (Self, Action) {
        Self::start_with(true)
    }

    fn start_with(gapless: bool) -> (Self, Action) {
        (
            Self {
                gapless,
                hinted: false,
                phase: Phase::Loading,
                fetching: true,
                cursor: 0,
                ready: VecDeque::new(),
                in_flight: HashMap::new(),
                backlog: Backlog::Awaiting,
            },
            Action::Fetch {
                after: 0,
                limit: PAGE,
                backlog: true,
            },
        )
    }

    /// The highest sequence number taken from the queue so far.
    #[must_use]
    pub const fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Messages sent and not yet acked.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// A page arrived.
    pub fn on_fetched(
        &mut self,
        messages: Vec<Arc<QueuedMessage>>,
        complete: bool,
        backlog_end: Option<Option<u64>>,
    ) {
        self.fetching = false;
        if let (Backlog::Awaiting, Some(end)) = (self.backlog, backlog_end) {
            self.backlog = Backlog::Pending {
                end,
                fetched: false,
            };
        }
        for message in messages {
            if message.seq > self.cursor {
                self.cursor = message.seq;
                self.ready.push_back(message);
            }
        }
        self.phase = if complete && !core::mem::take(&mut self.hinted) {
            Phase::Following
        } else {
            Phase::Paging
        };
        if let Backlog::Pending { end, fetched } = &mut self.backlog {
            if complete || end.is_some_and(|e| self.cursor >= e) {
                *fetched = true;
            }
        }
    }

    /// A message was committed to this identity's queue.
    pub fn on_queued(&mut self, message: Arc<QueuedMessage>) {
        if self.phase != Phase::Following || message.seq <= self.cursor {
            return;
        }
        if self.gapless && message.seq != self.cursor.saturating_add(1) {
            // Another node committed the ones in between: read them from the database.
            self.phase = Phase::Paging;
            return;
        }
        if self.ready.len() >= MAX_READY {
            // The message stays in the database; read it with the next page.
            self.phase = Phase::Paging;
            return;
        }
        self.cursor = message.seq;
        self.ready.push_back(message);
    }

    /// Another node committed `message` to this identity's queue and sent it in its hint. It
    /// is taken only if it follows the cursor directly while the session follows its queue;
    /// otherwise it is a hint like any other: the queue is read again (and a page in flight,
    /// which may have been read before that commit, is followed by another).
    pub fn on_hinted(&mut self, message: Arc<QueuedMessage>) {
        if message.seq <= self.cursor {
            return;
        }
        if self.phase == Phase::Following
            && message.seq == self.cursor.saturating_add(1)
            && self.ready.len() < MAX_READY
        {
            self.cursor = message.seq;
            self.ready.push_back(message);
            return;
        }
        self.on_hint();
    }

    /// Notifications were dropped: read the queue again from the cursor.
    pub fn on_overflow(&mut self) {
        if self.phase == Phase::Following {
            self.phase = Phase::Paging;
        }
    }

    /// Messages may have been committed without a notification here (another node, or the
    /// catch-up sweep): read the queue again from the cursor.
    pub fn on_hint(&mut self) {
        if self.fetching {
            self.hinted = true;
        } else if self.phase == Phase::Following {
            self.phase = Phase::Paging;
        }
    }

    /// The client acked (sender, message id); returns the sequence number to remove, if it was
    /// in flight on this session.
    pub fn on_ack(&mut self, sender: &Identity, message_id: u64) -> Option<u64> {
        self.in_flight.remove(&(*sender, message_id))
    }

    /// Sends what the window allows, asks for the next page, and reports queue-send-complete.
    pub fn pump(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        while self.in_flight.len() < WINDOW {
            let Some(message) = self.ready.pop_front() else {
                break;
            };
            if message.is_expired(now_ms) {
                out.push(Action::Remove(message.seq));
                continue;
            }
            if message.flags.contains(MessageFlags::DONT_ACK) {
                // The receiver must not ack it, so it leaves the queue once sent.
                out.push(Action::Remove(message.seq));
            } else {
                self.in_flight
                    .insert((message.sender, message.message_id), message.seq);
            }
            out.push(Action::Send(message));
        }
        if self.ready.is_empty() && self.phase == Phase::Paging && !self.fetching {
            self.fetching = true;
            out.push(Action::Fetch {
                after: self.cursor,
                limit: PAGE,
                backlog: false,
            });
        }
        if let Backlog::Pending { end, fetched: true } = self.backlog {
            let backlog_sent = match end {
                None => true,
                Some(end) => self.ready.front().is_none_or(|m| m.seq > end),
            };
            if backlog_sent {
                self.backlog = Backlog::Done;
                out.push(Action::QueueSendComplete);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64) -> Arc<QueuedMessage> {
        msg_with(seq, MessageFlags::NONE, None)
    }

    fn msg_with(seq: u64, flags: MessageFlags, expires_at_ms: Option<u64>) -> Arc<QueuedMessage> {
        Arc::new(QueuedMessage {
            seq,
            sender: *b"SENDER01",
            message_id: seq * 10,
            flags,
            expires_at_ms,
            body: Arc::from(&b"body"[..]),
        })
    }

    fn sent(actions: &[Action]) -> Vec<u64> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(m) => Some(m.seq),
                _ => None,
            })
            .collect()
    }

    /// The next page after `after`.
    fn read_after(after: u64) -> Action {
        Action::Fetch {
            after,
            limit: PAGE,
            backlog: false,
        }
    }

    /// A page of 3 and 4 answers a read during which a hint came: both are sent, and the queue
    /// is read once more (and found empty).
    fn page_of_3_and_4_after_a_hint(d: &mut Delivery) {
        d.on_fetched(vec![msg(3), msg(4)], true, None);
        let actions = pump(d);
        assert_eq!(sent(&actions), vec![3, 4]);
        assert!(actions.contains(&read_after(4)));
        d.on_fetched(vec![], true, None);
        assert!(pump(d).is_empty());
    }

    fn pump(d: &mut Delivery) -> Vec<Action> {
        let mut out = Vec::new();
        d.pump(1_000, &mut out);
        out
    }

    #[test]
    fn empty_queue_completes_at_once_and_then_follows() {
        let (mut d, first) = Delivery::start();
        assert_eq!(
            first,
            Action::Fetch {
                after: 0,
                limit: PAGE,
                backlog: true
            }
        );
        // Nothing happens before the first page.
        d.on_queued(msg(1));
        assert!(pump(&mut d).is_empty());
        d.on_fetched(vec![], true, Some(None));
        assert_eq!(pump(&mut d), vec![Action::QueueSendComplete]);
        d.on_queued(msg(5));
        assert_eq!(sent(&pump(&mut d)), vec![5]);
        assert_eq!(d.on_ack(b"SENDER01", 50), Some(5));
        assert_eq!(d.on_ack(b"SENDER01", 50), None);
    }

    #[test]
    fn backlog_is_sent_in_order_before_queue_send_complete() {
        let (mut d, _) = Delivery::start();
        d.on_fetched(vec![msg(2), msg(3)], true, Some(Some(3)));
        d.on_queued(msg(3)); // duplicate of the page
        d.on_queued(msg(4));
        let out = pump(&mut d);
        assert_eq!(sent(&out), vec![2, 3, 4]);
        let complete = out
            .iter()
            .position(|a| *a == Action::QueueSendComplete)
            .unwrap();
        assert_eq!(complete, 3, "after all three sends");
        assert!(pump(&mut d).is_empty(), "queue-send-complete only once");
    }

    #[test]
    fn window_limits_unacked_messages_and_acks_open_it() {
        let (mut d, _) = Delivery::start();
        let page: Vec<_> = (1..=(PAGE as u64)).map(msg).collect();
        d.on_fetched(page, false, Some(Some(1000)));
        let out = pump(&mut d);
        assert_eq!(sent(&out).len(), WINDOW);
        assert!(!out.contains(&Action::QueueSendComplete));
        // Ready is empty and the phase is paging: the next page is asked for once.
        assert_eq!(
            out.last(),
            Some(&Action::Fetch {
                after: PAGE as u64,
                limit: PAGE,
                backlog: false
            })
        );
        assert!(pump(&mut d).is_empty());
        d.on_fetched(vec![msg(1000)], true, None);
        assert!(sent(&pump(&mut d)).is_empty(), "window is full");
        assert_eq!(d.on_ack(b"SENDER01", 10), Some(1));
        let out = pump(&mut d);
        assert_eq!(sent(&out), vec![1000]);
        assert_eq!(out.last(), Some(&Action::QueueSendComplete));
    }

    #[test]
    fn overflow_switches_to_paging_from_the_cursor() {
        let (mut d, _) = Delivery::start();
        d.on_fetched(vec![], true, Some(None));
        pump(&mut d);
        d.on_queued(msg(7));
        d.on_overflow();
        d.on_queued(msg(9)); // ignored while paging
        let out = pump(&mut d);
        assert_eq!(sent(&out), vec![7]);
        assert_eq!(out.last(), Some(&read_after(7)));
        d.on_fetched(vec![msg(8), msg(9)], true, None);
        assert_eq!(sent(&pump(&mut d)), vec![8, 9]);
    }

    #[test]
    fn ready_overflow_leaves_messages_for_the_next_page() {
        let (mut d, _) = Delivery::start();
        d.on_fetched(vec![], true, Some(None));
        for seq in 1..=(MAX_READY as u64 + 5) {
            d.on_queued(msg(seq));
        }
        let out = pump(&mut d);
        assert_eq!(sent(&out).len(), WINDOW);
        assert!(!out.iter().any(|a| matches!(a, Action::Fetch { .. })));
    }

    #[test]
    fn dont_ack_messages_leave_the_queue_when_sent_and_expired_ones_are_dropped() {
        let (mut d, _) = Delivery::start();
        d.on_fetched(
            vec![
                msg_with(1, MessageFlags::DONT_ACK, None),
                msg_with(2, MessageFlags::SHORT_LIVED, Some(500)),
                msg_with(3, MessageFlags::SHORT_LIVED, Some(5_000)),
            ],
            true,
            Some(Some(3)),
        );
        let out = pump(&mut d);
        assert_eq!(out.first(), Some(&Action::Remove(1)));
        assert!(out.contains(&Action::Remove(2)));
        assert_eq!(sent(&out), vec![1, 3]);
        assert_eq!(d.in_flight(), 1);
        assert_eq!(out.last(), Some(&Action::QueueSendComplete));
    }

    #[test]
    fn gapless_notifications_must_follow_the_cursor_and_hints_read_again() {
        let (mut d, _) = Delivery::start_gapless();
        d.on_fetched(vec![msg(1)], true, Some(Some(1)));
        assert_eq!(sent(&pump(&mut d)), vec![1]);
        d.on_queued(msg(2));
        assert_eq!(sent(&pump(&mut d)), vec![2]);
        // 3 was committed by another node: 4 alone must not pass the cursor.
        d.on_queued(msg(4));
        let actions = pump(&mut d);
        assert!(sent(&actions).is_empty());
        assert!(actions.contains(&read_after(2)));
        // A hint while that page is read: the page may predate the hinted commit.
        d.on_hint();
        page_of_3_and_4_after_a_hint(&mut d);
        // A hint while following reads the queue once more.
        d.on_hint();
        assert_eq!(pump(&mut d), vec![read_after(4)]);
    }

    #[test]
    fn carried_messages_are_taken_only_in_order_and_never_twice() {
        let (mut d, _) = Delivery::start_gapless();
        // Before the backlog is read, a carried message is a hint: the page in flight may
        // have been read before its commit, so another page follows.
        d.on_hinted(msg(1));
        d.on_fetched(vec![], true, Some(None));
        let actions = pump(&mut d);
        assert!(sent(&actions).is_empty());
        assert!(actions.contains(&read_after(0)));
        d.on_fetched(vec![msg(1)], true, None);
        assert_eq!(sent(&pump(&mut d)), vec![1]);
        // Following: the next one is taken without a queue read, a repeat is ignored.
        d.on_hinted(msg(2));
        d.on_hinted(msg(2));
        d.on_queued(msg(2));
        assert_eq!(
            pump(&mut d)
                .iter()
                .map(|a| match a {
                    Action::Send(m) => m.seq,
                    _ => 0,
                })
                .collect::<Vec<_>>(),
            vec![2],
            "sent once, nothing read"
        );
        // Out of order (3 is carried by a hint still on its way): read from the cursor.
        d.on_hinted(msg(4));
        assert_eq!(pump(&mut d), vec![read_after(2)]);
        // Hints arriving while that page is read add nothing and make the page followed by another.
        d.on_hinted(msg(3));
        page_of_3_and_4_after_a_hint(&mut d);
        d.on_hinted(msg(3));
        d.on_hinted(msg(4));
        assert!(pump(&mut d).is_empty(), "already sent: no send, no read");
        d.on_hinted(msg(5));
        assert_eq!(sent(&pump(&mut d)), vec![5]);
    }
}

//! What one node tells another through `NOTIFY` (docs/chat-server.md "Live delivery across
//! nodes"): the text of each hint, how hints are packed into payloads, and what the receiving
//! node does with them.
//!
//! A hint is sent only after the transaction it reports has committed, so a message carried in
//! a hint is in the database already: the receiving session may deliver it straight away
//! (without reading its queue) when it directly follows the session's cursor, and reads the
//! queue otherwise. A lost, late or reordered hint therefore costs a queue read or one sweep
//! interval, never a message, and cannot make a message arrive twice or out of order.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use tandem_shared::csp::MessageFlags;

use crate::mailbox::MailItem;
use crate::registry::Registry;
use crate::types::{Identity, QueuedMessage};

use super::worker::deliver;

/// Longest NOTIFY payload we send (PostgreSQL's limit is 8000 bytes).
pub(super) const MAX_NOTIFY_PAYLOAD: usize = 7_000;

/// Bytes before the body in a carried message: receiver, seq, sender, message id, flags,
/// expiry (0: none; a short-lived message never expires at the epoch).
const CARRIED_HEADER: usize = 8 + 8 + 8 + 8 + 1 + 8;

/// What another node must hear, sent by the notifier after the commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// `message` was committed to `receiver`'s queue, whose receiving session is on `node`.
    Queued {
        /// The node.
        node: i64,
        /// The receiver.
        receiver: Identity,
        /// The message as committed (carried in the hint when it fits).
        message: Arc<QueuedMessage>,
    },
    /// A don't-queue message for `receiver`, whose receiving session is on `node`.
    Transient {
        /// The node.
        node: i64,
        /// The receiver.
        receiver: Identity,
        /// The message struct.
        body: Arc<[u8]>,
    },
    /// The node that held `identity`'s receiving session before has committed everything that
    /// session handed it (its removals); `node` holds `epoch` now.
    Released {
        /// The node.
        node: i64,
        /// The identity.
        identity: Identity,
        /// The epoch the database names now.
        epoch: u64,
    },
    /// `identity`'s receiving session on `node` was replaced by one with `epoch`.
    Demote {
        /// The node.
        node: i64,
        /// The identity.
        identity: Identity,
        /// The new receiving epoch.
        epoch: u64,
    },
}

impl Hint {
    /// The node to tell and the hint's text (`None`: a don't-queue message too large to relay,
    /// dropped as best effort). A committed message too large to carry becomes a bare "read
    /// your queue" hint.
    #[must_use]
    pub fn encode(&self) -> Option<(i64, String)> {
        let identity_text = |i: &Identity| String::from_utf8_lossy(i).into_owned();
        let (node, text) = match self {
            Self::Queued {
                node,
                receiver,
                message,
            } => {
                let carried = carried_len(message.body.len());
                if carried <= MAX_NOTIFY_PAYLOAD {
                    let mut bytes = Vec::with_capacity(CARRIED_HEADER + message.body.len());
                    bytes.extend_from_slice(receiver);
                    bytes.extend_from_slice(&message.seq.to_le_bytes());
                    bytes.extend_from_slice(&message.sender);
                    bytes.extend_from_slice(&message.message_id.to_le_bytes());
                    bytes.push(message.flags.bits());
                    bytes.extend_from_slice(&message.expires_at_ms.unwrap_or(0).to_le_bytes());
                    bytes.extend_from_slice(&message.body);
                    (*node, format!("m{}", B64.encode(bytes)))
                } else {
                    (*node, format!("q{}", identity_text(receiver)))
                }
            }
            Self::Demote {
                node,
                identity,
                epoch,
            } => (*node, format!("d{}:{epoch}", identity_text(identity))),
            Self::Released {
                node,
                identity,
                epoch,
            } => (*node, format!("r{}:{epoch}", identity_text(identity))),
            Self::Transient {
                node,
                receiver,
                body,
            } => (
                *node,
                format!("t{}:{}", identity_text(receiver), B64.encode(body)),
            ),
        };
        (text.len() <= MAX_NOTIFY_PAYLOAD).then_some((node, text))
    }
}

/// Length of a carried message's hint text ("m" and the base64 of header and body).
const fn carried_len(body: usize) -> usize {
    1 + (CARRIED_HEADER + body).div_ceil(3) * 4
}

/// A carried message: its receiver and the message, or `None` if the text is not one.
fn decode_carried(text: &str) -> Option<(Identity, QueuedMessage)> {
    let bytes = B64.decode(text).ok()?;
    let (header, body) = bytes.split_at_checked(CARRIED_HEADER)?;
    let field = |at: usize| -> Option<[u8; 8]> { header.get(at..at + 8)?.try_into().ok() };
    let expires = u64::from_le_bytes(field(33)?);
    Some((
        field(0)?,
        QueuedMessage {
            seq: u64::from_le_bytes(field(8)?),
            sender: field(16)?,
            message_id: u64::from_le_bytes(field(24)?),
            flags: MessageFlags(*header.get(32)?),
            expires_at_ms: (expires != 0).then_some(expires),
            body: Arc::from(body),
        },
    ))
}

/// Joins hint texts with spaces into payloads under PostgreSQL's size limit.
pub(super) fn chunk_payload(texts: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for text in texts {
        if !current.is_empty() && current.len() + 1 + text.len() > MAX_NOTIFY_PAYLOAD {
            out.push(core::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(text);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Applies received payloads to this node's sessions; the messages they carry reach their
/// receiving sessions with one wake-up per session.
pub(super) fn apply_hints<'a>(registry: &Registry, payloads: impl IntoIterator<Item = &'a str>) {
    let mut carried: Vec<(Identity, MailItem)> = Vec::new();
    for item in payloads.into_iter().flat_map(|p| p.split(' ')) {
        if let Some(rest) = item.strip_prefix('m') {
            if let Some((receiver, message)) = decode_carried(rest) {
                carried.push((receiver, MailItem::Hinted(Arc::new(message))));
            }
        } else if let Some(rest) = item.strip_prefix('q') {
            if let Ok(identity) = Identity::try_from(rest.as_bytes()) {
                registry.recheck(&identity);
            }
        } else if let Some((identity, epoch)) = item.strip_prefix('r').and_then(identity_epoch) {
            registry.released(&identity, epoch);
        } else if let Some(rest) = item.strip_prefix('t') {
            let Some((identity, body)) = rest.split_once(':') else {
                continue;
            };
            if let (Ok(identity), Ok(body)) =
                (Identity::try_from(identity.as_bytes()), B64.decode(body))
            {
                if let Some(mailbox) = registry.receiver(&identity) {
                    mailbox.push_delivery(MailItem::Transient(Arc::from(body)));
                }
            }
        } else if let Some((identity, epoch)) = item.strip_prefix('d').and_then(identity_epoch) {
            registry.demote_before(&identity, epoch);
        }
    }
    deliver(registry, carried);
}

/// "IDENTITY:epoch".
fn identity_epoch(text: &str) -> Option<(Identity, u64)> {
    let (identity, epoch) = text.split_once(':')?;
    Some((
        Identity::try_from(identity.as_bytes()).ok()?,
        epoch.parse().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::Mailbox;

    fn message(seq: u64, body_len: usize) -> Arc<QueuedMessage> {
        Arc::new(QueuedMessage {
            seq,
            sender: *b"SENDER01",
            message_id: 0x0102_0304_0506_0708,
            flags: MessageFlags(0x21),
            expires_at_ms: (seq % 2 == 0).then_some(1_700_000_000_000),
            body: Arc::from(vec![0xab; body_len]),
        })
    }

    #[test]
    fn payloads_stay_under_the_limit_and_keep_every_hint() {
        let texts: Vec<String> = (0..2000).map(|i| format!("q{i:08}")).collect();
        let chunks = chunk_payload(&texts);
        assert!(chunks.len() > 1);
        assert!(chunks.iter().all(|c| c.len() <= MAX_NOTIFY_PAYLOAD));
        let joined: Vec<&str> = chunks.iter().flat_map(|c| c.split(' ')).collect();
        assert_eq!(joined.len(), 2000);
    }

    #[test]
    fn a_committed_message_travels_in_its_hint_to_the_receiving_session() {
        let registry = Registry::new();
        let mailbox = Mailbox::new();
        let session = registry.register(*b"RECEIVER", 1, Arc::clone(&mailbox));
        assert!(registry.make_receiver(b"RECEIVER", 1, session, 1).is_some());
        let texts: Vec<String> = [1, 2]
            .iter()
            .map(|&seq| {
                let hint = Hint::Queued {
                    node: 7,
                    receiver: *b"RECEIVER",
                    message: message(seq, 300),
                };
                let (node, text) = hint.encode().unwrap();
                assert_eq!(node, 7);
                text
            })
            .collect();
        let payloads = chunk_payload(&texts);
        assert_eq!(payloads.len(), 1);
        apply_hints(&registry, payloads.iter().map(String::as_str));
        let items = mailbox.drain().items;
        assert_eq!(items.len(), 2);
        for (item, seq) in items.iter().zip([1, 2]) {
            match item {
                MailItem::Hinted(m) => assert_eq!(**m, *message(seq, 300)),
                other => panic!("expected a carried message, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_message_too_large_to_carry_becomes_a_read_your_queue_hint() {
        let largest = (MAX_NOTIFY_PAYLOAD - 1) / 4 * 3 - CARRIED_HEADER;
        let fits = Hint::Queued {
            node: 1,
            receiver: *b"RECEIVER",
            message: message(1, largest),
        };
        let text = fits.encode().unwrap().1;
        assert!(text.starts_with('m') && text.len() <= MAX_NOTIFY_PAYLOAD);
        let too_large = Hint::Queued {
            node: 1,
            receiver: *b"RECEIVER",
            message: message(1, largest + 3),
        };
        assert_eq!(too_large.encode(), Some((1, "qRECEIVER".to_owned())));

        let registry = Registry::new();
        let mailbox = Mailbox::new();
        let session = registry.register(*b"RECEIVER", 1, Arc::clone(&mailbox));
        assert!(registry.make_receiver(b"RECEIVER", 1, session, 1).is_some());
        apply_hints(&registry, ["qRECEIVER mnot-base64!", "m"]);
        let kinds: Vec<String> = mailbox
            .drain()
            .items
            .iter()
            .map(|i| format!("{i:?}"))
            .collect();
        assert_eq!(
            kinds,
            vec!["Recheck"],
            "malformed carried messages are ignored"
        );
    }
}

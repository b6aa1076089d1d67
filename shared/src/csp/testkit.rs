//! Test helpers for the handshake machines: fixed keys, a byte-queue RNG and a client/server pair
//! wired back to back in memory.

use std::collections::VecDeque;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use crate::crypto::{PublicKey, SecretKey};
use crate::keys::ClientKey;

use super::{
    ClientEvent, CspClient, CspClientConfig, CspError, CspServer, CspServerConfig, Extensions,
    ServerEvent,
};

/// CK = 32 × 0x01 (the Python references use the same keys).
pub(crate) fn client_key() -> ClientKey {
    ClientKey::new(SecretKey::from_bytes([1; 32]))
}

/// SK = 32 × 0x02.
pub(crate) fn server_key() -> SecretKey {
    SecretKey::from_bytes([2; 32])
}

pub(crate) fn client_config(extensions: Extensions) -> CspClientConfig {
    CspClientConfig {
        identity: *b"ECHOECHO",
        client_key: client_key(),
        server_public_key: server_key().public_key(),
        extensions,
    }
}

pub(crate) fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

/// An RNG that hands out fixed bytes, so a transcript can be recomputed outside Rust.
#[derive(Debug)]
pub(crate) struct FixedRng(VecDeque<u8>);

impl FixedRng {
    /// Runs of `(byte, count)`, handed out in order.
    pub(crate) fn new(runs: &[(u8, usize)]) -> Self {
        Self(
            runs.iter()
                .flat_map(|&(b, n)| std::iter::repeat_n(b, n))
                .collect(),
        )
    }
}

impl rand_core::RngCore for FixedRng {
    fn next_u32(&mut self) -> u32 {
        rand_core::impls::next_u32_via_fill(self)
    }
    fn next_u64(&mut self) -> u64 {
        rand_core::impls::next_u64_via_fill(self)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for b in dest {
            *b = self.0.pop_front().expect("FixedRng ran out of bytes");
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rand_core::CryptoRng for FixedRng {}

/// A client and a server connected in memory, with a directory of one entry.
#[derive(Debug)]
pub(crate) struct Pair {
    pub(crate) client: CspClient,
    pub(crate) server: CspServer,
    /// What the server is told when it asks for the identity's key.
    pub(crate) directory: Option<PublicKey>,
    pub(crate) client_events: Vec<ClientEvent>,
    pub(crate) server_events: Vec<ServerEvent>,
}

impl Pair {
    pub(crate) fn new(config: CspClientConfig, seed: u64) -> Self {
        let mut rng = rng(seed);
        Self {
            client: CspClient::new(config, &mut rng).unwrap(),
            server: CspServer::new(
                CspServerConfig {
                    server_key: server_key(),
                },
                &mut rng,
            ),
            directory: Some(client_key().public_key()),
            client_events: Vec::new(),
            server_events: Vec::new(),
        }
    }

    pub(crate) fn with_extensions(extensions: Extensions) -> Self {
        Self::new(client_config(extensions), 7)
    }

    /// Moves bytes both ways until nothing moves. Each direction's stream is delivered in chunks
    /// of the sizes in `chunks`, cycled (empty: each batch at once).
    pub(crate) fn run(&mut self, chunks: &[usize]) -> Result<(), CspError> {
        let mut sizes = chunks.iter().map(|&n| n.max(1)).cycle();
        loop {
            let mut moved = false;
            let to_server: Vec<u8> = std::iter::from_fn(|| self.client.poll_transmit())
                .flatten()
                .collect();
            moved |= !to_server.is_empty();
            deliver(&to_server, &mut sizes, |b| self.server.receive(b))?;
            while let Some(event) = self.server.poll_event() {
                moved = true;
                if matches!(event, ServerEvent::NeedIdentityKey { .. }) {
                    self.server.provide_identity_key(self.directory)?;
                }
                self.server_events.push(event);
            }
            let to_client: Vec<u8> = std::iter::from_fn(|| self.server.poll_transmit())
                .flatten()
                .collect();
            moved |= !to_client.is_empty();
            deliver(&to_client, &mut sizes, |b| self.client.receive(b))?;
            while let Some(event) = self.client.poll_event() {
                moved = true;
                self.client_events.push(event);
            }
            if !moved {
                return Ok(());
            }
        }
    }

    /// The payloads each side received, in order.
    pub(crate) fn payloads(&self) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let client = self
            .client_events
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Payload(p) => Some(p.clone()),
                ClientEvent::Established(_) => None,
            })
            .collect();
        let server = self
            .server_events
            .iter()
            .filter_map(|e| match e {
                ServerEvent::Payload(p) => Some(p.clone()),
                _ => None,
            })
            .collect();
        (client, server)
    }
}

fn deliver(
    bytes: &[u8],
    sizes: &mut impl Iterator<Item = usize>,
    mut receive: impl FnMut(&[u8]) -> Result<(), CspError>,
) -> Result<(), CspError> {
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        receive(chunk)?;
        rest = tail;
    }
    Ok(())
}

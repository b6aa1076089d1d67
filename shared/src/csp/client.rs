//! The CSP client (spec §9.1–§9.4), sans-IO: bytes in with [`CspClient::receive`], whole units
//! out with [`CspClient::poll_transmit`], events out with [`CspClient::poll_event`].
//!
//! ```text
//!   new ──(client-hello queued)──► AwaitingServerHello
//!                                        │ server-hello (login queued)
//!                                        ▼
//!                                  AwaitingLoginAck
//!                                        │ login-ack (event Established)
//!                                        ▼
//!                                   Established ◄──┐ frame in (event Payload) / send (frame queued)
//!                                        └─────────┘
//!   any error, in any state ──► Failed (terminal: no more input, nothing more to transmit)
//! ```

use core::fmt;
use std::collections::VecDeque;

use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use crate::crypto::{PublicKey, SecretKey, TAG_LEN};
use crate::keys::{ClientKey, IDENTITY_LEN};

use super::extension::Extensions;
use super::frame::{CipherState, FRAME_HEADER_LEN};
use super::handshake::{
    validate_identity, vouch, ClientHello, ClientInfoField, Cookie, CspError, LoginAck, LoginData,
    ServerHello, LOGIN_ACK_LEN, SERVER_HELLO_LEN,
};
use super::unit::{Assembler, Expect};

/// What a client needs to log in.
#[derive(Clone, Debug)]
pub struct CspClientConfig {
    /// The identity (8 characters of `[0-9A-Z*]`).
    pub identity: [u8; IDENTITY_LEN],
    /// The identity's permanent key `CK`, used only for the vouch.
    pub client_key: ClientKey,
    /// The chat server's permanent public key `SK.public` (spec §9.1 table).
    pub server_public_key: PublicKey,
    /// The login extensions to send.
    pub extensions: Extensions,
}

/// What the client reports.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// login-ack arrived: frames may be sent and will be received. Carries the server's time and
    /// queue length when the server sent them (spec §12; zeros from an older server).
    Established(LoginAck),
    /// A frame's plaintext: one payload container (spec §9.4).
    Payload(Vec<u8>),
}

impl fmt::Debug for ClientEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Established(ack) => write!(f, "Established({ack:?})"),
            Self::Payload(bytes) => write!(f, "Payload({} bytes)", bytes.len()),
        }
    }
}

/// What the client holds until the server-hello: everything the login needs.
struct Pending {
    tck: SecretKey,
    cck: Cookie,
    identity: [u8; IDENTITY_LEN],
    client_key: ClientKey,
    server_public_key: PublicKey,
    extensions: Zeroizing<Vec<u8>>,
}

enum State {
    AwaitingServerHello(Box<Pending>),
    AwaitingLoginAck { tx: CipherState, rx: CipherState },
    Established { tx: CipherState, rx: CipherState },
    Failed,
}

impl State {
    const fn name(&self) -> &'static str {
        match self {
            Self::AwaitingServerHello(_) => "AwaitingServerHello",
            Self::AwaitingLoginAck { .. } => "AwaitingLoginAck",
            Self::Established { .. } => "Established",
            Self::Failed => "Failed",
        }
    }
}

/// One client connection to the chat server.
pub struct CspClient {
    state: State,
    assembler: Assembler,
    transmits: VecDeque<Vec<u8>>,
    events: VecDeque<ClientEvent>,
}

impl fmt::Debug for CspClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CspClient")
            .field("state", &self.state.name())
            .field("transmits", &self.transmits.len())
            .field("events", &self.events.len())
            .finish_non_exhaustive()
    }
}

impl CspClient {
    /// Draws TCK and CCK and queues the client-hello. Fails on an invalid identity or extensions
    /// too large for a login.
    pub fn new(config: CspClientConfig, rng: &mut impl CryptoRngCore) -> Result<Self, CspError> {
        validate_identity(&config.identity)?;
        let extensions = Zeroizing::new(config.extensions.encode()?);
        let tck = SecretKey::generate(rng);
        let cck = Cookie::generate(rng);
        let hello = ClientHello {
            tck_public: tck.public_key(),
            cck,
        }
        .encode();
        let pending = Pending {
            tck,
            cck,
            identity: config.identity,
            client_key: config.client_key,
            server_public_key: config.server_public_key,
            extensions,
        };
        Ok(Self {
            state: State::AwaitingServerHello(Box::new(pending)),
            assembler: Assembler::default(),
            transmits: VecDeque::from([hello.to_vec()]),
            events: VecDeque::new(),
        })
    }

    /// Whether login-ack has arrived and the connection has not failed.
    #[must_use]
    pub const fn is_established(&self) -> bool {
        matches!(self.state, State::Established { .. })
    }

    /// Whether the connection failed (terminal).
    #[must_use]
    pub const fn is_failed(&self) -> bool {
        matches!(self.state, State::Failed)
    }

    /// Takes bytes from the server, in any chunking; whole units are processed as they complete.
    pub fn receive(&mut self, mut bytes: &[u8]) -> Result<(), CspError> {
        if self.is_failed() {
            return Err(CspError::AfterFailure);
        }
        let result = self.receive_units(&mut bytes);
        if result.is_err() {
            self.fail();
        }
        result
    }

    /// Queues one payload container as an encrypted frame.
    pub fn send(&mut self, payload_container: &[u8]) -> Result<(), CspError> {
        let result = match &mut self.state {
            State::Established { tx, .. } => tx.seal_frame(payload_container),
            State::Failed => return Err(CspError::AfterFailure),
            _ => Err(CspError::NotEstablished),
        };
        match result {
            Ok(frame) => {
                self.transmits.push_back(frame);
                Ok(())
            }
            Err(e) => {
                self.fail();
                Err(e)
            }
        }
    }

    /// The next whole unit to write to the server (client-hello, login, then frames).
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    fn fail(&mut self) {
        self.state = State::Failed;
        self.transmits.clear();
        self.assembler = Assembler::default();
    }

    fn expect(&self) -> Expect {
        match self.state {
            State::AwaitingServerHello(_) => Expect::Fixed(SERVER_HELLO_LEN),
            State::AwaitingLoginAck { .. } => Expect::Fixed(LOGIN_ACK_LEN),
            State::Established { .. } | State::Failed => Expect::Frame,
        }
    }

    fn receive_units(&mut self, input: &mut &[u8]) -> Result<(), CspError> {
        while let Some(unit) = self.assembler.pull(input, self.expect())? {
            self.handle_unit(&unit)?;
        }
        Ok(())
    }

    /// Moves the state on by one unit; on error the state stays `Failed`.
    fn handle_unit(&mut self, unit: &[u8]) -> Result<(), CspError> {
        self.state = match core::mem::replace(&mut self.state, State::Failed) {
            State::AwaitingServerHello(pending) => {
                let (login, tx, rx) = login(*pending, unit)?;
                self.transmits.push_back(login);
                State::AwaitingLoginAck { tx, rx }
            }
            State::AwaitingLoginAck { tx, mut rx } => {
                let plain = rx.open_handshake(unit)?.ok_or(CspError::LoginAckDecrypt)?;
                let ack = LoginAck::decode(&plain)?;
                self.events.push_back(ClientEvent::Established(ack));
                State::Established { tx, rx }
            }
            State::Established { tx, mut rx } => {
                let boxed = unit.get(FRAME_HEADER_LEN..).unwrap_or_default();
                self.events
                    .push_back(ClientEvent::Payload(rx.open_frame(boxed)?));
                State::Established { tx, rx }
            }
            State::Failed => return Err(CspError::AfterFailure),
        };
        Ok(())
    }
}

/// Checks server-hello and builds the login; returns it with both directions' cipher states.
fn login(pending: Pending, unit: &[u8]) -> Result<(Vec<u8>, CipherState, CipherState), CspError> {
    let hello = ServerHello::decode(unit)?;
    let response = hello.open(&pending.tck.box_key(&pending.server_public_key))?;
    if hello.sck.ct_eq(&pending.cck) {
        return Err(CspError::EqualCookies);
    }
    if !response.cck.ct_eq(&pending.cck) {
        return Err(CspError::ClientCookieMismatch);
    }
    let session = pending
        .tck
        .box_key_contributory(&response.tsk_public)
        .map_err(|_| CspError::LowOrderKey)?;
    let ck = pending.client_key.secret();
    let ss1 = ck.box_key(&pending.server_public_key);
    let ss2 = ck
        .box_key_contributory(&response.tsk_public)
        .map_err(|_| CspError::LowOrderKey)?;
    let vouch = vouch(
        &ClientKey::vouch_key(&ss1, &ss2),
        &hello.sck,
        &pending.tck.public_key(),
    );

    let extensions_box_len = u16::try_from(pending.extensions.len().saturating_add(TAG_LEN))
        .map_err(|_| {
            CspError::ExtensionsBoxLength(pending.extensions.len().saturating_add(TAG_LEN))
        })?;
    let login_data = Zeroizing::new(
        LoginData {
            identity: pending.identity,
            client_info: ClientInfoField::ExtensionIndicator { extensions_box_len },
            sck: hello.sck,
            vouch,
        }
        .encode(),
    );
    let mut tx = CipherState::new(session.clone(), pending.cck);
    let mut login = tx.seal(login_data.as_slice())?;
    login.extend_from_slice(&tx.seal(&pending.extensions)?);
    // The server's own direction used SSN 1 for server-hello (under SK), so login-ack is SSN 2.
    let rx = CipherState::starting_at(session, hello.sck, 2);
    Ok((login, tx, rx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::BoxKey;
    use crate::csp::testkit::{client_config, client_key, rng, server_key, FixedRng, Pair};
    use crate::csp::{
        encode_frame, nonce, CspFeatures, CspServer, CspServerConfig, DeviceCookie,
        ServerChallengeResponse, ServerEvent, MAX_FRAME_PLAINTEXT_LEN,
    };
    use proptest::prelude::*;

    fn all_extensions() -> Extensions {
        Extensions {
            client_info: Some("1.0;Q;de/CH".into()),
            csp_device_id: Some(0x1122_3344_5566_7788),
            features: Some(CspFeatures(1)),
            device_cookie: Some(DeviceCookie([0xdc; 16])),
        }
    }

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    // Full transcript computed independently with PyNaCl and hashlib (script: CK = 32 × 01,
    // SK = 32 × 02, TSK = 32 × 03, SCK = 16 × 04, TCK = 32 × 05, CCK = 16 × 06; identity
    // ECHOECHO; extensions client-info "1.0;Q;de/CH", csp-device-id 0x1122334455667788,
    // message-payload-version 1, device-cookie 16 × dc; then one frame each way:
    // C→S `00000000 ‖ "ping"` with CCK‖3, S→C `80000000 ‖ "pong"` with SCK‖3):
    //   session = Box(TCK, TSK.public); login_data = b"ECHOECHO" + magic + u16le(len(ext_box)) + SCK
    //   + 24 zero + vouch + 16 zero; login = box(login_data, CCK‖1) + box(ext, CCK‖2);
    //   login_ack = box(16 zero, SCK‖2); frame = u16le(len(box)) + box.
    const CLIENT_HELLO: &str = concat!(
        "50a61409b1ddd0325e9b16b700e719e9772c07000b1bd7786e907c653d20495d060606060606060606060606",
        "06060606",
    );
    const SERVER_HELLO: &str = concat!(
        "04040404040404040404040404040404a6f6e8a6542221c2cf0d909e5897071511bc9ea37145975bafaae760",
        "f8653c7961218f2f5a3beff1ae273b26fa3adaf1fd5c58da35f236eff20812d1451e974d",
    );
    const LOGIN: &str = concat!(
        "164987989a4ae1fce58745807657d933fb903759aec5e95c87d31f051bba552539bc9eea4d635b934985cf57",
        "4bf82e059fb7cf61e9482f594c8aa378cecceb69f6a866f9dd6d81a45646f2e721aa0973898675c2068be6b6",
        "cd1c919f1975b8fc07625c84b019765d64bc13e3492c5bc90a0874f8ca61fa9a6093ea4510c89e09ba73a418",
        "6ea588344375c7f72a3532d4d4db274adb1a78447d7120d4318a9c0611ca1f6322b660112c2def5c514838d9",
        "9e6ccdc96cba2b5c584529552ae0c0e844ffe19ea3135c029eb5660de4129816",
    );
    const LOGIN_ACK: &str = "a99b4253606cbfcc4c931645f702f6df2e1657eaf6dcb63c242adfa6dddbf601";
    const CLIENT_FRAME: &str = "180023b8106d3768da3fb5f9adc2c10390ba56398d32a31b5509";
    const SERVER_FRAME: &str = "1800cbbc9b85d5c49a70960e7dd2dcc5ba040e183576850bc853";

    #[test]
    fn transcript_matches_independent_reference() {
        let mut client = CspClient::new(
            client_config(all_extensions()),
            &mut FixedRng::new(&[(5, 32), (6, 16)]),
        )
        .unwrap();
        let mut server = CspServer::new(
            CspServerConfig {
                server_key: server_key(),
            },
            &mut FixedRng::new(&[(3, 32), (4, 16)]),
        );

        let hello = client.poll_transmit().unwrap();
        assert_eq!(hello, h(CLIENT_HELLO));
        server.receive(&hello).unwrap();
        let server_hello = server.poll_transmit().unwrap();
        assert_eq!(server_hello, h(SERVER_HELLO));
        client.receive(&server_hello).unwrap();
        let login = client.poll_transmit().unwrap();
        assert_eq!(login, h(LOGIN));
        server.receive(&login).unwrap();
        assert_eq!(
            server.poll_event(),
            Some(ServerEvent::NeedIdentityKey {
                identity: *b"ECHOECHO"
            })
        );
        server
            .provide_identity_key(Some(client_key().public_key()))
            .unwrap();
        assert_eq!(
            server.poll_event(),
            Some(ServerEvent::Authenticated {
                identity: *b"ECHOECHO",
                extensions: all_extensions()
            })
        );
        let ack = server.poll_transmit().unwrap();
        assert_eq!(ack, h(LOGIN_ACK));
        client.receive(&ack).unwrap();
        assert_eq!(
            client.poll_event(),
            Some(ClientEvent::Established(LoginAck::default()))
        );

        client.send(&h("0000000070696e67")).unwrap();
        let frame = client.poll_transmit().unwrap();
        assert_eq!(frame, h(CLIENT_FRAME));
        server.send(&h("80000000706f6e67")).unwrap();
        let reply = server.poll_transmit().unwrap();
        assert_eq!(reply, h(SERVER_FRAME));
        server.receive(&frame).unwrap();
        assert_eq!(
            server.poll_event(),
            Some(ServerEvent::Payload(h("0000000070696e67")))
        );
        client.receive(&reply).unwrap();
        assert_eq!(
            client.poll_event(),
            Some(ClientEvent::Payload(h("80000000706f6e67")))
        );
    }

    fn complete(pair: &mut Pair, chunks: &[usize]) {
        pair.run(chunks).unwrap();
        assert!(pair.client.is_established());
        assert!(pair.server.is_established());
        assert_eq!(
            pair.client_events,
            vec![ClientEvent::Established(LoginAck::default())]
        );
    }

    fn authenticated_extensions(pair: &Pair) -> Extensions {
        match pair.server_events.as_slice() {
            [ServerEvent::NeedIdentityKey { identity }, ServerEvent::Authenticated {
                identity: id2,
                extensions,
            }] => {
                assert_eq!(identity, b"ECHOECHO");
                assert_eq!(id2, b"ECHOECHO");
                extensions.clone()
            }
            other => panic!("unexpected server events {other:?}"),
        }
    }

    #[test]
    fn handshake_completes_with_every_extension_combination() {
        for mask in 0..16_u8 {
            let full = all_extensions();
            let extensions = Extensions {
                client_info: full.client_info.filter(|_| mask & 1 != 0),
                csp_device_id: full.csp_device_id.filter(|_| mask & 2 != 0),
                features: full.features.filter(|_| mask & 4 != 0),
                device_cookie: full.device_cookie.filter(|_| mask & 8 != 0),
            };
            for chunks in [&[][..], &[1][..]] {
                let mut pair = Pair::with_extensions(extensions.clone());
                complete(&mut pair, chunks);
                assert_eq!(
                    authenticated_extensions(&pair),
                    extensions,
                    "mask {mask:04b}"
                );
            }
        }
    }

    #[test]
    fn units_have_the_spec_sizes() {
        let mut pair = Pair::with_extensions(all_extensions());
        let hello = pair.client.poll_transmit().unwrap();
        assert_eq!(hello.len(), 48);
        pair.server.receive(&hello).unwrap();
        let server_hello = pair.server.poll_transmit().unwrap();
        assert_eq!(server_hello.len(), 80);
        pair.client.receive(&server_hello).unwrap();
        let login = pair.client.poll_transmit().unwrap();
        let ext_len = all_extensions().encode().unwrap().len();
        assert_eq!(login.len(), 144 + ext_len + 16);
        pair.server.receive(&login).unwrap();
        pair.server.poll_event();
        pair.server
            .provide_identity_key(Some(client_key().public_key()))
            .unwrap();
        assert_eq!(pair.server.poll_transmit().unwrap().len(), 32);
        assert!(pair.client.poll_transmit().is_none());
    }

    #[test]
    fn frames_flow_both_ways_in_order() {
        let mut pair = Pair::with_extensions(all_extensions());
        complete(&mut pair, &[]);
        let to_server: Vec<Vec<u8>> = (0..10_u8).map(|i| vec![i; usize::from(i) * 37]).collect();
        let to_client: Vec<Vec<u8>> = vec![
            vec![],
            vec![0xe1, 0, 0, 0],
            vec![0x55; MAX_FRAME_PLAINTEXT_LEN],
            vec![9; 1000],
        ];
        for p in &to_server {
            pair.client.send(p).unwrap();
        }
        for p in &to_client {
            pair.server.send(p).unwrap();
        }
        pair.run(&[3, 1, 4, 1, 5, 9, 2, 6]).unwrap();
        let (client_got, server_got) = pair.payloads();
        assert_eq!(client_got, to_client);
        assert_eq!(server_got, to_server);
        // A second round, delivered all at once.
        pair.client.send(b"again").unwrap();
        pair.server.send(b"back").unwrap();
        pair.run(&[]).unwrap();
        let (client_got, server_got) = pair.payloads();
        assert_eq!(client_got.last().unwrap(), b"back");
        assert_eq!(server_got.last().unwrap(), b"again");
    }

    #[test]
    fn oversize_payload_is_refused() {
        let mut pair = Pair::with_extensions(all_extensions());
        complete(&mut pair, &[]);
        assert_eq!(
            pair.client.send(&[0; MAX_FRAME_PLAINTEXT_LEN + 1]),
            Err(CspError::FrameTooLarge(8193))
        );
        assert!(pair.client.is_failed());
    }

    #[test]
    fn wrong_server_key_is_detected_at_server_hello() {
        let mut config = client_config(all_extensions());
        config.server_public_key = SecretKey::from_bytes([9; 32]).public_key();
        let mut pair = Pair::new(config, 1);
        assert_eq!(pair.run(&[]), Err(CspError::ServerHelloDecrypt));
        assert!(pair.client.is_failed());
        assert!(pair.client.poll_transmit().is_none());
    }

    /// A hand-made server: reads the real client's hello and answers with chosen contents, sealed
    /// with the right key.
    struct ManualServer {
        tsk: SecretKey,
        sck: Cookie,
        hello: ClientHello,
    }

    impl ManualServer {
        fn new(client: &mut CspClient) -> Self {
            let hello = ClientHello::decode(&client.poll_transmit().unwrap()).unwrap();
            Self {
                tsk: SecretKey::from_bytes([3; 32]),
                sck: Cookie([4; 16]),
                hello,
            }
        }

        fn server_hello(&self, tsk_public: PublicKey, cck: Cookie, sck: Cookie) -> Vec<u8> {
            let key = server_key().box_key(&self.hello.tck_public);
            ServerChallengeResponse { tsk_public, cck }
                .seal(&key, sck)
                .encode()
                .to_vec()
        }

        fn honest_hello(&self) -> Vec<u8> {
            self.server_hello(self.tsk.public_key(), self.hello.cck, self.sck)
        }

        fn session(&self) -> BoxKey {
            self.tsk.box_key(&self.hello.tck_public)
        }

        fn seal(&self, seq: u64, plain: &[u8]) -> Vec<u8> {
            self.session().seal(&nonce(&self.sck, seq), plain)
        }
    }

    fn fresh_client() -> CspClient {
        CspClient::new(client_config(all_extensions()), &mut rng(3)).unwrap()
    }

    #[test]
    fn echoed_client_cookie_must_match() {
        let mut client = fresh_client();
        let server = ManualServer::new(&mut client);
        let mut wrong = server.hello.cck;
        wrong.0[15] ^= 1;
        let hello = server.server_hello(server.tsk.public_key(), wrong, server.sck);
        assert_eq!(client.receive(&hello), Err(CspError::ClientCookieMismatch));
    }

    #[test]
    fn equal_cookies_are_refused() {
        let mut client = fresh_client();
        let server = ManualServer::new(&mut client);
        let hello =
            server.server_hello(server.tsk.public_key(), server.hello.cck, server.hello.cck);
        assert_eq!(client.receive(&hello), Err(CspError::EqualCookies));
    }

    #[test]
    fn low_order_server_ephemeral_key_is_refused() {
        let mut client = fresh_client();
        let server = ManualServer::new(&mut client);
        let hello = server.server_hello(PublicKey([0; 32]), server.hello.cck, server.sck);
        assert_eq!(client.receive(&hello), Err(CspError::LowOrderKey));
    }

    #[test]
    fn login_ack_takes_either_layout_under_ssn_2() {
        let current = LoginAck {
            server_time_ms: 1_796_655_600_000,
            queued_messages: 7,
        };
        for (seq, plain, expected) in [
            (2, [0_u8; 16], Ok(LoginAck::default())),
            (2, current.encode(), Ok(current)),
            (1, [0; 16], Err(CspError::LoginAckDecrypt)),
            (3, current.encode(), Err(CspError::LoginAckDecrypt)),
        ] {
            let mut client = fresh_client();
            let server = ManualServer::new(&mut client);
            client.receive(&server.honest_hello()).unwrap();
            assert!(client.poll_transmit().is_some());
            let result = client.receive(&server.seal(seq, &plain));
            assert_eq!(result, expected.map(|_| ()), "seq {seq}");
            assert_eq!(client.is_established(), expected.is_ok());
            if let Ok(ack) = expected {
                assert_eq!(client.poll_event(), Some(ClientEvent::Established(ack)));
            }
        }
    }

    #[test]
    fn flipped_bits_in_server_hello_are_rejected() {
        for i in 0..80 {
            let mut client = fresh_client();
            let server = ManualServer::new(&mut client);
            let mut hello = server.honest_hello();
            hello[i] ^= 1 << (i % 8);
            assert_eq!(
                client.receive(&hello),
                Err(CspError::ServerHelloDecrypt),
                "byte {i}"
            );
        }
    }

    #[test]
    fn flipped_bits_in_login_ack_are_rejected() {
        for i in 0..32 {
            let mut client = fresh_client();
            let server = ManualServer::new(&mut client);
            client.receive(&server.honest_hello()).unwrap();
            let mut ack = server.seal(2, &[0; 16]);
            ack[i] ^= 1 << (i % 8);
            assert_eq!(
                client.receive(&ack),
                Err(CspError::LoginAckDecrypt),
                "byte {i}"
            );
        }
    }

    fn established_client() -> (CspClient, ManualServer) {
        let mut client = fresh_client();
        let server = ManualServer::new(&mut client);
        client.receive(&server.honest_hello()).unwrap();
        client.receive(&server.seal(2, &[0; 16])).unwrap();
        assert_eq!(
            client.poll_event(),
            Some(ClientEvent::Established(LoginAck::default()))
        );
        (client, server)
    }

    #[test]
    fn flipped_bits_in_a_frame_are_rejected() {
        let (_, server) = established_client();
        let frame = encode_frame(&server.seal(3, b"\x00\x00\x00\x00payload")).unwrap();
        for i in 0..frame.len() {
            let (mut client, _) = established_client();
            let mut bad = frame.clone();
            bad[i] ^= 1 << (i % 8);
            // Trailing bytes so that a header flipped to a longer length still completes a unit.
            bad.extend_from_slice(&[0; 8192]);
            let err = client.receive(&bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    CspError::FrameDecrypt
                        | CspError::FrameTooLarge(_)
                        | CspError::FrameTooShort(_)
                ),
                "byte {i}: {err:?}"
            );
            assert!(client.poll_event().is_none(), "byte {i}");
        }
    }

    #[test]
    fn replayed_frame_is_reported() {
        let (mut client, server) = established_client();
        let frame = encode_frame(&server.seal(3, b"once")).unwrap();
        client.receive(&frame).unwrap();
        assert_eq!(client.receive(&frame), Err(CspError::ReplayedFrame));
        assert_eq!(
            client.poll_event(),
            Some(ClientEvent::Payload(b"once".to_vec()))
        );
    }

    #[test]
    fn swapped_frames_are_reported() {
        let (mut client, server) = established_client();
        let first = encode_frame(&server.seal(3, b"first")).unwrap();
        let second = encode_frame(&server.seal(4, b"second")).unwrap();
        assert_eq!(
            client.receive(&[second, first].concat()),
            Err(CspError::ReorderedFrame)
        );
        assert!(client.poll_event().is_none());
    }

    #[test]
    fn oversize_frame_length_fails_without_the_body() {
        let (mut client, _) = established_client();
        client.receive(&[0x01]).unwrap();
        assert_eq!(client.receive(&[0x20]), Err(CspError::FrameTooLarge(8193)));
    }

    #[test]
    fn failure_is_terminal() {
        let (mut client, _) = established_client();
        assert!(client.receive(&[0xff, 0xff]).is_err());
        assert_eq!(client.receive(&[0]), Err(CspError::AfterFailure));
        assert_eq!(client.send(b"x"), Err(CspError::AfterFailure));
        assert!(client.poll_transmit().is_none());
        assert!(!client.is_established());
    }

    #[test]
    fn send_before_login_ack_is_refused() {
        let mut client = fresh_client();
        assert_eq!(client.send(b"early"), Err(CspError::NotEstablished));
        assert!(client.is_failed());
    }

    #[test]
    fn invalid_config_is_refused() {
        let mut config = client_config(all_extensions());
        config.identity = *b"echo1234";
        assert_eq!(
            CspClient::new(config, &mut rng(1)).unwrap_err(),
            CspError::InvalidIdentity
        );
        let config = client_config(Extensions::new("x".repeat(9000)));
        assert!(matches!(
            CspClient::new(config, &mut rng(1)).unwrap_err(),
            CspError::MalformedExtensions(crate::csp::ExtensionError::TooLarge(_))
        ));
    }

    #[test]
    fn debug_does_not_dump_payloads() {
        assert_eq!(
            format!("{:?}", ClientEvent::Payload(vec![0xab; 3])),
            "Payload(3 bytes)"
        );
        let client = fresh_client();
        assert!(format!("{client:?}").contains("AwaitingServerHello"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn arbitrary_bytes_into_a_client_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut client = fresh_client();
            let _ = client.receive(&data);
        }

        #[test]
        fn arbitrary_bytes_after_establishment_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let (mut client, _) = established_client();
            let _ = client.receive(&data);
        }

        #[test]
        fn any_chunking_completes_the_exchange(chunks in proptest::collection::vec(1_usize..200, 1..20), seed: u64) {
            let mut pair = Pair::new(client_config(all_extensions()), seed);
            pair.run(&chunks).unwrap();
            prop_assert!(pair.client.is_established() && pair.server.is_established());
            for i in 0..3_u8 {
                pair.client.send(&[i; 300]).unwrap();
                pair.server.send(&[i; 500]).unwrap();
            }
            pair.run(&chunks).unwrap();
            let (client_got, server_got) = pair.payloads();
            prop_assert_eq!(client_got, (0..3_u8).map(|i| vec![i; 500]).collect::<Vec<_>>());
            prop_assert_eq!(server_got, (0..3_u8).map(|i| vec![i; 300]).collect::<Vec<_>>());
        }
    }
}

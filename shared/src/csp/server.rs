//! The CSP server (spec §9.1–§9.4, DESIGN §4), sans-IO: bytes in with [`CspServer::receive`],
//! whole units out with [`CspServer::poll_transmit`], events out with [`CspServer::poll_event`].
//! The identity's public key is asked for with an event and handed back with
//! [`CspServer::provide_identity_key`], so the directory lookup stays outside.
//!
//! ```text
//!   new ──► AwaitingClientHello
//!                 │ client-hello (server-hello queued)
//!                 ▼
//!           AwaitingLogin ──login box, legacy client-info──┐
//!                 │ login box with extension indicator     │
//!                 ▼                                        │
//!           AwaitingExtensions                             │
//!                 │ extensions box                         │
//!                 ▼                                        │
//!           AwaitingIdentityKey ◄──────────────────────────┘   (event NeedIdentityKey)
//!                 │ provide_identity_key(Some(CK.public)), vouch checked
//!                 ▼                 (login-ack queued, event Authenticated)
//!            Established ◄──┐ frame in (event Payload) / send (frame queued)
//!                 └─────────┘
//!   any error, in any state ──► Failed (terminal: no more input, nothing more to transmit)
//! ```
//!
//! Bytes that arrive while the identity key is outstanding are held, at most one frame's worth
//! (a well-behaved client sends nothing before login-ack), and processed once it is provided.

use core::fmt;
use std::collections::VecDeque;

use rand_core::CryptoRngCore;

use crate::crypto::{ct_eq, PublicKey, SecretKey};
use crate::keys::{ClientKey, IDENTITY_LEN};

use super::extension::Extensions;
use super::frame::{CipherState, FRAME_HEADER_LEN, MAX_FRAME_LEN};
use super::handshake::{
    check_extensions_box_len, validate_identity, vouch, ClientHello, ClientInfoField, Cookie,
    CspError, LoginAck, LoginData, ServerChallengeResponse, CLIENT_HELLO_LEN, LOGIN_BOX_LEN,
};
use super::unit::{Assembler, Expect};

/// What the server needs for every connection.
#[derive(Clone, Debug)]
pub struct CspServerConfig {
    /// The chat server's permanent key `SK`.
    pub server_key: SecretKey,
}

/// What the server reports.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// Look up the identity's public key and answer with [`CspServer::provide_identity_key`].
    NeedIdentityKey {
        /// The identity from login-data.
        identity: [u8; IDENTITY_LEN],
    },
    /// The vouch checked out and login-ack is queued.
    Authenticated {
        /// The identity that logged in.
        identity: [u8; IDENTITY_LEN],
        /// Its extensions (a legacy client-info becomes `client_info` alone).
        extensions: Extensions,
    },
    /// A frame's plaintext: one payload container (spec §9.4).
    Payload(Vec<u8>),
}

impl fmt::Debug for ServerEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NeedIdentityKey { identity } => f
                .debug_struct("NeedIdentityKey")
                .field("identity", &String::from_utf8_lossy(identity))
                .finish(),
            Self::Authenticated {
                identity,
                extensions,
            } => f
                .debug_struct("Authenticated")
                .field("identity", &String::from_utf8_lossy(identity))
                .field("extensions", extensions)
                .finish(),
            Self::Payload(bytes) => write!(f, "Payload({} bytes)", bytes.len()),
        }
    }
}

/// The handshake secrets and both directions, from client-hello until the vouch is checked.
struct Session {
    sk: SecretKey,
    tsk: SecretKey,
    sck: Cookie,
    tck_public: PublicKey,
    tx: CipherState,
    rx: CipherState,
}

enum State {
    AwaitingClientHello {
        sk: SecretKey,
        tsk: SecretKey,
        sck: Cookie,
    },
    AwaitingLogin(Box<Session>),
    AwaitingExtensions {
        session: Box<Session>,
        login: LoginData,
        len: usize,
    },
    AwaitingIdentityKey {
        session: Box<Session>,
        login: LoginData,
        extensions: Extensions,
    },
    Established {
        tx: CipherState,
        rx: CipherState,
    },
    Failed,
}

impl State {
    const fn name(&self) -> &'static str {
        match self {
            Self::AwaitingClientHello { .. } => "AwaitingClientHello",
            Self::AwaitingLogin(_) => "AwaitingLogin",
            Self::AwaitingExtensions { .. } => "AwaitingExtensions",
            Self::AwaitingIdentityKey { .. } => "AwaitingIdentityKey",
            Self::Established { .. } => "Established",
            Self::Failed => "Failed",
        }
    }
}

/// One client connection, server side.
pub struct CspServer {
    state: State,
    assembler: Assembler,
    held: Vec<u8>,
    transmits: VecDeque<Vec<u8>>,
    events: VecDeque<ServerEvent>,
    /// The server's direction, kept when an established connection fails so that one last
    /// close-error can still be sealed (spec §9.4 0xe0).
    final_tx: Option<CipherState>,
}

impl fmt::Debug for CspServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CspServer")
            .field("state", &self.state.name())
            .field("held", &self.held.len())
            .field("transmits", &self.transmits.len())
            .field("events", &self.events.len())
            .finish_non_exhaustive()
    }
}

impl CspServer {
    /// Draws TSK and SCK for this connection and waits for the client-hello.
    pub fn new(config: CspServerConfig, rng: &mut impl CryptoRngCore) -> Self {
        let tsk = SecretKey::generate(rng);
        let sck = Cookie::generate(rng);
        Self {
            state: State::AwaitingClientHello {
                sk: config.server_key,
                tsk,
                sck,
            },
            assembler: Assembler::default(),
            held: Vec::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            final_tx: None,
        }
    }

    /// Whether the client is authenticated and the connection has not failed.
    #[must_use]
    pub const fn is_established(&self) -> bool {
        matches!(self.state, State::Established { .. })
    }

    /// Whether the connection failed (terminal).
    #[must_use]
    pub const fn is_failed(&self) -> bool {
        matches!(self.state, State::Failed)
    }

    /// Takes bytes from the client, in any chunking; whole units are processed as they complete.
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

    /// Answers [`ServerEvent::NeedIdentityKey`]: `None` means the directory does not know the
    /// identity. Checks the vouch, queues login-ack in the old layout (16 zero bytes, spec §9.2)
    /// and processes bytes held meanwhile.
    pub fn provide_identity_key(&mut self, key: Option<PublicKey>) -> Result<(), CspError> {
        self.provide_identity_key_with_ack(key, LoginAck::default())
    }

    /// Like [`Self::provide_identity_key`], with the current login-ack layout (spec §12): the
    /// server's time and queue length come from the caller, since this machine has no clock
    /// and no storage.
    pub fn provide_identity_key_with_ack(
        &mut self,
        key: Option<PublicKey>,
        ack: LoginAck,
    ) -> Result<(), CspError> {
        if self.is_failed() {
            return Err(CspError::AfterFailure);
        }
        let result = self.authenticate(key, ack).and_then(|()| {
            let held = core::mem::take(&mut self.held);
            self.receive_units(&mut held.as_slice())
        });
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

    /// After a failure of an established connection, seals one last payload container (a
    /// close-error) as a frame, with the server's direction that is still intact. `None` when
    /// the handshake never completed (the protocol then allows only closing the connection), when
    /// the connection has not failed, or when the last frame was already sealed.
    pub fn seal_final(&mut self, payload_container: &[u8]) -> Option<Vec<u8>> {
        if !self.is_failed() {
            return None;
        }
        self.final_tx.take()?.seal_frame(payload_container).ok()
    }

    /// Whether part of a unit (or bytes held for after login-ack) is buffered: a connection that
    /// ends now ends mid-unit.
    #[must_use]
    pub fn has_partial_input(&self) -> bool {
        !self.assembler.is_empty() || !self.held.is_empty()
    }

    /// The next whole unit to write to the client (server-hello, login-ack, then frames).
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    fn fail(&mut self) {
        if let State::Established { tx, .. } = core::mem::replace(&mut self.state, State::Failed) {
            self.final_tx = Some(tx);
        }
        self.transmits.clear();
        self.held = Vec::new();
        self.assembler = Assembler::default();
    }

    /// The next unit's shape; `None` while the identity key is outstanding.
    fn expect(&self) -> Option<Expect> {
        match &self.state {
            State::AwaitingClientHello { .. } => Some(Expect::Fixed(CLIENT_HELLO_LEN)),
            State::AwaitingLogin(_) => Some(Expect::Fixed(LOGIN_BOX_LEN)),
            State::AwaitingExtensions { len, .. } => Some(Expect::Fixed(*len)),
            State::AwaitingIdentityKey { .. } => None,
            State::Established { .. } | State::Failed => Some(Expect::Frame),
        }
    }

    fn receive_units(&mut self, input: &mut &[u8]) -> Result<(), CspError> {
        loop {
            let Some(expect) = self.expect() else {
                if input.len() > MAX_FRAME_LEN.saturating_sub(self.held.len()) {
                    return Err(CspError::EarlyData);
                }
                self.held.extend_from_slice(input);
                *input = &[];
                return Ok(());
            };
            match self.assembler.pull(input, expect)? {
                Some(unit) => self.handle_unit(&unit)?,
                None => return Ok(()),
            }
        }
    }

    /// Moves the state on by one unit; on error the state stays `Failed`.
    fn handle_unit(&mut self, unit: &[u8]) -> Result<(), CspError> {
        if let State::Established { rx, .. } = &mut self.state {
            // Opened in place, so a failure leaves the server's direction for `seal_final`.
            let boxed = unit.get(FRAME_HEADER_LEN..).unwrap_or_default();
            let plain = rx.open_frame(boxed)?;
            self.events.push_back(ServerEvent::Payload(plain));
            return Ok(());
        }
        self.state = match core::mem::replace(&mut self.state, State::Failed) {
            State::AwaitingClientHello { sk, tsk, sck } => {
                let (hello, session) = server_hello(sk, tsk, sck, unit)?;
                self.transmits.push_back(hello);
                State::AwaitingLogin(Box::new(session))
            }
            State::AwaitingLogin(mut session) => {
                let plain = session
                    .rx
                    .open_handshake(unit)?
                    .ok_or(CspError::LoginDecrypt)?;
                let login = LoginData::decode(&plain)?;
                if !login.sck.ct_eq(&session.sck) {
                    return Err(CspError::ServerCookieMismatch);
                }
                validate_identity(&login.identity)?;
                match login.client_info {
                    ClientInfoField::ExtensionIndicator { extensions_box_len } => {
                        let len = check_extensions_box_len(extensions_box_len)?;
                        State::AwaitingExtensions {
                            session,
                            login,
                            len,
                        }
                    }
                    ClientInfoField::Legacy(raw) => {
                        let info = ClientInfoField::legacy_client_info(&raw)?;
                        let extensions = Extensions {
                            client_info: Some(info),
                            ..Extensions::default()
                        };
                        self.events.push_back(ServerEvent::NeedIdentityKey {
                            identity: login.identity,
                        });
                        State::AwaitingIdentityKey {
                            session,
                            login,
                            extensions,
                        }
                    }
                }
            }
            State::AwaitingExtensions {
                mut session, login, ..
            } => {
                let plain = session
                    .rx
                    .open_handshake(unit)?
                    .ok_or(CspError::ExtensionsDecrypt)?;
                let extensions = Extensions::decode(&plain)?;
                self.events.push_back(ServerEvent::NeedIdentityKey {
                    identity: login.identity,
                });
                State::AwaitingIdentityKey {
                    session,
                    login,
                    extensions,
                }
            }
            State::Established { .. } | State::AwaitingIdentityKey { .. } | State::Failed => {
                return Err(CspError::AfterFailure)
            }
        };
        Ok(())
    }

    fn authenticate(&mut self, key: Option<PublicKey>, ack: LoginAck) -> Result<(), CspError> {
        let State::AwaitingIdentityKey {
            mut session,
            login,
            extensions,
        } = core::mem::replace(&mut self.state, State::Failed)
        else {
            return Err(CspError::UnexpectedIdentityKey);
        };
        let ck_public = key.ok_or(CspError::UnknownIdentity)?;
        let ss1 = session
            .sk
            .box_key_contributory(&ck_public)
            .map_err(|_| CspError::LowOrderKey)?;
        let ss2 = session
            .tsk
            .box_key_contributory(&ck_public)
            .map_err(|_| CspError::LowOrderKey)?;
        let expected = vouch(
            &ClientKey::vouch_key(&ss1, &ss2),
            &session.sck,
            &session.tck_public,
        );
        if !ct_eq(&expected, &login.vouch) {
            return Err(CspError::BadVouch);
        }
        let sealed = session.tx.seal(&ack.encode())?;
        self.transmits.push_back(sealed);
        self.events.push_back(ServerEvent::Authenticated {
            identity: login.identity,
            extensions,
        });
        let Session { tx, rx, .. } = *session;
        self.state = State::Established { tx, rx };
        Ok(())
    }
}

/// Checks client-hello and seals server-hello; returns it with the session it starts.
fn server_hello(
    sk: SecretKey,
    tsk: SecretKey,
    sck: Cookie,
    unit: &[u8],
) -> Result<(Vec<u8>, Session), CspError> {
    let hello = ClientHello::decode(unit)?;
    if hello.cck.ct_eq(&sck) {
        return Err(CspError::EqualCookies);
    }
    let hello_key = sk
        .box_key_contributory(&hello.tck_public)
        .map_err(|_| CspError::LowOrderKey)?;
    let session_key = tsk
        .box_key_contributory(&hello.tck_public)
        .map_err(|_| CspError::LowOrderKey)?;
    let server_hello = ServerChallengeResponse {
        tsk_public: tsk.public_key(),
        cck: hello.cck,
    }
    .seal(&hello_key, sck);
    let session = Session {
        rx: CipherState::new(session_key.clone(), hello.cck),
        // SSN 1 was server-hello's (under SK), so login-ack takes 2 and frames start at 3.
        tx: CipherState::starting_at(session_key, sck, 2),
        sk,
        tsk,
        sck,
        tck_public: hello.tck_public,
    };
    Ok((server_hello.encode().to_vec(), session))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::BoxKey;
    use crate::csp::testkit::{client_config, client_key, server_key, FixedRng, Pair};
    use crate::csp::ClientEvent;
    use crate::csp::{encode_frame, nonce, ExtensionError, ServerHello, EXT_CSP_DEVICE_ID};
    use proptest::prelude::*;

    fn fresh_server() -> CspServer {
        CspServer::new(
            CspServerConfig {
                server_key: server_key(),
            },
            &mut FixedRng::new(&[(3, 32), (4, 16)]),
        )
    }

    /// A hand-made client that can put anything into its login, sealed with the right keys.
    struct ManualClient {
        tck: SecretKey,
        cck: Cookie,
        sck: Cookie,
        tsk_public: PublicKey,
    }

    impl ManualClient {
        fn connect(server: &mut CspServer) -> Self {
            let tck = SecretKey::from_bytes([5; 32]);
            let cck = Cookie([6; 16]);
            server
                .receive(
                    &ClientHello {
                        tck_public: tck.public_key(),
                        cck,
                    }
                    .encode(),
                )
                .unwrap();
            let hello = ServerHello::decode(&server.poll_transmit().unwrap()).unwrap();
            let response = hello
                .open(&tck.box_key(&server_key().public_key()))
                .unwrap();
            assert_eq!(response.cck, cck);
            Self {
                tck,
                cck,
                sck: hello.sck,
                tsk_public: response.tsk_public,
            }
        }

        fn session(&self) -> BoxKey {
            self.tck.box_key(&self.tsk_public)
        }

        fn seal(&self, seq: u64, plain: &[u8]) -> Vec<u8> {
            self.session().seal(&nonce(&self.cck, seq), plain)
        }

        fn vouch(&self, ck: &ClientKey) -> [u8; 32] {
            let ss1 = ck.secret().box_key(&server_key().public_key());
            let ss2 = ck.secret().box_key(&self.tsk_public);
            vouch(
                &ClientKey::vouch_key(&ss1, &ss2),
                &self.sck,
                &self.tck.public_key(),
            )
        }

        fn login_data(&self, extensions_len: usize) -> LoginData {
            LoginData {
                identity: *b"ECHOECHO",
                client_info: ClientInfoField::ExtensionIndicator {
                    extensions_box_len: u16::try_from(extensions_len + 16).unwrap(),
                },
                sck: self.sck,
                vouch: self.vouch(&client_key()),
            }
        }

        /// login box of `data` (CSN 1) followed by the extensions box of `extensions` (CSN 2).
        fn login(&self, data: &[u8; 128], extensions: Option<&[u8]>) -> Vec<u8> {
            let mut out = self.seal(1, data);
            if let Some(ext) = extensions {
                out.extend(self.seal(2, ext));
            }
            out
        }
    }

    fn ext_bytes() -> Vec<u8> {
        Extensions {
            csp_device_id: Some(42),
            ..Extensions::new("1.0;Q;de/CH")
        }
        .encode()
        .unwrap()
    }

    fn honest_login(client: &ManualClient) -> Vec<u8> {
        let ext = ext_bytes();
        client.login(&client.login_data(ext.len()).encode(), Some(&ext))
    }

    #[test]
    fn manual_login_authenticates() {
        let mut server = fresh_server();
        let client = ManualClient::connect(&mut server);
        server.receive(&honest_login(&client)).unwrap();
        assert_eq!(
            server.poll_event(),
            Some(ServerEvent::NeedIdentityKey {
                identity: *b"ECHOECHO"
            })
        );
        assert!(server.poll_transmit().is_none());
        server
            .provide_identity_key(Some(client_key().public_key()))
            .unwrap();
        let expected = Extensions {
            csp_device_id: Some(42),
            ..Extensions::new("1.0;Q;de/CH")
        };
        assert_eq!(
            server.poll_event(),
            Some(ServerEvent::Authenticated {
                identity: *b"ECHOECHO",
                extensions: expected
            })
        );
        let ack = server.poll_transmit().unwrap();
        assert_eq!(
            client.session().open(&nonce(&client.sck, 2), &ack).unwrap(),
            vec![0; 16]
        );
        server
            .receive(&encode_frame(&client.seal(3, b"hi")).unwrap())
            .unwrap();
        assert_eq!(
            server.poll_event(),
            Some(ServerEvent::Payload(b"hi".to_vec()))
        );
    }

    fn login_error(make: impl FnOnce(&ManualClient) -> Vec<u8>) -> CspError {
        let mut server = fresh_server();
        let client = ManualClient::connect(&mut server);
        let err = server.receive(&make(&client)).unwrap_err();
        assert!(server.is_failed());
        assert!(server.poll_event().is_none());
        err
    }

    #[test]
    fn echoed_server_cookie_must_match() {
        let err = login_error(|c| {
            let ext = ext_bytes();
            let mut data = c.login_data(ext.len());
            data.sck.0[0] ^= 1;
            c.login(&data.encode(), Some(&ext))
        });
        assert_eq!(err, CspError::ServerCookieMismatch);
    }

    #[test]
    fn equal_cookies_are_refused() {
        let mut server = fresh_server();
        // fresh_server draws SCK = 16 × 04; a client-hello with that CCK is refused.
        let hello = ClientHello {
            tck_public: SecretKey::from_bytes([5; 32]).public_key(),
            cck: Cookie([4; 16]),
        };
        assert_eq!(server.receive(&hello.encode()), Err(CspError::EqualCookies));
        assert!(server.poll_transmit().is_none());
    }

    #[test]
    fn low_order_client_ephemeral_key_is_refused() {
        let mut server = fresh_server();
        let hello = ClientHello {
            tck_public: PublicKey([0; 32]),
            cck: Cookie([6; 16]),
        };
        assert_eq!(server.receive(&hello.encode()), Err(CspError::LowOrderKey));
    }

    #[test]
    fn low_order_directory_key_is_refused() {
        let mut server = fresh_server();
        let client = ManualClient::connect(&mut server);
        server.receive(&honest_login(&client)).unwrap();
        assert_eq!(
            server.provide_identity_key(Some(PublicKey([0; 32]))),
            Err(CspError::LowOrderKey)
        );
    }

    #[test]
    fn vouch_from_another_client_key_is_refused() {
        let mut config = client_config(Extensions::new("x"));
        config.client_key = ClientKey::new(SecretKey::from_bytes([0x11; 32]));
        let mut pair = Pair::new(config, 5);
        assert_eq!(pair.run(&[]), Err(CspError::BadVouch));
        assert!(pair.server.is_failed());
        assert!(pair.server.poll_transmit().is_none());
        assert!(!pair.client.is_established());
    }

    #[test]
    fn vouch_over_other_inputs_is_refused() {
        let mut server = fresh_server();
        let client = ManualClient::connect(&mut server);
        let ext = ext_bytes();
        let mut data = client.login_data(ext.len());
        data.vouch[31] ^= 0x80;
        server
            .receive(&client.login(&data.encode(), Some(&ext)))
            .unwrap();
        assert_eq!(
            server.provide_identity_key(Some(client_key().public_key())),
            Err(CspError::BadVouch)
        );
    }

    #[test]
    fn unknown_identity_is_refused() {
        let mut pair = Pair::with_extensions(Extensions::new("x"));
        pair.directory = None;
        assert_eq!(pair.run(&[]), Err(CspError::UnknownIdentity));
        assert!(pair.server.is_failed());
    }

    #[test]
    fn legacy_vouch_format_is_refused() {
        let err = login_error(|c| {
            let ext = ext_bytes();
            let mut data = c.login_data(ext.len()).encode();
            data[56..80].fill(0x42); // reserved1 held the old vouch's nonce
            c.login(&data, Some(&ext))
        });
        assert_eq!(err, CspError::LegacyVouchFormat);
    }

    #[test]
    fn non_zero_reserved2_is_refused() {
        let err = login_error(|c| {
            let ext = ext_bytes();
            let mut data = c.login_data(ext.len()).encode();
            data[112] = 1;
            c.login(&data, Some(&ext))
        });
        assert_eq!(err, CspError::LoginReserved);
    }

    #[test]
    fn invalid_identity_is_refused() {
        let err = login_error(|c| {
            let ext = ext_bytes();
            let mut data = c.login_data(ext.len());
            data.identity = *b"ECHO\0\0\0\0";
            c.login(&data.encode(), Some(&ext))
        });
        assert_eq!(err, CspError::InvalidIdentity);
    }

    #[test]
    fn extensions_box_length_out_of_range_is_refused() {
        for (len, expected) in [(15_u16, 15_usize), (8193, 8193), (u16::MAX, 65535)] {
            let err = login_error(|c| {
                let mut data = c.login_data(0);
                data.client_info = ClientInfoField::ExtensionIndicator {
                    extensions_box_len: len,
                };
                c.login(&data.encode(), None)
            });
            assert_eq!(err, CspError::ExtensionsBoxLength(expected));
        }
    }

    #[test]
    fn malformed_extensions_are_refused() {
        let err = login_error(|c| {
            let ext = [EXT_CSP_DEVICE_ID, 4, 0, 1, 2, 3, 4];
            c.login(&c.login_data(ext.len()).encode(), Some(&ext))
        });
        assert_eq!(
            err,
            CspError::MalformedExtensions(ExtensionError::Length {
                ext_type: 1,
                len: 4,
                expected: 8
            })
        );
    }

    #[test]
    fn extensions_box_under_the_wrong_sequence_number_is_refused() {
        let err = login_error(|c| {
            let ext = ext_bytes();
            let mut login = c.seal(1, &c.login_data(ext.len()).encode());
            login.extend(c.seal(3, &ext));
            login
        });
        assert_eq!(err, CspError::ExtensionsDecrypt);
    }

    #[test]
    fn legacy_client_info_login_is_accepted() {
        let mut server = fresh_server();
        let client = ManualClient::connect(&mut server);
        let mut raw = [0_u8; 32];
        raw[..11].copy_from_slice(b"1.0;Q;de/CH");
        let mut data = client.login_data(0);
        data.client_info = ClientInfoField::Legacy(raw);
        server.receive(&client.login(&data.encode(), None)).unwrap();
        assert_eq!(
            server.poll_event(),
            Some(ServerEvent::NeedIdentityKey {
                identity: *b"ECHOECHO"
            })
        );
        server
            .provide_identity_key(Some(client_key().public_key()))
            .unwrap();
        let extensions = Extensions {
            client_info: Some("1.0;Q;de/CH".into()),
            ..Extensions::default()
        };
        assert_eq!(
            server.poll_event(),
            Some(ServerEvent::Authenticated {
                identity: *b"ECHOECHO",
                extensions
            })
        );
        // No extensions box, so the client's first frame uses CSN 2.
        server
            .receive(&encode_frame(&client.seal(2, b"legacy")).unwrap())
            .unwrap();
        assert_eq!(
            server.poll_event(),
            Some(ServerEvent::Payload(b"legacy".to_vec()))
        );
    }

    #[test]
    fn flipped_bits_in_login_are_rejected() {
        let len = {
            let mut server = fresh_server();
            honest_login(&ManualClient::connect(&mut server)).len()
        };
        for i in 0..len {
            let err = login_error(|c| {
                let mut login = honest_login(c);
                login[i] ^= 1 << (i % 8);
                login
            });
            let expected = if i < LOGIN_BOX_LEN {
                CspError::LoginDecrypt
            } else {
                CspError::ExtensionsDecrypt
            };
            assert_eq!(err, expected, "byte {i}");
        }
    }

    #[test]
    fn flipped_bits_in_client_hello_break_the_handshake() {
        for i in 0..48 {
            let mut pair = Pair::with_extensions(Extensions::new("x"));
            let mut hello = pair.client.poll_transmit().unwrap();
            hello[i] ^= 1 << (i % 8);
            let err = pair
                .server
                .receive(&hello)
                .and_then(|()| pair.run(&[]))
                .unwrap_err();
            // X25519 ignores bit 255 of a public key, so flipping it (byte 31, bit 7) leaves every
            // shared key intact; the vouch, computed over TCK.public as sent, still catches it.
            let expected = match i {
                31 => CspError::BadVouch,
                0..32 => CspError::ServerHelloDecrypt,
                _ => CspError::ClientCookieMismatch,
            };
            assert_eq!(err, expected, "byte {i}");
            assert!(!pair.client.is_established() && !pair.server.is_established());
        }
    }

    #[test]
    fn frames_replayed_or_swapped_are_reported() {
        let mut pair = Pair::with_extensions(Extensions::new("x"));
        pair.run(&[]).unwrap();
        pair.client.send(b"one").unwrap();
        pair.client.send(b"two").unwrap();
        let one = pair.client.poll_transmit().unwrap();
        let two = pair.client.poll_transmit().unwrap();
        let mut replay = Pair::with_extensions(Extensions::new("x"));
        replay.run(&[]).unwrap();
        // Same seed, same keys: the frames fit the twin's server too.
        replay.server.receive(&one).unwrap();
        assert_eq!(replay.server.receive(&one), Err(CspError::ReplayedFrame));
        assert_eq!(
            pair.server.receive(&[two, one].concat()),
            Err(CspError::ReorderedFrame)
        );
    }

    #[test]
    fn early_frames_are_held_until_authenticated() {
        let mut server = fresh_server();
        let client = ManualClient::connect(&mut server);
        let mut bytes = honest_login(&client);
        bytes.extend(encode_frame(&client.seal(3, b"early")).unwrap());
        server.receive(&bytes).unwrap();
        assert!(matches!(
            server.poll_event(),
            Some(ServerEvent::NeedIdentityKey { .. })
        ));
        assert!(server.poll_event().is_none());
        server
            .provide_identity_key(Some(client_key().public_key()))
            .unwrap();
        assert!(matches!(
            server.poll_event(),
            Some(ServerEvent::Authenticated { .. })
        ));
        assert_eq!(
            server.poll_event(),
            Some(ServerEvent::Payload(b"early".to_vec()))
        );
    }

    #[test]
    fn too_much_early_data_is_refused() {
        let mut server = fresh_server();
        let client = ManualClient::connect(&mut server);
        server.receive(&honest_login(&client)).unwrap();
        server.receive(&[0; MAX_FRAME_LEN]).unwrap();
        assert_eq!(server.receive(&[0]), Err(CspError::EarlyData));
    }

    #[test]
    fn identity_key_only_when_asked() {
        let mut server = fresh_server();
        assert_eq!(
            server.provide_identity_key(Some(client_key().public_key())),
            Err(CspError::UnexpectedIdentityKey)
        );
        assert!(server.is_failed());
    }

    #[test]
    fn failure_is_terminal() {
        let mut server = fresh_server();
        let hello = ClientHello {
            tck_public: PublicKey([0; 32]),
            cck: Cookie([6; 16]),
        };
        assert!(server.receive(&hello.encode()).is_err());
        assert_eq!(server.receive(&[0]), Err(CspError::AfterFailure));
        assert_eq!(
            server.provide_identity_key(None),
            Err(CspError::AfterFailure)
        );
        assert_eq!(server.send(b"x"), Err(CspError::AfterFailure));
        assert!(server.poll_transmit().is_none());
    }

    #[test]
    fn close_error_can_be_sealed_once_after_an_established_failure() {
        let mut pair = Pair::with_extensions(Extensions::new("x"));
        pair.run(&[]).unwrap();
        assert_eq!(pair.server.seal_final(b"not failed"), None);
        // An oversize frame header fails the server.
        assert_eq!(
            pair.server.receive(&8193_u16.to_le_bytes()),
            Err(CspError::FrameTooLarge(8193))
        );
        let last = pair.server.seal_final(&[0xe0, 0, 0, 0, 1]).unwrap();
        assert_eq!(pair.server.seal_final(b"again"), None);
        pair.client.receive(&last).unwrap();
        assert_eq!(
            pair.client.poll_event(),
            Some(ClientEvent::Payload(vec![0xe0, 0, 0, 0, 1]))
        );
    }

    #[test]
    fn close_error_after_a_frame_that_does_not_decrypt() {
        let mut pair = Pair::with_extensions(Extensions::new("x"));
        pair.run(&[]).unwrap();
        pair.client.send(b"one").unwrap();
        let mut frame = pair.client.poll_transmit().unwrap();
        frame[5] ^= 1;
        assert_eq!(pair.server.receive(&frame), Err(CspError::FrameDecrypt));
        let last = pair.server.seal_final(b"bye!").unwrap();
        pair.client.receive(&last).unwrap();
        assert_eq!(
            pair.client.poll_event(),
            Some(ClientEvent::Payload(b"bye!".to_vec()))
        );
    }

    #[test]
    fn no_close_error_after_a_handshake_failure() {
        let mut server = fresh_server();
        let hello = ClientHello {
            tck_public: PublicKey([0; 32]),
            cck: Cookie([6; 16]),
        };
        assert!(server.receive(&hello.encode()).is_err());
        assert_eq!(server.seal_final(b"x"), None);
    }

    #[test]
    fn partial_input_is_reported() {
        let mut server = fresh_server();
        assert!(!server.has_partial_input());
        server.receive(&[0; 20]).unwrap();
        assert!(server.has_partial_input());
        let mut pair = Pair::with_extensions(Extensions::new("x"));
        pair.run(&[]).unwrap();
        pair.server.receive(&[40, 0, 1]).unwrap();
        assert!(pair.server.has_partial_input());
    }

    #[test]
    fn send_before_authentication_is_refused() {
        let mut server = fresh_server();
        assert_eq!(server.send(b"x"), Err(CspError::NotEstablished));
    }

    #[test]
    fn debug_hides_payloads_and_keys() {
        assert_eq!(
            format!("{:?}", ServerEvent::Payload(vec![1, 2])),
            "Payload(2 bytes)"
        );
        let server = fresh_server();
        let text = format!("{server:?}");
        assert!(text.contains("AwaitingClientHello"));
        assert!(!text.contains("0303"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn arbitrary_bytes_into_a_fresh_server_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = fresh_server().receive(&data);
        }

        #[test]
        fn arbitrary_login_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut server = fresh_server();
            let _client = ManualClient::connect(&mut server);
            let _ = server.receive(&data);
        }

        #[test]
        fn arbitrary_login_data_inside_a_valid_box_never_panics(data: [u8; 32], tail in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut server = fresh_server();
            let client = ManualClient::connect(&mut server);
            let mut plain = client.login_data(tail.len()).encode();
            plain[8..40].copy_from_slice(&data);
            let _ = server.receive(&client.login(&plain, Some(&tail)));
        }
    }
}

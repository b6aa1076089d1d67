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
    CspError, LoginData, ServerChallengeResponse, CLIENT_HELLO_LEN, LOGIN_ACK_PLAINTEXT,
    LOGIN_BOX_LEN,
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
    /// identity. Checks the vouch, queues login-ack and processes bytes held meanwhile.
    pub fn provide_identity_key(&mut self, key: Option<PublicKey>) -> Result<(), CspError> {
        if self.is_failed() {
            return Err(CspError::AfterFailure);
        }
        let result = self.authenticate(key).and_then(|()| {
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

    /// The next whole unit to write to the client (server-hello, login-ack, then frames).
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    fn fail(&mut self) {
        self.state = State::Failed;
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
            State::Established { tx, mut rx } => {
                let boxed = unit.get(FRAME_HEADER_LEN..).unwrap_or_default();
                self.events
                    .push_back(ServerEvent::Payload(rx.open_frame(boxed)?));
                State::Established { tx, rx }
            }
            State::AwaitingIdentityKey { .. } | State::Failed => {
                return Err(CspError::AfterFailure)
            }
        };
        Ok(())
    }

    fn authenticate(&mut self, key: Option<PublicKey>) -> Result<(), CspError> {
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
        let ack = session.tx.seal(&LOGIN_ACK_PLAINTEXT)?;
        self.transmits.push_back(ack);
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

//! CSP handshake checks: the server and the client state machines fed a byte stream in chunks
//! whose sizes come from the input.
//!
//! Each stream is run twice, once in one piece and once in the input's chunks, and both runs must
//! agree: the machines promise to accept any chunking. A mode byte picks how much of a valid
//! handshake comes first, so the fuzzer reaches every state (a fresh machine, after a valid hello,
//! behind a correctly sealed login, and established with frames sealed under the session key).

use std::sync::OnceLock;

use tandem_shared::crypto::{BoxKey, PublicKey, SecretKey, TAG_LEN};
use tandem_shared::csp::{
    validate_identity, vouch, CipherState, ClientEvent, ClientHello, ClientInfoField, Cookie,
    CspClient, CspClientConfig, CspError, CspServer, CspServerConfig, Extensions, LoginAck,
    LoginData, ServerEvent, ServerHello, CLIENT_HELLO_LEN, MAX_FRAME_LEN, MAX_FRAME_PLAINTEXT_LEN,
    SERVER_HELLO_LEN,
};
use tandem_shared::keys::{ClientKey, IDENTITY_LEN};

use super::input::{client_key, rng, server_key, Chunking, Input};

/// Seed of the server's TSK and SCK.
const SERVER_SEED: u64 = 0x5e;
/// Seed of the client's TCK and CCK.
const CLIENT_SEED: u64 = 0xc1;
/// The hand-built client's TCK and CCK (server checks).
const TCK: [u8; 32] = [0x03; 32];
const CCK: [u8; 16] = [0x04; 16];
/// The identity of the state-machine client.
const IDENTITY: [u8; IDENTITY_LEN] = *b"FUZZTEST";
/// The first frame sequence number in each direction (1 and 2 go to the handshake boxes).
const FIRST_FRAME_SEQ: u64 = 3;

/// A fresh `CspServer` fed the input as a client stream, in chunks; must never panic, and must
/// reach the same events and error whatever the chunking.
pub fn csp_server(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.byte() % 4;
    let chunking = Chunking::read(&mut input);
    let (stream, identity_key, expected) = match mode {
        0 => {
            let key = identity_key(&mut input);
            (input.rest().to_vec(), key, None)
        }
        1 => {
            let mut stream = fixture().client_hello.to_vec();
            stream.extend_from_slice(input.rest());
            (stream, Some(client_key().public_key()), None)
        }
        2 => (
            fuzzed_login(&mut input),
            Some(client_key().public_key()),
            None,
        ),
        _ => {
            let (stream, expected) = valid_login(&mut input);
            (stream, Some(client_key().public_key()), Some(expected))
        }
    };
    let whole = run_server(&stream, &Chunking::whole(), identity_key);
    if !chunking.is_whole() {
        let chunked = run_server(&stream, &chunking, identity_key);
        // Bytes held while the identity key is outstanding are capped, and in one piece they
        // all arrive before the directory answers: only then may the runs differ.
        let early = Some(CspError::EarlyData);
        if whole.error == early || chunked.error == early {
            return;
        }
        assert_eq!(whole.events, chunked.events);
        assert_eq!(whole.error, chunked.error);
        assert_eq!(whole.established, chunked.established);
        if whole.error.is_none() {
            assert_eq!(whole.transmits, chunked.transmits);
        }
    }
    if let Some(expected) = expected {
        if expected.exact {
            assert_eq!(whole.events, expected.events);
            assert_eq!(whole.error, expected.error);
        } else {
            assert!(whole.events.starts_with(&expected.events));
        }
    }
}

/// A `CspClient` awaiting the server-hello fed the input as a server stream, in chunks.
pub fn csp_client(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.byte() % 3;
    let chunking = Chunking::read(&mut input);
    let mut expected = None;
    let stream = match mode {
        0 => input.rest().to_vec(),
        1 => {
            let mut stream = fixture()
                .server_stream
                .get(..SERVER_HELLO_LEN)
                .unwrap_or_default()
                .to_vec();
            stream.extend_from_slice(input.rest());
            stream
        }
        _ => {
            let fixture = fixture();
            let mut stream = fixture.server_stream.clone();
            let (key, sck) = &fixture.server_tx;
            let mut tx = CipherState::starting_at(key.clone(), *sck, FIRST_FRAME_SEQ);
            let mut events = vec![ClientEvent::Established(LoginAck::default())];
            for payload in payloads(&mut input) {
                stream.extend(tx.seal_frame(payload).expect("payload fits a frame"));
                events.push(ClientEvent::Payload(payload.to_vec()));
            }
            let tail = input.rest();
            stream.extend_from_slice(tail);
            if tail.is_empty() {
                expected = Some(events);
            }
            stream
        }
    };
    let whole = run_client(&stream, &Chunking::whole());
    if !chunking.is_whole() {
        assert_eq!(whole, run_client(&stream, &chunking));
    }
    if let Some(events) = expected {
        assert_eq!(whole.error, None);
        assert_eq!(whole.events, events);
    }
}

/// What the directory answers in mode 0: CK, unknown, or 32 bytes from the input (which may be a
/// low-order point).
fn identity_key(input: &mut Input<'_>) -> Option<PublicKey> {
    match input.byte() % 3 {
        0 => Some(client_key().public_key()),
        1 => None,
        _ => Some(PublicKey(input.array())),
    }
}

/// Up to three frame payloads, each at most one frame's plaintext.
fn payloads<'a>(input: &mut Input<'a>) -> Vec<&'a [u8]> {
    let count = input.byte() % 4;
    (0..count)
        .map(|_| {
            let len = usize::from(input.u16()) % (MAX_FRAME_PLAINTEXT_LEN + 1);
            input.take(len)
        })
        .collect()
}

#[derive(Debug, Default, PartialEq, Eq)]
struct ServerRun {
    transmits: Vec<Vec<u8>>,
    events: Vec<ServerEvent>,
    error: Option<CspError>,
    established: bool,
}

fn new_server() -> CspServer {
    CspServer::new(
        CspServerConfig {
            server_key: server_key(),
        },
        &mut rng(SERVER_SEED),
    )
}

/// Feeds the stream, answering every identity-key request with `identity_key`, until the end
/// or the first error; a failed server must stay failed and silent.
fn run_server(stream: &[u8], chunking: &Chunking, identity_key: Option<PublicKey>) -> ServerRun {
    let mut server = new_server();
    let mut run = ServerRun::default();
    for chunk in chunking.split(stream) {
        let mut result = server.receive(chunk);
        while let Some(event) = server.poll_event() {
            let asks = matches!(event, ServerEvent::NeedIdentityKey { .. });
            run.events.push(event);
            if asks && result.is_ok() {
                result = server.provide_identity_key(identity_key);
            }
        }
        run.transmits
            .extend(core::iter::from_fn(|| server.poll_transmit()));
        if let Err(e) = result {
            run.error = Some(e);
            break;
        }
    }
    if run.error.is_some() {
        assert!(server.is_failed() && !server.is_established());
        assert_eq!(server.poll_transmit(), None);
        assert_eq!(server.receive(b"x"), Err(CspError::AfterFailure));
        assert_eq!(
            server.provide_identity_key(identity_key),
            Err(CspError::AfterFailure)
        );
        assert_eq!(server.send(b"x"), Err(CspError::AfterFailure));
    }
    run.established = server.is_established();
    run
}

#[derive(Debug, Default, PartialEq, Eq)]
struct ClientRun {
    transmits: Vec<Vec<u8>>,
    events: Vec<ClientEvent>,
    error: Option<CspError>,
    established: bool,
}

fn client_config() -> CspClientConfig {
    CspClientConfig {
        identity: IDENTITY,
        client_key: client_key(),
        server_public_key: server_key().public_key(),
        extensions: Extensions::new("tandem fuzz"),
    }
}

fn new_client() -> CspClient {
    CspClient::new(client_config(), &mut rng(CLIENT_SEED)).expect("fixed client config is valid")
}

fn run_client(stream: &[u8], chunking: &Chunking) -> ClientRun {
    let mut client = new_client();
    let mut run = ClientRun::default();
    // The client-hello is queued at creation; drain it so both runs compare what followed.
    assert!(client.poll_transmit().is_some(), "client-hello is queued");
    for chunk in chunking.split(stream) {
        let result = client.receive(chunk);
        run.events
            .extend(core::iter::from_fn(|| client.poll_event()));
        run.transmits
            .extend(core::iter::from_fn(|| client.poll_transmit()));
        if let Err(e) = result {
            run.error = Some(e);
            break;
        }
    }
    if run.error.is_some() {
        assert!(client.is_failed() && !client.is_established());
        assert_eq!(client.poll_transmit(), None);
        assert_eq!(client.receive(b"x"), Err(CspError::AfterFailure));
        assert_eq!(client.send(b"x"), Err(CspError::AfterFailure));
        // What the client sent before failing depends on the chunking; nothing after it.
        run.transmits.clear();
    }
    run.established = client.is_established();
    run
}

/// Everything a check builds the same way every run, computed once: the X25519 operations
/// dominate the run time under coverage instrumentation.
struct Fixture {
    /// The hand-built client-hello of the server checks.
    client_hello: [u8; CLIENT_HELLO_LEN],
    /// What that client learns from the server-hello (a server of [`SERVER_SEED`]).
    session: Session,
    /// That client's correct vouch.
    vouch: [u8; 32],
    /// server-hello ‖ login-ack of a real handshake with the client of [`CLIENT_SEED`].
    server_stream: Vec<u8>,
    /// That server's sending direction: the session key and SCK (frames start at 3).
    server_tx: (BoxKey, Cookie),
}

/// What the client knows after the server-hello: the session key, SCK and TSK.public.
struct Session {
    key: BoxKey,
    sck: Cookie,
    tsk_public: PublicKey,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(Fixture::new)
}

impl Fixture {
    fn new() -> Self {
        let tck = SecretKey::from_bytes(TCK);
        let client_hello = ClientHello {
            tck_public: tck.public_key(),
            cck: Cookie(CCK),
        }
        .encode();
        let session = open_server_hello(&tck, &client_hello);
        let ck = client_key();
        let ss1 = ck.secret().box_key(&server_key().public_key());
        let ss2 = ck.secret().box_key(&session.tsk_public);
        let vouch = vouch(
            &ClientKey::vouch_key(&ss1, &ss2),
            &session.sck,
            &tck.public_key(),
        );
        let (server_stream, server_tx) = server_handshake();
        Self {
            client_hello,
            session,
            vouch,
            server_stream,
            server_tx,
        }
    }
}

/// Sends `client_hello` to a server of [`SERVER_SEED`] and opens its answer as the client would.
fn open_server_hello(tck: &SecretKey, client_hello: &[u8]) -> Session {
    let mut server = new_server();
    assert_eq!(server.receive(client_hello), Ok(()));
    open_server_hello_bytes(
        tck,
        &server.poll_transmit().expect("server-hello is queued"),
    )
}

/// A client of [`CLIENT_SEED`] and a server run to the end of the handshake: returns the server's
/// stream (server-hello ‖ login-ack) and its sending direction, checked against a frame the
/// server sealed itself.
fn server_handshake() -> (Vec<u8>, (BoxKey, Cookie)) {
    let mut client = new_client();
    let mut server = new_server();
    let mut stream = Vec::new();
    let hello = client.poll_transmit().expect("client-hello is queued");
    assert_eq!(server.receive(&hello), Ok(()));
    let server_hello = server.poll_transmit().expect("server-hello is queued");
    stream.extend_from_slice(&server_hello);
    assert_eq!(client.receive(&server_hello), Ok(()));
    let login: Vec<u8> = core::iter::from_fn(|| client.poll_transmit())
        .flatten()
        .collect();
    assert_eq!(server.receive(&login), Ok(()));
    assert!(matches!(
        server.poll_event(),
        Some(ServerEvent::NeedIdentityKey { .. })
    ));
    assert_eq!(
        server.provide_identity_key(Some(client_key().public_key())),
        Ok(())
    );
    stream.extend(core::iter::from_fn(|| server.poll_transmit()).flatten());
    assert!(server.is_established());

    // CspClient::new draws TCK first; the probe frame proves the key is the session's.
    let tck = SecretKey::generate(&mut rng(CLIENT_SEED));
    assert_eq!(
        hello.get(..32),
        Some(tck.public_key().as_bytes().as_slice()),
        "CspClient::new draws TCK first"
    );
    let session = open_server_hello_bytes(&tck, &server_hello);
    assert_eq!(server.send(b"probe"), Ok(()));
    let probe = server.poll_transmit();
    let mut tx = CipherState::starting_at(session.key.clone(), session.sck, FIRST_FRAME_SEQ);
    assert_eq!(tx.seal_frame(b"probe").ok(), probe);
    (stream, (session.key, session.sck))
}

/// Opens a server-hello already received.
fn open_server_hello_bytes(tck: &SecretKey, server_hello: &[u8]) -> Session {
    let hello = ServerHello::decode(server_hello).expect("server-hello decodes");
    let response = hello
        .open(&tck.box_key(&server_key().public_key()))
        .expect("server-hello opens");
    Session {
        key: tck.box_key(&response.tsk_public),
        sck: hello.sck,
        tsk_public: response.tsk_public,
    }
}

/// client-hello ‖ box(login-data from the input, with the right SCK) ‖ box(the rest).
fn fuzzed_login(input: &mut Input<'_>) -> Vec<u8> {
    let fixture = fixture();
    let session = &fixture.session;
    let mut login: [u8; 128] = input.array();
    // SCK sits at offset 40; a constant-time compare gives the fuzzer no hint, so set it.
    if let Some(sck) = login.get_mut(40..56) {
        sck.copy_from_slice(&session.sck.0);
    }
    let mut tx = CipherState::new(session.key.clone(), Cookie(CCK));
    let mut stream = fixture.client_hello.to_vec();
    for plain in [login.as_slice(), input.rest()] {
        stream.extend(tx.seal(plain).expect("sequence number 1 and 2"));
    }
    stream
}

/// What a valid login must lead to.
struct Expected {
    /// The events, or their first part when `exact` is false.
    events: Vec<ServerEvent>,
    /// The error; checked only when `exact`.
    error: Option<CspError>,
    /// False when raw input follows the frames, whose effect is not predicted here.
    exact: bool,
}

/// A correct login (identity and extensions plaintext from the input, right SCK and vouch),
/// then up to three frames of input payloads, then raw input.
fn valid_login(input: &mut Input<'_>) -> (Vec<u8>, Expected) {
    let fixture = fixture();
    let session = &fixture.session;
    let identity: [u8; IDENTITY_LEN] = input.array();
    let ext_len = usize::from(input.u16()) % (MAX_FRAME_PLAINTEXT_LEN + 1);
    let ext = input.take(ext_len);
    let payloads = payloads(input);
    let tail = input.rest();

    let login = LoginData {
        identity,
        client_info: ClientInfoField::ExtensionIndicator {
            extensions_box_len: u16::try_from(ext.len() + TAG_LEN).unwrap_or(u16::MAX),
        },
        sck: session.sck,
        vouch: fixture.vouch,
    };
    let mut tx = CipherState::new(session.key.clone(), Cookie(CCK));
    let mut stream = fixture.client_hello.to_vec();
    stream.extend(tx.seal(&login.encode()).expect("sequence number 1"));
    stream.extend(tx.seal(ext).expect("sequence number 2"));
    assert_eq!(tx.next_seq(), FIRST_FRAME_SEQ);
    let ext_end = stream.len();
    for payload in &payloads {
        stream.extend(tx.seal_frame(payload).expect("payload fits a frame"));
    }
    stream.extend_from_slice(tail);
    // In one piece, everything after the extensions box waits for the identity key.
    let early_data = stream.len() - ext_end > MAX_FRAME_LEN;

    let mut events = Vec::new();
    let error = match (validate_identity(&identity), Extensions::decode(ext)) {
        (Err(e), _) => Some(e),
        (Ok(()), Err(e)) => Some(CspError::MalformedExtensions(e)),
        (Ok(()), Ok(_)) if early_data => {
            events.push(ServerEvent::NeedIdentityKey { identity });
            Some(CspError::EarlyData)
        }
        (Ok(()), Ok(extensions)) => {
            events.push(ServerEvent::NeedIdentityKey { identity });
            events.push(ServerEvent::Authenticated {
                identity,
                extensions,
            });
            events.extend(
                payloads
                    .iter()
                    .map(|payload| ServerEvent::Payload(payload.to_vec())),
            );
            None
        }
    };
    let exact = tail.is_empty() || error.is_some();
    (
        stream,
        Expected {
            events,
            error,
            exact,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_run(data: &[u8]) -> ServerRun {
        let mut input = Input::new(data);
        let _mode = input.byte();
        let _chunking = Chunking::read(&mut input);
        let stream = fuzzed_login(&mut input);
        run_server(&stream, &Chunking::whole(), Some(client_key().public_key()))
    }

    #[test]
    fn fuzzed_login_gets_past_the_cookie_to_the_vouch() {
        let mut data = vec![2, 0];
        data.extend_from_slice(b"ECHOECHO");
        data.extend_from_slice(&[b' '; 32]);
        data.extend_from_slice(&[0; 88]);
        let run = server_run(&data);
        assert_eq!(run.error, Some(CspError::BadVouch));
        assert!(matches!(
            run.events.as_slice(),
            [ServerEvent::NeedIdentityKey { .. }]
        ));
    }

    #[test]
    fn valid_login_is_authenticated_and_frames_arrive() {
        let mut data = vec![3, 0];
        data.extend_from_slice(b"ECHOECHO");
        data.extend_from_slice(&[0, 0]);
        data.extend_from_slice(&[1, 3, 0, 0xd0, 0, 0]);
        let mut input = Input::new(&data);
        let _ = input.byte();
        let _ = Chunking::read(&mut input);
        let (stream, expected) = valid_login(&mut input);
        assert!(expected.exact);
        assert_eq!(expected.events.len(), 3);
        let run = run_server(&stream, &Chunking::whole(), Some(client_key().public_key()));
        assert!(run.established);
        assert_eq!(run.events, expected.events);
        assert_eq!(run.transmits.len(), 2, "server-hello and login-ack");
    }

    #[test]
    fn established_client_receives_the_server_frames() {
        let fixture = fixture();
        let (key, sck) = &fixture.server_tx;
        let mut tx = CipherState::starting_at(key.clone(), *sck, FIRST_FRAME_SEQ);
        let mut stream = fixture.server_stream.clone();
        stream.extend(tx.seal_frame(&[0xd0, 0, 0, 0]).unwrap());
        let run = run_client(&stream, &Chunking::whole());
        assert!(run.established);
        assert_eq!(
            run.events,
            [
                ClientEvent::Established(LoginAck::default()),
                ClientEvent::Payload(vec![0xd0, 0, 0, 0])
            ]
        );
    }

    /// Found while reviewing the harness: in one piece, two large frames after the login exceed
    /// what the server holds while the identity key is outstanding (EarlyData), while in chunks
    /// the key is answered first. The check must expect that, not report it.
    #[test]
    fn frames_beyond_the_hold_limit_are_early_data_in_one_piece() {
        let data = early_data_input();
        let mut input = Input::new(&data);
        let _ = input.byte();
        let _ = Chunking::read(&mut input);
        let (stream, expected) = valid_login(&mut input);
        assert_eq!(expected.error, Some(CspError::EarlyData));
        let run = run_server(&stream, &Chunking::whole(), Some(client_key().public_key()));
        assert_eq!(run.error, Some(CspError::EarlyData));
        csp_server(&data);
    }

    /// Mode 3, chunks of 200 bytes, identity ECHOECHO, no extensions, two 5000-byte frames.
    pub(crate) fn early_data_input() -> Vec<u8> {
        let mut data = vec![3, 1, 200];
        data.extend_from_slice(b"ECHOECHO");
        data.extend_from_slice(&[0, 0, 2]);
        for _ in 0..2 {
            data.extend_from_slice(&5000_u16.to_le_bytes());
            data.extend_from_slice(&[0xab; 5000]);
        }
        data
    }
}

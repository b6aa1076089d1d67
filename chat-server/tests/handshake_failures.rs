//! Every way a connection can go wrong ends with a clear close reason (close-error when the
//! session was established, a logged reason and a closed socket otherwise), and the server keeps
//! serving other sessions after each.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use rand::rngs::OsRng;
use rand::RngCore;
use support::{expect_raw_close, Account, Client, ClientError, ServerProcess};
use tandem_shared::crypto::SecretKey;
use tandem_shared::csp::{
    vouch, CipherState, ClientHello, ClientInfoField, Cookie, CspError, CspPayload, Extensions,
    LoginData, ServerHello, CLIENT_HELLO_LEN, SERVER_HELLO_LEN,
};
use tandem_shared::keys::ClientKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Setup {
    server: ServerProcess,
    _dir: tempfile::TempDir,
    account: Account,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let account = Account::create(server.http).await;
    Setup {
        server,
        _dir: dir,
        account,
    }
}

impl Setup {
    /// A healthy session logs in and gets an echo back.
    async fn assert_still_serving(&self, device_id: u64) {
        let mut client = Client::connect(
            self.server.csp,
            self.account.config(&self.server.public_key, device_id),
        )
        .await
        .unwrap();
        client
            .send(&CspPayload::EchoRequest(device_id.to_le_bytes().to_vec()))
            .await;
        assert_eq!(
            client.expect().await,
            CspPayload::EchoResponse(device_id.to_le_bytes().to_vec())
        );
    }

    async fn established(&self, device_id: u64) -> Client {
        Client::connect(
            self.server.csp,
            self.account.config(&self.server.public_key, device_id),
        )
        .await
        .unwrap()
    }
}

/// What a hand-made login gets wrong.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tweak {
    Nothing,
    WrongServerCookie,
    HugeExtensionsBox,
}

/// A client that builds its login by hand, to put what an honest client never sends into it.
async fn manual_login(setup: &Setup, tweak: Tweak) -> TcpStream {
    let mut stream = TcpStream::connect(setup.server.csp).await.unwrap();
    let tck = SecretKey::generate(&mut OsRng);
    let cck = Cookie::generate(&mut OsRng);
    let hello = ClientHello {
        tck_public: tck.public_key(),
        cck,
    };
    stream.write_all(&hello.encode()).await.unwrap();
    let mut server_hello = [0_u8; SERVER_HELLO_LEN];
    stream.read_exact(&mut server_hello).await.unwrap();
    let server_hello = ServerHello::decode(&server_hello).unwrap();
    let response = server_hello
        .open(&tck.box_key(&setup.server.public_key))
        .unwrap();
    let ck = setup.account.key.secret();
    let vouch_key = ClientKey::vouch_key(
        &ck.box_key(&setup.server.public_key),
        &ck.box_key(&response.tsk_public),
    );
    let extensions = Extensions {
        csp_device_id: Some(77),
        ..Extensions::new("manual")
    }
    .encode()
    .unwrap();
    let mut sck = server_hello.sck;
    if tweak == Tweak::WrongServerCookie {
        sck.0[0] ^= 0xff;
    }
    let extensions_box_len = if tweak == Tweak::HugeExtensionsBox {
        9000
    } else {
        u16::try_from(extensions.len() + 16).unwrap()
    };
    let login = LoginData {
        identity: setup.account.identity,
        client_info: ClientInfoField::ExtensionIndicator { extensions_box_len },
        sck,
        vouch: vouch(&vouch_key, &server_hello.sck, &tck.public_key()),
    };
    let mut tx = CipherState::new(tck.box_key(&response.tsk_public), cck);
    let mut bytes = tx.seal(&login.encode()).unwrap();
    bytes.extend(tx.seal(&extensions).unwrap());
    stream.write_all(&bytes).await.unwrap();
    stream
}

#[tokio::test]
async fn wrong_server_key_is_detected_by_the_client_and_the_server_goes_on() {
    let s = setup().await;
    let mut config = s.account.config(&s.server.public_key, 1);
    config.server_public_key = SecretKey::generate(&mut OsRng).public_key();
    match Client::connect(s.server.csp, config).await {
        Err(ClientError::Csp(CspError::ServerHelloDecrypt)) => {}
        Err(other) => panic!("expected ServerHelloDecrypt, got {other:?}"),
        Ok(_) => panic!("handshake with a wrong server key succeeded"),
    }
    s.server
        .wait_for_log(&["handshake failed", "closed by the client"]);
    s.assert_still_serving(1).await;
}

#[tokio::test]
async fn bad_vouch_unknown_identity_and_cookie_mismatch_are_refused() {
    let s = setup().await;

    // Bad vouch: the right identity, another key.
    let mut config = s.account.config(&s.server.public_key, 1);
    config.client_key = ClientKey::new(SecretKey::generate(&mut OsRng));
    assert!(matches!(
        Client::connect(s.server.csp, config).await,
        Err(ClientError::Closed | ClientError::Io(_))
    ));
    let identity = String::from_utf8_lossy(&s.account.identity).into_owned();
    s.server
        .wait_for_log(&["handshake failed", &identity, "bad vouch"]);
    s.assert_still_serving(1).await;

    // Unknown identity.
    let mut config = s.account.config(&s.server.public_key, 1);
    config.identity = *b"ZZZZZZZZ";
    assert!(matches!(
        Client::connect(s.server.csp, config).await,
        Err(ClientError::Closed | ClientError::Io(_))
    ));
    s.server
        .wait_for_log(&["handshake failed", "ZZZZZZZZ", "unknown identity"]);
    s.assert_still_serving(2).await;

    // Server cookie echoed wrongly in login-data.
    let mut stream = manual_login(&s, Tweak::WrongServerCookie).await;
    assert!(
        expect_raw_close(&mut stream).await.is_empty(),
        "no login-ack"
    );
    s.server
        .wait_for_log(&["handshake failed", "server cookie mismatch"]);
    // The same hand-made login with the right cookie works (the test client is honest).
    let mut stream = manual_login(&s, Tweak::Nothing).await;
    let mut ack = [0_u8; 32];
    stream.read_exact(&mut ack).await.unwrap();
    s.assert_still_serving(3).await;

    // An extensions box announced larger than a frame (8192 bytes).
    let mut stream = manual_login(&s, Tweak::HugeExtensionsBox).await;
    assert!(
        expect_raw_close(&mut stream).await.is_empty(),
        "no login-ack"
    );
    s.server.wait_for_log(&[
        "handshake failed",
        "extensions box length 9000 out of range",
    ]);
    s.assert_still_serving(4).await;
}

#[tokio::test]
async fn garbage_truncation_and_timeouts_before_login_close_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &["--handshake-timeout-s", "3"]);
    let account = Account::create(server.http).await;
    let s = Setup {
        server,
        _dir: dir,
        account,
    };

    // Garbage: 48 random bytes read as a client-hello get a server-hello; the random login
    // after them does not decrypt.
    let mut stream = TcpStream::connect(s.server.csp).await.unwrap();
    let mut garbage = vec![0_u8; CLIENT_HELLO_LEN];
    OsRng.fill_bytes(&mut garbage);
    stream.write_all(&garbage).await.unwrap();
    let mut hello = [0_u8; SERVER_HELLO_LEN];
    stream.read_exact(&mut hello).await.unwrap();
    let mut garbage = vec![0_u8; 400];
    OsRng.fill_bytes(&mut garbage);
    stream.write_all(&garbage).await.unwrap();
    assert!(
        expect_raw_close(&mut stream).await.is_empty(),
        "nothing after server-hello"
    );
    s.server
        .wait_for_log(&["handshake failed", "login does not decrypt"]);
    s.assert_still_serving(1).await;

    // Garbage in one go: the batch fails as a whole, nothing is answered.
    let mut stream = TcpStream::connect(s.server.csp).await.unwrap();
    let mut garbage = vec![0_u8; 1000];
    OsRng.fill_bytes(&mut garbage);
    stream.write_all(&garbage).await.unwrap();
    let got = expect_raw_close(&mut stream).await;
    assert!(
        got.is_empty() || got.len() == SERVER_HELLO_LEN,
        "{} bytes",
        got.len()
    );
    s.assert_still_serving(2).await;

    // Truncated: half a client-hello, then the client closes its side.
    let mut stream = TcpStream::connect(s.server.csp).await.unwrap();
    stream.write_all(&[1_u8; 20]).await.unwrap();
    stream.shutdown().await.unwrap();
    assert!(expect_raw_close(&mut stream).await.is_empty());
    s.server
        .wait_for_log(&["handshake failed", "truncated frame"]);
    s.assert_still_serving(2).await;

    // Silent: connects and sends nothing; closed at the handshake deadline.
    let mut stream = TcpStream::connect(s.server.csp).await.unwrap();
    assert!(expect_raw_close(&mut stream).await.is_empty());
    s.server
        .wait_for_log(&["handshake failed", "handshake timeout"]);
    s.assert_still_serving(3).await;
}

#[tokio::test]
async fn oversize_garbled_and_truncated_frames_after_login_get_a_close_error() {
    let s = setup().await;

    // Oversize: a frame header announcing 8193 bytes.
    let mut client = s.established(1).await;
    client
        .stream
        .write_all(&8193_u16.to_le_bytes())
        .await
        .unwrap();
    let (can_reconnect, text) = client.expect_close().await.expect("close-error");
    assert!(!can_reconnect);
    assert_eq!(text, "protocol error: frame too large: 8193 bytes");
    s.assert_still_serving(2).await;

    // Garbled: a well-sized frame that does not decrypt.
    let mut client = s.established(3).await;
    let mut frame = 40_u16.to_le_bytes().to_vec();
    frame.extend([0x5a; 40]);
    client.stream.write_all(&frame).await.unwrap();
    let (can_reconnect, text) = client.expect_close().await.expect("close-error");
    assert!(!can_reconnect);
    assert_eq!(text, "protocol error: frame does not decrypt");
    s.assert_still_serving(4).await;

    // Replayed: the same frame twice.
    let mut client = s.established(5).await;
    client
        .csp
        .send(&CspPayload::EchoRequest(vec![1]).encode().unwrap())
        .unwrap();
    let frame = client.csp.poll_transmit().unwrap();
    client.stream.write_all(&frame).await.unwrap();
    assert_eq!(client.expect().await, CspPayload::EchoResponse(vec![1]));
    client.stream.write_all(&frame).await.unwrap();
    let (_, text) = client.expect_close().await.expect("close-error");
    assert_eq!(text, "protocol error: replayed frame");

    // Truncated: half a frame, then the client closes its side.
    let mut client = s.established(6).await;
    client
        .csp
        .send(&CspPayload::EchoRequest(vec![9; 100]).encode().unwrap())
        .unwrap();
    let frame = client.csp.poll_transmit().unwrap();
    client.stream.write_all(&frame[..50]).await.unwrap();
    client.stream.shutdown().await.unwrap();
    let (can_reconnect, text) = client.expect_close().await.expect("close-error");
    assert!(can_reconnect);
    assert_eq!(text, "connection ended inside a unit (truncated frame)");
    s.assert_still_serving(7).await;

    // Every one of these was logged with its reason.
    for reason in [
        "frame too large",
        "frame does not decrypt",
        "replayed frame",
        "truncated frame",
    ] {
        s.server.wait_for_log(&["session closed", reason]);
    }
}

//! The README's run command, `./scripts/run.sh`, as a user runs it: it starts the chat server and
//! the mediator under `wrangler dev` serving the web app, says where to connect once both answer, keeps its state
//! across a restart, refuses a taken port with a clear message, and stops everything on Ctrl-C
//! (SIGINT) with exit status 0 and no process left behind.
//!
//! Needs the Worker toolchain like the smoke test (`scripts/install-worker-toolchain.sh`, which
//! the run command itself runs).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tandem_tests::harness::{self, repo_root};

/// The first start may build the chat server and the Worker (wasm32, wasm-opt) from cold.
const FIRST_START_TIMEOUT: Duration = Duration::from_secs(25 * 60);
const RESTART_TIMEOUT: Duration = Duration::from_secs(5 * 60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    harness::free_port().expect("bind an ephemeral port")
}

struct Ports {
    csp: u16,
    http: u16,
    mediator: u16,
}

/// One `./scripts/run.sh` in its own process group; the group is killed on drop.
struct Run {
    child: Child,
    data_dir: PathBuf,
    lines: mpsc::Receiver<String>,
    output: Vec<String>,
}

impl Run {
    fn start(data_dir: &Path, ports: &Ports) -> Self {
        // A test process started from a background job inherits SIGINT as ignored, and bash
        // cannot trap a signal ignored at entry; a terminal's Ctrl-C never has that problem.
        let mut cmd = Command::new("env");
        cmd.arg("--default-signal=INT")
            .arg(repo_root().join("scripts/run.sh"))
            .current_dir(repo_root())
            .env("TANDEM_DATA_DIR", data_dir)
            .env("TANDEM_CSP_PORT", ports.csp.to_string())
            .env("TANDEM_HTTP_PORT", ports.http.to_string())
            .env("TANDEM_MEDIATOR_PORT", ports.mediator.to_string())
            // The test suite has already built the debug chat server; a user gets release.
            .env("TANDEM_RUN_PROFILE", "dev")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().expect("spawn scripts/run.sh");
        let (tx, lines) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { return };
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
        }
        Self {
            child,
            data_dir: data_dir.to_path_buf(),
            lines,
            output: Vec::new(),
        }
    }

    /// Collects output until a line equals `wanted`; `None` if the script exited first.
    fn wait_for_line(&mut self, wanted: &str, timeout: Duration) -> Option<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left.min(Duration::from_secs(1))) {
                Ok(line) => {
                    let done = line == wanted;
                    self.output.push(line);
                    if done {
                        return Some(());
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if Instant::now() >= deadline {
                        panic!(
                            "no line {wanted:?} within {timeout:?}; output:\n{}",
                            self.output.join("\n")
                        );
                    }
                    if self.child.try_wait().unwrap().is_some() {
                        self.drain();
                        return None;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    fn drain(&mut self) {
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.output.push(line);
        }
    }

    fn pgid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, "--", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.drain();
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "scripts/run.sh did not exit within {timeout:?}; output:\n{}",
                self.output.join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every process that still belongs to the script's process group or to the servers' own
    /// groups (they run under `setsid`, so they are found by their command line).
    fn leftovers(data_dir: &Path) -> Vec<String> {
        let out = Command::new("ps")
            .args(["-eo", "pid,args"])
            .output()
            .expect("run ps");
        let needle = data_dir.to_string_lossy().to_string();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(&needle))
            .map(str::to_owned)
            .collect()
    }

    fn text(&self) -> String {
        self.output.join("\n")
    }
}

impl Drop for Run {
    /// After a failed assertion: let the script stop its servers (they run in their own process
    /// groups), then make sure with SIGKILL.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-s", "TERM", "--", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + STOP_TIMEOUT;
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        // `--` matters: procps' kill reads `-KILL -PGID` differently.
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{}", self.pgid())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
        let _ = Command::new("pkill")
            .args(["-KILL", "-f", &self.data_dir.to_string_lossy()])
            .status();
    }
}

/// A minimal HTTP/1.0 GET: status and body.
fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The chat server public key the script printed (`chat server  host:port, public key HEX`).
fn printed_public_key(output: &str) -> String {
    output
        .lines()
        .find_map(|l| {
            l.split_once("public key ")
                .map(|(_, k)| k.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no public key printed; output:\n{output}"))
}

fn assert_stopped(run: &mut Run, data_dir: &Path, ports: &Ports) {
    run.signal("INT");
    let status = run.wait_exit(STOP_TIMEOUT);
    assert!(
        status.success(),
        "Ctrl-C should stop with status 0, got {status}; output:\n{}",
        run.text()
    );
    // The servers' process groups may take a moment to be reaped by init.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = Run::leftovers(data_dir);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "processes left after Ctrl-C:\n{}",
            left.join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for port in [ports.csp, ports.http, ports.mediator] {
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} still accepts connections after Ctrl-C"
        );
    }
}

#[test]
fn run_command_starts_the_system_and_stops_it_on_ctrl_c() {
    let tmp = std::env::temp_dir().join(format!("tandem-run-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let data_dir = tmp.join("data");
    let ports = Ports {
        csp: free_port(),
        http: free_port(),
        mediator: free_port(),
    };

    // First start: everything built, both servers answer, the script says where to connect.
    let started = Instant::now();
    let mut run = Run::start(&data_dir, &ports);
    if run
        .wait_for_line("tandem: ready", FIRST_START_TIMEOUT)
        .is_none()
    {
        panic!("scripts/run.sh exited before ready:\n{}", run.text());
    }
    eprintln!("first start ready after {:?}", started.elapsed());
    let output = run.text();
    let mediator_url = format!("ws://127.0.0.1:{}/", ports.mediator);
    assert!(
        output.contains(&mediator_url),
        "the mediator URL {mediator_url} is not printed:\n{output}"
    );
    let key = printed_public_key(&output);
    assert_eq!(key.len(), 64, "public key should be 32 bytes hex: {key}");

    // The directory through the mediator is the chat server's directory.
    let (status, direct) = http_get(ports.http, "/server-info");
    assert_eq!(status, 200, "chat server /server-info: {direct}");
    let (status, forwarded) = http_get(ports.mediator, "/directory/server-info");
    assert_eq!(status, 200, "mediator /directory/server-info: {forwarded}");
    assert_eq!(forwarded, direct);
    let (status, _) = http_get(ports.mediator, "/directory/identity/ABCD1234");
    assert_eq!(status, 404, "unknown identity through the mediator");
    // The web app is served on the mediator's origin (DESIGN §2.6), with the client package.
    let (status, page) = http_get(ports.mediator, "/");
    assert_eq!(status, 200, "web app at /: {page}");
    assert!(
        page.contains("<title>Tandem</title>"),
        "web app page: {page}"
    );
    let (status, glue) = http_get(ports.mediator, "/pkg/tandem_client.js");
    assert_eq!(status, 200, "client package glue");
    assert!(
        glue.contains("TandemClient"),
        "the glue exports TandemClient"
    );
    // The chat server accepts CSP connections.
    TcpStream::connect(("127.0.0.1", ports.csp)).expect("CSP port accepts connections");

    // A second copy on the same ports refuses with a message that names the port.
    let mut second = Run::start(&tmp.join("other"), &ports);
    assert!(
        second
            .wait_for_line("tandem: ready", RESTART_TIMEOUT)
            .is_none(),
        "a second run on taken ports must not get ready"
    );
    let status = second.wait_exit(STOP_TIMEOUT);
    assert_eq!(status.code(), Some(1), "output:\n{}", second.text());
    assert!(
        second
            .text()
            .contains(&format!("port {} on 127.0.0.1 is in use", ports.csp)),
        "the refusal should name the port:\n{}",
        second.text()
    );
    // ... and the first copy still serves.
    assert_eq!(http_get(ports.mediator, "/directory/server-info").1, direct);

    assert_stopped(&mut run, &data_dir, &ports);

    // Restart on the same data directory: same server key (state kept), then stop again.
    let mut run = Run::start(&data_dir, &ports);
    if run
        .wait_for_line("tandem: ready", RESTART_TIMEOUT)
        .is_none()
    {
        panic!("restart exited before ready:\n{}", run.text());
    }
    assert_eq!(
        printed_public_key(&run.text()),
        key,
        "the chat server key must survive a restart"
    );
    assert_stopped(&mut run, &data_dir, &ports);
    let _ = std::fs::remove_dir_all(&tmp);
}

//! The browser client for real: `tandem-client` packed by `scripts/build-client.sh` (run by
//! `scripts/build-www.sh`, which also builds the web app the Worker serves), installed into the
//! fixture project `tests/browser/` with `npm ci` (so the published package is what runs),
//! type-checked against its `.d.ts`, and driven in headless Chromium by
//! `tests/browser/driver.mjs` against a real chat server and the Worker under `wrangler dev`.
//! Each device is a browser context with its own IndexedDB (docs/testing.md, "Browser
//! end-to-end").
//!
//! `TANDEM_SCENARIO=reload,tampered_reflection cargo test -p tandem-tests --test browser_e2e --
//! --nocapture` runs only the named scenarios (after the shared setup).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tandem_tests::harness::{repo_root, Fixture, SCENARIO_VAR};

/// Debian's browser (`scripts/bootstrap.sh` installs it); Playwright never downloads one.
const CHROMIUM: &str = "/usr/bin/chromium";
/// Upper bound for the driver (every scenario); warm it takes well under two minutes.
const DRIVER_LIMIT: Duration = Duration::from_secs(10 * 60);
/// How long wrangler may take to write an error line after the event.
const LOG_CATCH_UP: Duration = Duration::from_secs(8);

/// Runs a command to the end; its combined output, or a panic naming it with that output.
fn run(what: &str, cmd: &mut Command) -> String {
    let started = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: could not start: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    eprintln!("{what}: {:.1?}", started.elapsed());
    text
}

/// Builds and packs the client and the web app around it (idempotent; several minutes cold) and
/// installs the fixture project from its lockfile.
fn prepare_project(browser_dir: &Path) -> PathBuf {
    let out = run(
        "scripts/build-www.sh",
        Command::new("scripts/build-www.sh")
            .current_dir(repo_root())
            .stderr(Stdio::inherit()),
    );
    let tarball = PathBuf::from(out.lines().last().unwrap_or_default().trim());
    assert!(
        tarball.is_file(),
        "build-www.sh did not print a tarball path last:\n{out}"
    );
    let manifest = std::fs::read_to_string(browser_dir.join("package.json")).unwrap();
    let name = tarball.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        manifest.contains(&name),
        "tests/browser/package.json must depend on {name} (the tarball build-client.sh made); \
         update it and run `npm install` there to refresh the lockfile"
    );
    run(
        "npm ci (tests/browser)",
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(browser_dir),
    );
    run(
        "tsc --noEmit (usage.ts against the package's .d.ts)",
        Command::new("npm")
            .args(["run", "--silent", "typecheck"])
            .current_dir(browser_dir),
    );
    tarball
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tandem_client_in_chromium_against_wrangler_dev() {
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing: run scripts/bootstrap.sh (installs Debian's chromium)"
    );
    let browser_dir = repo_root().join("tests/browser");
    let started = Instant::now();
    // The package and the web app are built first: wrangler dev reads the web app's files
    // (www/dist, the Worker's static assets) when it starts and does not see later changes.
    let dir = browser_dir.clone();
    let tarball = tokio::task::spawn_blocking(move || prepare_project(&dir))
        .await
        .expect("the package build panicked");
    let fixture = Fixture::with_wrangler(&["TANDEM_DEV_ROUTES:on".to_owned()]).await;
    let mut fx = fixture.unwrap_or_else(|err| panic!("the fixture did not start: {err}"));
    eprintln!(
        "package {} and fixture ready after {:.1?}",
        tarball.display(),
        started.elapsed()
    );

    let http_base = fx.ws_base().replacen("ws://", "http://", 1);
    let logs = fx.scratch().join("browser");
    let mut cmd = Command::new("node");
    cmd.arg("driver.mjs")
        .current_dir(&browser_dir)
        .env("TANDEM_WORKER_HTTP", &http_base)
        .env("TANDEM_E2E_LOGS", &logs)
        // Kept after the run (the scratch directory is not): look at them (docs/web-app.md).
        .env(
            "TANDEM_E2E_SHOTS",
            repo_root().join("target/browser-screenshots"),
        )
        .env("CHROMIUM", CHROMIUM)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Ok(only) = std::env::var(SCENARIO_VAR) {
        cmd.env(SCENARIO_VAR, only);
    }
    // Its own process group: the driver and its Chromium end together on a timeout.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd.spawn().expect("start node driver.mjs");
    let pid = child.id();
    let waited = tokio::time::timeout(
        DRIVER_LIMIT,
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await;
    let output = match waited {
        Ok(joined) => joined
            .expect("waiting for the driver panicked")
            .expect("wait for the driver"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-s", "TERM", "--", &format!("-{pid}")])
                .status();
            fx.keep_scratch();
            panic!(
                "the browser driver did not finish within {DRIVER_LIMIT:?}; logs in {}\n{}",
                fx.scratch().display(),
                fx.log_tails(40)
            );
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{text}");
    if !output.status.success() {
        fx.keep_scratch();
        panic!(
            "browser end-to-end failed ({}); page consoles in {}\n{text}\n{}",
            output.status,
            logs.display(),
            fx.log_tails(40)
        );
    }
    // wrangler writes its error lines a few seconds after the event (the `connection_lost` ones
    // come when the browser closes at the end), so the log is read once it had time to catch up.
    tokio::time::sleep(LOG_CATCH_UP).await;
    // One "Network connection lost." line per device that reconnected after `connection_lost`
    // cut its socket, when the browser closes (docs/testing.md): counted, not a crash.
    let crashes = fx.mediator_crashes();
    assert!(crashes.is_empty(), "the Worker crashed: {crashes:?}");
}

//! [`Served`]: a child process in its own process group with its output in a log file, ended
//! with its whole group (SIGTERM, then SIGKILL) when stopped or dropped.
//!
//! A process group of its own keeps the test's Ctrl-C away from the child, so `Drop` decides
//! when it ends. For when `Drop` never runs (the test process killed), a watchdog shell in the
//! same group ends the group once the test process is gone.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::error::HarnessError;

/// How long a process group gets between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(10);

/// Ends the process group `$2` once process `$1` (the test) is gone; immune to the group's
/// own SIGTERM so that it can follow up with SIGKILL.
const WATCHDOG: &str = "trap '' TERM; while kill -0 \"$1\" 2>/dev/null; do sleep 1; done; \
     kill -TERM -- \"-$2\" 2>/dev/null; sleep 5; kill -KILL -- \"-$2\" 2>/dev/null";

/// A running child process (and everything it started).
#[derive(Debug)]
pub struct Served {
    name: String,
    child: Child,
    watchdog: Option<Child>,
    log: PathBuf,
}

impl Served {
    /// Spawns `cmd` in a new process group with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Self, HarnessError> {
        let file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|err| HarnessError::io(format!("open {}", log.display()), err))?;
        let stderr = file
            .try_clone()
            .map_err(|err| HarnessError::io("clone a log handle", err))?;
        cmd.stdin(Stdio::null())
            .stdout(file)
            .stderr(stderr)
            .process_group(0);
        let child = cmd
            .spawn()
            .map_err(|err| HarnessError::process(name, format!("spawn {cmd:?}: {err}")))?;
        let group = child.id();
        // Best effort: without it only a killed test process leaves the group behind.
        let watchdog = Command::new("bash")
            .args(["-c", WATCHDOG, "watchdog"])
            .arg(std::process::id().to_string())
            .arg(group.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(i32::try_from(group).unwrap_or(0))
            .spawn()
            .ok();
        Ok(Self {
            name: name.to_owned(),
            child,
            watchdog,
            log: log.to_path_buf(),
        })
    }

    /// The name used in errors.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The log file.
    #[must_use]
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The process id (also the process group id).
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the process has ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last `lines` lines of the log.
    #[must_use]
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// SIGTERM to the group, SIGKILL after a grace period or once the leader is gone (children
    /// such as workerd may outlive it).
    pub fn stop(&mut self) {
        let group = format!("-{}", self.child.id());
        if self.exited().is_none() {
            signal(&group, "-TERM");
            let deadline = Instant::now() + TERM_GRACE;
            while self.exited().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        signal(&group, "-KILL");
        self.reap();
    }

    /// SIGKILL to the whole group at once (a crash).
    pub fn kill(&mut self) {
        signal(&format!("-{}", self.child.id()), "-KILL");
        self.reap();
    }

    fn reap(&mut self) {
        let _ = self.child.wait();
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop();
    }
}

fn signal(group: &str, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, "--", group])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The last `lines` lines of a text file ("" if unreadable).
#[must_use]
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all.get(all.len().saturating_sub(lines)..)
        .unwrap_or_default()
        .join("\n")
}

//! Real PostgreSQL servers for the tests: `initdb` into a temporary directory, `postgres` as a
//! child process on a free port, and a synchronous standby made with `pg_basebackup`.
//!
//! PostgreSQL refuses to run as root, and CI runs as root: then every PostgreSQL program runs
//! through `setpriv` as the `postgres` user (Debian's package creates it), and the data
//! directory belongs to that user. `setpriv` execs (it does not fork), so the child we hold is
//! the postmaster itself and SIGKILL reaches it. A watchdog shell ends the postmaster and removes
//! its directory when the test process dies without dropping the handle (the suite's shared
//! server is never dropped).
//!
//! The mediator harness (`tests/src/harness`) includes this file too, for its two-node chat
//! server.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The user PostgreSQL runs as when the tests run as root.
const PG_USER: &str = "postgres";
/// The database role the tests connect as (trust authentication on 127.0.0.1 only).
pub const ROLE: &str = "tandem";

/// Where PostgreSQL's programs are: `TANDEM_PG_BIN`, else Debian's versioned directories.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TANDEM_PG_BIN") {
        return PathBuf::from(dir);
    }
    for version in ["17", "16", "15"] {
        let dir = PathBuf::from(format!("/usr/lib/postgresql/{version}/bin"));
        if dir.join("postgres").exists() {
            return dir;
        }
    }
    panic!("PostgreSQL not found: install postgresql-15 (scripts/bootstrap.sh does) or set TANDEM_PG_BIN");
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A PostgreSQL program, as the `postgres` user when we are root.
fn pg_command(program: &str) -> Command {
    let path = bin_dir().join(program);
    if running_as_root() {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            &format!("--reuid={PG_USER}"),
            &format!("--regid={PG_USER}"),
            "--clear-groups",
            "--",
        ])
        .arg(path);
        cmd
    } else {
        Command::new(path)
    }
}

fn run(mut cmd: Command, what: &str) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One PostgreSQL server (primary or standby) with its own data directory.
pub struct PgServer {
    child: Option<Child>,
    watchdog: Option<Child>,
    root: PathBuf,
    pub port: u16,
    remove_root: bool,
}

impl PgServer {
    fn make_root() -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let root = std::env::temp_dir().join(format!(
            "tandem-pg-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&root).unwrap();
        if running_as_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg(format!("{PG_USER}:")).arg(&root);
                    c
                },
                "chown",
            );
        }
        root
    }

    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    /// A fresh primary: initdb, then the server. `synchronous_commit` and `fsync` stay on.
    pub fn primary() -> Self {
        let root = Self::make_root();
        let mut initdb = pg_command("initdb");
        initdb.arg("-D").arg(root.join("data")).args([
            "-U",
            ROLE,
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        run(initdb, "initdb");
        Self::boot(root)
    }

    /// Starts the server on a data directory that `root/data` holds.
    fn boot(root: PathBuf) -> Self {
        let mut server = Self {
            child: None,
            watchdog: None,
            root,
            port: free_port(),
            remove_root: true,
        };
        server.launch();
        server
    }

    /// A streaming standby of `primary` (`pg_basebackup -R`), named `name` for
    /// `synchronous_standby_names`.
    pub fn standby(primary: &Self, name: &str) -> Self {
        let root = Self::make_root();
        let mut backup = pg_command("pg_basebackup");
        backup
            .arg("-D")
            .arg(root.join("data"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &primary.port.to_string(),
                "-U",
                ROLE,
            ])
            .args(["-R", "-X", "stream", "--no-sync", "--checkpoint=fast"])
            .arg(format!("--dbname=application_name={name}"));
        run(backup, "pg_basebackup");
        Self::boot(root)
    }

    fn launch(&mut self) {
        let log = std::fs::File::create(self.root.join("server.log")).unwrap();
        let mut cmd = pg_command("postgres");
        cmd.arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string()])
            .arg("-k")
            .arg(&self.root)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=400",
                "-c",
                "shared_buffers=32MB",
                "-c",
                "fsync=on",
                "-c",
                "synchronous_commit=on",
                "-c",
                "hot_standby=on",
            ])
            // The chat-server bench's statement counts (BENCHMARKS.md "Where the CPU goes").
            .args(
                std::env::var_os("TANDEM_PG_STATEMENTS")
                    .map(|_| vec!["-c", "shared_preload_libraries=pg_stat_statements"])
                    .unwrap_or_default(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = cmd.spawn().expect("spawn postgres");
        let pid = child.id();
        // Ends the postmaster and removes the directory if this process dies first.
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {me} 2>/dev/null && kill -0 {pid} 2>/dev/null; do sleep 1; done; \
                 kill -0 {me} 2>/dev/null || {{ kill -9 {pid} 2>/dev/null; rm -rf '{root}'; }}",
                me = std::process::id(),
                root = self.root.display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        self.child = Some(child);
        self.watchdog = watchdog;
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = Command::new(bin_dir().join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", ROLE])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not start; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default()
    }

    /// Runs SQL through `psql` (autocommit; `CREATE DATABASE` and `ALTER SYSTEM` work).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(bin_dir().join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", ROLE])
            .args(["-d", db, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Creates a database unless it exists.
    pub fn ensure_database(&self, name: &str) {
        let exists = self.psql(
            "postgres",
            &format!("SELECT 1 FROM pg_database WHERE datname = '{name}'"),
        );
        if exists != "1" {
            self.psql("postgres", &format!("CREATE DATABASE {name}"));
        }
    }

    /// `postgres://` URL of a database on this server.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{ROLE}@127.0.0.1:{}/{db}", self.port)
    }

    /// Makes every commit wait for a standby (`synchronous_standby_names = '*'`) and waits until
    /// one streams synchronously.
    pub fn require_sync_standby(&self) {
        self.psql(
            "postgres",
            "ALTER SYSTEM SET synchronous_standby_names = '*'",
        );
        self.psql("postgres", "SELECT pg_reload_conf()");
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'",
        ) != "1"
        {
            assert!(Instant::now() < deadline, "no synchronous standby");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `pg_ctl promote`, then waits until the server accepts writes.
    pub fn promote(&self) {
        let mut cmd = pg_command("pg_ctl");
        cmd.args(["promote", "-w", "-D"]).arg(self.data());
        run(cmd, "pg_ctl promote");
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.psql("postgres", "SELECT pg_is_in_recovery()") != "f" {
            assert!(Instant::now() < deadline, "standby not promoted");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The postmaster's process id (its backends are its children).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGKILL to the postmaster (its backends notice and exit).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.kill();
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        // Backends may linger for a moment after the postmaster's death.
        std::thread::sleep(Duration::from_millis(50));
        if self.remove_root {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// The server the whole suite shares when `TANDEM_TEST_DATABASE=postgres`: started on first
/// use, one database per chat-server data directory (a restart on the same directory finds the
/// same database), ended by its watchdog when the test process exits.
pub fn shared() -> &'static PgServer {
    static SHARED: std::sync::OnceLock<PgServer> = std::sync::OnceLock::new();
    SHARED.get_or_init(PgServer::primary)
}

/// The database name of a data directory.
pub fn database_for(data_dir: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data_dir.hash(&mut h);
    format!("t_{:016x}", h.finish())
}

/// Whether the suite runs on PostgreSQL (`TANDEM_TEST_DATABASE=postgres`).
pub fn suite_uses_postgres() -> bool {
    std::env::var("TANDEM_TEST_DATABASE").is_ok_and(|v| v == "postgres")
}

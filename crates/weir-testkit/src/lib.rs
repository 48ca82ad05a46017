//! Test fixtures shared by weir's crates.
//!
//! [`NatsServer`] starts a real `nats-server` with JetStream on a free
//! loopback port and a temporary store directory, and kills it on drop, so
//! a failing test leaves no server behind. The binary is the pinned one that
//! `scripts/install-nats-server` puts in `.tools/nats/` (or `$WEIR_NATS_SERVER`);
//! a missing binary fails the test with the command to run, never skips it.
//!
//! [`PgServer`] is a real PostgreSQL cluster in a temporary directory on a
//! free loopback port (see [`postgres`]), installed from the system's
//! packages by `scripts/install-postgres` when missing.
//!
//! [`http::MockHttp`] is a scripted HTTP server on a free loopback port,
//! for components that call remote services.

pub mod http;
pub mod postgres;

pub use postgres::PgServer;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running nats-server with JetStream; killed on drop.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
    log: PathBuf,
}

/// The nats-server binary: `$WEIR_NATS_SERVER`, else the project's pinned
/// install (installed on first use by `scripts/install-nats-server`).
///
/// # Panics
/// When neither exists and the install fails.
pub fn nats_server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("WEIR_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let root = workspace_root();
    let bin = root.join(".tools/nats/bin/nats-server");
    if bin.exists() {
        return bin;
    }
    let out = Command::new(root.join("scripts/install-nats-server"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/install-nats-server");
    assert!(
        out.status.success() && bin.exists(),
        "nats-server is not installed and scripts/install-nats-server failed"
    );
    bin
}

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("workspace root")
        .to_path_buf()
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free port")
}

impl NatsServer {
    /// Starts a server on a free port; returns once it accepts connections.
    ///
    /// # Panics
    /// When the server does not come up within 20 s (its log is printed).
    pub fn start() -> NatsServer {
        let store = tempfile::tempdir().expect("temp store dir");
        let log = store.path().join("nats-server.log");
        let mut s = NatsServer {
            child: None,
            port: free_port(),
            store,
            log,
        };
        s.spawn();
        s
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The JetStream store directory (kept across [`NatsServer::restart`]).
    pub fn store_dir(&self) -> &Path {
        self.store.path()
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and store.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("server log");
        let ready_before = self.log_text().matches("Server is ready").count();
        let child = Command::new(nats_server_binary())
            .args(["--jetstream", "--addr", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .arg("--store_dir")
            .arg(self.store.path().join("js"))
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                && self.log_text().matches("Server is ready").count() > ready_before
            {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("nats-server exited ({status}):\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not start within 20 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

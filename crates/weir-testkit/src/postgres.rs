//! A real PostgreSQL server for tests: [`PgServer`].
//!
//! Each server is its own cluster: `initdb` in a temporary directory (a
//! superuser [`PgServer::USER`] whose password is [`PgServer::PASSWORD`],
//! SCRAM authentication over TCP, so a wrong password is refused as in
//! production), then `postgres` listening on a free loopback port, its
//! unix socket in the same directory. Dropping the server kills it and
//! removes the directory.
//!
//! The binaries come from `$WEIR_PG_BIN` (a directory holding `initdb`,
//! `postgres` and `psql`), else from the newest `/usr/lib/postgresql/*/bin`,
//! else `scripts/install-postgres` installs the system's package. A test
//! that finds none fails with the command to run; it never skips.
//!
//! `initdb` and `postgres` refuse to run as root. As root (CI), the
//! fixture runs them as the `postgres` system user the package creates,
//! with the directory handed to that user.
//!
//! The server runs with `fsync=off`: the tests kill and restart the
//! server process, never the machine, so what was committed is in the
//! operating system's cache either way, and a test does not wait for the
//! disk.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, workspace_root};

/// A running PostgreSQL server in a temporary directory; killed and
/// removed on drop.
pub struct PgServer {
    child: Option<Child>,
    port: u16,
    bin: PathBuf,
    /// The system user to run as (uid, gid) when the tests run as root.
    run_as: Option<(u32, u32)>,
    dir: tempfile::TempDir,
}

/// The directory of PostgreSQL's server binaries: `$WEIR_PG_BIN`, else the
/// newest `/usr/lib/postgresql/*/bin`, else what `scripts/install-postgres`
/// installs and prints.
///
/// # Panics
/// When none is found and the install fails.
pub fn pg_bin_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("WEIR_PG_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.join("initdb").exists(),
            "WEIR_PG_BIN={} has no initdb",
            p.display()
        );
        return p;
    }
    if let Some(p) = installed() {
        return p;
    }
    let out = Command::new(workspace_root().join("scripts/install-postgres"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/install-postgres");
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && Path::new(&printed).join("initdb").exists(),
        "PostgreSQL is not installed and scripts/install-postgres failed: install it with \
         `scripts/install-postgres` (as root) or point WEIR_PG_BIN at its bin directory"
    );
    PathBuf::from(printed)
}

/// The newest `/usr/lib/postgresql/<version>/bin` that has `initdb`.
fn installed() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

/// The `postgres` system user's (uid, gid), from `/etc/passwd`.
fn postgres_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == "postgres")
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// Whether this process runs as root (the owner of `/proc/self` is the
/// effective user).
fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

impl PgServer {
    /// The superuser the cluster is created with.
    pub const USER: &str = "weir";
    /// Its password (SCRAM over TCP).
    pub const PASSWORD: &str = "weir-test-password";
    /// The database the URL names (initdb's own).
    pub const DATABASE: &str = "postgres";

    /// Creates a cluster and starts it on a free port; returns once it
    /// accepts connections.
    ///
    /// # Panics
    /// When there is no PostgreSQL, or `initdb` fails, or the server does
    /// not come up within 30 s (its log is printed).
    pub fn start() -> PgServer {
        let mut s = Self::init();
        s.spawn();
        s
    }

    /// Like [`start`](Self::start), with TLS required: a certificate for
    /// `127.0.0.1` and `localhost` signed by a throwaway CA
    /// ([`ca_file`](Self::ca_file)), made with the `openssl` command (which
    /// the PostgreSQL package depends on), and plain-text connections
    /// over TCP refused (`hostnossl ... reject`).
    ///
    /// # Panics
    /// As [`start`](Self::start), and when `openssl` fails.
    pub fn start_tls() -> PgServer {
        let mut s = Self::init();
        let data = s.data_dir();
        let dir = s.dir.path().to_path_buf();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .stdin(Stdio::null())
                .output()
                .expect("run openssl (the PostgreSQL package depends on it)");
            assert!(
                out.status.success(),
                "openssl {args:?} failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"],
                &ec[..],
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=weir test CA",
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req"],
                &ec[..],
                &[
                    "-keyout",
                    "server.key",
                    "-out",
                    "server.csr",
                    "-subj",
                    "/CN=localhost",
                ],
            ]
            .concat(),
        );
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .expect("extensions file");
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ]);
        for f in ["server.crt", "server.key"] {
            let to = data.join(f);
            std::fs::copy(dir.join(f), &to).expect("copy the certificate into the cluster");
            std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("key permissions");
            if let Some((uid, gid)) = s.run_as {
                std::os::unix::fs::chown(&to, Some(uid), Some(gid)).expect("chown to postgres");
            }
        }
        let append = |name: &str, text: &str| {
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(data.join(name))
                .expect("cluster configuration");
            f.write_all(text.as_bytes()).expect("write configuration");
        };
        append(
            "postgresql.conf",
            "\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
        );
        // pg_hba is read top down: plain text over TCP is refused first.
        let hba = std::fs::read_to_string(data.join("pg_hba.conf")).expect("pg_hba.conf");
        std::fs::write(
            data.join("pg_hba.conf"),
            format!("hostnossl all all 0.0.0.0/0 reject\nhostnossl all all ::/0 reject\n{hba}"),
        )
        .expect("write pg_hba.conf");
        s.spawn();
        s
    }

    /// The CA that signed the certificate of a [`start_tls`](Self::start_tls)
    /// server (PEM).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A new cluster, not started.
    fn init() -> PgServer {
        let bin = pg_bin_dir();
        let run_as = if is_root() {
            Some(postgres_user().expect(
                "running as root, but there is no `postgres` system user to run PostgreSQL as \
                 (scripts/install-postgres installs the package that creates it)",
            ))
        } else {
            None
        };
        let dir = tempfile::tempdir().expect("temp dir for the cluster");
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, Self::PASSWORD).expect("password file");
        if let Some((uid, gid)) = run_as {
            for p in [dir.path(), &pwfile] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).expect("chown to postgres");
            }
        }
        let s = PgServer {
            child: None,
            port: free_port(),
            bin,
            run_as,
            dir,
        };
        let out = s
            .command("initdb")
            .arg("-D")
            .arg(s.data_dir())
            .args(["-U", Self::USER, "-E", "UTF8", "--locale=C"])
            .args(["--auth=scram-sha-256", "--no-sync", "--no-instructions"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        s
    }

    /// `postgresql://weir:PASSWORD@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        self.url_with_password(Self::PASSWORD)
    }

    /// The URL with another password (for the wrong-password test).
    pub fn url_with_password(&self, password: &str) -> String {
        format!(
            "postgresql://{}:{password}@127.0.0.1:{}/{}",
            Self::USER,
            self.port,
            Self::DATABASE
        )
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory of the PostgreSQL binaries used (`psql` for a bench).
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// The cluster's data directory (kept across [`PgServer::restart`]).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs SQL through `psql` (unaligned, tuples only: one row a line,
    /// fields separated by `|`) and returns its output.
    ///
    /// # Panics
    /// When psql fails (its error is printed).
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.url())
            .args(["-c", sql])
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql failed on `{sql}`:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("psql output is UTF-8")
    }

    /// Stops the server the way a crash would (SIGQUIT: immediate shutdown,
    /// connections cut, no checkpoint; the next start recovers from the
    /// log) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-QUIT", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// A command for one of the binaries, as the `postgres` user when root.
    fn command(&self, name: &str) -> Command {
        let mut c = Command::new(self.bin.join(name));
        if let Some((uid, gid)) = self.run_as {
            // std drops the supplementary groups when root sets a uid.
            c.uid(uid).gid(gid);
        }
        c.stdin(Stdio::null());
        c
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("server log");
        const READY: &str = "database system is ready to accept connections";
        let ready_before = self.log_text().matches(READY).count();
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn postgres");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.log_text().matches(READY).count() > ready_before {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("postgres exited ({status}):\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not start within 30 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.log_path()) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_answers_refuses_a_wrong_password_and_restarts_with_its_data() {
        let mut pg = PgServer::start();
        pg.psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2)");
        assert_eq!(pg.psql("SELECT count(*) FROM t").trim(), "2");
        let wrong = Command::new(pg.bin_dir().join("psql"))
            .args(["-X", "-At", "-d"])
            .arg(pg.url_with_password("wrong"))
            .args(["-c", "SELECT 1"])
            .output()
            .unwrap();
        assert!(!wrong.status.success());
        assert!(
            String::from_utf8_lossy(&wrong.stderr).contains("password authentication failed"),
            "{}",
            String::from_utf8_lossy(&wrong.stderr)
        );
        let port = pg.port();
        pg.restart();
        assert_eq!(pg.port(), port);
        assert_eq!(pg.psql("SELECT sum(id) FROM t").trim(), "3");
        let dir = pg.dir.path().to_path_buf();
        drop(pg);
        assert!(!dir.exists(), "the cluster's directory is removed");
    }
}

//! The Postgres rig: fresh databases on the machine's shared Postgres, and throwaway clusters
//! of a test's own for tests that stop the server or configure it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use super::process::free_port;

/// A fresh database on the machine's Postgres (`COMPUTE_TEST_POSTGRES_URL`, default
/// `postgres://postgres@127.0.0.1:5432/postgres`), dropped with the value.
pub struct PostgresDatabase {
    admin_url: String,
    /// Its name.
    pub name: String,
    /// Its URL.
    pub url: String,
}

fn postgres_admin_url() -> String {
    std::env::var("COMPUTE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn psql(url: &str, sql: &str) -> Result<String> {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql])
        .output()
        .context("run psql")?;
    if !out.status.success() {
        bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Creates a fresh database for one test.
pub fn postgres_database(prefix: &str) -> PostgresDatabase {
    let admin_url = postgres_admin_url();
    let name = format!("{prefix}_{}_{}", std::process::id(), free_port());
    psql(&admin_url, &format!("CREATE DATABASE \"{name}\""))
        .unwrap_or_else(|e| panic!("cannot create the test database {name}: {e}"));
    let base = admin_url
        .rsplit_once('/')
        .map(|(b, _)| b.to_string())
        .unwrap_or(admin_url.clone());
    let url = format!("{base}/{name}");
    PostgresDatabase {
        admin_url,
        name,
        url,
    }
}

impl Drop for PostgresDatabase {
    fn drop(&mut self) {
        let _ = psql(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name),
        );
    }
}

/// A throwaway Postgres cluster of one test's own (the machine's shared one must not be
/// stopped): run as user postgres in a directory it owns, on its own port; stopped on drop.
pub struct OwnPostgres {
    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub url: String,
    port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// The server's settings after its port and socket directory (`pg_ctl -o`).
    options: String,
}

/// The newest Debian Postgres' binaries (`initdb`, `pg_ctl`).
fn postgres_bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("Postgres binaries under /usr/lib/postgresql")
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("pg_ctl").exists())
        .collect();
    dirs.sort();
    dirs.pop().expect("pg_ctl under /usr/lib/postgresql/*/bin")
}

/// Runs a Postgres binary as user postgres; fails with its output.
fn as_postgres(bin: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin)
        .args(args)
        .output()
        .context("runuser")?;
    if !out.status.success() {
        bail!(
            "{} {args:?} failed: {}{}",
            bin.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// initdb + start of a throwaway cluster.
pub fn own_postgres() -> OwnPostgres {
    let pg = OwnPostgres::unstarted();
    pg.initdb();
    pg.start();
    pg
}

impl OwnPostgres {
    /// A cluster not yet initialised, on a free port, listening on 127.0.0.1: files the server
    /// is to read go in [`dir`](Self::dir) before [`initdb`](Self::initdb), settings in
    /// [`set_options`](Self::set_options) before [`start`](Self::start).
    pub fn unstarted() -> Self {
        let port = free_port();
        OwnPostgres {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            port,
            dir: tempfile::tempdir().unwrap(),
            bin: postgres_bin_dir(),
            options: "-c listen_addresses=127.0.0.1 -c fsync=off".into(),
        }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its directory (the socket, `pg.log`, and `data`, the cluster).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The cluster's data directory (`pg_hba.conf`, ...).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pg.log")).unwrap_or_default()
    }

    /// Replaces the server's settings (`-c name=value ...`, port and socket directory aside).
    pub fn set_options(&mut self, options: String) {
        self.options = options;
    }

    /// Hands the directory (and what is in it) to user postgres and creates the cluster.
    pub fn initdb(&self) {
        let chown = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(self.dir.path())
            .status()
            .expect("chown");
        assert!(chown.success());
        let data = self.data_dir();
        as_postgres(
            &self.bin.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
            ],
        )
        .expect("initdb");
    }

    /// Starts it (again) and waits until it accepts connections.
    pub fn start(&self) {
        let data = self.data_dir();
        let opts = format!(
            "-p {} -k {} {}",
            self.port,
            self.dir.path().display(),
            self.options
        );
        as_postgres(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-w",
                "-l",
                self.dir.path().join("pg.log").to_str().unwrap(),
                "-o",
                &opts,
                "start",
            ],
        )
        .expect("pg_ctl start");
    }

    /// Stops it at once (`pg_ctl stop -m immediate`).
    pub fn stop_immediately(&self) {
        self.pg_ctl_stop().expect("pg_ctl stop");
    }

    fn pg_ctl_stop(&self) -> Result<()> {
        let data = self.data_dir();
        as_postgres(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-w",
                "-m",
                "immediate",
                "stop",
            ],
        )
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = self.pg_ctl_stop();
    }
}

//! A private PostgreSQL cluster (initdb in a temp folder, free port) that a test may crash and
//! restart without touching the machine's shared server.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::free_port;

pub struct PrivatePostgres {
    pub port: u16,
    data: PathBuf,
    bindir: PathBuf,
    /// Server options (`pg_ctl -o`), the same at every start.
    options: String,
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false)
}

/// Runs a PostgreSQL tool, as the `postgres` user when we are root (PostgreSQL refuses root).
fn run_pg(program: &std::path::Path, args: &[&str]) -> Output {
    let out = if is_root() {
        Command::new("runuser").args(["-u", "postgres", "--"]).arg(program).args(args).output()
    } else {
        Command::new(program).args(args).output()
    };
    out.unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
}

impl PrivatePostgres {
    /// initdb + start with `max_connections`; panics with the server log when it cannot.
    pub fn start(max_connections: u32) -> Self {
        let initdb = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin/initdb"))
            .filter(|p| p.exists())
            .max()
            .unwrap_or_else(|| panic!("no initdb under /usr/lib/postgresql: install postgresql (scripts/test does)"));
        let bindir = initdb.parent().unwrap().to_path_buf();
        let port = free_port();
        let data = std::env::temp_dir().join(format!("pgtrickle-relay-pg-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&data).unwrap();
        if is_root() {
            Command::new("chown").args(["postgres", data.to_str().unwrap()]).status().unwrap();
        }
        let out = run_pg(&initdb, &["-D", data.to_str().unwrap(), "-U", "postgres", "-A", "trust"]);
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories=/tmp -c max_connections={max_connections} -c shared_buffers=64MB -c fsync=off"
        );
        let pg = Self { port, data, bindir, options };
        pg.pg_ctl(&["start", "-w", "-t", "60", "-o", &pg.options]);
        pg
    }

    fn pg_ctl(&self, args: &[&str]) {
        let log = self.data.join("server.log");
        let mut full = vec!["-D", self.data.to_str().unwrap(), "-l", log.to_str().unwrap()];
        full.extend_from_slice(args);
        let out = run_pg(&self.bindir.join("pg_ctl"), &full);
        assert!(
            out.status.success(),
            "pg_ctl {} failed: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// What the server logged so far.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.data.join("server.log")).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Crash-restart: `pg_ctl restart -m immediate` (every session dies at once, like a crash;
    /// crash recovery runs on start). Returns how long the server was unreachable.
    pub fn crash_restart(&self, down_for: Duration) -> Duration {
        let t = Instant::now();
        self.pg_ctl(&["stop", "-m", "immediate"]);
        std::thread::sleep(down_for);
        self.pg_ctl(&["start", "-w", "-t", "60", "-o", &self.options]);
        t.elapsed()
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let log = self.data.join("server.log");
        let _ = run_pg(
            &self.bindir.join("pg_ctl"),
            &["-D", self.data.to_str().unwrap(), "-l", log.to_str().unwrap(), "stop", "-m", "immediate"],
        );
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

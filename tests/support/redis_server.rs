//! A private `redis-server` per test (free port; nothing persisted, or an append-only file
//! written on every command for a server that is killed and restarted).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

pub struct RedisServer {
    child: Child,
    pub port: u16,
    /// The CA certificate (PEM path) of a TLS-only server.
    pub tls_ca: Option<String>,
    /// How it was started, to start it again.
    args: Vec<String>,
    /// The data directory of a durable server (removed on drop).
    dir: Option<std::path::PathBuf>,
}

/// A private CA and a server certificate for 127.0.0.1 (openssl), in a fresh directory.
pub struct TestCerts {
    pub dir: std::path::PathBuf,
}

impl TestCerts {
    pub fn new() -> Self {
        let dir = crate::temp_path("tls");
        std::fs::create_dir_all(&dir).unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("openssl").args(args).current_dir(&dir).output().expect("openssl not found");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=relay-test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.crt",
        ]);
        Self { dir }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_owned()
    }
}

impl Default for TestCerts {
    fn default() -> Self {
        Self::new()
    }
}

impl RedisServer {
    /// A redis-server that only speaks TLS, with a certificate from `certs`.
    pub fn start_tls(certs: &TestCerts) -> Self {
        let port = free_port();
        let port_s = port.to_string();
        let mut server = Self::spawn(
            port,
            &[
                "--port",
                "0",
                "--tls-port",
                &port_s,
                "--tls-cert-file",
                &certs.path("server.crt"),
                "--tls-key-file",
                &certs.path("server.key"),
                "--tls-ca-cert-file",
                &certs.path("ca.crt"),
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
        );
        server.tls_ca = Some(certs.path("ca.crt"));
        server
    }

    pub fn start() -> Self {
        let port = free_port();
        Self::spawn(port, &["--port", &port.to_string(), "--save", "", "--appendonly", "no"])
    }

    /// A server that keeps every acknowledged write across a SIGKILL: an append-only file
    /// fsynced on every command, in a private directory.
    pub fn start_durable() -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("pgtrickle-relay-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.to_str().unwrap();
        let mut server = Self::spawn(
            port,
            &["--port", &port.to_string(), "--dir", d, "--save", "", "--appendonly", "yes", "--appendfsync", "always"],
        );
        server.dir = Some(dir);
        server
    }

    fn spawn(port: u16, args: &[&str]) -> Self {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let child = Self::run(port, &args);
        Self { child, port, tls_ca: None, args, dir: None }
    }

    fn run(port: u16, args: &[String]) -> Child {
        let bin = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("redis-server not found: install it (scripts/test does: apt-get install redis-server)");
        let child = Command::new(bin)
            .args(args)
            .args(["--bind", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !answers_ping(port) {
            assert!(Instant::now() < deadline, "redis-server did not start (or did not finish loading its data)");
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    /// SIGKILL: gone at once, connections reset, nothing flushed on the way out.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port (and, when durable, its append-only file).
    pub fn restart(&mut self) {
        self.kill();
        self.child = Self::run(self.port, &self.args);
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls_ca.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn client(&self) -> redis::Client {
        match &self.tls_ca {
            None => redis::Client::open(self.url()).unwrap(),
            Some(ca) => {
                let _ = rustls::crypto::ring::default_provider().install_default();
                redis::Client::build_with_tls(
                    self.url(),
                    redis::TlsCertificates { client_tls: None, root_cert: Some(std::fs::read(ca).unwrap()) },
                )
                .unwrap()
            }
        }
    }

    /// Every entry of a stream as (id, field map), in stream order.
    pub async fn entries(&self, key: &str) -> Vec<(String, std::collections::HashMap<String, String>)> {
        // A long stream is a large reply: more than the client's default 500 ms on a busy machine.
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(60)));
        let mut conn = self.client().get_multiplexed_async_connection_with_config(&config).await.unwrap();
        let raw: Vec<(String, Vec<(String, String)>)> =
            redis::cmd("XRANGE").arg(key).arg("-").arg("+").query_async(&mut conn).await.unwrap();
        raw.into_iter().map(|(id, fields)| (id, fields.into_iter().collect())).collect()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Whether the server on `port` takes commands: it accepts connections while it still loads an
/// append-only file, answering `-LOADING` until it is done. A TLS-only server never answers a
/// plain `PING`: for it, accepting connections is enough.
fn answers_ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
    if conn.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 16];
    match conn.read(&mut reply) {
        Ok(n) if n > 0 => !reply[..n].starts_with(b"-LOADING"),
        // No plain-text answer: a TLS port.
        _ => true,
    }
}

//! A private `nats-server` with JetStream per test (free port, own storage), so tests can stop
//! and restart the broker without touching the machine's shared one.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde_json::Value;

use crate::free_port;

pub fn nats_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("NATS_SERVER_BIN") {
        return PathBuf::from(p);
    }
    for p in ["/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"] {
        if std::path::Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("nats-server not found: install it (scripts/test does: apt-get install nats-server) or set NATS_SERVER_BIN");
}

pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    pub store: PathBuf,
    /// Extra server flags (e.g. `--user`/`--pass`).
    args: Vec<String>,
}

impl NatsServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(args: &[&str]) -> Self {
        let store = std::env::temp_dir().join(format!("pgtrickle-relay-nats-{}-{}", std::process::id(), free_port()));
        let args = args.iter().map(|a| a.to_string()).collect();
        let mut s = Self { child: None, port: free_port(), store, args };
        s.restart();
        s
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and storage.
    pub fn restart(&mut self) {
        let child = Command::new(nats_server_bin())
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(&self.store)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start on port {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn jetstream(&self) -> jetstream::Context {
        let client = async_nats::connect(self.url()).await.unwrap();
        jetstream::new(client)
    }

    pub async fn create_stream(&self, name: &str, subjects: &[&str]) {
        self.jetstream()
            .await
            .create_stream(jetstream::stream::Config {
                name: name.to_owned(),
                subjects: subjects.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    /// Every message stored in a stream, in stream order: (subject, headers, JSON body).
    pub async fn stream_messages(&self, stream: &str) -> Vec<StoredMessage> {
        let js = self.jetstream().await;
        let Ok(s) = js.get_stream(stream).await else { return Vec::new() };
        let info = s.get_info().await.unwrap();
        let mut out = Vec::new();
        for seq in info.state.first_sequence..=info.state.last_sequence {
            if seq == 0 {
                continue;
            }
            if let Ok(m) = s.get_raw_message(seq).await {
                let header = |name: &str| m.headers.get(name).map(|v| v.as_str().to_owned());
                out.push(StoredMessage {
                    subject: m.subject.to_string(),
                    msg_id: m.headers.get(async_nats::header::NATS_MESSAGE_ID).map(|v| v.as_str().to_owned()),
                    op_header: header("Pgtrickle-Op"),
                    full_refresh_header: header("Pgtrickle-Full-Refresh"),
                    traceparent: header("traceparent"),
                    body: serde_json::from_slice(&m.payload).unwrap(),
                });
            }
        }
        out
    }
}

impl NatsServer {
    /// The `Nats-Msg-Id` of every message in a stream, read in batches (fast for large streams).
    pub async fn stream_msg_ids(&self, stream: &str) -> Vec<String> {
        use futures::StreamExt;
        let js = self.jetstream().await;
        let Ok(mut s) = js.get_stream(stream).await else { return Vec::new() };
        let total = s.info().await.unwrap().state.messages as usize;
        let consumer = s
            .create_consumer(jetstream::consumer::pull::Config {
                ack_policy: jetstream::consumer::AckPolicy::None,
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut msgs = consumer.messages().await.unwrap();
        let mut out = Vec::with_capacity(total);
        while out.len() < total {
            let m = tokio::time::timeout(Duration::from_secs(30), msgs.next())
                .await
                .unwrap_or_else(|_| panic!("stream {stream}: read {} of {total} messages, then nothing", out.len()))
                .unwrap()
                .unwrap();
            let id = m
                .headers
                .as_ref()
                .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                .map(|v| v.as_str().to_owned());
            out.push(id.unwrap_or_default());
        }
        out
    }

    /// Messages stored in a stream (from the stream's state, without reading them).
    pub async fn stream_count(&self, stream: &str) -> u64 {
        let js = self.jetstream().await;
        match js.get_stream(stream).await {
            Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub subject: String,
    pub msg_id: Option<String>,
    pub op_header: Option<String>,
    pub full_refresh_header: Option<String>,
    pub traceparent: Option<String>,
    pub body: Value,
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

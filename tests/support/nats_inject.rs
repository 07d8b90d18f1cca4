//! A NATS proxy that can make one JetStream fetch end in an error status after some messages.
//!
//! Client bytes go to the server unchanged; server frames are parsed and passed on whole. Once
//! [`NatsInject::arm`]ed, right after the first message a consumer delivers (its reply subject is
//! a `$JS.ACK.` one) the proxy adds a `409` status to the same subscription, as a server does for
//! a fetch that cannot go on: the client's fetch yields that message, then an error. It injects
//! once per `arm`.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// The header block of the injected status message.
const STATUS: &str = "NATS/1.0 409 Injected By Test\r\n\r\n";

#[derive(Default)]
struct Shared {
    armed: AtomicBool,
    injected: AtomicUsize,
}

pub struct NatsInject {
    pub port: u16,
    shared: Arc<Shared>,
    /// Owns the connection tasks: aborting it ends them all.
    accept: JoinHandle<()>,
}

impl NatsInject {
    /// Listens on a free port and forwards every connection to 127.0.0.1:`upstream`.
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let accept = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                while connections.try_join_next().is_some() {}
                connections.spawn(proxy(client, upstream, s.clone()));
            }
        });
        Self { port, shared, accept }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Injects a status after the next message a consumer delivers.
    pub fn arm(&self) {
        self.shared.armed.store(true, Ordering::SeqCst);
    }

    /// Status messages injected so far.
    pub fn injections(&self) -> usize {
        self.shared.injected.load(Ordering::SeqCst)
    }
}

impl Drop for NatsInject {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// One client connection: ends when either side closes.
async fn proxy(client: TcpStream, upstream: u16, shared: Arc<Shared>) -> io::Result<()> {
    let server = TcpStream::connect(("127.0.0.1", upstream)).await?;
    let (mut from_client, to_client) = client.into_split();
    let (from_server, mut to_server) = server.into_split();
    tokio::select! {
        r = tokio::io::copy(&mut from_client, &mut to_server) => r.map(drop),
        r = server_to_client(from_server, to_client, &shared) => r,
    }
}

/// Passes on complete server frames, adding the status after a delivery while armed.
async fn server_to_client(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, shared: &Shared) -> io::Result<()> {
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        if from.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        let mut out = Vec::with_capacity(buf.len());
        let mut done = 0;
        while let Some(frame) = Frame::parse(&buf[done..]) {
            out.extend_from_slice(&buf[done..done + frame.len]);
            if let Some((subject, sid)) = frame.delivery {
                if shared.armed.swap(false, Ordering::SeqCst) {
                    let n = STATUS.len();
                    out.extend_from_slice(format!("HMSG {subject} {sid} {n} {n}\r\n{STATUS}\r\n").as_bytes());
                    shared.injected.fetch_add(1, Ordering::SeqCst);
                }
            }
            done += frame.len;
        }
        buf.drain(..done);
        to.write_all(&out).await?;
    }
}

/// A complete server frame at the start of a buffer.
struct Frame {
    len: usize,
    /// Subject and sid of a message a JetStream consumer delivered.
    delivery: Option<(String, String)>,
}

impl Frame {
    /// `None` while the frame is incomplete.
    fn parse(buf: &[u8]) -> Option<Self> {
        let eol = buf.windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(&buf[..eol]).expect("a NATS protocol line is UTF-8");
        let words: Vec<&str> = line.split_ascii_whitespace().collect();
        // MSG <subject> <sid> [reply] <#bytes>, HMSG <subject> <sid> [reply] <#hdr bytes> <#bytes>
        let (subject, sid, reply, size) = match words.as_slice() {
            ["MSG", subject, sid, size] | ["HMSG", subject, sid, _, size] => (subject, sid, None, size),
            ["MSG", subject, sid, reply, size] | ["HMSG", subject, sid, reply, _, size] => {
                (subject, sid, Some(reply), size)
            }
            // INFO, PING, PONG, +OK, -ERR: one line.
            _ => return Some(Self { len: eol + 2, delivery: None }),
        };
        let size: usize = size.parse().unwrap_or_else(|_| panic!("bad NATS message line: {line}"));
        let len = eol + 2 + size + 2;
        if buf.len() < len {
            return None;
        }
        let delivery = reply.filter(|r| r.starts_with("$JS.ACK.")).map(|_| (subject.to_string(), sid.to_string()));
        Some(Self { len, delivery })
    }
}

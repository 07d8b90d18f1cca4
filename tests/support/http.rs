//! A real HTTP server for webhook tests (warp/hyper, keep-alive on): records every request
//! and answers from a script of status codes, then 200.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use warp::http::{HeaderMap, StatusCode};
use warp::Filter;

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status this request was answered with.
    pub status: u16,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// Answers to give before the server starts answering 200: (status, Retry-After seconds).
pub type Script = Arc<Mutex<VecDeque<(u16, Option<u64>)>>>;

pub struct WebhookServer {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    pub script: Script,
    /// Distinct client connections seen (keep-alive keeps this small).
    pub connections: Arc<Mutex<std::collections::BTreeSet<SocketAddr>>>,
    /// How long each request waits before it is answered (a slow receiver), in milliseconds.
    pub delay_ms: Arc<std::sync::atomic::AtomicU64>,
    /// While set, every request is answered 503 with this `Retry-After` (seconds).
    pub unavailable: Arc<Mutex<Option<u64>>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl WebhookServer {
    pub async fn start() -> Self {
        let mut server = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            requests: Arc::default(),
            script: Arc::default(),
            connections: Arc::default(),
            delay_ms: Arc::default(),
            unavailable: Arc::default(),
            shutdown: None,
        };
        server.serve().await;
        server
    }

    /// Serves on `self.addr` (port 0 the first time: any free one), recording into the shared
    /// state, so that a stopped server starts again where it was.
    async fn serve(&mut self) {
        let (r, s, c, d, u) = (
            self.requests.clone(),
            self.script.clone(),
            self.connections.clone(),
            self.delay_ms.clone(),
            self.unavailable.clone(),
        );
        let route = warp::any()
            .and(warp::method())
            .and(warp::header::headers_cloned())
            .and(warp::addr::remote())
            .and(warp::body::bytes())
            .and_then(move |method, headers, remote, body| {
                let delay = d.load(std::sync::atomic::Ordering::SeqCst);
                async move {
                    if delay > 0 {
                        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                    }
                    Ok::<_, std::convert::Infallible>((method, headers, remote, body))
                }
            })
            .untuple_one()
            .map(
                move |method: warp::http::Method,
                      headers: HeaderMap,
                      remote: Option<SocketAddr>,
                      body: bytes::Bytes| {
                    if let Some(a) = remote {
                        c.lock().unwrap().insert(a);
                    }
                    let unavailable = *u.lock().unwrap();
                    let (status, retry_after) = match unavailable {
                        Some(secs) => (503, Some(secs)),
                        None => s.lock().unwrap().pop_front().unwrap_or((200, None)),
                    };
                    r.lock().unwrap().push(Recorded {
                        method: method.to_string(),
                        headers: headers
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                            .collect(),
                        body: body.to_vec(),
                        status,
                    });
                    let mut reply = warp::http::Response::builder().status(StatusCode::from_u16(status).unwrap());
                    if let Some(secs) = retry_after {
                        reply = reply.header("Retry-After", secs.to_string());
                    }
                    reply.body(format!("status {status}")).unwrap()
                },
            );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            match warp::serve(route.clone()).try_bind_with_graceful_shutdown(self.addr, async {
                let _ = rx.await;
            }) {
                Ok((addr, server)) => {
                    tokio::spawn(server);
                    self.addr = addr;
                    self.shutdown = Some(tx);
                    return;
                }
                // The port of a server just stopped may take a moment to be free again.
                Err(e) => {
                    assert!(std::time::Instant::now() < deadline, "cannot listen on {} again: {e}", self.addr);
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// An outage as a receiver has them: `unavailable` answering 503 with `Retry-After: 1`,
    /// then `dropping` where every connection is accepted and closed without an answer; then
    /// it answers again, on the same port.
    pub async fn outage(&mut self, unavailable: std::time::Duration, dropping: std::time::Duration) {
        *self.unavailable.lock().unwrap() = Some(1);
        tokio::time::sleep(unavailable).await;
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) => {
                    assert!(std::time::Instant::now() < deadline, "cannot take over {}: {e}", self.addr);
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        };
        let until = tokio::time::Instant::now() + dropping;
        while let Ok(Ok((conn, _))) = tokio::time::timeout_at(until, listener.accept()).await {
            let _ = conn.set_zero_linger();
            drop(conn);
        }
        drop(listener);
        *self.unavailable.lock().unwrap() = None;
        self.serve().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Requests answered with 2xx.
    pub fn accepted(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().iter().filter(|r| (200..300).contains(&r.status)).cloned().collect()
    }

    pub fn all(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub fn respond_first(&self, answers: &[(u16, Option<u64>)]) {
        self.script.lock().unwrap().extend(answers.iter().copied());
    }
}

impl Drop for WebhookServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

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
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl WebhookServer {
    pub async fn start() -> Self {
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let script: Script = Arc::default();
        let connections: Arc<Mutex<std::collections::BTreeSet<SocketAddr>>> = Arc::default();
        let delay_ms: Arc<std::sync::atomic::AtomicU64> = Arc::default();
        let (r, s, c, d) = (requests.clone(), script.clone(), connections.clone(), delay_ms.clone());
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
                    let (status, retry_after) = s.lock().unwrap().pop_front().unwrap_or((200, None));
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
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (addr, server) = warp::serve(route).bind_with_graceful_shutdown(([127, 0, 0, 1], 0), async {
            let _ = rx.await;
        });
        tokio::spawn(server);
        Self { addr, requests, script, connections, delay_ms, shutdown: Some(tx) }
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

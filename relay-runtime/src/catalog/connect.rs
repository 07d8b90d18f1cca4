//! PostgreSQL connections: plain ones whose driver task is spawned, ones whose asynchronous
//! messages (LISTEN/NOTIFY) are forwarded to a channel, and connection-string redaction.

use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::redact::redact_url;

/// A notification received on a LISTEN connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub channel: String,
    pub payload: String,
}

/// A client plus a token that fires when its connection ends (error or close).
pub struct DbConnection {
    pub client: Client,
    pub closed: CancellationToken,
}

/// Opens a connection. `notifications`, when given, receives every NOTIFY on it.
/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{}", error_text(.0))]
    Pg(#[from] tokio_postgres::Error),
    /// Bad TLS parameters (`sslmode`, certificate files): fixing the URL or files is needed.
    #[error("TLS: {0}")]
    Tls(String),
    /// Not tried: the database refused the instance's last attempt, and the instance waits
    /// before it tries again (one attempt per interval for the whole instance).
    #[error("waiting {}ms before connecting again (the last attempt failed: {last})", .wait.as_millis())]
    CoolingDown { wait: Duration, last: String },
}

pub async fn connect(
    url: &str,
    app_name: &str,
    notifications: Option<mpsc::UnboundedSender<Notification>>,
) -> Result<DbConnection, ConnectError> {
    let (plain, tls) = super::tls::split(url).map_err(ConnectError::Tls)?;
    let mut cfg: tokio_postgres::Config = plain.parse()?;
    cfg.ssl_mode(super::tls::driver_mode(tls.mode));
    if cfg.get_application_name().is_none() {
        cfg.application_name(app_name);
    }
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(Duration::from_secs(10));
    }
    cfg.keepalives_idle(Duration::from_secs(30));
    if tls.mode == super::tls::SslMode::Disable {
        let (client, connection) = cfg.connect(NoTls).await?;
        return Ok(drive(client, connection, notifications));
    }
    let connector = super::tls::connector(&tls).map_err(ConnectError::Tls)?;
    let (client, connection) = cfg.connect(connector).await?;
    Ok(drive(client, connection, notifications))
}

/// Spawns the task that drives a connection, forwarding notifications; returns the client.
fn drive<S, T>(
    client: Client,
    mut connection: tokio_postgres::Connection<S, T>,
    notifications: Option<mpsc::UnboundedSender<Notification>>,
) -> DbConnection
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let closed = CancellationToken::new();
    let guard = closed.clone();
    tokio::spawn(async move {
        let mut stream = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(msg) = stream.next().await {
            match msg {
                Ok(AsyncMessage::Notification(n)) => {
                    if let Some(tx) = &notifications {
                        let _ =
                            tx.send(Notification { channel: n.channel().to_owned(), payload: n.payload().to_owned() });
                    }
                }
                Ok(AsyncMessage::Notice(n)) => {
                    tracing::debug!(notice = %n.message(), "postgres notice")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "postgres connection ended");
                    break;
                }
            }
        }
        guard.cancel();
    });
    DbConnection { client, closed }
}

/// Connects, retrying with jittered exponential backoff (100 ms doubling to 5 s) until it
/// succeeds or `cancel` fires. Each failure is logged with the redacted URL.
pub async fn connect_with_retry(
    url: &str,
    app_name: &str,
    notifications: Option<mpsc::UnboundedSender<Notification>>,
    cancel: &CancellationToken,
) -> Option<DbConnection> {
    let mut backoff = Backoff::new(Duration::from_millis(100), crate::backoff::MAX);
    let mut attempt = 1u32;
    loop {
        match connect(url, app_name, notifications.clone()).await {
            Ok(c) => return Some(c),
            Err(e) => {
                let sleep = backoff.next_wait();
                tracing::warn!(url = %redact_url(url), attempt, retry_in_ms = sleep.as_millis() as u64, error = %e, "cannot connect to PostgreSQL");
                tokio::select! {
                    _ = cancel.cancelled() => return None,
                    _ = tokio::time::sleep(sleep) => {}
                }
                attempt += 1;
            }
        }
    }
}

/// A PostgreSQL error as a person reads it: the server's message, detail and hint for
/// database errors, the driver's text otherwise.
pub fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{}: {} (SQLSTATE {})", db.severity(), db.message(), db.code().code());
            if let Some(d) = db.detail() {
                s.push_str(&format!("; detail: {d}"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!("; hint: {h}"));
            }
            s
        }
        // The driver's text, then its causes ("error performing TLS handshake: invalid peer
        // certificate: …").
        None => {
            let mut s = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                let text = c.to_string();
                if !s.contains(&text) {
                    s.push_str(": ");
                    s.push_str(&text);
                }
                cause = c.source();
            }
            s
        }
    }
}

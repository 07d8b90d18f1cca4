//! Errors as people read them. The relay's error types keep what a library reported as their
//! `source()` (its type intact, not flattened into text); [`report`] writes an error with its
//! causes for a log line, the status table or `/health`.

use std::error::Error;
use std::sync::Arc;

/// What a client library reported, kept as an error's source.
pub type Cause = Arc<dyn Error + Send + Sync + 'static>;

/// `error: cause: cause's cause …`.
pub fn report(e: &(dyn Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        // Some libraries repeat their source's text in their own; say it once.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot connect")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn backend_errors_keep_their_cause_with_its_type() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = crate::backend::BuildError::open("file", "/var/x.jsonl").because(io);
        assert_eq!(e.to_string(), "file: /var/x.jsonl");
        assert_eq!(report(&e), "file: /var/x.jsonl: no such file");
        let kind = e.cause().and_then(|c| c.downcast_ref::<std::io::Error>()).map(std::io::Error::kind);
        assert_eq!(kind, Some(std::io::ErrorKind::NotFound));
        let s = crate::sink::SinkError::retryable("nats", "publish failed").because(io_error());
        assert_eq!(report(&s), "nats: publish failed (will retry): reset");
        assert!(s.cause().is_some_and(|c| c.is::<std::io::Error>()));
    }

    fn io_error() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset")
    }

    #[test]
    fn causes_are_written_after_the_error() {
        let e = Outer(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"));
        assert_eq!(report(&e), "cannot connect: refused");
    }
}

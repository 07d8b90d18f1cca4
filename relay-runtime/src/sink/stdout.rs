//! The stdout and file sinks: one JSON message per line (`format: jsonl`, the default) or
//! pretty-printed JSON (`format: json`). Logs never go to stdout, so stdout carries only
//! messages. The file sink appends and fsyncs once per batch before confirming it.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::io::AsyncWriteExt;

use super::{BuildError, Published, Sink, SinkContext, SinkError};
use crate::backend::fields::Text;
use crate::config::SinkConfig;
use crate::message::envelope::Envelope;
use crate::message::RelayMessage;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    JsonLines,
    Pretty,
}

enum Target {
    Stdout(tokio::io::Stdout),
    /// Written from the blocking pool with the sink's own buffer (no second copy in a
    /// `tokio::fs::File` buffer that each of 1,000 idle pipelines would keep).
    File {
        path: PathBuf,
        file: Arc<std::fs::File>,
    },
}

/// The encode buffer an idle sink keeps at most; a larger one (a big batch's) is given back.
const KEPT_BUFFER_BYTES: usize = 16 * 1024;

pub struct StdoutSink {
    target: Target,
    format: Format,
    buf: Vec<u8>,
    envelope: Envelope,
}

pub async fn build(config: &SinkConfig, ctx: &SinkContext<'_>) -> Result<Box<dyn Sink>, BuildError> {
    let (format, path) = match config {
        SinkConfig::Stdout(c) => (c.format, c.path.as_ref().map(Text::as_str)),
        SinkConfig::File(c) => (c.format, Some(c.path.as_str())),
        _ => return Err(BuildError::option("stdout", "type", "not a stdout or file sink")),
    };
    let format = if format.is_some_and(|f| f.0.pretty()) { Format::Pretty } else { Format::JsonLines };
    let path = path.filter(|p| *p != "-" && *p != "stdout").map(PathBuf::from);
    let target = match path {
        Some(path) => {
            let opened = {
                let path = path.clone();
                tokio::task::spawn_blocking(move || open_repaired(&path)).await
            };
            let file = match opened {
                Ok(Ok(file)) => file,
                Ok(Err(e)) => return Err(BuildError::open("file", format!("{}: {e}", path.display()))),
                Err(e) => return Err(BuildError::open("file", e.to_string())),
            };
            Target::File { path, file: Arc::new(file) }
        }
        None => Target::Stdout(tokio::io::stdout()),
    };
    Ok(Box::new(StdoutSink { target, format, buf: Vec::new(), envelope: ctx.envelope.clone() }))
}

/// Opens `path` for appending (created if missing), repaired first: a relay killed mid-write can
/// leave a partial last line. That line was never confirmed, so its messages will be relayed
/// again: it is cut off so the file stays valid JSON lines. Reads only the file's tail.
fn open_repaired(path: &Path) -> Result<std::fs::File, String> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
        .map_err(|e| format!("cannot open: {e}"))?;
    let repair = |e: std::io::Error| format!("cannot repair a partial last line: {e}");
    let len = file.metadata().map_err(repair)?.len();
    let mut end = len;
    let mut chunk = vec![0u8; 64 * 1024];
    // The end of the last complete line: scan back from the end, a chunk at a time.
    let keep = loop {
        if end == 0 {
            break 0;
        }
        let start = end.saturating_sub(chunk.len() as u64);
        let part = &mut chunk[..(end - start) as usize];
        file.seek(SeekFrom::Start(start)).map_err(repair)?;
        file.read_exact(part).map_err(repair)?;
        if let Some(i) = part.iter().rposition(|b| *b == b'\n') {
            break start + i as u64 + 1;
        }
        end = start;
    };
    if keep < len {
        tracing::warn!(path = %path.display(), dropped_bytes = len - keep, "removing an unconfirmed partial line left by an interrupted write");
        file.set_len(keep).map_err(repair)?;
        file.sync_all().map_err(repair)?;
    }
    Ok(file)
}

impl StdoutSink {
    fn encode(&mut self, batch: &[RelayMessage]) -> Result<(), SinkError> {
        self.buf.clear();
        for m in batch {
            let r = match self.format {
                // An envelope carries the trace context itself.
                Format::JsonLines if !self.envelope.is_native() => {
                    self.envelope.write_body(m, &mut self.buf);
                    Ok(())
                }
                Format::Pretty if !self.envelope.is_native() => {
                    serde_json::from_slice::<serde_json::Value>(&self.envelope.body(m))
                        .and_then(|v| serde_json::to_writer_pretty(&mut self.buf, &v))
                }
                // The message with its trace context as a last field (a line has no headers).
                Format::JsonLines => {
                    m.write_json(&mut self.buf);
                    self.buf.pop();
                    self.buf.extend_from_slice(b",\"traceparent\":\"");
                    self.buf.extend_from_slice(m.traceparent.as_bytes());
                    self.buf.extend_from_slice(b"\"}");
                    Ok(())
                }
                // Through a value, so the row text is indented like the rest.
                Format::Pretty => serde_json::to_value(m).and_then(|mut v| {
                    v["traceparent"] = serde_json::Value::from(&*m.traceparent);
                    serde_json::to_writer_pretty(&mut self.buf, &v)
                }),
            };
            r.map_err(|e| SinkError::permanent(self.name(), "cannot encode message").because(e))?;
            self.buf.push(b'\n');
        }
        Ok(())
    }
}

impl Sink for StdoutSink {
    fn name(&self) -> &'static str {
        match self.target {
            Target::Stdout(_) => "stdout",
            Target::File { .. } => "file",
        }
    }

    fn publish<'a>(&'a mut self, batch: &'a [RelayMessage]) -> BoxFuture<'a, Result<Published, SinkError>> {
        Box::pin(async move {
            self.encode(batch)?;
            let name = self.name();
            let io = |e: std::io::Error| SinkError::retryable(name, e.to_string());
            match &mut self.target {
                Target::Stdout(out) => {
                    out.write_all(&self.buf).await.map_err(io)?;
                    out.flush().await.map_err(io)?;
                }
                Target::File { path, file } => {
                    let (file, buf) = (file.clone(), std::mem::take(&mut self.buf));
                    let written = tokio::task::spawn_blocking(move || {
                        // Durable before the offset moves past these rows.
                        let r = (&*file).write_all(&buf).and_then(|()| file.sync_data());
                        (r, buf)
                    })
                    .await;
                    let message = match written {
                        Ok((r, buf)) => {
                            self.buf = buf;
                            r.err().map(|e| e.to_string())
                        }
                        Err(e) => Some(e.to_string()),
                    };
                    if let Some(e) = message {
                        return Err(SinkError::retryable("file", format!("{}: {e}", path.display())));
                    }
                }
            }
            if self.buf.capacity() > KEPT_BUFFER_BYTES {
                self.buf = Vec::new();
            }
            Ok(Published { confirmed: batch.len() as u64, duplicates: 0 })
        })
    }

    fn close(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let name = self.name();
            match &mut self.target {
                Target::Stdout(out) => out.flush().await,
                Target::File { file, .. } => {
                    let file = file.clone();
                    tokio::task::spawn_blocking(move || file.sync_all()).await.unwrap_or_else(|e| Err(e.into()))
                }
            }
            .map_err(|e| SinkError::retryable(name, e.to_string()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repaired(content: &[u8]) -> Vec<u8> {
        let path =
            std::env::temp_dir().join(format!("pgtrickle-relay-repair-{}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::write(&path, content).unwrap();
        drop(open_repaired(&path).unwrap());
        let after = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        after
    }

    #[test]
    fn a_partial_last_line_is_cut_and_complete_lines_kept() {
        assert_eq!(repaired(b"{\"a\":1}\n{\"b\":2}\n{\"c\""), b"{\"a\":1}\n{\"b\":2}\n");
        assert_eq!(repaired(b"{\"a\":1}\n"), b"{\"a\":1}\n");
        assert_eq!(repaired(b""), b"");
        assert_eq!(repaired(b"no newline at all"), b"");
        // The last complete line ends more than one read chunk before the end.
        let mut long = b"{\"a\":1}\n".to_vec();
        long.extend(std::iter::repeat_n(b'x', 200 * 1024));
        assert_eq!(repaired(&long), b"{\"a\":1}\n");
    }

    #[test]
    fn a_missing_file_is_created() {
        let path =
            std::env::temp_dir().join(format!("pgtrickle-relay-new-{}-{}", std::process::id(), fastrand::u64(..)));
        let mut f = open_repaired(&path).unwrap();
        f.write_all(b"x\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"x\n");
        std::fs::remove_file(&path).unwrap();
    }
}

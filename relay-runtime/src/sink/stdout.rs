//! The stdout and file sinks: one JSON message per line (`format: jsonl`, the default) or
//! pretty-printed JSON (`format: json`). Logs never go to stdout, so stdout carries only
//! messages. The file sink appends and fsyncs once per batch before confirming it.

use std::path::PathBuf;

use futures::future::BoxFuture;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::{BuildError, Published, Sink, SinkError};
use crate::config::{SinkKind, SinkSpec};
use crate::message::RelayMessage;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    JsonLines,
    Pretty,
}

enum Target {
    Stdout(tokio::io::Stdout),
    File { path: PathBuf, file: tokio::fs::File },
}

pub struct StdoutSink {
    target: Target,
    format: Format,
    buf: Vec<u8>,
}

pub async fn build(spec: &SinkSpec) -> Result<Box<dyn Sink>, BuildError> {
    let backend = if spec.kind == SinkKind::File { "file" } else { "stdout" };
    let format = match spec.options.get("format") {
        None | Some(Value::Null) => Format::JsonLines,
        Some(Value::String(s)) => match s.as_str() {
            "jsonl" | "json_lines" | "ndjson" => Format::JsonLines,
            "json" | "pretty" | "json_pretty" => Format::Pretty,
            other => {
                return Err(BuildError::Option {
                    backend,
                    key: "format".into(),
                    message: format!("unknown format '{other}' (use jsonl or json)"),
                })
            }
        },
        Some(_) => {
            return Err(BuildError::Option { backend, key: "format".into(), message: "expected a string".into() })
        }
    };
    let path = ["path", "output", "file"].iter().find_map(|k| spec.options.get(*k)).and_then(Value::as_str);
    let path = match (spec.kind, path) {
        (_, Some(p)) if p != "-" && p != "stdout" => Some(PathBuf::from(p)),
        (SinkKind::File, _) => {
            return Err(BuildError::Option {
                backend,
                key: "path".into(),
                message: "the file sink needs a 'path' to append to".into(),
            })
        }
        _ => None,
    };
    let target = match path {
        Some(path) => {
            drop_partial_last_line(&path).await.map_err(|e| BuildError::Open {
                backend: "file",
                message: format!("cannot repair {}: {e}", path.display()),
            })?;
            let file = tokio::fs::OpenOptions::new().create(true).append(true).open(&path).await.map_err(|e| {
                BuildError::Open { backend: "file", message: format!("cannot open {}: {e}", path.display()) }
            })?;
            Target::File { path, file }
        }
        None => Target::Stdout(tokio::io::stdout()),
    };
    Ok(Box::new(StdoutSink { target, format, buf: Vec::with_capacity(64 * 1024) }))
}

/// A relay killed mid-write can leave a partial last line. That line was never confirmed, so
/// its messages will be relayed again: cut it off so the file stays valid JSON lines.
async fn drop_partial_last_line(path: &std::path::Path) -> std::io::Result<()> {
    let data = match tokio::fs::read(path).await {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if data.is_empty() || data.ends_with(b"\n") {
        return Ok(());
    }
    let keep = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    tracing::warn!(path = %path.display(), dropped_bytes = data.len() - keep, "removing an unconfirmed partial line left by an interrupted write");
    let file = tokio::fs::OpenOptions::new().write(true).open(path).await?;
    file.set_len(keep as u64).await?;
    file.sync_all().await
}

impl StdoutSink {
    fn encode(&mut self, batch: &[RelayMessage]) -> Result<(), SinkError> {
        self.buf.clear();
        for m in batch {
            let r = match self.format {
                Format::JsonLines => {
                    m.write_json(&mut self.buf);
                    Ok(())
                }
                // Through a value, so the row text is indented like the rest.
                Format::Pretty => serde_json::to_value(m).and_then(|v| serde_json::to_writer_pretty(&mut self.buf, &v)),
            };
            r.map_err(|e| SinkError::Permanent {
                backend: self.name(),
                message: format!("cannot encode message: {e}"),
            })?;
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
            let io = |e: std::io::Error| SinkError::Retryable { backend: name, message: e.to_string() };
            match &mut self.target {
                Target::Stdout(out) => {
                    out.write_all(&self.buf).await.map_err(io)?;
                    out.flush().await.map_err(io)?;
                }
                Target::File { path, file } => {
                    let ctx = |e: std::io::Error| SinkError::Retryable {
                        backend: "file",
                        message: format!("{}: {e}", path.display()),
                    };
                    file.write_all(&self.buf).await.map_err(ctx)?;
                    file.flush().await.map_err(ctx)?;
                    // Durable before the offset moves past these rows.
                    file.sync_data().await.map_err(ctx)?;
                }
            }
            Ok(Published { confirmed: batch.len() as u64, duplicates: 0 })
        })
    }

    fn close(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let name = self.name();
            match &mut self.target {
                Target::Stdout(out) => out.flush().await,
                Target::File { file, .. } => file.sync_all().await,
            }
            .map_err(|e| SinkError::Retryable { backend: name, message: e.to_string() })
        })
    }
}

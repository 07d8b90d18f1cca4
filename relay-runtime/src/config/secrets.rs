//! Secret references inside pipeline config strings: `${env:NAME}` and `${file:/path}`.
//!
//! They are resolved when a pipeline is loaded (and again on every reload), so the catalog
//! never has to hold a secret in clear text. The upper-case `${ENV:NAME}` spelling of the
//! upstream relay is accepted too. A reference that cannot be resolved is an error naming the
//! config key — never silently left in place, and the resolved value is never logged.

use serde_json::Value;

/// Why a secret reference could not be resolved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("key '{key}': environment variable {var} referenced by ${{env:{var}}} is not set")]
    MissingEnv { key: String, var: String },
    #[error("key '{key}': cannot read secret file {path}: {reason}")]
    File { key: String, path: String, reason: String },
    #[error("key '{key}': unterminated secret reference (missing '}}')")]
    Unterminated { key: String },
}

/// Replaces every secret reference in every string of `value`, in place.
pub fn resolve_secrets(value: &mut Value) -> Result<(), SecretError> {
    resolve_at(value, &mut String::new())
}

fn resolve_at(value: &mut Value, path: &mut String) -> Result<(), SecretError> {
    match value {
        Value::String(s) => {
            if s.contains("${") {
                *s = resolve_str(s, path)?;
            }
            Ok(())
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                resolve_at(item, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                resolve_at(v, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Resolves the references of one string; text outside references is kept verbatim.
pub fn resolve_str(input: &str, key: &str) -> Result<String, SecretError> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let (kind, arg_start) = if let Some(a) = after.strip_prefix("env:") {
            ("env", a)
        } else if let Some(a) = after.strip_prefix("ENV:") {
            ("env", a)
        } else if let Some(a) = after.strip_prefix("file:") {
            ("file", a)
        } else {
            // Not a secret reference (e.g. a literal "${" in a template): keep it.
            out.push_str("${");
            rest = after;
            continue;
        };
        let Some(end) = arg_start.find('}') else {
            return Err(SecretError::Unterminated { key: key.to_owned() });
        };
        let arg = &arg_start[..end];
        match kind {
            "env" => match std::env::var(arg) {
                Ok(v) => out.push_str(&v),
                Err(_) => return Err(SecretError::MissingEnv { key: key.to_owned(), var: arg.to_owned() }),
            },
            _ => match std::fs::read_to_string(arg) {
                // Secret files (Kubernetes secret mounts, `echo > file`) usually end in a newline
                // that is not part of the secret.
                Ok(v) => out.push_str(v.trim_end_matches(['\n', '\r'])),
                Err(e) => {
                    return Err(SecretError::File { key: key.to_owned(), path: arg.to_owned(), reason: e.to_string() })
                }
            },
        }
        rest = &arg_start[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn env_and_file_references_resolve_everywhere() {
        std::env::set_var("PGT_TEST_SECRET_A", "s3cret");
        let dir = std::env::temp_dir().join(format!("pgt-secret-{}", std::process::id()));
        std::fs::write(&dir, "from-file\n").unwrap();
        let mut v = json!({
            "sink": {"url": "nats://u:${env:PGT_TEST_SECRET_A}@h", "token": format!("${{file:{}}}", dir.display())},
            "list": ["${ENV:PGT_TEST_SECRET_A}", 3],
            "template": "a.{op}.${notasecret}"
        });
        resolve_secrets(&mut v).unwrap();
        assert_eq!(v["sink"]["url"], "nats://u:s3cret@h");
        assert_eq!(v["sink"]["token"], "from-file");
        assert_eq!(v["list"][0], "s3cret");
        assert_eq!(v["template"], "a.{op}.${notasecret}");
        std::fs::remove_file(dir).unwrap();
    }

    #[test]
    fn missing_env_names_the_key_and_variable() {
        let mut v = json!({"sink": {"password": "${env:PGT_TEST_SURELY_UNSET_VAR}"}});
        let err = resolve_secrets(&mut v).unwrap_err();
        assert_eq!(
            err,
            SecretError::MissingEnv { key: "sink.password".into(), var: "PGT_TEST_SURELY_UNSET_VAR".into() }
        );
        assert!(err.to_string().contains("sink.password"));
    }

    #[test]
    fn unreadable_file_and_unterminated_are_errors() {
        let mut v = json!({"k": "${file:/nonexistent/pgt/secret}"});
        assert!(matches!(resolve_secrets(&mut v), Err(SecretError::File { .. })));
        let mut v = json!({"k": "${env:OOPS"});
        assert!(matches!(resolve_secrets(&mut v), Err(SecretError::Unterminated { .. })));
    }
}

//! Redaction of secrets in config JSON before it is printed or mirrored anywhere.

use serde_json::Value;

use crate::redact::redact_url;

/// Name parts that make a key the catalog does not know (written before configs were checked)
/// look like a secret.
const SECRET_LOOKING: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "private_key",
    "credentials",
    "nkey",
    "seed",
    "auth_value",
    "authorization",
    "sasl_password",
    "access_key",
    "secret_key",
];

/// A key whose value is a secret: one typed as a secret in any backend's config
/// ([`crate::backend::fields::Secret`]), or — for a key no backend knows — one whose name looks
/// like a secret's.
fn is_secret_key(key: &str) -> bool {
    if super::keys::SECRET_KEYS.contains(key) {
        return true;
    }
    if super::keys::ALL_KEYS.contains(key) {
        return false;
    }
    let k = key.to_ascii_lowercase();
    SECRET_LOOKING.iter().any(|s| k == *s || k.ends_with(&format!("_{s}")))
}

/// A copy of `value` with secret-looking keys replaced by `"***"` and passwords in URLs hidden.
/// `${env:…}`/`${file:…}` references are kept: they name where a secret lives, not the secret.
pub fn redact_config(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) if is_secret_key(k) && !s.starts_with("${") => Value::String("***".into()),
                        Value::Object(_) if k.eq_ignore_ascii_case("headers") || k.ends_with("_headers") => {
                            redact_headers(v)
                        }
                        other => redact_config(other),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redact_config).collect()),
        Value::String(s) if s.contains("://") && s.contains('@') => Value::String(redact_url(s)),
        other => other.clone(),
    }
}

fn redact_headers(v: &Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let lower = k.to_ascii_lowercase();
                    let secret = lower == "authorization"
                        || lower.contains("token")
                        || lower.contains("key")
                        || lower.contains("secret");
                    (k.clone(), if secret { Value::String("***".into()) } else { v.clone() })
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_hidden_and_references_kept() {
        let v = json!({
            "nats_url": "nats://user:pw@localhost:4222",
            "sink": {"password": "hunter2", "token": "${env:NATS_TOKEN}", "sasl_password": "x",
                     "headers": {"Authorization": "Bearer abc", "X-Team": "data"}},
            "stream_table": "orders"
        });
        let r = redact_config(&v);
        assert_eq!(r["nats_url"], "nats://user:***@localhost:4222");
        assert_eq!(r["sink"]["password"], "***");
        assert_eq!(r["sink"]["sasl_password"], "***");
        assert_eq!(r["sink"]["token"], "${env:NATS_TOKEN}");
        assert_eq!(r["sink"]["headers"]["Authorization"], "***");
        assert_eq!(r["sink"]["headers"]["X-Team"], "data");
        assert_eq!(r["stream_table"], "orders");
        assert!(!r.to_string().contains("hunter2"));
        // Known by type, whatever the name: the webhook receiver's `auth_value`, an alias.
        let r = redact_config(&json!({"source": {"auth_value": "v1", "hmac_secret": "v2", "bearer_token": "v3"},
                                      "old_private_key": "v4", "stream": "not-secret"}));
        assert!(!["v1", "v2", "v3", "v4"].iter().any(|v| r.to_string().contains(v)), "{r}");
        assert_eq!(r["stream"], "not-secret");
    }
}

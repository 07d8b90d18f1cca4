//! Secrets out of connection strings before they are logged or reported.

/// Hides the password of a `postgres://user:pass@host/db` URL or a `password=…` key/value
/// string, so connection strings can be logged.
pub fn redact_url(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let (scheme, rest) = url.split_at(scheme_end + 3);
        let auth_end = rest.find('@');
        let mut out = String::from(scheme);
        let mut tail = rest;
        if let Some(at) = auth_end {
            // Only the authority part (before the first '/') can hold credentials.
            let slash = rest.find('/').unwrap_or(rest.len());
            if at < slash {
                let userinfo = &rest[..at];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..colon]);
                        out.push_str(":***");
                    }
                    None => out.push_str(userinfo),
                }
                out.push('@');
                tail = &rest[at + 1..];
            }
        }
        out.push_str(&redact_query_password(tail));
        return out;
    }
    // key=value form
    url.split_whitespace()
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => kv.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn redact_query_password(s: &str) -> String {
    let Some(q) = s.find('?') else {
        return s.to_owned();
    };
    let (head, query) = s.split_at(q + 1);
    let parts: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => kv.to_owned(),
        })
        .collect();
    format!("{head}{}", parts.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_in_every_form() {
        assert_eq!(redact_url("postgres://relay:s3cret@db:5432/app"), "postgres://relay:***@db:5432/app");
        assert_eq!(redact_url("postgres://relay@db/app"), "postgres://relay@db/app");
        assert_eq!(redact_url("postgresql://db/app?user=a&password=s3cret"), "postgresql://db/app?user=a&password=***");
        assert_eq!(redact_url("host=db user=a password=s3cret dbname=x"), "host=db user=a password=*** dbname=x");
        assert!(!redact_url("postgres://u:p%40ss@h/d").contains("p%40ss"));
    }
}

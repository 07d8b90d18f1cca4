//! TLS for PostgreSQL connections, with libpq's `sslmode` meanings.
//!
//! `disable` (plain), `prefer` and `require` (encrypted, the server's certificate not checked —
//! unless `sslrootcert` is given, which makes `require` behave as `verify-ca`, as in libpq),
//! `verify-ca` (chain checked against `sslrootcert`, which it requires) and
//! `verify-full` (chain and host name). `sslcert` + `sslkey` add a client certificate. The
//! parameters are taken out of the connection string before tokio-postgres parses it (it only
//! knows `disable`/`prefer`/`require`).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// The TLS parameters of a connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTls {
    pub mode: SslMode,
    pub root_cert: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
}

const TLS_KEYS: &[&str] = &["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Splits the TLS parameters off a connection string (URL or `key=value` form); the rest is
/// what tokio-postgres parses.
pub fn split(url: &str) -> Result<(String, PgTls), String> {
    let mut found: Vec<(String, String)> = Vec::new();
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_owned(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if TLS_KEYS.contains(&k) {
                        found.push((k.to_owned(), percent_decode(v)));
                    } else {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        let mut kept = Vec::new();
        for token in url.split_whitespace() {
            match token.split_once('=') {
                Some((k, v)) if TLS_KEYS.contains(&k) => found.push((k.to_owned(), v.trim_matches('\'').to_owned())),
                _ => kept.push(token),
            }
        }
        kept.join(" ")
    };
    let get = |k: &str| found.iter().rev().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    let mode = match get("sslmode").as_deref() {
        None | Some("disable") | Some("allow") => SslMode::Disable,
        Some("prefer") => SslMode::Prefer,
        Some("require") => SslMode::Require,
        Some("verify-ca") => SslMode::VerifyCa,
        Some("verify-full") => SslMode::VerifyFull,
        Some(other) => {
            return Err(format!(
                "sslmode '{other}' is not one of disable, allow, prefer, require, verify-ca, verify-full"
            ))
        }
    };
    Ok((rest, PgTls { mode, root_cert: get("sslrootcert"), cert: get("sslcert"), key: get("sslkey") }))
}

fn percent_decode(s: &str) -> String {
    crate::percent::decode(s).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The tokio-postgres `sslmode` for a libpq one.
pub fn driver_mode(mode: SslMode) -> tokio_postgres::config::SslMode {
    match mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    }
}

/// A rustls connector for `tls` (not used for `disable`).
pub fn connector(tls: &PgTls) -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let check = match (tls.mode, &tls.root_cert) {
        (SslMode::VerifyFull, _) => Check::Full,
        (SslMode::VerifyCa, _) | (SslMode::Require | SslMode::Prefer, Some(_)) => Check::Chain,
        _ => Check::None,
    };
    let inner = match (check, &tls.root_cert) {
        (Check::None, _) => None,
        (_, None) => {
            return Err("sslmode=verify-ca and verify-full need sslrootcert (the server's CA certificate, PEM)".into())
        }
        (_, Some(path)) => {
            let mut roots = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("sslrootcert {path}: {e}"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("sslrootcert {path}: {e}"))?;
            for c in certs {
                roots.add(c).map_err(|e| format!("sslrootcert {path}: {e}"))?;
            }
            let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| format!("sslrootcert {path}: {e}"))?;
            Some(verifier)
        }
    };
    let verifier = Arc::new(Verifier { inner: inner.map(|v| (v, check)), provider: provider.clone() });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| format!("sslcert {cert}: {e}"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("sslcert {cert}: {e}"))?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("sslkey {key}: {e}"))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| format!("sslcert/sslkey: {e}"))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("sslcert and sslkey go together".into()),
    };
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    None,
    Chain,
    Full,
}

#[derive(Debug)]
struct Verifier {
    /// The chain check (`None`: the certificate is not checked, libpq's `require`), and whether
    /// the host name must match too.
    inner: Option<(Arc<WebPkiServerVerifier>, Check)>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.inner {
            None | Some((_, Check::None)) => Ok(ServerCertVerified::assertion()),
            Some((v, Check::Full)) => v.verify_server_cert(end_entity, intermediates, server_name, ocsp, now),
            Some((v, Check::Chain)) => match v.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
                )) => Ok(ServerCertVerified::assertion()),
                other => other,
            },
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_split_off_both_forms() {
        let (rest, tls) =
            split("postgres://u:p@h:5432/db?application_name=x&sslmode=verify-ca&sslrootcert=%2Ftmp%2Fca.pem").unwrap();
        assert_eq!(rest, "postgres://u:p@h:5432/db?application_name=x");
        assert_eq!(tls.mode, SslMode::VerifyCa);
        assert_eq!(tls.root_cert.as_deref(), Some("/tmp/ca.pem"));
        let (rest, tls) = split("host=h user=u sslmode=require dbname=d").unwrap();
        assert_eq!(rest, "host=h user=u dbname=d");
        assert_eq!(tls.mode, SslMode::Require);
        let (rest, tls) = split("postgres://h/db").unwrap();
        assert_eq!((rest.as_str(), tls.mode), ("postgres://h/db", SslMode::Disable));
        assert!(split("postgres://h/db?sslmode=sometimes").unwrap_err().contains("sometimes"));
    }
}

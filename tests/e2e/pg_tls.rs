//! PostgreSQL over TLS, with libpq's `sslmode` meanings, against the local server (scripts/test's
//! private cluster enables TLS with its own certificate; Debian's cluster ships with one).

use std::time::Duration;

use relay_e2e::*;

/// The server certificate (self-signed on both kinds of test server), as an absolute path.
async fn server_cert(c: &tokio_postgres::Client) -> String {
    let ssl: String = c.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    assert_eq!(ssl, "on", "the test PostgreSQL must have ssl=on (scripts/test's private cluster does)");
    let file: String = c.query_one("SHOW ssl_cert_file", &[]).await.unwrap().get(0);
    if file.starts_with('/') {
        return file;
    }
    let dir: String = c.query_one("SHOW data_directory", &[]).await.unwrap().get(0);
    format!("{dir}/{file}")
}

fn with(url: &str, params: &str) -> String {
    format!("{url}{}{params}", if url.contains('?') { "&" } else { "?" })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_verify_ca_and_verify_full() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let cert = server_cert(&c).await;

    // require: encrypted; the relay's own sessions show up in pg_stat_ssl.
    let url = with(&db.url, "sslmode=require");
    let (ok, _, err) = run_cli(&url, &["migrate"]);
    assert!(ok.success(), "{err}");
    let relay = Relay::start(&url, "default", &[]);
    let ssl_sessions = eventually(Duration::from_secs(10), "the relay's sessions", || async {
        let rows = c
            .query(
                "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
                  WHERE a.application_name LIKE 'pgtrickle-relay%' AND a.datname = current_database()",
                &[],
            )
            .await
            .unwrap();
        (!rows.is_empty()).then(|| rows.iter().map(|r| r.get::<_, bool>(0)).collect::<Vec<_>>())
    })
    .await;
    assert!(ssl_sessions.iter().all(|s| *s), "every relay session encrypted: {ssl_sessions:?}");
    drop(relay);

    // verify-ca with the server's CA: accepted.
    let (ok, _, err) = run_cli(&with(&db.url, &format!("sslmode=verify-ca&sslrootcert={cert}")), &["migrate"]);
    assert!(ok.success(), "{err}");
    // verify-full: the certificate does not name 127.0.0.1 — refused, and the error says so.
    let (ok, _, err) = run_cli(&with(&db.url, &format!("sslmode=verify-full&sslrootcert={cert}")), &["migrate"]);
    assert!(!ok.success());
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    // A CA file that is not there: a clear error naming it.
    let (ok, _, err) = run_cli(&with(&db.url, "sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem"), &["migrate"]);
    assert!(!ok.success() && err.contains("/nonexistent/ca.pem"), "{err}");
}

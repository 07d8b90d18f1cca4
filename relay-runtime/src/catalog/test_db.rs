//! A private database with the relay catalog installed, for unit tests that talk to the real
//! PostgreSQL the whole suite uses (`PGTRICKLE_TEST_POSTGRES_URL`, else the local one). Fails
//! loudly when PostgreSQL cannot be reached; the database is dropped by [`TestDatabase::drop_now`].
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::{connect, schema, DbConnection};

pub struct TestDatabase {
    admin: DbConnection,
    name: String,
    /// A connection to the test database, catalog migrated.
    pub conn: DbConnection,
    pub url: String,
}

impl TestDatabase {
    /// `tag` makes the name unique per test within this process.
    pub async fn new(tag: &str) -> Self {
        let admin_url = std::env::var("PGTRICKLE_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let admin = connect(&admin_url, "unit-test", None).await.expect("PostgreSQL must be reachable for this test");
        let name = format!("relay_unit_{tag}_{}", std::process::id());
        admin.client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.unwrap();
        admin.client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
        let url = match admin_url.rsplit_once('/') {
            Some((head, tail)) if !tail.contains('@') => {
                let query = tail.find('?').map(|q| &tail[q..]).unwrap_or("");
                format!("{head}/{name}{query}")
            }
            _ => format!("{admin_url} dbname={name}"),
        };
        let mut conn = connect(&url, "unit-test", None).await.unwrap();
        schema::migrate(&mut conn.client).await.unwrap();
        Self { admin, name, conn, url }
    }

    pub async fn drop_now(self) {
        let Self { admin, name, conn, .. } = self;
        drop(conn);
        admin.client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.unwrap();
    }
}

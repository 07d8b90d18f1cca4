//! The docs agree with the typed configs: the README's generated key tables and the committed
//! JSON Schema are current (`UPDATE_GENERATED=1 cargo test -p relay-runtime docs` rewrites them),
//! the hand-written key tables name only known keys and every key, and every config example of
//! the README is accepted by the SQL call and by the JSON Schema.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;

use super::keys::{Kind, CATALOG};
use crate::catalog::test_db::TestDatabase;

fn repo_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(name)
}

/// Compares `path` with `current`; rewrites it when `UPDATE_GENERATED` is set.
fn check_generated(name: &str, current: &str) {
    let path = repo_file(name);
    if std::env::var_os("UPDATE_GENERATED").is_some() {
        std::fs::write(&path, current).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == current,
        "{name} is not current: run `UPDATE_GENERATED=1 cargo test -p relay-runtime --lib docs_tests` and commit it"
    );
}

pub fn schema_text() -> String {
    format!("{}\n", serde_json::to_string_pretty(&CATALOG.json_schema()).unwrap())
}

#[test]
fn readme_key_tables_are_current() {
    let readme = std::fs::read_to_string(repo_file("README.md")).unwrap();
    let current = CATALOG.regenerate_markdown(&readme).unwrap();
    check_generated("README.md", &current);
}

#[test]
fn committed_json_schema_is_current() {
    check_generated("docs/pipeline-config.schema.json", &schema_text());
}

/// The backticked names in the first column of the table under `heading`.
fn first_column_keys(readme: &str, heading: &str) -> BTreeSet<String> {
    let at = readme.find(heading).unwrap_or_else(|| panic!("README has no '{heading}'"));
    let mut keys = BTreeSet::new();
    for line in readme[at..].lines().skip_while(|l| !l.starts_with('|')).take_while(|l| l.starts_with('|')) {
        let first = line.split('|').nth(1).unwrap_or_default();
        for (i, part) in first.split('`').enumerate() {
            if i % 2 == 1 {
                keys.insert(part.rsplit('.').next().unwrap_or(part).to_owned());
            }
        }
    }
    keys.remove("Key");
    keys
}

#[test]
fn readme_pipeline_key_tables_name_known_keys_and_every_key() {
    let readme = std::fs::read_to_string(repo_file("README.md")).unwrap();
    for (heading, dir, structural) in [
        ("### Forward pipeline keys", &CATALOG.forward, ["sink_type", "type", "outbox"]),
        ("### Reverse pipelines (broker → inbox)", &CATALOG.reverse, ["source_type", "type", "inbox"]),
    ] {
        let documented = first_column_keys(&readme, heading);
        let known: BTreeSet<String> = dir.pipeline.names().map(str::to_owned).collect();
        for k in &documented {
            assert!(known.contains(k) || structural.contains(&k.as_str()), "{heading}: '{k}' is not a key");
        }
        let table = &readme[readme.find(heading).unwrap()..];
        let table: String =
            table.lines().skip_while(|l| !l.starts_with('|')).take_while(|l| l.starts_with('|')).collect();
        for rule in dir.pipeline.keys.iter().filter(|r| r.kind != Kind::Ignored) {
            assert!(table.contains(&format!("`{}`", rule.name)), "{heading}: key '{}' is not documented", rule.name);
        }
    }
}

/// Every `SELECT pgtrickle.set_relay_outbox(…);` / `set_relay_inbox(…);` of the README.
fn readme_registrations(readme: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = readme;
    while let Some(at) = rest.find("SELECT pgtrickle.set_relay_") {
        let end = rest[at..].find(");").unwrap() + at + 2;
        out.push(rest[at..end].to_owned());
        rest = &rest[end..];
    }
    out
}

#[tokio::test]
async fn readme_config_examples_are_accepted_by_the_database_and_the_schema() {
    let readme = std::fs::read_to_string(repo_file("README.md")).unwrap();
    let db = TestDatabase::new("docs_examples").await;
    let schema = CATALOG.json_schema();
    let validator = jsonschema::draft202012::new(&schema).unwrap();
    let mut refused_as_documented = 0;
    let mut stored = 0;
    for sql in readme_registrations(&readme) {
        // The README shows one refused example on purpose (the typo), with its error.
        if sql.contains("subjekt_template") {
            let e = db.conn.client.batch_execute(&sql).await.expect_err("the documented typo is refused");
            let msg = e.as_db_error().unwrap().message().to_owned();
            assert!(
                msg.contains("did you mean 'subject_template'?") && msg.contains("did you mean 'batch_size'?"),
                "{msg}"
            );
            refused_as_documented += 1;
            continue;
        }
        db.conn.client.batch_execute(&sql).await.unwrap_or_else(|e| panic!("README example refused: {sql}\n{e:?}"));
        stored += 1;
    }
    assert_eq!(refused_as_documented, 1);
    assert!(stored >= 4, "{stored} examples");
    let rows = db
        .conn
        .client
        .query(
            "SELECT 'forward', name, config FROM pgtrickle.relay_outbox_config
             UNION ALL SELECT 'reverse', name, config FROM pgtrickle.relay_inbox_config",
            &[],
        )
        .await
        .unwrap();
    for row in rows {
        let (direction, name, config): (String, String, Value) = (row.get(0), row.get(1), row.get(2));
        let errors: Vec<String> = validator.iter_errors(&config).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{direction} pipeline '{name}' {config}: {errors:?}");
        let branch = serde_json::json!({"$defs": schema["$defs"], "$ref": format!("#/$defs/{direction}")});
        let direction_validator = jsonschema::draft202012::new(&branch).unwrap();
        assert!(direction_validator.is_valid(&config), "{direction} pipeline '{name}' is not valid as {direction}");
    }
    db.drop_now().await;
}

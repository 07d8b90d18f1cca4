//! The SQL-side validation (`sql/v5_config_validation.sql`) against the relay's parser, on the
//! real PostgreSQL: the same configs refused with the same problems, and the writers refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Map, Value};

use super::*;
use crate::catalog::test_db::TestDatabase;
use crate::config::{Direction, PipelineRow};

/// The relay's problems with a config (empty when it parses).
fn relay_problems(direction: Direction, config: &Value) -> Vec<String> {
    match (PipelineRow { name: "p".into(), direction, enabled: true, config: config.clone() }).parse() {
        Ok(_) => Vec::new(),
        Err(e) => e.problems,
    }
}

struct Gen(fastrand::Rng);

impl Gen {
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.0.usize(..items.len())]
    }

    fn value(&mut self, kind: Option<&Kind>) -> Value {
        // Mostly a value of the key's kind, else anything.
        if let (Some(kind), true) = (kind, self.0.u8(..10) < 6) {
            return match kind {
                Kind::Int { min, max } => match self.0.u8(..4) {
                    0 => json!(max + 1),
                    1 => json!(format!(" {min} ")),
                    _ => json!(self.0.u64(*min..=*max.min(&(min + 1000)))),
                },
                Kind::Choice(words) => {
                    let w = self.pick(words).clone();
                    if self.0.bool() {
                        json!(w.to_uppercase())
                    } else {
                        json!(w)
                    }
                }
                Kind::Template => {
                    json!(self.pick(&["a.{op}", "{stream_tabel}.x", "{orders}:{op}", "{OP}", "t"]).to_owned())
                }
                Kind::List => json!(["a", "b"]),
                Kind::Settings => json!({"a.b": "c", "n": 1}),
                Kind::Flag => json!(self.0.bool()),
                _ => json!("some-text"),
            };
        }
        let pool = [
            Value::Null,
            json!(true),
            json!("false"),
            json!(0),
            json!(7),
            json!(-3),
            json!(2.5),
            json!(""),
            json!("  "),
            json!("x"),
            json!(["a", ""]),
            json!([1]),
            json!({"k": "v"}),
            json!({"k": [1]}),
            json!("lz4"),
        ];
        self.pick(&pool).clone()
    }

    /// A key name near `name` (one to three characters changed, dropped or doubled).
    fn typo(&mut self, name: &str) -> String {
        let mut chars: Vec<char> = name.chars().collect();
        for _ in 0..self.0.usize(1..=3) {
            if chars.is_empty() {
                break;
            }
            let i = self.0.usize(..chars.len());
            match self.0.u8(..3) {
                0 => chars[i] = self.0.lowercase(),
                1 => {
                    chars.remove(i);
                }
                _ => chars.insert(i, chars[i]),
            }
        }
        chars.into_iter().collect()
    }

    fn config(&mut self) -> (Direction, Value) {
        let direction = if self.0.bool() { Direction::Forward } else { Direction::Reverse };
        let dir = if direction == Direction::Forward { &CATALOG.forward } else { &CATALOG.reverse };
        let t = self.pick(&dir.types).clone();
        let nested = self.0.bool();
        let (part, type_key) =
            if direction == Direction::Forward { ("sink", "sink_type") } else { ("source", "source_type") };
        let mut top = Map::new();
        let mut inner = Map::new();
        let type_name = match self.0.u8(..12) {
            0 => self.typo(t.name),
            1 => t.name.to_uppercase(),
            _ => self.pick(t.spellings).to_string(),
        };
        if nested {
            inner.insert("type".into(), json!(type_name));
        } else {
            top.insert(type_key.into(), json!(type_name));
        }
        match (direction, self.0.u8(..10)) {
            (_, 0) => {}
            (Direction::Forward, 1) => {
                inner.insert("outbox".into(), json!("o"));
            }
            (Direction::Forward, _) => {
                top.insert("stream_table".into(), json!("s"));
            }
            (Direction::Reverse, 1) => {
                top.insert("sink".into(), json!({"inbox": "i", "max_retries": 3, "schedule": "1s"}));
            }
            (Direction::Reverse, _) => {
                top.insert("inbox_table".into(), json!("i"));
            }
        }
        let prefix = t.prefixes.first().copied().unwrap_or("");
        for rule in t.keys.keys.iter().filter(|r| r.required) {
            if self.0.u8(..10) > 0 {
                if nested {
                    inner.insert(rule.name.clone(), self.value(Some(&rule.kind)));
                } else {
                    top.insert(format!("{prefix}{}", rule.name), self.value(Some(&rule.kind)));
                }
            }
        }
        for _ in 0..self.0.usize(..5) {
            let backend = self.0.u8(..3) > 0;
            let set = if backend { &t.keys } else { &dir.pipeline };
            let rule = self.pick(&set.keys).clone();
            let mut name = if rule.aliases.is_empty() || self.0.bool() {
                rule.name.clone()
            } else {
                self.pick(&rule.aliases).clone()
            };
            if self.0.u8(..6) == 0 {
                name = self.typo(&name);
            }
            let v = self.value(Some(&rule.kind));
            match (backend, nested, self.0.u8(..4)) {
                (true, true, _) => {
                    inner.insert(name, v);
                }
                (true, false, 0) => {
                    top.insert(name, v);
                }
                (true, false, _) => {
                    top.insert(format!("{prefix}{name}"), v);
                }
                (false, _, 0) => {
                    inner.insert(name, v);
                }
                (false, _, _) => {
                    top.insert(name, v);
                }
            }
        }
        if self.0.u8(..8) == 0 {
            let junk: String = (0..self.0.usize(1..9)).map(|_| self.0.lowercase()).collect();
            top.insert(junk, json!(1));
        }
        if self.0.u8(..20) == 0 {
            top.insert(part.into(), json!("not an object"));
        } else if !inner.is_empty() {
            top.insert(part.into(), Value::Object(inner));
        }
        (direction, Value::Object(top))
    }
}

#[tokio::test]
async fn the_database_refuses_exactly_what_the_relay_refuses_with_the_same_problems() {
    let db = TestDatabase::new("keys_parity").await;
    let mut g = Gen(fastrand::Rng::with_seed(0x5eed_c0f1));
    let cases: Vec<(Direction, Value)> = (0..3000).map(|_| g.config()).collect();
    let mut refused = 0;
    for chunk in cases.chunks(500) {
        let dirs: Vec<&str> = chunk.iter().map(|(d, _)| d.as_str()).collect();
        let configs: Vec<Value> = chunk.iter().map(|(_, c)| c.clone()).collect();
        // Each config as PostgreSQL stores it (jsonb orders keys), and the problems it finds.
        let rows = db
            .conn
            .client
            .query(
                "SELECT c, pgtrickle.relay_config_problems(d, c)
                   FROM unnest($1::text[], $2::jsonb[]) WITH ORDINALITY AS x(d, c, n) ORDER BY n",
                &[&dirs, &configs],
            )
            .await
            .unwrap();
        for ((direction, _), row) in chunk.iter().zip(rows) {
            let stored: Value = row.get(0);
            let mut sql: Vec<String> = row.get(1);
            let mut relay = relay_problems(*direction, &stored);
            sql.sort();
            relay.sort();
            assert_eq!(relay, sql, "{} config {stored}", direction.as_str());
            refused += usize::from(!relay.is_empty());
        }
    }
    // The generator makes both kinds in numbers.
    assert!((600..2800).contains(&refused), "{refused} of 3000 refused");
    db.drop_now().await;
}

/// For every backend type and direction, both call forms and a direct INSERT refuse an unknown
/// key, a wrong type and a missing required key, naming the pipeline and the key; nothing is
/// stored; a valid config is stored.
#[tokio::test]
async fn every_writer_refuses_bad_configs_for_every_backend() {
    let db = TestDatabase::new("keys_writers").await;
    let c = &db.conn.client;
    let minimal = |t: &TypeKeys| {
        let mut m = Map::new();
        for r in t.keys.keys.iter().filter(|r| r.required) {
            let v = match &r.kind {
                Kind::List => json!(["a"]),
                Kind::Int { min, .. } => json!(min),
                _ => json!("x"),
            };
            m.insert(r.name.clone(), v);
        }
        m
    };
    for (direction, dir) in [(Direction::Forward, &CATALOG.forward), (Direction::Reverse, &CATALOG.reverse)] {
        for t in &dir.types {
            let name = format!("{}-{}", direction.as_str(), t.name);
            let mut backend = minimal(t);
            backend.insert("type".into(), json!(t.name));
            let (seed_fn, positional) = match direction {
                Direction::Forward => (
                    "SELECT pgtrickle.set_relay_outbox($1, config => $2)",
                    "SELECT pgtrickle.set_relay_outbox($1, 'outbox_x', 'g', $2)",
                ),
                Direction::Reverse => (
                    "SELECT pgtrickle.set_relay_inbox($1, config => $2)",
                    "SELECT pgtrickle.set_relay_inbox($1::text, 'inbox_x'::text, $2::jsonb)",
                ),
            };
            let table = match direction {
                Direction::Forward => "pgtrickle.relay_outbox_config",
                Direction::Reverse => "pgtrickle.relay_inbox_config",
            };
            let wrap = |b: &Map<String, Value>| match direction {
                Direction::Forward => json!({"stream_table": "orders", "sink": b}),
                Direction::Reverse => json!({"inbox_table": "orders_inbox", "source": b}),
            };
            let some_int = t.keys.keys.iter().find(|r| matches!(r.kind, Kind::Int { .. }) || r.kind == Kind::Flag);
            let mut bad: Vec<(Map<String, Value>, String)> = Vec::new();
            let mut typo = backend.clone();
            let victim = &t.keys.keys[0].name;
            typo.insert(format!("{victim}x"), json!("1"));
            bad.push((
                typo,
                format!("unknown key 'sink.{victim}x' for a {} {}; did you mean '{victim}'?", t.name, dir.role),
            ));
            if let Some(rule) = some_int {
                let mut wrong = backend.clone();
                wrong.insert(rule.name.clone(), json!({"an": "object"}));
                bad.push((wrong, format!("key 'sink.{}': expected ", rule.name)));
            }
            if let Some(rule) = t.keys.keys.iter().find(|r| r.required) {
                let mut missing = backend.clone();
                missing.remove(&rule.name);
                bad.push((missing, format!("missing key 'sink.{}' for a {} {}", rule.name, t.name, dir.role)));
            }
            for (b, expected) in bad {
                let expected = expected.replace("'sink.", &format!("'{}.", dir.role));
                let positional_b = Value::Object(b.clone());
                for (sql, config) in [(seed_fn, wrap(&b)), (positional, positional_b)] {
                    let e = c.execute(sql, &[&name, &config]).await.expect_err(&format!("{name}: {config} was stored"));
                    let db_error = e.as_db_error().expect("a database error");
                    let msg = db_error.message();
                    assert!(msg.starts_with(&format!("relay.invalid_config: pipeline '{name}': ")), "{msg}");
                    assert!(msg.contains(&expected), "{name} via {sql}: {msg}\nexpected: {expected}");
                }
                let e = c
                    .execute(&format!("INSERT INTO {table} (name, config) VALUES ($1, $2)"), &[&name, &wrap(&b)])
                    .await
                    .expect_err("direct insert stored a bad config");
                assert!(e.as_db_error().unwrap().message().contains(&expected), "{e:?}");
            }
            let stored: i64 =
                c.query_one(&format!("SELECT count(*) FROM {table} WHERE name = $1"), &[&name]).await.unwrap().get(0);
            assert_eq!(stored, 0, "{name}: nothing invalid is stored");
            c.execute(seed_fn, &[&name, &wrap(&backend)]).await.unwrap_or_else(|e| panic!("{name}: {e:?}"));
            c.execute(positional, &[&format!("{name}-p"), &Value::Object(backend.clone())])
                .await
                .unwrap_or_else(|e| panic!("{name} positional: {e:?}"));
        }
    }
    // A config stored before the validation stays manageable: enable/disable/delete work.
    c.batch_execute(
        "ALTER TABLE pgtrickle.relay_outbox_config DISABLE TRIGGER relay_outbox_config_validate;
         INSERT INTO pgtrickle.relay_outbox_config (name, config)
              VALUES ('old-typo', '{\"stream_table\": \"s\", \"sink_type\": \"stdout\", \"formatt\": \"json\"}');
         ALTER TABLE pgtrickle.relay_outbox_config ENABLE TRIGGER relay_outbox_config_validate;
         SELECT pgtrickle.disable_relay('old-typo');
         SELECT pgtrickle.enable_relay('old-typo');",
    )
    .await
    .unwrap();
    db.drop_now().await;
}

/// The published JSON Schema never accepts a config the relay refuses (it may be stricter:
/// it spells types and choices in lower case and has no `null` for an absent key), but for a
/// misspelt template variable, which only the relay and the database check.
#[test]
fn the_json_schema_accepts_only_what_the_relay_accepts() {
    let schema = CATALOG.json_schema();
    let branch = |d: &str| json!({"$defs": schema["$defs"], "$ref": format!("#/$defs/{d}")});
    let forward = jsonschema::draft202012::new(&branch("forward")).unwrap();
    let reverse = jsonschema::draft202012::new(&branch("reverse")).unwrap();
    let mut g = Gen(fastrand::Rng::with_seed(0x5c4e_4a11));
    let (mut both, mut relay_only) = (0, 0);
    for _ in 0..3000 {
        let (direction, config) = g.config();
        let relay = relay_problems(direction, &config);
        let validator = if direction == Direction::Forward { &forward } else { &reverse };
        // The one rule a JSON Schema cannot say: a `{word}` two edits from a template variable.
        let template_typo_only = !relay.is_empty() && relay.iter().all(|p| p.contains("unknown template variable"));
        if validator.is_valid(&config) && !template_typo_only {
            assert!(relay.is_empty(), "the schema accepts what the relay refuses: {config}: {relay:?}");
            both += 1;
        } else if relay.is_empty() {
            relay_only += 1;
        }
    }
    // Most configs the relay accepts, the schema accepts too.
    assert!(both > relay_only, "{both} accepted by both, {relay_only} by the relay only");
}

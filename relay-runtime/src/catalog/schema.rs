//! Installing and migrating the relay catalog in schema `pgtrickle`.
//!
//! Idempotent and versioned: `pgtrickle.relay_schema_version` records each applied migration,
//! and every migration runs under a transaction-scoped advisory lock, so many relays starting
//! at once migrate exactly once. The catalog must work on bare PostgreSQL *and* beside a
//! pg_trickle ≤ 0.45 that already created the same tables and functions as extension members
//! (contract §3): tables are `CREATE … IF NOT EXISTS`, and a contract function is created only
//! when missing, or replaced only when it is ours (not an extension member).

use tokio_postgres::Client;

/// Bumped whenever a migration is appended to [`MIGRATIONS`].
pub const SCHEMA_VERSION: i32 = 5;

/// Advisory key serialising concurrent migrations (any constant distinct from pipeline locks,
/// which use the two-int4 form).
const MIGRATION_LOCK_KEY: i64 = 0x7067_7472_6c79_0001;

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "installing the relay catalog (migration {version}: {step}) failed: {}",
        crate::catalog::connect::error_text(cause)
    )]
    Migration { version: i32, step: String, cause: tokio_postgres::Error },
    #[error("the relay catalog in this database has version {found}, newer than this relay understands ({SCHEMA_VERSION}); upgrade pgtrickle-relay")]
    TooNew { found: i32 },
    #[error("relay catalog is not installed (version {found} < {SCHEMA_VERSION}); run `pgtrickle-relay migrate` or start `run` without --no-migrate")]
    NotInstalled { found: i32 },
    #[error("database error while checking the relay catalog: {}", crate::catalog::connect::error_text(.0))]
    Db(#[from] tokio_postgres::Error),
}

/// One step of a migration: plain SQL, or a contract function that is installed only when it
/// is missing or already ours.
enum Step {
    Sql(&'static str, &'static str),
    ContractFunction { signature: &'static str, create: &'static str },
}

struct Migration {
    version: i32,
    description: &'static str,
    steps: &'static [Step],
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "relay catalog: config tables, offsets, functions, notify trigger, status, dead letters",
        steps: &[
            Step::Sql("config tables", include_str!("sql/v1_tables.sql")),
            Step::ContractFunction {
                signature: "pgtrickle.relay_config_notify()",
                create: include_str!("sql/fn_relay_config_notify.sql"),
            },
            Step::Sql("notify triggers", include_str!("sql/v1_triggers.sql")),
            Step::ContractFunction {
                signature: "pgtrickle.set_relay_outbox(text,text,text,jsonb,integer,boolean)",
                create: include_str!("sql/fn_set_relay_outbox.sql"),
            },
            Step::ContractFunction {
                signature: "pgtrickle.set_relay_inbox(text,text,jsonb,integer,text,boolean,integer,boolean)",
                create: include_str!("sql/fn_set_relay_inbox.sql"),
            },
            Step::ContractFunction {
                signature: "pgtrickle.enable_relay(text)",
                create: include_str!("sql/fn_enable_relay.sql"),
            },
            Step::ContractFunction {
                signature: "pgtrickle.disable_relay(text)",
                create: include_str!("sql/fn_disable_relay.sql"),
            },
            Step::ContractFunction {
                signature: "pgtrickle.delete_relay(text)",
                create: include_str!("sql/fn_delete_relay.sql"),
            },
            Step::ContractFunction {
                signature: "pgtrickle.get_relay_config(text)",
                create: include_str!("sql/fn_get_relay_config.sql"),
            },
            Step::ContractFunction {
                signature: "pgtrickle.list_relay_configs()",
                create: include_str!("sql/fn_list_relay_configs.sql"),
            },
            // The seed README's `set_relay_outbox(name, config => jsonb)` forms. pg_trickle never had
            // them, so they are always ours and never clash with its positional overloads.
            Step::Sql("seed-form config functions", include_str!("sql/v1_seed_functions.sql")),
            Step::Sql("status and dead-letter tables", include_str!("sql/v1_status.sql")),
        ],
    },
    Migration {
        version: 2,
        description: "diff mode: snapshot state and baseline tables",
        steps: &[Step::Sql("snapshot state", include_str!("sql/v2_snapshot_state.sql"))],
    },
    Migration {
        version: 3,
        description: "relay instances (fair-share balancing)",
        steps: &[Step::Sql("instances", include_str!("sql/v3_instances.sql"))],
    },
    Migration {
        version: 4,
        description: "outbox epochs (recreated outboxes, reused ids)",
        steps: &[Step::Sql("outbox epochs", include_str!("sql/v4_outbox_epochs.sql"))],
    },
    Migration {
        version: 5,
        description: "pipeline configs checked where they are written (key catalog, validation trigger)",
        steps: &[Step::Sql("config validation", include_str!("sql/v5_config_validation.sql"))],
    },
];

/// Installs or upgrades the catalog; returns the version now installed.
pub async fn migrate(client: &mut Client) -> Result<i32, SchemaError> {
    let wrap = |version: i32, step: &str| {
        let step = step.to_owned();
        move |cause| SchemaError::Migration { version, step, cause }
    };
    // Concurrent relays may all start on an empty database: the bootstrap is serialised too.
    let tx = client.transaction().await.map_err(wrap(0, "begin"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY]).await.map_err(wrap(0, "lock"))?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS pgtrickle;
         CREATE TABLE IF NOT EXISTS pgtrickle.relay_schema_version (
             version int PRIMARY KEY,
             description text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await
    .map_err(wrap(0, "schema version table"))?;
    tx.commit().await.map_err(wrap(0, "commit"))?;
    let found = installed_version(client).await?;
    if found > SCHEMA_VERSION {
        return Err(SchemaError::TooNew { found });
    }
    for m in MIGRATIONS {
        let tx = client.transaction().await.map_err(wrap(m.version, "begin"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
            .await
            .map_err(wrap(m.version, "lock"))?;
        let done = tx
            .query_opt("SELECT 1 FROM pgtrickle.relay_schema_version WHERE version = $1", &[&m.version])
            .await
            .map_err(wrap(m.version, "check"))?
            .is_some();
        if done {
            tx.commit().await.map_err(wrap(m.version, "commit"))?;
            continue;
        }
        for step in m.steps {
            match step {
                Step::Sql(name, sql) => tx.batch_execute(sql).await.map_err(wrap(m.version, name))?,
                Step::ContractFunction { signature, create } => {
                    // Missing → create. Present and ours → replace (picks up fixes). Present as
                    // a member of the pg_trickle extension → leave the extension's own alone.
                    let row = tx
                        .query_one(
                            "SELECT to_regprocedure($1) IS NOT NULL,
                                    EXISTS (SELECT 1 FROM pg_depend d
                                             WHERE d.classid = 'pg_proc'::regclass
                                               AND d.objid = to_regprocedure($1)::oid
                                               AND d.deptype = 'e')",
                            &[signature],
                        )
                        .await
                        .map_err(wrap(m.version, signature))?;
                    let (exists, extension_owned): (bool, bool) = (row.get(0), row.get(1));
                    if !(exists && extension_owned) {
                        tx.batch_execute(create).await.map_err(wrap(m.version, signature))?;
                    }
                }
            }
        }
        tx.execute(
            "INSERT INTO pgtrickle.relay_schema_version (version, description) VALUES ($1, $2)",
            &[&m.version, &m.description],
        )
        .await
        .map_err(wrap(m.version, "record version"))?;
        tx.commit().await.map_err(wrap(m.version, "commit"))?;
        tracing::info!(version = m.version, description = m.description, "relay catalog migrated");
    }
    store_key_catalog(client).await.map_err(wrap(SCHEMA_VERSION, "key catalog"))?;
    installed_version(client).await
}

/// Stores this relay's key catalog for the SQL-side validation of pipeline configs (when it
/// differs from the stored one: a relay of another version wrote it, or none did).
async fn store_key_catalog(client: &Client) -> Result<(), tokio_postgres::Error> {
    let catalog = crate::config::keys::CATALOG.to_sql_json();
    client
        .execute(
            "INSERT INTO pgtrickle.relay_config_keys AS k (id, catalog, relay_version) VALUES (true, $1, $2)
             ON CONFLICT (id) DO UPDATE SET catalog = EXCLUDED.catalog, relay_version = EXCLUDED.relay_version,
                                            updated_at = now()
             WHERE k.catalog IS DISTINCT FROM EXCLUDED.catalog",
            &[&catalog, &env!("CARGO_PKG_VERSION")],
        )
        .await
        .map(drop)
}

/// The catalog version installed in the database (0 when none).
pub async fn installed_version(client: &Client) -> Result<i32, SchemaError> {
    let exists: bool =
        client.query_one("SELECT to_regclass('pgtrickle.relay_schema_version') IS NOT NULL", &[]).await?.get(0);
    if !exists {
        return Ok(0);
    }
    Ok(client.query_one("SELECT coalesce(max(version), 0) FROM pgtrickle.relay_schema_version", &[]).await?.get(0))
}

/// Checks that the installed catalog is usable by this binary (for `run --no-migrate`).
pub async fn verify(client: &Client) -> Result<i32, SchemaError> {
    let found = installed_version(client).await?;
    if found > SCHEMA_VERSION {
        return Err(SchemaError::TooNew { found });
    }
    if found < SCHEMA_VERSION {
        return Err(SchemaError::NotInstalled { found });
    }
    Ok(found)
}

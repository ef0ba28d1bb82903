//! Database migrations: the SQL files of the workspace's `migrations/` folder, embedded at build
//! time and applied in version order by refinery, which records them in
//! `refinery_schema_history`.
//!
//! Several sink instances may start at once: each takes a PostgreSQL advisory lock (session
//! level, on the migrating connection) before migrating, so one applies the migrations and the
//! others then find nothing left to do.

use tokio_postgres::Client;

mod embedded {
    refinery::embed_migrations!("../migrations");
}

/// Key of the advisory lock serialising migrations (any constant unique to this application).
const MIGRATION_LOCK_KEY: i64 = 0x7974_7472_656e_6431; // "yttrend1"

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("taking the migration lock or setting up its session: {0}")]
    Lock(#[source] tokio_postgres::Error),
    #[error("applying migrations: {0}")]
    Apply(#[source] refinery::Error),
}

/// Applies every migration not yet applied; returns the versions applied by this call.
pub async fn run(client: &mut Client) -> Result<Vec<i32>, MigrateError> {
    run_to(client, refinery::Target::Latest).await
}

/// Applies the migrations not yet applied up to `target` (a test of a migration that moves
/// data starts from the version before it).
pub async fn run_to(
    client: &mut Client,
    target: refinery::Target,
) -> Result<Vec<i32>, MigrateError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .map_err(MigrateError::Lock)?;
    // A migration that moves data (V3 copies the whole history) may run longer than the
    // pool's statement_timeout (SINK_WRITE_TIMEOUT): none while migrating.
    let result = match client.batch_execute("SET statement_timeout = 0").await {
        Ok(()) => embedded::migrations::runner()
            .set_target(target)
            .run_async(client)
            .await
            .map_err(MigrateError::Apply),
        Err(e) => Err(MigrateError::Lock(e)),
    };
    // Released even when migrating failed; the session ending would release it too. The
    // connection goes back to the pool with its own statement_timeout.
    let _ = client.batch_execute("RESET statement_timeout").await;
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await;
    let report = result?;
    let applied: Vec<i32> = report
        .applied_migrations()
        .iter()
        .map(|m| m.version())
        .collect();
    for m in report.applied_migrations() {
        tracing::info!(version = m.version(), name = m.name(), "Applied migration");
    }
    Ok(applied)
}

//! The benchmarked workflow on DBOS: five steps, each one database transaction inserting one row.
//!
//! ```text
//! bench_chain(workflow id W):
//!   insert_step_1 -> insert_step_2 -> ... -> insert_step_5
//!   each: INSERT INTO bench_chain_step (saga_id, step, value) VALUES (W, step, step)
//!         ON CONFLICT DO NOTHING
//! ```
//!
//! The same chain as ratchet's benchmark (`bench/src/chain.rs`), on the same table, written the way
//! the `dbos` crate (0.5) is meant to be used:
//!
//! - The workflow is a registered async function; its id is the saga id, so the driver names each
//!   workflow with a fresh UUID and the body reads it back with [`dbos::workflow_id`].
//! - Each insert is a [`dbos::step`] (more exactly [`dbos::step_with`], for the retry policy). DBOS
//!   checkpoints a step *after* its body returns, in its own system-database transaction
//!   (`dbos.operation_outputs`), and on a replay returns the checkpoint without running the body.
//!   The Rust crate has no transactional step (its README: "Rust has no transactional step yet"),
//!   so the body's transaction and the checkpoint are two commits, and a crash between them runs the
//!   body again: a DBOS step is at-least-once. That is why the insert carries
//!   `ON CONFLICT DO NOTHING`, exactly as plain steno's action must.
//! - The body's transaction is the single `INSERT` statement, committed on its own (autocommit), on
//!   the application's pool: one transaction, one round trip. This is what an application would
//!   write for a one-statement step, and what ratchet's plain-steno baseline sends too.
//!
//! The table is created by [`create_table`] if it does not exist (same definition as
//! `bench/migrations`).

use dbos::{DBOS, StepOptions, WorkflowRef};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

/// How many steps the chain has.
pub const STEPS: i32 = 5;

/// The name the workflow is registered (and recorded in `dbos.workflow_status`) under.
pub const WORKFLOW_NAME: &str = "bench_chain";

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS bench_chain_step ( \
                                saga_id UUID NOT NULL, \
                                step INT4 NOT NULL, \
                                value INT8 NOT NULL, \
                                PRIMARY KEY (saga_id, step))";

/// Bound as text and cast by the server, which rejects an id that is not a UUID.
const INSERT_STEP: &str = "INSERT INTO bench_chain_step (saga_id, step, value) \
                           VALUES ($1::uuid, $2, $3) ON CONFLICT DO NOTHING";

/// How often a step body that hit a serialization failure is tried, in all.
///
/// The benchmark's server runs at `SERIALIZABLE` (as ratchet's embedded one does), where even
/// inserts of distinct keys can in principle be aborted with SQLSTATE 40001; a step that was is
/// retried by DBOS's own step policy, a few milliseconds apart.
const STEP_ATTEMPTS: u32 = 5;

/// What a step of the chain can fail with, recorded by DBOS as the step's (and workflow's) outcome.
#[derive(Debug, thiserror::Error, Serialize, Deserialize, Clone, PartialEq, Eq)]
pub enum ChainError {
    #[error("the chain ran outside a DBOS workflow, so it has no workflow id to key its rows by")]
    NotInWorkflow,
    #[error("the workflow id `{0}` is not a UUID; the chain's rows are keyed by a UUID")]
    NotAUuid(String),
    #[error("step {step}: {message} (SQLSTATE {sqlstate:?})")]
    Database {
        step: i32,
        sqlstate: Option<String>,
        message: String,
    },
}

impl ChainError {
    /// Whether the database asked for the transaction to be tried again (class 40: serialization
    /// failure, deadlock).
    fn is_retryable(&self) -> bool {
        matches!(self, ChainError::Database { sqlstate: Some(code), .. } if code.starts_with("40"))
    }
}

/// The registered workflow: takes nothing, returns nothing, fails with [`ChainError`].
pub type ChainWorkflow = WorkflowRef<(), (), ChainError>;

/// Creates `bench_chain_step` if it does not exist.
pub async fn create_table(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query(CREATE_TABLE).execute(pool).await.map(|_| ())
}

/// Registers the chain with `dbos` (before its launch); its steps write through `pool`.
pub fn register(dbos: &DBOS, pool: PgPool) -> dbos::Result<ChainWorkflow> {
    dbos.register_workflow(WORKFLOW_NAME, move |(): ()| chain(pool.clone()))
}

/// The workflow body.
async fn chain(pool: PgPool) -> dbos::Result<(), ChainError> {
    let workflow_id = dbos::workflow_id().ok_or(ChainError::NotInWorkflow)?;
    let saga_id = Uuid::parse_str(&workflow_id)
        .map_err(|_| ChainError::NotAUuid(workflow_id.clone()))?
        .to_string();
    for step in 1..=STEPS {
        let options = StepOptions::<ChainError> {
            max_attempts: STEP_ATTEMPTS,
            interval: Duration::from_millis(2),
            ..StepOptions::default()
        }
        .should_retry(|error| matches!(error, dbos::Error::Application(e) if e.is_retryable()));
        let name = format!("insert_step_{step}");
        dbos::step_with(&name, options, || insert_step(&pool, &saga_id, step)).await?;
    }
    Ok(())
}

/// One step's body: one transaction inserting the step's row.
async fn insert_step(pool: &PgPool, saga_id: &str, step: i32) -> dbos::Result<(), ChainError> {
    sqlx::query(INSERT_STEP)
        .bind(saga_id)
        .bind(step)
        .bind(i64::from(step))
        .execute(pool)
        .await
        .map_err(|error| ChainError::Database {
            step,
            sqlstate: error
                .as_database_error()
                .and_then(|e| e.code())
                .map(|code| code.into_owned()),
            message: error.to_string(),
        })?;
    Ok(())
}

/// Checks that every workflow in `workflow_ids` left its five rows and is recorded `SUCCESS` by
/// DBOS: a benchmark whose work did not happen reports nothing.
pub async fn verify(pool: &PgPool, workflow_ids: &[String]) -> anyhow::Result<()> {
    let rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM bench_chain_step WHERE saga_id = ANY($1::text[]::uuid[])",
    )
    .bind(workflow_ids)
    .fetch_one(pool)
    .await?;
    let succeeded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM dbos.workflow_status \
         WHERE workflow_uuid = ANY($1) AND name = $2 AND status = 'SUCCESS'",
    )
    .bind(workflow_ids)
    .bind(WORKFLOW_NAME)
    .fetch_one(pool)
    .await?;
    let expected_rows = workflow_ids.len() as i64 * i64::from(STEPS);
    if rows != expected_rows || succeeded != workflow_ids.len() as i64 {
        anyhow::bail!(
            "{} workflows should have left {expected_rows} rows in bench_chain_step and {} SUCCESS \
             rows in dbos.workflow_status; found {rows} and {succeeded}",
            workflow_ids.len(),
            workflow_ids.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_class_40_failures_are_retried() {
        let failure = |sqlstate: Option<&str>| ChainError::Database {
            step: 1,
            sqlstate: sqlstate.map(str::to_owned),
            message: "x".to_owned(),
        };
        assert!(failure(Some("40001")).is_retryable());
        assert!(failure(Some("40P01")).is_retryable());
        assert!(!failure(Some("23505")).is_retryable());
        assert!(!failure(None).is_retryable());
        assert!(!ChainError::NotInWorkflow.is_retryable());
    }
}

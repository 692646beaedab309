//! The 5-step chain: the smallest saga of database nodes, the same workflow the DBOS peer runs.
//!
//! ```text
//! step_1 -> step_2 -> step_3 -> step_4 -> step_5
//! each:   INSERT INTO bench_chain_step (saga_id, step, value) VALUES ($saga, $step, $step)
//! ```
//!
//! Each step is one transaction inserting one row (`value = step`), on the table of `bench/migrations`. Both
//! implementations send exactly that statement (with `ON CONFLICT DO NOTHING`, which the plain-steno action
//! needs to be idempotent on a replay): ratchet as a [`DbNode`] (its transaction also writes the commit
//! record and the node's log events), plain steno as an action whose statement commits on its own, between
//! the store's `started` and `succeeded` writes.

use crate::baseline::{Wrap, in_own_transaction};
use diesel::sql_types::{BigInt, Int4, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use futures::FutureExt;
use ratchet_engine::{CommitTx, DbNode, NodeError, NodeRegistry, PrepareCx, SagaBuilder, SagaDef};
use ratchet_store::DbPool;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use steno::{ActionContext, ActionError, ActionRegistry, DagBuilder, Node, SagaDag, SagaName};
use uuid::Uuid;

/// The chain's table.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// How many steps the chain has.
pub const STEPS: i32 = 5;

const INSERT_STEP: &str = "INSERT INTO bench_chain_step (saga_id, step, value) VALUES ($1, $2, $3) \
                           ON CONFLICT DO NOTHING";

fn node_name(step: i32) -> String {
    format!("step_{step}")
}

// -------- ratchet --------

/// The chain on ratchet.
pub struct BenchChain;

/// The chain takes no parameters: each row is keyed by the saga's own id.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ChainParams {}

impl SagaDef for BenchChain {
    const NAME: &'static str = "bench-chain";
    type Params = ChainParams;
    type Context = ();
    type Error = ratchet_engine::Untyped;

    fn register(registry: &mut NodeRegistry<Self>) {
        registry.db::<InsertChainStep>();
    }

    fn build(_: &ChainParams, dag: &mut SagaBuilder<Self>) -> Result<(), String> {
        for step in 1..=STEPS {
            dag.db(&node_name(step), InsertChainStep { step });
        }
        Ok(())
    }
}

/// One step: inserts its row.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InsertChainStep {
    pub step: i32,
}

impl DbNode<BenchChain> for InsertChainStep {
    const NAME: &'static str = "bench_chain.insert_step";
    type Plan = ();
    /// The step inserted.
    type Receipt = i32;
    type Output = i64;

    async fn prepare(&self, _: &mut PrepareCx<'_, BenchChain>) -> Result<(), NodeError> {
        Ok(())
    }

    async fn commit(&self, tx: &mut CommitTx<'_>, (): ()) -> Result<i32, NodeError> {
        let saga_id = tx.saga_id();
        diesel::sql_query(INSERT_STEP)
            .bind::<SqlUuid, _>(saga_id)
            .bind::<Int4, _>(self.step)
            .bind::<BigInt, _>(i64::from(self.step))
            .execute(tx.conn())
            .await?;
        Ok(self.step)
    }

    fn finish(step: i32) -> i64 {
        i64::from(step)
    }

    async fn compensate(&self, tx: &mut CommitTx<'_>, step: i32) -> Result<(), NodeError> {
        let saga_id = tx.saga_id();
        diesel::sql_query("DELETE FROM bench_chain_step WHERE saga_id = $1 AND step = $2")
            .bind::<SqlUuid, _>(saga_id)
            .bind::<Int4, _>(step)
            .execute(tx.conn())
            .await?;
        Ok(())
    }
}

// -------- plain steno --------

/// What every plain-steno action of the baseline sagas shares.
#[derive(Debug)]
pub(crate) struct PlainCx {
    pub(crate) pool: DbPool,
}

/// The chain on plain steno.
#[derive(Debug)]
pub(crate) struct PlainChain;

impl steno::SagaType for PlainChain {
    type ExecContextType = PlainCx;
}

/// The plain chain's parameters: steno gives an action no saga id, so the saga carries its own.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct PlainChainParams {
    pub(crate) saga_id: Uuid,
}

/// The plain chain's action registry.
pub(crate) fn plain_chain_registry() -> Arc<ActionRegistry<PlainChain>> {
    let mut registry = ActionRegistry::new();
    registry.register(plain_step_action());
    Arc::new(registry)
}

fn plain_step_action() -> Arc<dyn steno::Action<PlainChain>> {
    steno::ActionFunc::new_action("bench_chain.plain_insert_step", plain_step, plain_step_undo)
}

/// The plain chain's DAG for saga `saga_id`.
pub(crate) fn plain_chain_dag(saga_id: Uuid) -> Result<Arc<SagaDag>, crate::BenchError> {
    let action = plain_step_action();
    let mut builder = DagBuilder::new(SagaName::new("bench-chain-plain"));
    for step in 1..=STEPS {
        builder.append(Node::action(
            node_name(step),
            node_name(step),
            action.as_ref(),
        ));
    }
    let dag = builder
        .build()
        .map_err(|e| crate::BenchError::Steno(e.to_string()))?;
    let params = serde_json::to_value(PlainChainParams { saga_id })
        .map_err(|e| crate::BenchError::Steno(e.to_string()))?;
    Ok(Arc::new(SagaDag::new(dag, params)))
}

/// The step number in a node label `step_N`.
fn step_of(label: &str) -> Result<i32, ActionError> {
    label
        .strip_prefix("step_")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| ActionError::action_failed(format!("not a chain step: {label:?}")))
}

async fn plain_step(ctx: ActionContext<PlainChain>) -> Result<i64, ActionError> {
    let PlainChainParams { saga_id } = ctx.saga_params()?;
    let step = step_of(&ctx.node_label())?;
    in_own_transaction(&ctx.user_data().pool, Wrap::Autocommit, |conn| {
        async move {
            diesel::sql_query(INSERT_STEP)
                .bind::<SqlUuid, _>(saga_id)
                .bind::<Int4, _>(step)
                .bind::<BigInt, _>(i64::from(step))
                .execute(conn)
                .await?;
            Ok(())
        }
        .boxed()
    })
    .await?;
    Ok(i64::from(step))
}

async fn plain_step_undo(ctx: ActionContext<PlainChain>) -> Result<(), anyhow::Error> {
    let PlainChainParams { saga_id } = ctx.saga_params()?;
    let step = step_of(&ctx.node_label())?;
    in_own_transaction(&ctx.user_data().pool, Wrap::Autocommit, |conn| {
        async move {
            diesel::sql_query("DELETE FROM bench_chain_step WHERE saga_id = $1 AND step = $2")
                .bind::<SqlUuid, _>(saga_id)
                .bind::<Int4, _>(step)
                .execute(conn)
                .await?;
            Ok(())
        }
        .boxed()
    })
    .await?;
    Ok(())
}

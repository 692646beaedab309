//! The harness pointed at small sagas of its own: the engine's example saga over the full matrix, and a copy of
//! it whose compensations are broken on purpose (mutants), which the harness must catch.
//!
//! The mutants are the harness's teeth beyond the legacy fixture: a compensation that does nothing, one that
//! forgets a row, one that refunds twice. Each returns `Ok`, so the engine records it as done and every
//! engine-level check (commit and compensation records, `undo_failed`) is satisfied; only the suite's SQL
//! checks can see the damage. If they were weakened, these tests fail.

mod common;

use common::{assert_all_pass, run};
use diesel::sql_types::{BigInt, Text, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use diesel_migrations::EmbeddedMigrations;
use ratchet_engine::{
    CommitTx, DbNode, EngineBuilder, NodeError, NodeKind, NodeRegistry, PrepareCx, SagaBuilder,
    SagaDef,
};
use ratchet_example_saga as example;
use ratchet_fault_injection::{
    CellResult, EXAMPLE_WIDGET_NAME, EXAMPLE_WIDGET_PRICE, Fault, HarnessError, Matrix,
    ProvisionSuite, SagaSuite, Status, check_example_outcome, example_violations,
    open_example_account,
};
use ratchet_store::DbConnection;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use uuid::Uuid;

/// Every applicable fault of a database node: all but `response_lost`.
fn db_faults() -> Vec<Fault> {
    Fault::ALL
        .into_iter()
        .filter(|f| f.applies_to(NodeKind::Db))
        .collect()
}

/// The crate docs' example: the engine's example saga, every node × every fault, all clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn example_saga_passes_every_cell() {
    let report = run(Matrix::new().suite(ProvisionSuite)).await;
    assert_all_pass(&report, 3 * db_faults().len());
}

// ---------------------------------------------------------------------------------------------------------
// The mutant saga: the example saga's three nodes, on the example's tables, with a compensation chosen by
// the parameters.

/// Which compensation is broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Mutation {
    /// Every compensation correct: the control.
    None,
    /// reserve_widget's compensation does nothing: the widget row leaks.
    ReserveUndoesNothing,
    /// charge_account's compensation refunds the balance but forgets to delete the ledger row.
    ChargeForgetsLedgerRow,
    /// charge_account's compensation refunds twice (and deletes the ledger row).
    ChargeRefundsTwice,
}

impl Mutation {
    fn name(self) -> &'static str {
        match self {
            Mutation::None => "none",
            Mutation::ReserveUndoesNothing => "reserve-undoes-nothing",
            Mutation::ChargeForgetsLedgerRow => "charge-forgets-ledger-row",
            Mutation::ChargeRefundsTwice => "charge-refunds-twice",
        }
    }
}

struct MutantProvision;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct MutantParams {
    account_id: Uuid,
    widget_name: String,
    price: i64,
    mutation: Mutation,
}

impl SagaDef for MutantProvision {
    const NAME: &'static str = "mutant-provision";
    type Params = MutantParams;
    type Context = ();
    type Error = ratchet_engine::Untyped;

    fn register(registry: &mut NodeRegistry<Self>) {
        registry
            .db::<ReserveWidget>()
            .db::<ChargeAccount>()
            .db::<ActivateWidget>();
    }

    fn build(params: &MutantParams, dag: &mut SagaBuilder<Self>) -> Result<(), String> {
        // The node values are serialized into the DAG, so a recovered saga keeps its mutation.
        dag.db(
            "reserve_widget",
            ReserveWidget {
                undo_does_nothing: params.mutation == Mutation::ReserveUndoesNothing,
            },
        )
        .db(
            "charge_account",
            ChargeAccount {
                mutation: params.mutation,
            },
        )
        .db("activate_widget", ActivateWidget);
        Ok(())
    }
}

#[derive(diesel::QueryableByName)]
struct IdRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
}

#[derive(Serialize, Deserialize)]
struct ReserveWidget {
    undo_does_nothing: bool,
}

impl DbNode<MutantProvision> for ReserveWidget {
    const NAME: &'static str = "mutant.reserve_widget";
    type Plan = (Uuid, String);
    type Receipt = Uuid;
    type Output = Uuid;

    async fn prepare(
        &self,
        cx: &mut PrepareCx<'_, MutantProvision>,
    ) -> Result<(Uuid, String), NodeError> {
        Ok((cx.params().account_id, cx.params().widget_name.clone()))
    }

    async fn commit(
        &self,
        tx: &mut CommitTx<'_>,
        (account, name): (Uuid, String),
    ) -> Result<Uuid, NodeError> {
        let row: IdRow = diesel::sql_query(
            "INSERT INTO example_widget (id, account_id, name, state) VALUES ($1, $2, $3, 'reserved') \
             RETURNING id",
        )
        .bind::<SqlUuid, _>(tx.derived_id("widget"))
        .bind::<SqlUuid, _>(account)
        .bind::<Text, _>(name)
        .get_result(tx.conn())
        .await?;
        Ok(row.id)
    }

    fn finish(widget_id: Uuid) -> Uuid {
        widget_id
    }

    async fn compensate(&self, tx: &mut CommitTx<'_>, widget_id: Uuid) -> Result<(), NodeError> {
        if self.undo_does_nothing {
            return Ok(());
        }
        diesel::sql_query("DELETE FROM example_widget WHERE id = $1")
            .bind::<SqlUuid, _>(widget_id)
            .execute(tx.conn())
            .await?;
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct ChargeAccount {
    mutation: Mutation,
}

#[derive(Serialize, Deserialize)]
struct Charged {
    ledger_id: Uuid,
    account_id: Uuid,
    amount: i64,
}

impl DbNode<MutantProvision> for ChargeAccount {
    const NAME: &'static str = "mutant.charge_account";
    type Plan = (Uuid, Uuid, i64);
    type Receipt = Charged;
    type Output = ();

    async fn prepare(
        &self,
        cx: &mut PrepareCx<'_, MutantProvision>,
    ) -> Result<(Uuid, Uuid, i64), NodeError> {
        let widget_id: Uuid = cx.output("reserve_widget")?;
        Ok((cx.params().account_id, widget_id, cx.params().price))
    }

    async fn commit(
        &self,
        tx: &mut CommitTx<'_>,
        (account_id, widget_id, price): (Uuid, Uuid, i64),
    ) -> Result<Charged, NodeError> {
        diesel::sql_query("UPDATE example_account SET balance = balance - $2 WHERE id = $1")
            .bind::<SqlUuid, _>(account_id)
            .bind::<BigInt, _>(price)
            .execute(tx.conn())
            .await?;
        let ledger_id = tx.derived_id("charge");
        diesel::sql_query(
            "INSERT INTO example_ledger (id, account_id, widget_id, amount) VALUES ($1, $2, $3, $4)",
        )
        .bind::<SqlUuid, _>(ledger_id)
        .bind::<SqlUuid, _>(account_id)
        .bind::<SqlUuid, _>(widget_id)
        .bind::<BigInt, _>(-price)
        .execute(tx.conn())
        .await?;
        Ok(Charged {
            ledger_id,
            account_id,
            amount: price,
        })
    }

    fn finish(_: Charged) {}

    async fn compensate(&self, tx: &mut CommitTx<'_>, receipt: Charged) -> Result<(), NodeError> {
        let refund = match self.mutation {
            Mutation::ChargeRefundsTwice => 2 * receipt.amount,
            _ => receipt.amount,
        };
        diesel::sql_query("UPDATE example_account SET balance = balance + $2 WHERE id = $1")
            .bind::<SqlUuid, _>(receipt.account_id)
            .bind::<BigInt, _>(refund)
            .execute(tx.conn())
            .await?;
        if self.mutation != Mutation::ChargeForgetsLedgerRow {
            diesel::sql_query("DELETE FROM example_ledger WHERE id = $1")
                .bind::<SqlUuid, _>(receipt.ledger_id)
                .execute(tx.conn())
                .await?;
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct ActivateWidget;

impl DbNode<MutantProvision> for ActivateWidget {
    const NAME: &'static str = "mutant.activate_widget";
    type Plan = Uuid;
    type Receipt = Uuid;
    type Output = Uuid;

    async fn prepare(&self, cx: &mut PrepareCx<'_, MutantProvision>) -> Result<Uuid, NodeError> {
        cx.output("reserve_widget")
    }

    async fn commit(&self, tx: &mut CommitTx<'_>, widget_id: Uuid) -> Result<Uuid, NodeError> {
        let row: IdRow = diesel::sql_query(
            "UPDATE example_widget SET state = 'active' WHERE id = $1 AND state = 'reserved' RETURNING id",
        )
        .bind::<SqlUuid, _>(widget_id)
        .get_result(tx.conn())
        .await?;
        Ok(row.id)
    }

    fn finish(widget_id: Uuid) -> Uuid {
        widget_id
    }

    async fn compensate(&self, tx: &mut CommitTx<'_>, widget_id: Uuid) -> Result<(), NodeError> {
        diesel::sql_query("UPDATE example_widget SET state = 'reserved' WHERE id = $1")
            .bind::<SqlUuid, _>(widget_id)
            .execute(tx.conn())
            .await?;
        Ok(())
    }
}

/// The mutant saga under test, checked by the example suite's own checks; `node` limits the matrix to the
/// row of the broken compensation.
struct MutantSuite {
    mutation: Mutation,
    node: Option<&'static str>,
}

impl SagaSuite for MutantSuite {
    type Saga = MutantProvision;
    type Fixture = Uuid;

    fn label(&self) -> String {
        format!("mutant-provision({})", self.mutation.name())
    }

    fn migrations(&self) -> Vec<&'static EmbeddedMigrations> {
        vec![&example::MIGRATIONS]
    }

    async fn fixture(&self, url: &str) -> Result<Uuid, HarnessError> {
        open_example_account(url).await
    }

    fn register(&self, builder: EngineBuilder, _: &Uuid) -> EngineBuilder {
        builder.register::<MutantProvision>(Arc::new(()))
    }

    fn params(&self, account: &Uuid) -> MutantParams {
        MutantParams {
            account_id: *account,
            widget_name: EXAMPLE_WIDGET_NAME.to_owned(),
            price: EXAMPLE_WIDGET_PRICE,
            mutation: self.mutation,
        }
    }

    async fn violations(
        &self,
        account: &Uuid,
        conn: &mut DbConnection,
    ) -> Result<Vec<String>, HarnessError> {
        example_violations(conn, *account).await
    }

    async fn check_outcome(
        &self,
        account: &Uuid,
        conn: &mut DbConnection,
        succeeded: bool,
    ) -> Result<Vec<String>, HarnessError> {
        check_example_outcome(conn, *account, succeeded).await
    }

    fn includes(&self, node: &str, _: NodeKind) -> bool {
        self.node.is_none_or(|only| only == node)
    }
}

/// The faults that make a node's committed work be compensated while the saga still unwinds: an error right
/// after its commit (compensated inline), and the four that unwind the saga through its compensation. The
/// others either never commit the node (nothing to compensate) or end in success, so the control covers them.
const REVEALING: [Fault; 5] = [
    Fault::AfterCommit,
    Fault::CompensationTransient,
    Fault::CompensationPermanent,
    Fault::CrashInCompensation,
    Fault::Repeat,
];

/// Each mutant, the node whose compensation it breaks, and what every revealing cell's violations must name.
const MUTANTS: [(Mutation, &str, &[&str]); 3] = [
    (
        Mutation::ReserveUndoesNothing,
        "reserve_widget",
        &["leaked widget \"under-test\"", "left reserved at rest"],
    ),
    (
        Mutation::ChargeForgetsLedgerRow,
        "charge_account",
        &["leaked ledger row: -30 charged", "money not conserved"],
    ),
    (
        Mutation::ChargeRefundsTwice,
        "charge_account",
        &["money not conserved", "30 unaccounted for"],
    ),
];

fn describe(cell: &CellResult) -> String {
    format!(
        "{} / {} / {}: {:?}, problems {:?}, violations {:?}",
        cell.saga,
        cell.cell.node,
        cell.cell.fault.name(),
        cell.status,
        cell.problems,
        cell.violations
    )
}

/// The control: the same saga with correct compensations passes every cell of the rows the mutants break.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn correct_compensations_pass_every_cell() {
    let mut matrix = Matrix::new();
    for node in ["reserve_widget", "charge_account"] {
        matrix = matrix.suite(MutantSuite {
            mutation: Mutation::None,
            node: Some(node),
        });
    }
    let report = run(matrix).await;
    assert_all_pass(&report, 2 * db_faults().len());
}

/// Each broken compensation fails every revealing cell of its node, with a violation naming the damage.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broken_compensations_are_caught() {
    let mut matrix = Matrix::new().faults(&REVEALING);
    for (mutation, node, _) in MUTANTS {
        matrix = matrix.suite(MutantSuite {
            mutation,
            node: Some(node),
        });
    }
    let report = run(matrix).await;
    assert_eq!(
        report.cells.len(),
        MUTANTS.len() * REVEALING.len(),
        "{}",
        report.table()
    );
    for cell in &report.cells {
        let (_, _, leak) = MUTANTS
            .iter()
            .find(|(mutation, _, _)| cell.saga.contains(mutation.name()))
            .expect("every cell is one of the mutants'");
        assert_eq!(cell.status, Status::Fail, "{}", describe(cell));
        for needle in *leak {
            assert!(
                cell.violations.iter().any(|v| v.contains(needle)),
                "no violation naming {needle:?}: {}",
                describe(cell)
            );
        }
        assert!(cell.history.is_some(), "{}", describe(cell));
    }
}

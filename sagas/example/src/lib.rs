//! A complete example saga: provision a widget and charge for it.
//!
//! `ratchet demo` runs it, the fault harness runs it as its smallest suite (`ratchet-fault-injection`'s
//! `example`), and the engine's tests use it. Three database nodes in a chain, declared once in
//! `ProvisionWidget`'s `declare_saga_nodes!` list (each node type's doc says what it writes): a widget is
//! reserved, the account charged, the widget activated.
//!
//! `charge_account` is deliberately not idempotent (it subtracts and appends a ledger row), so "exactly once"
//! is visible as exactly one ledger row and one subtraction; its compensation adds the price back, so a second
//! compensation would show as a balance above the original.
//!
//! [`OrderWidget`] is a second saga on the same tables, with a typed error ([`ApiError`], an HTTP status
//! each) and outputs of plain types (a tuple of three, a `chrono::DateTime`, a `BTreeMap`).

mod typed;

pub use typed::{
    ApiError, CONFLICT_MESSAGE, Check, Debit, Debited, OrderParams, OrderWidget, Stamp, Summarise,
};

use diesel::sql_types::{BigInt, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use ratchet_engine::{
    CommitTx, DbNode, Engine, EngineError, FaultEffect, FaultPoint, NodeError, PrepareCx,
    SagaBuilder, SagaDef, SagaOutcome,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The example's tables.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// The example saga.
pub struct ProvisionWidget;

/// What to provision.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProvisionParams {
    pub account_id: Uuid,
    pub widget_name: String,
    pub price: i64,
}

impl SagaDef for ProvisionWidget {
    const NAME: &'static str = "example-provision";
    type Params = ProvisionParams;
    type Context = ();
    type Error = ratchet_engine::Untyped;

    ratchet_engine::declare_saga_nodes! {
        db ReserveWidget,
        db ChargeAccount,
        db ActivateWidget,
    }

    fn build(params: &ProvisionParams, dag: &mut SagaBuilder<Self>) -> Result<(), String> {
        if params.price < 0 {
            return Err(format!("price must not be negative, got {}", params.price));
        }
        dag.db("reserve_widget", ReserveWidget)
            .db("charge_account", ChargeAccount)
            .db("activate_widget", ActivateWidget);
        Ok(())
    }
}

#[derive(diesel::QueryableByName)]
struct IdRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
}

#[derive(diesel::QueryableByName)]
struct CountRow {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

#[derive(diesel::QueryableByName)]
struct BalanceRow {
    #[diesel(sql_type = BigInt)]
    balance: i64,
}

/// Inserts a widget row in state `reserved`.
#[derive(Serialize, Deserialize)]
pub struct ReserveWidget;

/// The reserved widget.
#[derive(Debug, Serialize, Deserialize)]
pub struct Reserved {
    pub widget_id: Uuid,
}

impl DbNode<ProvisionWidget> for ReserveWidget {
    const NAME: &'static str = "example.reserve_widget";
    /// The account and the widget's name, from the parameters.
    type Plan = (Uuid, String);
    type Receipt = Reserved;
    type Output = Uuid;

    async fn prepare(
        &self,
        cx: &mut PrepareCx<'_, ProvisionWidget>,
    ) -> Result<(Uuid, String), NodeError> {
        let name = cx.params().widget_name.clone();
        let taken: CountRow =
            diesel::sql_query("SELECT count(*) AS count FROM example_widget WHERE name = $1")
                .bind::<Text, _>(&name)
                .get_result(cx.conn())
                .await?;
        if taken.count > 0 {
            return Err(NodeError::permanent(format!(
                "a widget named {name:?} already exists"
            )));
        }
        Ok((cx.params().account_id, name))
    }

    async fn commit(
        &self,
        tx: &mut CommitTx<'_>,
        params: (Uuid, String),
    ) -> Result<Reserved, NodeError> {
        // The id is derived from (saga, node): the same on every attempt.
        let id = tx.derived_id("widget");
        let row: IdRow = diesel::sql_query(
            "INSERT INTO example_widget (id, account_id, name, state) VALUES ($1, $2, $3, 'reserved') RETURNING id",
        )
        .bind::<SqlUuid, _>(id)
        .bind::<SqlUuid, _>(params.0)
        .bind::<Text, _>(params.1)
        .get_result(tx.conn())
        .await?;
        Ok(Reserved { widget_id: row.id })
    }

    fn finish(receipt: Reserved) -> Uuid {
        receipt.widget_id
    }

    async fn compensate(&self, tx: &mut CommitTx<'_>, receipt: Reserved) -> Result<(), NodeError> {
        diesel::sql_query("DELETE FROM example_widget WHERE id = $1")
            .bind::<SqlUuid, _>(receipt.widget_id)
            .execute(tx.conn())
            .await?;
        Ok(())
    }
}

/// Charges the account for the widget: subtracts the price and appends a ledger row.
#[derive(Serialize, Deserialize)]
pub struct ChargeAccount;

/// What the charge did.
#[derive(Debug, Serialize, Deserialize)]
pub struct Charged {
    pub ledger_id: Uuid,
    pub account_id: Uuid,
    pub widget_id: Uuid,
    pub amount: i64,
    pub balance: i64,
}

/// The charge's plan.
#[derive(Serialize, Deserialize)]
pub struct ChargePlan {
    account_id: Uuid,
    widget_id: Uuid,
    price: i64,
}

impl DbNode<ProvisionWidget> for ChargeAccount {
    const NAME: &'static str = "example.charge_account";
    type Plan = ChargePlan;
    type Receipt = Charged;
    type Output = i64;

    async fn prepare(
        &self,
        cx: &mut PrepareCx<'_, ProvisionWidget>,
    ) -> Result<ChargePlan, NodeError> {
        let widget_id: Uuid = cx.output("reserve_widget")?;
        let ProvisionParams {
            account_id, price, ..
        } = cx.params().clone();
        let balance: Option<BalanceRow> =
            diesel::sql_query("SELECT balance FROM example_account WHERE id = $1")
                .bind::<SqlUuid, _>(account_id)
                .get_result(cx.conn())
                .await
                .map(Some)
                .or_else(|e| match e {
                    diesel::result::Error::NotFound => Ok(None),
                    e => Err(e),
                })?;
        let balance = balance
            .ok_or_else(|| NodeError::permanent(format!("no account {account_id}")))?
            .balance;
        if balance < price {
            return Err(NodeError::permanent(format!(
                "insufficient funds: balance {balance}, price {price}"
            )));
        }
        Ok(ChargePlan {
            account_id,
            widget_id,
            price,
        })
    }

    async fn commit(&self, tx: &mut CommitTx<'_>, plan: ChargePlan) -> Result<Charged, NodeError> {
        let row: BalanceRow = diesel::sql_query(
            "UPDATE example_account SET balance = balance - $2 WHERE id = $1 RETURNING balance",
        )
        .bind::<SqlUuid, _>(plan.account_id)
        .bind::<BigInt, _>(plan.price)
        .get_result(tx.conn())
        .await?;
        let ledger_id = tx.derived_id("charge");
        insert_ledger(tx, ledger_id, plan.account_id, plan.widget_id, -plan.price).await?;
        Ok(Charged {
            ledger_id,
            account_id: plan.account_id,
            widget_id: plan.widget_id,
            amount: plan.price,
            balance: row.balance,
        })
    }

    fn finish(receipt: Charged) -> i64 {
        receipt.balance
    }

    async fn compensate(&self, tx: &mut CommitTx<'_>, receipt: Charged) -> Result<(), NodeError> {
        diesel::sql_query("UPDATE example_account SET balance = balance + $2 WHERE id = $1")
            .bind::<SqlUuid, _>(receipt.account_id)
            .bind::<BigInt, _>(receipt.amount)
            .execute(tx.conn())
            .await?;
        diesel::sql_query("DELETE FROM example_ledger WHERE id = $1")
            .bind::<SqlUuid, _>(receipt.ledger_id)
            .execute(tx.conn())
            .await?;
        Ok(())
    }
}

async fn insert_ledger(
    tx: &mut CommitTx<'_>,
    id: Uuid,
    account_id: Uuid,
    widget_id: Uuid,
    amount: i64,
) -> Result<(), NodeError> {
    diesel::sql_query(
        "INSERT INTO example_ledger (id, account_id, widget_id, amount) VALUES ($1, $2, $3, $4)",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<SqlUuid, _>(account_id)
    .bind::<SqlUuid, _>(widget_id)
    .bind::<BigInt, _>(amount)
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// Marks the widget active.
#[derive(Serialize, Deserialize)]
pub struct ActivateWidget;

/// The activated widget.
#[derive(Debug, Serialize, Deserialize)]
pub struct Activated {
    pub widget_id: Uuid,
}

/// The saga's output.
#[derive(Debug, Serialize, Deserialize)]
pub struct Provisioned {
    pub widget_id: Uuid,
}

impl DbNode<ProvisionWidget> for ActivateWidget {
    const NAME: &'static str = "example.activate_widget";
    type Plan = Uuid;
    type Receipt = Activated;
    type Output = Provisioned;

    async fn prepare(&self, cx: &mut PrepareCx<'_, ProvisionWidget>) -> Result<Uuid, NodeError> {
        cx.output("reserve_widget")
    }

    async fn commit(&self, tx: &mut CommitTx<'_>, widget_id: Uuid) -> Result<Activated, NodeError> {
        let row: IdRow = diesel::sql_query(
            "UPDATE example_widget SET state = 'active' WHERE id = $1 AND state = 'reserved' RETURNING id",
        )
        .bind::<SqlUuid, _>(widget_id)
        .get_result(tx.conn())
        .await?;
        Ok(Activated { widget_id: row.id })
    }

    fn finish(receipt: Activated) -> Provisioned {
        Provisioned {
            widget_id: receipt.widget_id,
        }
    }

    async fn compensate(&self, tx: &mut CommitTx<'_>, receipt: Activated) -> Result<(), NodeError> {
        diesel::sql_query("UPDATE example_widget SET state = 'reserved' WHERE id = $1")
            .bind::<SqlUuid, _>(receipt.widget_id)
            .execute(tx.conn())
            .await?;
        Ok(())
    }
}

/// Runs the example saga to `stuck` (a test and demo helper): activate_widget fails before its prepare, and
/// charge_account's compensation then fails for good, so steno stops unwinding with reserve_widget and
/// charge_account still committed. The faults stay armed until `engine.failpoints().clear(id)`.
pub async fn run_stuck(
    engine: &Engine,
    params: ProvisionParams,
) -> Result<(Uuid, SagaOutcome), EngineError> {
    let saga = engine.create::<ProvisionWidget>(params).await?;
    let id = saga.id;
    let points = engine.failpoints();
    points.arm(
        id,
        "activate_widget",
        FaultPoint::BeforePrepare,
        FaultEffect::PermanentError,
        1,
    );
    points.arm(
        id,
        "charge_account",
        FaultPoint::InCompensation,
        FaultEffect::PermanentError,
        u32::MAX,
    );
    Ok((id, saga.run().await?))
}

/// Creates an account with `balance` (a test and demo helper).
pub async fn create_account(
    conn: &mut AsyncPgConnection,
    balance: i64,
) -> Result<Uuid, diesel::result::Error> {
    let id = Uuid::new_v4();
    diesel::sql_query("INSERT INTO example_account (id, balance) VALUES ($1, $2)")
        .bind::<SqlUuid, _>(id)
        .bind::<BigInt, _>(balance)
        .execute(conn)
        .await?;
    Ok(id)
}

/// What the example's tables hold for one account: its balance, its ledger rows and its widgets.
#[derive(Debug, PartialEq, Eq)]
pub struct AccountState {
    pub balance: i64,
    pub ledger: Vec<i64>,
    pub widgets: Vec<(String, String)>,
}

/// Reads [`AccountState`].
pub async fn account_state(
    conn: &mut AsyncPgConnection,
    account: Uuid,
) -> Result<AccountState, diesel::result::Error> {
    #[derive(diesel::QueryableByName)]
    struct Amount {
        #[diesel(sql_type = BigInt)]
        amount: i64,
    }
    #[derive(diesel::QueryableByName)]
    struct Widget {
        #[diesel(sql_type = Text)]
        name: String,
        #[diesel(sql_type = Text)]
        state: String,
    }
    let balance: BalanceRow =
        diesel::sql_query("SELECT balance FROM example_account WHERE id = $1")
            .bind::<SqlUuid, _>(account)
            .get_result(conn)
            .await?;
    let ledger: Vec<Amount> = diesel::sql_query(
        "SELECT amount FROM example_ledger WHERE account_id = $1 ORDER BY amount",
    )
    .bind::<SqlUuid, _>(account)
    .load(conn)
    .await?;
    let widgets: Vec<Widget> = diesel::sql_query(
        "SELECT name, state FROM example_widget WHERE account_id = $1 ORDER BY name",
    )
    .bind::<SqlUuid, _>(account)
    .load(conn)
    .await?;
    Ok(AccountState {
        balance: balance.balance,
        ledger: ledger.into_iter().map(|a| a.amount).collect(),
        widgets: widgets.into_iter().map(|w| (w.name, w.state)).collect(),
    })
}

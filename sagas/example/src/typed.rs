//! A saga with a typed error: the shape of a Nexus saga whose failure becomes an API error with its status.
//!
//! `OrderWidget` debits an account, stamps the order with the database's clock, summarises it, then checks
//! it. Its error type is [`ApiError`] (a conflict is a 409, an unavailable service a 503), and its outputs are
//! plain serializable types with no newtype: a tuple of three, a `chrono::DateTime` and a `BTreeMap`. The
//! parameters say where it fails with a typed error: the check refuses ([`ApiError::Conflict`]), and the
//! debit's compensation may fail too ([`ApiError::Unavailable`]: the saga is then stuck). The engine's tests
//! and the real-process tests (a SIGKILL between a typed failure and its recording) run it.

use chrono::{DateTime, Utc};
use diesel::sql_types::{BigInt, Timestamptz, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use ratchet_engine::{CommitTx, DbNode, NodeError, PrepareCx, SagaBuilder, SagaDef, SagaError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

/// The saga.
pub struct OrderWidget;

/// The saga's typed error: what an API would answer, with its HTTP status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApiError {
    #[error("conflict: {message}")]
    Conflict { message: String },
    #[error("service unavailable: {message}")]
    Unavailable { message: String },
}

impl ApiError {
    /// The HTTP status an API answers this error with.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::Conflict { .. } => 409,
            ApiError::Unavailable { .. } => 503,
        }
    }
}

impl SagaError for ApiError {}

/// What to order, and where it fails.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OrderParams {
    pub account_id: Uuid,
    pub price: i64,
    /// The check refuses the order with [`ApiError::Conflict`].
    pub refuse: bool,
    /// The debit's compensation fails with [`ApiError::Unavailable`] (the saga ends stuck if it unwinds).
    pub refuse_undo: bool,
}

impl SagaDef for OrderWidget {
    const NAME: &'static str = "example-order";
    type Params = OrderParams;
    type Context = ();
    type Error = ApiError;

    ratchet_engine::declare_saga_nodes! {
        db Debit,
        db Stamp,
        db Summarise,
        db Check,
    }

    fn build(params: &OrderParams, dag: &mut SagaBuilder<Self>) -> Result<(), String> {
        dag.db(
            "debit",
            Debit {
                refuse_undo: params.refuse_undo,
            },
        )
        .db("stamp", Stamp)
        .db("summarise", Summarise)
        .db(
            "check",
            Check {
                refuse: params.refuse,
            },
        );
        Ok(())
    }
}

#[derive(diesel::QueryableByName)]
struct BalanceRow {
    #[diesel(sql_type = BigInt)]
    balance: i64,
}

#[derive(diesel::QueryableByName)]
struct NowRow {
    #[diesel(sql_type = Timestamptz)]
    now: DateTime<Utc>,
}

/// Takes the price from the account; its compensation gives it back (or fails with a typed error).
#[derive(Serialize, Deserialize)]
pub struct Debit {
    pub refuse_undo: bool,
}

/// What the debit did.
#[derive(Debug, Serialize, Deserialize)]
pub struct Debited {
    pub account_id: Uuid,
    pub price: i64,
    pub balance: i64,
}

impl DbNode<OrderWidget> for Debit {
    const NAME: &'static str = "example.order.debit";
    type Plan = (Uuid, i64);
    type Receipt = Debited;
    /// (account, balance after the debit, a label): a tuple of three, no newtype.
    type Output = (Uuid, i64, String);

    async fn prepare(
        &self,
        cx: &mut PrepareCx<'_, OrderWidget>,
    ) -> Result<(Uuid, i64), NodeError<ApiError>> {
        Ok((cx.params().account_id, cx.params().price))
    }

    async fn commit(
        &self,
        tx: &mut CommitTx<'_>,
        (account_id, price): (Uuid, i64),
    ) -> Result<Debited, NodeError<ApiError>> {
        let row: BalanceRow = diesel::sql_query(
            "UPDATE example_account SET balance = balance - $2 WHERE id = $1 RETURNING balance",
        )
        .bind::<SqlUuid, _>(account_id)
        .bind::<BigInt, _>(price)
        .get_result(tx.conn())
        .await?;
        Ok(Debited {
            account_id,
            price,
            balance: row.balance,
        })
    }

    fn finish(receipt: Debited) -> (Uuid, i64, String) {
        (receipt.account_id, receipt.balance, "debited".to_owned())
    }

    async fn compensate(
        &self,
        tx: &mut CommitTx<'_>,
        receipt: Debited,
    ) -> Result<(), NodeError<ApiError>> {
        if self.refuse_undo {
            // `?` converts the saga's own error into a node error.
            Err(ApiError::Unavailable {
                message: "the billing service refuses refunds".to_owned(),
            })?;
        }
        diesel::sql_query("UPDATE example_account SET balance = balance + $2 WHERE id = $1")
            .bind::<SqlUuid, _>(receipt.account_id)
            .bind::<BigInt, _>(receipt.price)
            .execute(tx.conn())
            .await?;
        Ok(())
    }
}

/// Reads the database's clock in the node's transaction: a `chrono::DateTime` output.
#[derive(Serialize, Deserialize)]
pub struct Stamp;

impl DbNode<OrderWidget> for Stamp {
    const NAME: &'static str = "example.order.stamp";
    type Plan = ();
    type Receipt = DateTime<Utc>;
    type Output = DateTime<Utc>;

    async fn prepare(&self, _: &mut PrepareCx<'_, OrderWidget>) -> Result<(), NodeError<ApiError>> {
        Ok(())
    }

    async fn commit(
        &self,
        tx: &mut CommitTx<'_>,
        (): (),
    ) -> Result<DateTime<Utc>, NodeError<ApiError>> {
        let row: NowRow = diesel::sql_query("SELECT now() AS now")
            .get_result(tx.conn())
            .await?;
        Ok(row.now)
    }

    fn finish(receipt: DateTime<Utc>) -> DateTime<Utc> {
        receipt
    }

    async fn compensate(
        &self,
        _: &mut CommitTx<'_>,
        _: DateTime<Utc>,
    ) -> Result<(), NodeError<ApiError>> {
        Ok(())
    }
}

/// Summarises the order from the debit's output: a `BTreeMap` output.
#[derive(Serialize, Deserialize)]
pub struct Summarise;

impl DbNode<OrderWidget> for Summarise {
    const NAME: &'static str = "example.order.summarise";
    type Plan = BTreeMap<String, i64>;
    type Receipt = BTreeMap<String, i64>;
    type Output = BTreeMap<String, i64>;

    async fn prepare(
        &self,
        cx: &mut PrepareCx<'_, OrderWidget>,
    ) -> Result<BTreeMap<String, i64>, NodeError<ApiError>> {
        let (_, balance, _): (Uuid, i64, String) = cx.output("debit")?;
        Ok(BTreeMap::from([
            ("balance".to_owned(), balance),
            ("price".to_owned(), cx.params().price),
        ]))
    }

    async fn commit(
        &self,
        _: &mut CommitTx<'_>,
        summary: BTreeMap<String, i64>,
    ) -> Result<BTreeMap<String, i64>, NodeError<ApiError>> {
        Ok(summary)
    }

    fn finish(receipt: BTreeMap<String, i64>) -> BTreeMap<String, i64> {
        receipt
    }

    async fn compensate(
        &self,
        _: &mut CommitTx<'_>,
        _: BTreeMap<String, i64>,
    ) -> Result<(), NodeError<ApiError>> {
        Ok(())
    }
}

/// Checks the order: refuses it with [`ApiError::Conflict`] when told to.
#[derive(Serialize, Deserialize)]
pub struct Check {
    pub refuse: bool,
}

/// The message of the check's refusal.
pub const CONFLICT_MESSAGE: &str = "the order collides with another";

impl DbNode<OrderWidget> for Check {
    const NAME: &'static str = "example.order.check";
    type Plan = ();
    type Receipt = ();
    type Output = ();

    async fn prepare(&self, _: &mut PrepareCx<'_, OrderWidget>) -> Result<(), NodeError<ApiError>> {
        if self.refuse {
            return Err(ApiError::Conflict {
                message: CONFLICT_MESSAGE.to_owned(),
            }
            .into());
        }
        Ok(())
    }

    async fn commit(&self, _: &mut CommitTx<'_>, (): ()) -> Result<(), NodeError<ApiError>> {
        Ok(())
    }

    fn finish((): ()) {}

    async fn compensate(&self, _: &mut CommitTx<'_>, (): ()) -> Result<(), NodeError<ApiError>> {
        Ok(())
    }
}

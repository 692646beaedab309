//! The engine's example saga ([`ProvisionWidget`]: reserve a widget, charge the account, activate the
//! widget) as a suite: the smallest complete [`SagaSuite`], and the checks of the example's tables.
//!
//! The checks are free functions so that a variant of the saga written against the same tables (the
//! mutation tests, whose compensations are broken on purpose) is checked by exactly the same code.
//!
//! # Invariants at rest (for one account)
//!
//! - money is conserved: the balance is the opening balance plus the ledger's amounts (a refund without its
//!   ledger row deleted, or a refund applied twice, breaks this);
//! - no widget is `reserved` (a transitional state: a widget is either active and paid for, or gone);
//! - every ledger charge is for an active widget, and every active widget has exactly one charge.
//!
//! The outcome: after a success exactly one active widget, charged once; after an unwind no widget, no
//! ledger row and the opening balance.

use crate::HarnessError;
use crate::suite::SagaSuite;
use diesel::sql_types::{BigInt, Text, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use diesel_migrations::EmbeddedMigrations;
use ratchet_engine::EngineBuilder;
use ratchet_example_saga::{self as example, ProvisionParams, ProvisionWidget};
use ratchet_store::{DbConnection, DbError};
use std::sync::Arc;
use uuid::Uuid;

/// The account's balance before the saga.
pub const EXAMPLE_OPENING_BALANCE: i64 = 100;
/// What the widget costs.
pub const EXAMPLE_WIDGET_PRICE: i64 = 30;
/// The widget's name.
pub const EXAMPLE_WIDGET_NAME: &str = "under-test";

/// [`ProvisionWidget`] under test; its fixture is the account it charges.
pub struct ProvisionSuite;

impl SagaSuite for ProvisionSuite {
    type Saga = ProvisionWidget;
    type Fixture = Uuid;

    fn label(&self) -> String {
        "example-provision".to_owned()
    }

    fn migrations(&self) -> Vec<&'static EmbeddedMigrations> {
        vec![&example::MIGRATIONS]
    }

    async fn fixture(&self, url: &str) -> Result<Uuid, HarnessError> {
        open_example_account(url).await
    }

    fn register(&self, builder: EngineBuilder, _: &Uuid) -> EngineBuilder {
        builder.register::<ProvisionWidget>(Arc::new(()))
    }

    fn register_remote(
        &self,
        builder: EngineBuilder,
        _: &serde_json::Value,
    ) -> Result<EngineBuilder, HarnessError> {
        Ok(builder.register::<ProvisionWidget>(Arc::new(())))
    }

    fn params(&self, account: &Uuid) -> ProvisionParams {
        ProvisionParams {
            account_id: *account,
            widget_name: EXAMPLE_WIDGET_NAME.to_owned(),
            price: EXAMPLE_WIDGET_PRICE,
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
}

/// Creates the account with [`EXAMPLE_OPENING_BALANCE`] on the database at `url`.
pub async fn open_example_account(url: &str) -> Result<Uuid, HarnessError> {
    let mut conn = ratchet_store::establish(url).await?;
    Ok(example::create_account(&mut conn, EXAMPLE_OPENING_BALANCE)
        .await
        .map_err(DbError::from)?)
}

#[derive(diesel::QueryableByName)]
struct Widget {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    state: String,
    /// How many ledger rows charge for it.
    #[diesel(sql_type = BigInt)]
    charges: i64,
}

#[derive(diesel::QueryableByName)]
struct Charge {
    #[diesel(sql_type = SqlUuid)]
    widget_id: Uuid,
    #[diesel(sql_type = BigInt)]
    amount: i64,
}

/// What the example's tables hold for one account.
struct Books {
    balance: i64,
    widgets: Vec<Widget>,
    /// Ledger rows whose widget is missing or not active.
    orphan_charges: Vec<Charge>,
    ledger_sum: i64,
    ledger_rows: usize,
}

async fn books(conn: &mut DbConnection, account: Uuid) -> Result<Books, HarnessError> {
    let state = example::account_state(conn, account)
        .await
        .map_err(DbError::from)?;
    let widgets: Vec<Widget> = diesel::sql_query(
        "SELECT w.id, w.name, w.state, \
         (SELECT count(*) FROM example_ledger l WHERE l.widget_id = w.id) AS charges \
         FROM example_widget w WHERE w.account_id = $1 ORDER BY w.name",
    )
    .bind::<SqlUuid, _>(account)
    .load(conn)
    .await
    .map_err(DbError::from)?;
    let orphan_charges: Vec<Charge> = diesel::sql_query(
        "SELECT l.widget_id, l.amount FROM example_ledger l \
         LEFT JOIN example_widget w ON w.id = l.widget_id \
         WHERE l.account_id = $1 AND (w.id IS NULL OR w.state <> 'active') ORDER BY l.id",
    )
    .bind::<SqlUuid, _>(account)
    .load(conn)
    .await
    .map_err(DbError::from)?;
    Ok(Books {
        balance: state.balance,
        widgets,
        orphan_charges,
        ledger_sum: state.ledger.iter().sum(),
        ledger_rows: state.ledger.len(),
    })
}

/// The invariants of the example's tables at rest, for `account` (opened with [`EXAMPLE_OPENING_BALANCE`]).
pub async fn example_violations(
    conn: &mut DbConnection,
    account: Uuid,
) -> Result<Vec<String>, HarnessError> {
    let books = books(conn, account).await?;
    let mut found = Vec::new();
    let expected_balance = EXAMPLE_OPENING_BALANCE + books.ledger_sum;
    if books.balance != expected_balance {
        found.push(format!(
            "money not conserved: balance {} but opening {EXAMPLE_OPENING_BALANCE} plus the ledger ({} in {} rows) is \
             {expected_balance}; {} unaccounted for",
            books.balance,
            books.ledger_sum,
            books.ledger_rows,
            books.balance - expected_balance
        ));
    }
    for widget in &books.widgets {
        if widget.state != "active" {
            found.push(format!(
                "leaked widget {:?} ({}): left {} at rest",
                widget.name, widget.id, widget.state
            ));
        } else if widget.charges != 1 {
            found.push(format!(
                "active widget {:?} ({}) has {} ledger charges, not 1",
                widget.name, widget.id, widget.charges
            ));
        }
    }
    for charge in &books.orphan_charges {
        found.push(format!(
            "leaked ledger row: {} charged for widget {}, which is not active",
            charge.amount, charge.widget_id
        ));
    }
    Ok(found)
}

/// After a success: exactly one active widget, charged [`EXAMPLE_WIDGET_PRICE`] once. After an unwind: nothing at all.
pub async fn check_example_outcome(
    conn: &mut DbConnection,
    account: Uuid,
    succeeded: bool,
) -> Result<Vec<String>, HarnessError> {
    let books = books(conn, account).await?;
    let mut problems = Vec::new();
    let active: Vec<&str> = books
        .widgets
        .iter()
        .filter(|w| w.state == "active")
        .map(|w| w.name.as_str())
        .collect();
    let (want_widgets, want_sum, want_rows) = if succeeded {
        (vec![EXAMPLE_WIDGET_NAME], -EXAMPLE_WIDGET_PRICE, 1)
    } else {
        (vec![], 0, 0)
    };
    if books.widgets.len() != want_widgets.len() || active != want_widgets {
        let all: Vec<(&str, &str)> = books
            .widgets
            .iter()
            .map(|w| (w.name.as_str(), w.state.as_str()))
            .collect();
        problems.push(format!("widgets {all:?}, expected active {want_widgets:?}"));
    }
    if books.ledger_sum != want_sum || books.ledger_rows != want_rows {
        problems.push(format!(
            "ledger: {} in {} rows, expected {want_sum} in {want_rows}",
            books.ledger_sum, books.ledger_rows
        ));
    }
    if books.balance != EXAMPLE_OPENING_BALANCE + want_sum {
        problems.push(format!(
            "balance {}, expected {}",
            books.balance,
            EXAMPLE_OPENING_BALANCE + want_sum
        ));
    }
    Ok(problems)
}

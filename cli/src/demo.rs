//! `ratchet demo`: runs the example saga (provision a widget against an account), optionally failing right after
//! one node's `COMMIT`, and prints its node-by-node history and the account afterwards.

use crate::cli::{DemoArgs, Global};
use crate::history;
use crate::setup::{self, AlsoUnstranded, NexusServices};
use anyhow::Context;
use ratchet_engine::{FaultEffect, FaultPoint};
use ratchet_example_saga::{self as example, ProvisionParams, ProvisionWidget};
use ratchet_store::saga_history;
use uuid::Uuid;

pub async fn demo(global: &Global, args: &DemoArgs) -> anyhow::Result<()> {
    let (url, executor) = setup::open(global, "demo").await?;
    let services = NexusServices::from_args(&args.services);
    let (engine, _) = setup::start_engine(
        &url,
        &executor,
        &services,
        "demo",
        AlsoUnstranded::Nothing,
        |_| {},
    )
    .await?;
    let mut conn = engine.pool().get().await?;
    let account = example::create_account(&mut conn, 100).await?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("widget-{}", &Uuid::new_v4().simple().to_string()[..8]));
    let price = args.price;
    println!("account {account}: balance 100; provisioning {name:?} at price {price}");
    let saga = engine
        .create::<ProvisionWidget>(ProvisionParams {
            account_id: account,
            widget_name: name,
            price,
        })
        .await?;
    if let Some(node) = &args.fail_after_commit {
        engine.failpoints().arm(
            saga.id,
            node,
            FaultPoint::AfterCommit,
            FaultEffect::PermanentError,
            1,
        );
        println!("a failure is injected right after {node}'s COMMIT");
    }
    let id = saga.id;
    let outcome = saga.run().await?;
    println!("saga {id}: {}", history::describe(&outcome));
    let history = saga_history(&mut conn, id)
        .await?
        .context("the saga's row is gone")?;
    println!();
    history::print_history(&history, false);
    let state = example::account_state(&mut conn, account).await?;
    println!(
        "\naccount afterwards: balance {}, ledger {:?}, widgets {:?}",
        state.balance, state.ledger, state.widgets
    );
    drop(conn);
    engine.shutdown().await;
    Ok(())
}

//! Section 3: recovery of N unfinished sagas.
//!
//! # Making N unfinished sagas
//!
//! One real unfinished saga, then copies of it made by SQL. The real one is a 5-step chain run on a ratchet
//! engine that crashes (the `Crash` failpoint: it rolls back what is open and writes nothing more) right after
//! step 3 commits: its log holds the start node and steps 1-3 `started` + `succeeded`, its commit records
//! steps 1-3, and its rows steps 1-3. One transaction then copies the saga row, its events, its commit
//! records and its `bench_chain_step` rows N - 1 times under fresh ids (`gen_random_uuid()`, PostgreSQL
//! 13+; bench tooling only, never on a saga's path). Every copy is what a crash after step 3 leaves, because
//! nothing in those rows depends on the saga's id but the id itself.
//!
//! # Measuring
//!
//! A new engine with the crashed executor's id starts (`EngineBuilder::start`, which recovers before it
//! returns). **Resumed** is the time `start` takes: listing the unfinished sagas, loading their logs, and
//! handing every saga to steno (steps 4 and 5 start running meanwhile). **At rest** is until every resumed
//! saga has succeeded. Statements are counted by the query counter: the loading ones (recognised by their
//! SQL, see `measure.rs`) while `start` runs, and all of them until every saga is at rest.

use crate::chain::{BenchChain, ChainParams, STEPS};
use crate::executor::start_engine;
use crate::measure::{classify, queries, recovery_queries, settled_commits};
use crate::{Bench, BenchError};
use diesel::sql_types::{BigInt, Integer, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use ratchet_engine::{FaultEffect, FaultPoint, SagaOutcome};
use ratchet_store::establish;
use serde::Serialize;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// One recovery run.
#[derive(Clone, Debug, Serialize)]
pub struct RecoveryRow {
    pub sagas: usize,
    /// `EngineBuilder::start`: list, load logs, hand every saga to steno.
    pub resumed_ms: f64,
    /// Until every resumed saga succeeded.
    pub at_rest_ms: f64,
    /// Statements that list unfinished sagas or load logs, in all.
    pub load_statements: u64,
    pub load_statements_per_saga: f64,
    /// Every statement from `start` until all sagas are at rest, per saga (the remaining two steps, the end
    /// node and the final state included).
    pub statements_per_saga: f64,
}

pub(crate) async fn measure(bench: &Bench<'_>, sagas: usize) -> Result<RecoveryRow, BenchError> {
    let db = bench.fresh_database().await?;
    let sec_id = Uuid::new_v4();
    let app = bench.app();

    // One real unfinished saga: crash right after step 3's commit.
    let (first, _) = start_engine(&db.url, sec_id, bench.options.pool_size, &app).await?;
    let saga = first.create::<BenchChain>(ChainParams {}).await?;
    let template = saga.id;
    first.failpoints().arm(
        template,
        "step_3",
        FaultPoint::AfterCommit,
        FaultEffect::Crash,
        1,
    );
    let run = tokio::spawn(saga.run());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !first.is_crashed() {
        if Instant::now() > deadline {
            return Err(BenchError::Check(
                "the template saga did not reach its crash within 60 s".to_owned(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    run.abort();
    drop(first);

    // N - 1 copies, in one transaction.
    let mut conn = establish(&db.url).await?;
    copy_unfinished(&mut conn, template, sagas - 1).await?;
    drop(conn);
    settled_commits(bench.server, &db.name).await?;

    classify(true);
    let loads_before = recovery_queries();
    let statements_before = queries();
    let started = Instant::now();
    let started_engine = start_engine(&db.url, sec_id, bench.options.pool_size, &app).await;
    let resumed = started.elapsed();
    classify(false);
    let (engine, report) = started_engine?;
    let load_statements = recovery_queries() - loads_before;
    if report.resumed.len() != sagas {
        return Err(BenchError::Check(format!(
            "recovery resumed {} saga(s) of {sagas} ({} abandoned)",
            report.resumed.len(),
            report.abandoned.len()
        )));
    }
    for id in &report.resumed {
        match engine.wait(*id).await {
            Some(SagaOutcome::Succeeded { .. }) => {}
            other => {
                return Err(BenchError::SagaFailed {
                    implementation: "ratchet",
                    saga: "recovered chain",
                    outcome: format!("{other:?}"),
                });
            }
        }
    }
    let at_rest = started.elapsed();
    let statements = queries() - statements_before;
    engine.shutdown().await;

    let mut conn = establish(&db.url).await?;
    let rows = count(&mut conn, "SELECT count(*) AS n FROM bench_chain_step").await?;
    if rows != sagas as i64 * i64::from(STEPS) {
        return Err(BenchError::Check(format!(
            "after recovery, {rows} chain rows for {sagas} sagas (want {})",
            sagas as i64 * i64::from(STEPS)
        )));
    }
    drop(conn);
    bench.drop_database(&db).await;
    let row = RecoveryRow {
        sagas,
        resumed_ms: resumed.as_secs_f64() * 1e3,
        at_rest_ms: at_rest.as_secs_f64() * 1e3,
        load_statements,
        load_statements_per_saga: load_statements as f64 / sagas as f64,
        statements_per_saga: statements as f64 / sagas as f64,
    };
    bench.say(&format!(
        "  {sagas} sagas: resumed in {:.0} ms, at rest in {:.0} ms, {load_statements} loading statements",
        row.resumed_ms, row.at_rest_ms
    ));
    Ok(row)
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

async fn count(conn: &mut ratchet_store::DbConnection, sql: &str) -> Result<i64, BenchError> {
    let row: Count = diesel::sql_query(sql).get_result(conn).await?;
    Ok(row.n)
}

/// Copies unfinished saga `template` (its row, events, commit records and chain rows) `copies` times under
/// fresh ids, in one transaction.
async fn copy_unfinished(
    conn: &mut ratchet_store::DbConnection,
    template: Uuid,
    copies: usize,
) -> Result<(), BenchError> {
    let copies = i32::try_from(copies)
        .map_err(|_| BenchError::Options(format!("too many sagas to copy: {copies}")))?;
    // A utility statement takes no parameters: the count (an integer) is written into it.
    let ids = format!(
        "CREATE TEMP TABLE bench_copy ON COMMIT DROP AS \
         SELECT gen_random_uuid() AS id FROM generate_series(1, {copies})"
    );
    let statements = [
        "INSERT INTO saga (id, creator, time_created, name, saga_dag, definition_version, saga_state, \
             current_sec, adopt_generation, adopt_time) \
         SELECT c.id, s.creator, s.time_created, s.name, s.saga_dag, s.definition_version, s.saga_state, \
             s.current_sec, s.adopt_generation, s.adopt_time \
         FROM saga s CROSS JOIN bench_copy c WHERE s.id = $1 AND $2 > 0",
        "INSERT INTO saga_node_event (saga_id, node_id, event_type, data, event_time, creator) \
         SELECT c.id, e.node_id, e.event_type, e.data, e.event_time, e.creator \
         FROM saga_node_event e CROSS JOIN bench_copy c WHERE e.saga_id = $1 AND $2 > 0",
        "INSERT INTO saga_commit_record (saga_id, node_name, receipt, time_committed, creator, \
             adopt_generation) \
         SELECT c.id, r.node_name, r.receipt, r.time_committed, r.creator, r.adopt_generation \
         FROM saga_commit_record r CROSS JOIN bench_copy c WHERE r.saga_id = $1 AND $2 > 0",
        "INSERT INTO bench_chain_step (saga_id, step, value) \
         SELECT c.id, b.step, b.value FROM bench_chain_step b CROSS JOIN bench_copy c \
         WHERE b.saga_id = $1 AND $2 > 0",
    ];
    ratchet_store::in_transaction(conn, |conn| {
        Box::pin(async move {
            diesel::sql_query(ids).execute(conn).await?;
            for sql in statements {
                diesel::sql_query(sql)
                    .bind::<SqlUuid, _>(template)
                    .bind::<Integer, _>(copies)
                    .execute(conn)
                    .await?;
            }
            Ok::<_, diesel::result::Error>(())
        })
    })
    .await?;
    Ok(())
}

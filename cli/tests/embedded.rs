//! The embedded cluster and the executor id kept with it: `--data-dir DIR` names both, whatever the working
//! directory, and the commands that only read create neither.

mod common;

use common::{Scratch, assert_refused, assert_says, ratchet_at};
use ratchet_engine::{EngineBuilder, EngineConfig};
use ratchet_example_saga::{self as example, ProvisionParams, ProvisionWidget};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use uuid::Uuid;

/// Stops the embedded cluster of `dir` when dropped (before its directory is removed).
struct StopCluster(PathBuf);

impl Drop for StopCluster {
    fn drop(&mut self) {
        let dir = self.0.to_string_lossy().into_owned();
        ratchet_at(None, &["--data-dir", &dir, "db", "stop"], &[]);
    }
}

fn in_dir(cwd: &Path, data_dir: &str, args: &[&str]) -> common::Run {
    let mut all = vec!["--data-dir", data_dir];
    all.extend_from_slice(args);
    ratchet_at(Some(cwd), &all, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_from_another_directory_finds_the_same_executors_sagas() {
    let data = Scratch::new("embedded");
    let (a, b) = (Scratch::new("cwd-a"), Scratch::new("cwd-b"));
    let cluster_dir = data.0.join("cluster");
    let dir = cluster_dir.to_string_lossy().into_owned();

    // Reading creates nothing: no cluster, no directory.
    assert_refused(
        &in_dir(&a.0, &dir, &["sagas", "list"]),
        "there is no embedded PostgreSQL in",
    );
    assert_refused(&in_dir(&a.0, &dir, &["check"]), "nothing was created");
    assert!(!cluster_dir.exists(), "nothing was created");

    // The first command that drives sagas makes the cluster and the executor's id, and says so.
    let _stop = StopCluster(cluster_dir.clone());
    let first = in_dir(&a.0, &dir, &["recover"]);
    assert_says(&first, &["owns 0 unfinished saga(s)", "nothing to recover"]);
    assert!(
        first
            .stderr
            .contains("creating a new embedded PostgreSQL cluster")
            && first.stderr.contains("this executor's id is new"),
        "{first:?}"
    );
    let id_file = cluster_dir.join("sec-id");
    let sec: Uuid = std::fs::read_to_string(&id_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        !a.0.join(".ratchet").exists(),
        "nothing in the working directory"
    );

    // An unfinished saga of that executor, as a crash leaves it.
    let url = in_dir(&a.0, &dir, &["db", "url"]).stdout.trim().to_owned();
    let (engine, _) = EngineBuilder::new(EngineConfig::new(&url, sec))
        .register::<ProvisionWidget>(Arc::new(()))
        .start()
        .await
        .unwrap();
    let mut conn = engine.pool().get().await.unwrap();
    let account = example::create_account(&mut conn, 100).await.unwrap();
    drop(conn);
    let saga = engine
        .create::<ProvisionWidget>(ProvisionParams {
            account_id: account,
            widget_name: "left-behind".to_owned(),
            price: 30,
        })
        .await
        .unwrap()
        .id;
    engine.shutdown().await;

    // From another working directory, the same --data-dir: the same executor, which finds its saga.
    let recovered = in_dir(&b.0, &dir, &["recover"]);
    assert_says(
        &recovered,
        &[
            &format!(
                "executor {sec} (kept in {}): owns 1 unfinished saga(s)",
                id_file.display()
            ),
            &format!("{saga}: succeeded"),
            "recovered 1 saga(s): 1 succeeded",
        ],
    );
    assert!(
        !recovered.stderr.contains("creating a new"),
        "{recovered:?}"
    );
    // Now the database exists, the reading commands read it.
    assert_says(
        &in_dir(&b.0, &dir, &["sagas", "list"]),
        &[&saga.to_string(), "done (succeeded)"],
    );
}

//! What several of these tests share and needs the test kit (`ratchet-test-utils`, a dev-dependency, so not
//! in this crate's library): a fresh database holding the example saga's tables and an account.

use diesel_async::{AsyncConnection, AsyncPgConnection};
use ratchet_template_db::TestDatabase;

/// A fresh database with the example saga's tables, a connection to it, and an account holding 100.
pub async fn database_with_account() -> (TestDatabase, AsyncPgConnection, uuid::Uuid) {
    let db = ratchet_test_utils::testing::fresh_database(&[&ratchet_example_saga::MIGRATIONS])
        .await
        .expect("database");
    let mut conn = AsyncPgConnection::establish(&db.url)
        .await
        .expect("connect");
    let account = ratchet_example_saga::create_account(&mut conn, 100)
        .await
        .expect("account");
    (db, conn, account)
}

// Only the engine can open a commit transaction: `CommitTx` has private fields and no public constructor.
use ratchet_engine::CommitTx;
use ratchet_engine::store::DbConnection;

async fn commit_outside_the_engine(conn: &mut DbConnection) {
    let _tx = CommitTx { conn, saga_id: uuid::Uuid::nil(), node_name: "forged" };
}

fn main() {
    let _ = commit_outside_the_engine;
}

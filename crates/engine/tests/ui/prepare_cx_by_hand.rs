// Likewise the read-only prepare context: only the engine makes one, inside its READ ONLY transaction.
include!("support/saga.rs");

fn forged(conn: &mut ratchet_engine::store::DbConnection) {
    let _cx: PrepareCx<'_, Demo> = PrepareCx { conn, params: &(), app: &() };
}

fn main() {
    let _ = forged;
}

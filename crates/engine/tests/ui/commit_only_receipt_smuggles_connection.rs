// A commit-only node's receipt cannot carry a connection into the post-commit phase either: receipts are
// recorded, so they must be serializable, and a connection is not.
include!("support/saga.rs");

pub struct Smuggled(ratchet_engine::store::DbConnection);

impl ratchet_engine::CommitOnlyDbNode for Step {
    type Saga = Demo;
    const NAME: &'static str = "demo.step";
    type Receipt = Smuggled;
    type Output = u32;

    async fn commit(&self, _: &mut CommitTx<'_>) -> Result<Smuggled, NodeError> {
        Err(NodeError::permanent("unreachable"))
    }
    fn finish(_: Smuggled) -> u32 {
        0
    }
    async fn compensate(&self, _: &mut CommitTx<'_>, _: Smuggled) -> Result<(), NodeError> {
        Ok(())
    }
}

fn main() {}

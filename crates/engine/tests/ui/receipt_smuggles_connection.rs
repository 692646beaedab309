// A receipt cannot carry a connection into the post-commit phase: receipts are recorded, so they must be
// serializable, and a connection is not.
include!("support/saga.rs");

pub struct Smuggled(ratchet_engine::store::DbConnection);

impl DbNode<Demo> for Step {
    const NAME: &'static str = "demo.step";
    type Plan = ();
    type Receipt = Smuggled;
    type Output = u32;

    async fn prepare(&self, _: &mut PrepareCx<'_, Demo>) -> Result<(), NodeError> {
        Ok(())
    }
    async fn commit(&self, _: &mut CommitTx<'_>, _: ()) -> Result<Smuggled, NodeError> {
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

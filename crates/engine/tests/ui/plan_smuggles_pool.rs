// A plan cannot carry a connection pool from prepare into commit (where a write through it would land outside
// the node's transaction, as Omicron issue 10695's re-fetch did): plans must be serializable data, and a pool
// is not.
include!("support/saga.rs");

pub struct Smuggled(ratchet_engine::store::DbPool);

impl DbNode<Demo> for Step {
    const NAME: &'static str = "demo.step";
    type Plan = Smuggled;
    type Receipt = u32;
    type Output = u32;

    async fn prepare(&self, _: &mut PrepareCx<'_, Demo>) -> Result<Smuggled, NodeError> {
        Err(NodeError::permanent("unreachable"))
    }
    async fn commit(&self, _: &mut CommitTx<'_>, _: Smuggled) -> Result<u32, NodeError> {
        Ok(0)
    }
    fn finish(receipt: u32) -> u32 {
        receipt
    }
    async fn compensate(&self, _: &mut CommitTx<'_>, _: u32) -> Result<(), NodeError> {
        Ok(())
    }
}

fn main() {}

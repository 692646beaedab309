// A post-commit phase that awaits (a re-fetch, a call out) does not match the trait's synchronous `finish`.
include!("support/saga.rs");

impl DbNode<Demo> for Step {
    const NAME: &'static str = "demo.step";
    type Plan = ();
    type Receipt = u32;
    type Output = u32;

    async fn prepare(&self, _: &mut PrepareCx<'_, Demo>) -> Result<(), NodeError> {
        Ok(())
    }
    async fn commit(&self, _: &mut CommitTx<'_>, _: ()) -> Result<u32, NodeError> {
        Ok(1)
    }
    async fn finish(receipt: u32) -> u32 {
        receipt
    }
    async fn compensate(&self, _: &mut CommitTx<'_>, _: u32) -> Result<(), NodeError> {
        Ok(())
    }
}

fn main() {}

// A post-commit phase that could fail: its output type is a `Result`, which is not a `NodeOutput`.
include!("support/saga.rs");

impl DbNode<Demo> for Step {
    const NAME: &'static str = "demo.step";
    type Plan = ();
    type Receipt = u32;
    type Output = Result<u32, String>;

    async fn prepare(&self, _: &mut PrepareCx<'_, Demo>) -> Result<(), NodeError> {
        Ok(())
    }
    async fn commit(&self, _: &mut CommitTx<'_>, _: ()) -> Result<u32, NodeError> {
        Ok(1)
    }
    fn finish(receipt: u32) -> Result<u32, String> {
        if receipt == 0 { Err("re-fetch failed".into()) } else { Ok(receipt) }
    }
    async fn compensate(&self, _: &mut CommitTx<'_>, _: u32) -> Result<(), NodeError> {
        Ok(())
    }
}

fn main() {}

// A commit-only node (no prepare) keeps the post-commit guarantee: its output type is a `Result` here, which
// is not a `NodeOutput`, so a `finish` that could fail does not compile.
include!("support/saga.rs");

impl ratchet_engine::CommitOnlyDbNode for Step {
    type Saga = Demo;
    const NAME: &'static str = "demo.step";
    type Receipt = u32;
    type Output = Result<u32, String>;

    async fn commit(&self, _: &mut CommitTx<'_>) -> Result<u32, NodeError> {
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

// A commit-only node (no prepare) keeps the post-commit guarantee: its `finish` returns the node's output, so a
// fallible step there cannot be propagated with `?`, and a `finish` declared to return a `Result` the engine
// would act on does not match the trait.
include!("support/saga.rs");

impl ratchet_engine::CommitOnlyDbNode for Step {
    type Saga = Demo;
    const NAME: &'static str = "demo.step";
    type Receipt = u32;
    type Output = u32;

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

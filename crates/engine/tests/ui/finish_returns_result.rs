// A post-commit phase that could fail: `finish` returns the node's output, never a `Result` the engine acts on,
// so a fallible step there cannot be propagated with `?` (and a `finish` declared to return a `Result` where
// the output is not one does not match the trait). An output that *is* a `Result` is only data, and is refused
// when the saga is registered (a runtime check: `crates/engine/tests/engine.rs`).
include!("support/saga.rs");

fn refetch(receipt: u32) -> Result<u32, String> {
    if receipt == 0 { Err("re-fetch failed".into()) } else { Ok(receipt) }
}

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
    fn finish(receipt: u32) -> u32 {
        refetch(receipt)?
    }
    async fn compensate(&self, _: &mut CommitTx<'_>, _: u32) -> Result<(), NodeError> {
        Ok(())
    }
}

fn main() {}

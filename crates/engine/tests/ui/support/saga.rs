// Shared by the compile-fail cases: a saga definition with nothing in it, and a valid node to vary.
use ratchet_engine::{CommitTx, DbNode, NodeError, NodeRegistry, PrepareCx, SagaBuilder, SagaDef};
use serde::{Deserialize, Serialize};

pub struct Demo;

impl SagaDef for Demo {
    const NAME: &'static str = "demo";
    type Params = ();
    type Context = ();
    fn register(_: &mut NodeRegistry<Self>) {}
    fn build(_: &(), _: &mut SagaBuilder<Self>) -> Result<(), String> {
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
pub struct Step;

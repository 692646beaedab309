// Shared by the compile-fail cases: a saga definition with nothing in it, and a valid node to vary. A case
// need not use every import (a commit-only node has no prepare).
#[allow(unused_imports)]
use ratchet_engine::{CommitTx, DbNode, NodeError, NodeRegistry, PrepareCx, SagaBuilder, SagaDef};
use serde::{Deserialize, Serialize};

pub struct Demo;

impl SagaDef for Demo {
    const NAME: &'static str = "demo";
    type Params = ();
    type Context = ();
    type Error = ratchet_engine::Untyped;
    fn register(_: &mut NodeRegistry<Self>) {}
    fn build(_: &(), _: &mut SagaBuilder<Self>) -> Result<(), String> {
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
pub struct Step;

//! The matrix: every suite × every node × every applicable fault, run in parallel on separate databases.

use crate::HarnessError;
use crate::cell::{Cell, CellResult, Status, cell_config, run_cell};
use crate::fault::Fault;
use crate::suite::SagaSuite;
use futures::StreamExt;
use futures::future::BoxFuture;
use ratchet_engine::{EngineBuilder, NodeKind};
use ratchet_store::testing::DatabaseServer;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

/// A suite with its saga type erased, so that one matrix holds many sagas.
trait ErasedSuite: Send + Sync {
    fn includes(&self, node: &str, kind: NodeKind) -> bool;
    fn nodes<'a>(
        &'a self,
        server: &'a DatabaseServer,
    ) -> BoxFuture<'a, Result<Vec<(String, NodeKind)>, HarnessError>>;
    fn run<'a>(&'a self, server: &'a DatabaseServer, cell: Cell) -> BoxFuture<'a, CellResult>;
}

struct Erased<T>(T);

impl<T: SagaSuite> ErasedSuite for Erased<T> {
    fn includes(&self, node: &str, kind: NodeKind) -> bool {
        self.0.includes(node, kind)
    }

    /// The saga's nodes, from a DAG built (and recorded, on a scratch database) but not run.
    fn nodes<'a>(
        &'a self,
        server: &'a DatabaseServer,
    ) -> BoxFuture<'a, Result<Vec<(String, NodeKind)>, HarnessError>> {
        Box::pin(async move {
            let db = server.fresh_database(&self.0.migrations()).await?;
            let listed = async {
                let fixture = self.0.fixture(&db.url).await?;
                let config = cell_config(&db.url, Uuid::new_v4(), Fault::BeforePrepare);
                let (engine, _) = self
                    .0
                    .register(EngineBuilder::new(config), &fixture)
                    .start()
                    .await?;
                let saga = engine.create::<T::Saga>(self.0.params(&fixture)).await?;
                Ok::<_, HarnessError>(saga.nodes())
            }
            .await;
            if let Err(error) = server.drop_database(&db).await {
                tracing::warn!(%error, "could not drop the scratch database");
            }
            listed
        })
    }

    fn run<'a>(&'a self, server: &'a DatabaseServer, cell: Cell) -> BoxFuture<'a, CellResult> {
        Box::pin(run_cell(&self.0, server, cell))
    }
}

/// A matrix to run.
pub struct Matrix {
    suites: Vec<Arc<dyn ErasedSuite>>,
    faults: Vec<Fault>,
    parallel: usize,
}

impl Default for Matrix {
    fn default() -> Self {
        Matrix::new()
    }
}

impl Matrix {
    /// An empty matrix with every fault and 4 cells at a time.
    pub fn new() -> Matrix {
        Matrix {
            suites: Vec::new(),
            faults: Fault::ALL.to_vec(),
            parallel: 4,
        }
    }

    /// Adds a saga under test.
    pub fn suite<T: SagaSuite>(mut self, suite: T) -> Matrix {
        self.suites.push(Arc::new(Erased(suite)));
        self
    }

    /// Only these faults.
    pub fn faults(mut self, faults: &[Fault]) -> Matrix {
        self.faults = faults.to_vec();
        self
    }

    /// How many cells run at once.
    pub fn parallel(mut self, cells: usize) -> Matrix {
        self.parallel = cells.max(1);
        self
    }

    /// Runs every cell on fresh databases of `server`, calling `progress` as each completes.
    pub async fn run(
        &self,
        server: &DatabaseServer,
        mut progress: impl FnMut(&CellResult, usize, usize),
    ) -> Result<MatrixReport, HarnessError> {
        let started = Instant::now();
        let mut cells: Vec<(Arc<dyn ErasedSuite>, Cell)> = Vec::new();
        for suite in &self.suites {
            let nodes = suite.nodes(server).await?;
            let last_node = nodes
                .iter()
                .rev()
                .find(|(_, kind)| *kind != NodeKind::Constant)
                .map(|(name, _)| name.clone())
                .unwrap_or_default();
            for (node, kind) in nodes.iter().filter(|(n, k)| suite.includes(n, *k)) {
                for fault in &self.faults {
                    if fault.applies_to(*kind) {
                        cells.push((
                            Arc::clone(suite),
                            Cell {
                                node: node.clone(),
                                kind: *kind,
                                fault: *fault,
                                last_node: last_node.clone(),
                            },
                        ));
                    }
                }
            }
        }
        let total = cells.len();
        let mut results = Vec::with_capacity(total);
        let mut stream = futures::stream::iter(cells)
            .map(|(suite, cell)| async move { suite.run(server, cell).await })
            .buffer_unordered(self.parallel);
        while let Some(result) = stream.next().await {
            progress(&result, results.len() + 1, total);
            results.push(result);
        }
        Ok(MatrixReport {
            faults: self.faults.clone(),
            cells: results,
            total_millis: started.elapsed().as_millis(),
        })
    }
}

/// The outcome of a matrix.
#[derive(Clone, Debug, Serialize)]
pub struct MatrixReport {
    pub faults: Vec<Fault>,
    pub cells: Vec<CellResult>,
    pub total_millis: u128,
}

impl MatrixReport {
    /// Cells that failed, or that missed a defect they exist to see.
    pub fn failures(&self) -> Vec<&CellResult> {
        self.cells
            .iter()
            .filter(|c| matches!(c.status, Status::Fail | Status::Missed))
            .collect()
    }

    pub fn count(&self, status: Status) -> usize {
        self.cells.iter().filter(|c| c.status == status).count()
    }

    /// The matrix as text: saga and node as rows, faults as columns; `ok`, `det` (an expected detection),
    /// `FAIL`, `MISS`, or `-` (not applicable). Failures follow, with their violations.
    pub fn table(&self) -> String {
        let mut rows: BTreeMap<(String, String), BTreeMap<Fault, Status>> = BTreeMap::new();
        let mut order: Vec<(String, String)> = Vec::new();
        for cell in &self.cells {
            let key = (cell.saga.clone(), cell.cell.node.clone());
            if !rows.contains_key(&key) {
                order.push(key.clone());
            }
            rows.entry(key)
                .or_default()
                .insert(cell.cell.fault, cell.status);
        }
        order.sort();
        let width = order
            .iter()
            .map(|(saga, node)| saga.len() + node.len() + 3)
            .max()
            .unwrap_or(10);
        let mut out = String::new();
        let _ = write!(out, "{:width$}", "saga / node");
        for fault in &self.faults {
            let _ = write!(out, " {:>6}", fault.short());
        }
        out.push('\n');
        for key in &order {
            let _ = write!(out, "{:width$}", format!("{} / {}", key.0, key.1));
            for fault in &self.faults {
                let mark = match rows.get(key).and_then(|r| r.get(fault)) {
                    None => "-",
                    Some(Status::Pass) => "ok",
                    Some(Status::Detected) => "det",
                    Some(Status::Fail) => "FAIL",
                    Some(Status::Missed) => "MISS",
                };
                let _ = write!(out, " {mark:>6}");
            }
            out.push('\n');
        }
        let legend: Vec<String> = self
            .faults
            .iter()
            .map(|f| format!("{}={}", f.short(), f.name()))
            .collect();
        let _ = writeln!(out, "\ncolumns: {}", legend.join(" "));
        let _ = writeln!(
            out,
            "{} cells: {} ok, {} expected detections, {} FAIL, {} MISSED detections; {:.1} s",
            self.cells.len(),
            self.count(Status::Pass),
            self.count(Status::Detected),
            self.count(Status::Fail),
            self.count(Status::Missed),
            self.total_millis as f64 / 1000.0
        );
        for failure in self.failures() {
            let _ = writeln!(
                out,
                "\n{:?}: {} / {} / {}",
                failure.status,
                failure.saga,
                failure.cell.node,
                failure.cell.fault.name()
            );
            if failure.status == Status::Missed {
                let _ = writeln!(out, "  the harness did not detect this saga's known defect");
            }
            for problem in &failure.problems {
                let _ = writeln!(out, "  problem: {problem}");
            }
            for violation in &failure.violations {
                let _ = writeln!(out, "  violation: {violation}");
            }
        }
        out
    }
}

//! The matrix: every suite × every node × every applicable fault, run in parallel on separate databases;
//! optionally the pairs (see [`crate::cell`]): an error right after node N's `COMMIT`, then a crash in the
//! compensation of N or of any action node before N in DAG order.
//!
//! Pairs are built only where both faults reach ratchet's own fault points (database and external nodes; not
//! plain steno nodes, not cells where a suite expects a detection), and only with M at or before N, since a
//! node after N never runs and so is never compensated. Every pair cell is checked like a single one, and
//! additionally fails if its crash never fired.
//!
//! TODO-correctness "before N in DAG order" assumes N's earlier nodes have all committed when N runs, true
//! of a chain of stages; an earlier node in N's own parallel stage may not have, and its pair then fails as
//! not having fired. The suites' sagas have one node per stage.

use crate::HarnessError;
use crate::cell::{Cell, CellResult, Status, cell_config, run_cell};
use crate::fault::Fault;
use crate::real_crash::{ChildProgram, ChildSpec, child_cell};
use crate::suite::SagaSuite;
use futures::StreamExt;
use futures::future::BoxFuture;
use ratchet_engine::{EngineBuilder, NodeKind};
use ratchet_template_db::DatabaseServer;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

/// A suite with its saga type erased, so that one matrix holds many sagas.
trait ErasedSuite: Send + Sync {
    fn label(&self) -> String;
    fn includes(&self, node: &str, kind: NodeKind) -> bool;
    fn expects_detection(&self, node: &str, fault: Fault) -> bool;
    fn nodes<'a>(
        &'a self,
        server: &'a DatabaseServer,
    ) -> BoxFuture<'a, Result<Vec<(String, NodeKind)>, HarnessError>>;
    fn run<'a>(&'a self, server: &'a DatabaseServer, cell: Cell) -> BoxFuture<'a, CellResult>;
    fn child(&self, spec: ChildSpec) -> BoxFuture<'_, Result<(), HarnessError>>;
}

struct Erased<T>(T);

impl<T: SagaSuite> ErasedSuite for Erased<T> {
    fn label(&self) -> String {
        self.0.label()
    }

    fn includes(&self, node: &str, kind: NodeKind) -> bool {
        self.0.includes(node, kind)
    }

    fn expects_detection(&self, node: &str, fault: Fault) -> bool {
        self.0.expects_detection(node, fault)
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

    fn child(&self, spec: ChildSpec) -> BoxFuture<'_, Result<(), HarnessError>> {
        Box::pin(child_cell(&self.0, spec))
    }
}

/// A matrix to run.
pub struct Matrix {
    suites: Vec<Arc<dyn ErasedSuite>>,
    faults: Vec<Fault>,
    pairs: bool,
    parallel: usize,
    disabled_point: Option<ratchet_engine::FaultPoint>,
    only_nodes: Option<Vec<String>>,
    child: Option<ChildProgram>,
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
            pairs: false,
            parallel: 4,
            disabled_point: None,
            only_nodes: None,
            child: None,
        }
    }

    /// Adds a saga under test.
    pub fn suite<T: SagaSuite>(mut self, suite: T) -> Matrix {
        self.suites.push(Arc::new(Erased(suite)));
        self
    }

    /// Only these single faults (none: only the pairs, if asked for).
    pub fn faults(mut self, faults: &[Fault]) -> Matrix {
        self.faults = faults.to_vec();
        self
    }

    /// Whether to run the pairs too: after-commit error at N, then a crash in the compensation of N or of a
    /// node before it.
    pub fn pairs(mut self, pairs: bool) -> Matrix {
        self.pairs = pairs;
        self
    }

    /// Only these nodes (by name, in every suite); all of them when never called.
    pub fn nodes(mut self, nodes: &[&str]) -> Matrix {
        self.only_nodes = Some(nodes.iter().map(|n| (*n).to_owned()).collect());
        self
    }

    /// Makes `point` never fire in any cell's engine (see `Failpoints::disable`): a mutation for the harness's
    /// own tests, whose cells must then fail with "fault not reached".
    pub fn disable_point(mut self, point: ratchet_engine::FaultPoint) -> Matrix {
        self.disabled_point = Some(point);
        self
    }

    /// Runs every crash cell (the single crash faults and the pairs) with a real crash: its saga runs in
    /// `child`, which is killed with `SIGKILL` at the fault point, in the middle of the `COMMIT`'s round trip
    /// where the point is a database node's `COMMIT` (see [`crate::real_crash`]). `child`'s `main` must call
    /// [`Matrix::run_child`] on a matrix holding the same suites.
    pub fn real_crash(mut self, child: ChildProgram) -> Matrix {
        self.child = Some(child);
        self
    }

    /// The child's side of a real-crash cell: runs the saga `spec` (JSON, as the harness passed it) names,
    /// with the suite of that label, and prints its progress on stdout until the harness kills it.
    pub async fn run_child(&self, spec: &str) -> Result<(), HarnessError> {
        let spec: ChildSpec = serde_json::from_str(spec)
            .map_err(|e| HarnessError::Fixture(format!("the child's spec: {e}")))?;
        let suite = self
            .suites
            .iter()
            .find(|suite| suite.label() == spec.suite)
            .ok_or_else(|| HarnessError::Fixture(format!("no suite labelled {:?}", spec.suite)))?;
        suite.child(spec).await
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
        let mut dag_order = BTreeMap::new();
        for suite in &self.suites {
            let nodes = suite.nodes(server).await?;
            dag_order.insert(
                suite.label(),
                nodes.iter().map(|(name, _)| name.clone()).collect(),
            );
            let last_node = nodes
                .iter()
                .rev()
                .find(|(_, kind)| {
                    matches!(kind, NodeKind::Db | NodeKind::External | NodeKind::Steno)
                })
                .map(|(name, _)| name.clone())
                .unwrap_or_default();
            let cell = |node: &str, kind: NodeKind, fault: Fault, other: Option<&str>| Cell {
                node: node.to_owned(),
                kind,
                fault,
                crash_in_compensation_of: other.map(str::to_owned),
                last_node: last_node.clone(),
                disabled_point: self.disabled_point,
                child: self.child.clone(),
            };
            for (index, (node, kind)) in nodes.iter().enumerate() {
                let chosen = self
                    .only_nodes
                    .as_ref()
                    .is_none_or(|only| only.contains(node));
                if !suite.includes(node, *kind) || !chosen {
                    continue;
                }
                for fault in &self.faults {
                    if fault.applies_to(*kind) {
                        cells.push((Arc::clone(suite), cell(node, *kind, *fault, None)));
                    }
                }
                if !self.pairs
                    || !pairable(*kind)
                    || suite.expects_detection(node, Fault::AfterCommit)
                {
                    continue;
                }
                for (other, other_kind) in &nodes[..=index] {
                    if pairable(*other_kind) {
                        cells.push((
                            Arc::clone(suite),
                            cell(node, *kind, Fault::AfterCommit, Some(other)),
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
            dag_order,
            cells: results,
            total_millis: started.elapsed().as_millis(),
        })
    }
}

/// Whether a node has ratchet's after-commit and in-compensation fault points.
fn pairable(kind: NodeKind) -> bool {
    matches!(kind, NodeKind::Db | NodeKind::External)
}

/// The outcome of a matrix.
#[derive(Clone, Debug, Serialize)]
pub struct MatrixReport {
    pub faults: Vec<Fault>,
    /// Each saga's nodes in DAG order, by saga label.
    pub dag_order: BTreeMap<String, Vec<String>>,
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
    /// `FAIL`, `MISS`, or `-` (not applicable). The pairs follow, one grid per saga (rows: the node failing
    /// after its commit; columns: the node whose compensation crashes), then the failures with their
    /// violations.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let singles: Vec<&CellResult> = self
            .cells
            .iter()
            .filter(|c| c.cell.crash_in_compensation_of.is_none())
            .collect();
        if !singles.is_empty() {
            self.singles_table(&singles, &mut out);
        }
        self.pairs_table(&mut out);
        let _ = writeln!(
            out,
            "{} cells: {} ok, {} expected detections, {} FAIL, {} MISSED detections, {} not applicable; {:.1} s",
            self.cells.len(),
            self.count(Status::Pass),
            self.count(Status::Detected),
            self.count(Status::Fail),
            self.count(Status::Missed),
            self.count(Status::NotApplicable),
            self.total_millis as f64 / 1000.0
        );
        for failure in self.failures() {
            let _ = writeln!(
                out,
                "\n{:?}: {} / {} / {}",
                failure.status,
                failure.saga,
                failure.cell.node,
                failure.cell.label()
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

    fn singles_table(&self, singles: &[&CellResult], out: &mut String) {
        let mut rows: BTreeMap<(&str, &str), BTreeMap<Fault, Status>> = BTreeMap::new();
        for cell in singles {
            rows.entry((cell.saga.as_str(), cell.cell.node.as_str()))
                .or_default()
                .insert(cell.cell.fault, cell.status);
        }
        let width = rows
            .keys()
            .map(|(saga, node)| saga.len() + node.len() + 3)
            .max()
            .unwrap_or(10);
        let _ = write!(out, "{:width$}", "saga / node");
        for fault in &self.faults {
            let _ = write!(out, " {:>6}", fault.short());
        }
        out.push('\n');
        let ordered = self.dag_order.iter().flat_map(|(saga, nodes)| {
            nodes
                .iter()
                .filter_map(|node| rows.get_key_value(&(saga.as_str(), node.as_str())))
        });
        for ((saga, node), row) in ordered {
            let _ = write!(out, "{:width$}", format!("{saga} / {node}"));
            for fault in &self.faults {
                let _ = write!(out, " {:>6}", mark(row.get(fault).copied()));
            }
            out.push('\n');
        }
        let legend: Vec<String> = self
            .faults
            .iter()
            .map(|f| format!("{}={}", f.short(), f.name()))
            .collect();
        let _ = writeln!(out, "\ncolumns: {}\n", legend.join(" "));
    }

    fn pairs_table(&self, out: &mut String) {
        // saga -> (node failing after its commit, node whose compensation crashes) -> status.
        let mut sagas: BTreeMap<&str, BTreeMap<(&str, &str), Status>> = BTreeMap::new();
        for cell in &self.cells {
            if let Some(other) = cell.cell.crash_in_compensation_of.as_deref() {
                sagas
                    .entry(cell.saga.as_str())
                    .or_default()
                    .insert((cell.cell.node.as_str(), other), cell.status);
            }
        }
        for (saga, grid) in &sagas {
            // The nodes that appear in a pair, in DAG order.
            let order: Vec<&str> = self
                .dag_order
                .get(*saga)
                .into_iter()
                .flatten()
                .map(String::as_str)
                .filter(|node| grid.keys().any(|(n, m)| n == node || m == node))
                .collect();
            let width = order.iter().map(|n| n.len()).max().unwrap_or(4) + 4;
            let _ = writeln!(
                out,
                "pairs, {saga}: row N fails right after its commit, column M's compensation then crashes"
            );
            let _ = write!(out, "{:width$}", "N \\ M");
            for column in 1..=order.len() {
                let _ = write!(out, " {column:>4}");
            }
            out.push('\n');
            for (index, node) in order.iter().enumerate() {
                let _ = write!(out, "{:width$}", format!("{:>2} {node}", index + 1));
                for other in &order {
                    let _ = write!(out, " {:>4}", mark(grid.get(&(*node, *other)).copied()));
                }
                out.push('\n');
            }
            out.push('\n');
        }
    }
}

fn mark(status: Option<Status>) -> &'static str {
    match status {
        None => "-",
        Some(Status::Pass) => "ok",
        Some(Status::Detected) => "det",
        Some(Status::Fail) => "FAIL",
        Some(Status::Missed) => "MISS",
        Some(Status::NotApplicable) => "n/a",
    }
}

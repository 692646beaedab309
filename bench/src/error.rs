//! The benchmark's errors.

/// Why a benchmark run failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The database (or the pool) failed.
    #[error("database: {0}")]
    Db(#[from] ratchet_store::DbError),
    /// A query failed.
    #[error("query: {0}")]
    Query(#[from] diesel::result::Error),
    /// The datastore refused (seeding a world, the baseline's actions).
    #[error("datastore: {0}")]
    Datastore(#[from] ratchet_datastore::DatastoreError),
    /// The engine failed.
    #[error("engine: {0}")]
    Engine(#[from] ratchet_engine::EngineError),
    /// steno refused a plain-steno saga.
    #[error("steno: {0}")]
    Steno(String),
    /// A saga did not succeed: the figures would compare unlike with unlike.
    #[error("{implementation} {saga} saga did not succeed: {outcome}")]
    SagaFailed {
        implementation: &'static str,
        saga: &'static str,
        outcome: String,
    },
    /// The simulated services did not start.
    #[error("simulated services: {0}")]
    Services(String),
    /// Bad options.
    #[error("bad options: {0}")]
    Options(String),
    /// Something the benchmark checks did not hold (named in the message).
    #[error("{0}")]
    Check(String),
    /// Writing the report.
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

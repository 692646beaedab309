//! The child process of the harness's real-crash cells in this crate's tests: `ratchet-matrix-child SPEC`
//! runs the saga SPEC (JSON, see `ratchet_fault_injection::ChildSpec`) names until the harness kills it.

use ratchet_fault_injection::{Matrix, ProvisionSuite, all_nexus_suites};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let Some(spec) = std::env::args().nth(1) else {
        eprintln!("usage: ratchet-matrix-child SPEC");
        return std::process::ExitCode::from(2);
    };
    let suites = all_nexus_suites(Matrix::new()).suite(ProvisionSuite);
    match suites.run_child(&spec).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

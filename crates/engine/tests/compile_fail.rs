//! The typed node's guarantees, proven by programs that must not compile (`trybuild`).
//!
//! After an intentional change to the compiler's messages, regenerate the expected output with
//! `TRYBUILD=overwrite cargo test -p ratchet-engine --test compile_fail` and review the diff.

#[test]
fn post_commit_cannot_fail_await_or_reach_a_connection() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}

//! The fault-injection harness: every saga × every node × every fault point, with a matrix that proves nothing
//! leaks.
//!
//! This crate is a skeleton: it is built out by the fault-injection issue (DESIGN.md section 7).

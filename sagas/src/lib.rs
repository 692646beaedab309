//! The Nexus-shaped sagas on ratchet (instance-create, disk-attach, disk-detach, snapshot-create), their
//! datastore, and the simulated sled agent and pantry.
//!
//! This crate is a skeleton: it is built out by the sagas issue (DESIGN.md section 6).

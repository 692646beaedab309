//! Running one node: an attempt at a database node (`db_node.rs`) or an external node (`external_node.rs`),
//! what every attempt shares (`node_run.rs`: who the node is, retries, panics, faults), how a `COMMIT` whose
//! outcome is unknown is settled (`commit_outcome.rs`), and the runtime state of the saga the node belongs
//! to (`saga_state.rs`); plain steno actions behind the failpoints' guard (`unchecked.rs`).
//!
//! # The states of a database node's attempt
//!
//! ```text
//!                 steno runs the node (do_it), or re-runs it after a crash
//!                                     |
//!                                     v
//!   +----------------------------> [begin] BEGIN; token; (prepare savepoint)
//!   |  transient failure,             |
//!   |  budget left: back off          | a record may exist? look it up:
//!   |                                 |   committed  --> [replay]       finish(receipt), no commit
//!   |                                 |   compensated --> [failed]      (compensated after its commit)
//!   |                                 |   fenced     --> [fenced]       write nothing more
//!   |                                 v
//!   |                             [prepare] read-only; the plan through its serialized form
//!   |                                 |
//!   |                                 v
//!   |                             [commit] the node's writes; finish(receipt) before COMMIT;
//!   |                                 |     fence + commit record + events in one statement
//!   |     error / panic / fault       |
//!   +------ [rolled back] <-----------+ (the token checked first: a node that ended the engine's
//!             |                       |  transaction fails for that, and is not retried)
//!             | permanent, or no      v
//!             | budget left       COMMIT ------ refused (40001, 23xxx) --------> [rolled back]
//!             v                       |
//!          [failed]                   +-------- no reply (connection lost) ----> [unknown]
//!          nothing to undo            |                                            |
//!                                     v                                            | probe the record on a
//!                                 [committed] ---- a fault after it ---+           | fresh connection, as
//!                                     |                                |           | long as it takes
//!                                     v                                v           v
//!                                 [succeeded]                 [compensated inline] landed: [committed]
//!                                 output to steno              then [failed]       absent: [begin] again
//! ```
//!
//! An external node's attempt has the same shape around one idempotent call keyed by (saga, node): a
//! read-only prepare, the call (retried with the same key while its outcome is unknown; compensated by key
//! before the node fails if any attempt was unknown), the receipt recorded after the call, fenced. A
//! compensation is one transaction of its own, found by its record on a re-run, and a failure that outlives
//! its budget makes the saga stuck.

pub(crate) mod commit_outcome;
pub(crate) mod db_node;
pub(crate) mod external_node;
pub(crate) mod node_run;
pub(crate) mod saga_state;
pub(crate) mod unchecked;

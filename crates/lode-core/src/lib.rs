//! The sans-IO core of lode: state machines that take inputs (messages, IO completions,
//! `now`) and return decisions, and never touch a clock, a disk, a socket or a random
//! source themselves. That is what lets the same decisions run in production, in
//! deterministic simulation and in exhaustive in-process tests.
//!
//! **Architecture invariant:** this crate depends on no runtime, no IO crate and no
//! randomness; a tidy test checks its sources and its manifest.
//!
//! Protocol invariants are `assert!`s, on in release builds: a broken invariant stops the
//! node rather than letting it corrupt replicated state.

pub mod epoch_cache;
pub mod group;

pub use epoch_cache::{Assigned, EpochEntry, LeaderEpochCache};
pub mod producer;

pub use producer::{BatchMeta, ProducerStates, Verdict};
pub mod metadata;

pub use metadata::{Controller, ControllerConfig, MetadataRecord, MetadataState};
pub mod raft;
pub mod replication;

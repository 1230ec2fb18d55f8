//! Invariant 17: every node applies the same metadata entry at each raft offset (each
//! node's applied metadata log is a prefix of the committed one).

use lode_broker::observe::Event;

use super::{Invariant, Model};

/// See the module.
pub struct MetadataPrefix;

impl Invariant for MetadataPrefix {
    fn name(&self) -> &'static str {
        "metadata-prefix"
    }

    fn check(&mut self, m: &Model, node: i32, e: &Event) -> Result<(), String> {
        let Event::MetadataApplied { offset, digest } = e else {
            return Ok(());
        };
        match m.metadata.get(offset) {
            Some((d, first)) if d != digest => Err(format!(
                "node {node} applies metadata entry {} with digest {digest:016x}; node {first} applied {d:016x}",
                offset.0
            )),
            _ => Ok(()),
        }
    }
}

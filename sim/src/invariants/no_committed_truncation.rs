//! Invariant 13: no replica truncates a committed batch away (only an unclean election
//! could make that right, and it is off).

use lode_broker::observe::Event;

use super::{show, Invariant, Model};

/// See the module.
pub struct NoCommittedTruncation;

impl Invariant for NoCommittedTruncation {
    fn name(&self) -> &'static str {
        "no-committed-truncation"
    }

    fn about_loss(&self) -> bool {
        true
    }

    fn check(&mut self, m: &Model, node: i32, e: &Event) -> Result<(), String> {
        let Event::Truncated { to, reason, .. } = e else {
            return Ok(());
        };
        let (Some(p), Some(r)) = (m.partition(e), m.replica(node, e)) else {
            return Ok(());
        };
        let gone = r
            .log
            .values()
            .filter(|b| b.last >= *to)
            .find(|b| p.committed.get(&b.base) == Some(*b));
        match gone {
            Some(b) => Err(format!(
                "node {node} truncates to {} ({reason}), dropping the committed batch {}",
                to.0,
                show(b)
            )),
            None => Ok(()),
        }
    }
}

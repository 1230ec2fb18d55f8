//! Invariant 1, durability: a batch a leader's high watermark passed is, unchanged, in the
//! log of every leader whose high watermark passes its offsets afterwards. Checked at each
//! leader's high-watermark move, over its log below the new high watermark.

use lode_broker::observe::Event;

use super::{show, Invariant, Model};

/// See the module.
pub struct Durability;

impl Invariant for Durability {
    fn name(&self) -> &'static str {
        "durability"
    }

    fn about_loss(&self) -> bool {
        true
    }

    fn check(&mut self, m: &Model, node: i32, e: &Event) -> Result<(), String> {
        let Event::HighWatermark {
            high_watermark,
            leader_isr: Some(_),
            ..
        } = e
        else {
            return Ok(());
        };
        let (Some(p), Some(r)) = (m.partition(e), m.replica(node, e)) else {
            return Ok(());
        };
        // Below the replica's previous high watermark its log was checked before.
        let from = r.high_watermark;
        if let Some((b, committed)) = p.first_disagreement(r, from, *high_watermark) {
            return Err(match committed {
                Some(c) => format!(
                    "leader {node} commits {} where {} was committed",
                    show(&b),
                    show(&c)
                ),
                None => format!(
                    "leader {node} commits {} inside the committed log (ending at {}) where no committed batch starts",
                    show(&b),
                    p.committed_end().0
                ),
            });
        }
        // Every committed batch below the new high watermark must be in the leader's log.
        let start = p.committed_at(from).map_or(from, |c| c.base);
        for c in p
            .committed
            .range(start..)
            .map(|(_, c)| c)
            .take_while(|c| c.last < *high_watermark)
        {
            if r.batch_at(c.base) != Some(c) {
                return Err(format!(
                    "leader {node} moves its high watermark to {} without the committed batch {} (it has {})",
                    high_watermark.0,
                    show(c),
                    r.batch_at(c.base).map_or("nothing".into(), show)
                ));
            }
        }
        Ok(())
    }
}

//! Invariant 4, log matching: below its high watermark, every replica's log is the
//! committed log (so any two replicas agree below the smaller of their high watermarks).
//! Checked at each follower's high-watermark move (leaders: see `durability`).

use lode_broker::observe::Event;

use super::{show, Invariant, Model};

/// See the module.
pub struct LogMatching;

impl Invariant for LogMatching {
    fn name(&self) -> &'static str {
        "log-matching"
    }

    fn about_loss(&self) -> bool {
        true
    }

    fn check(&mut self, m: &Model, node: i32, e: &Event) -> Result<(), String> {
        let Event::HighWatermark {
            high_watermark,
            leader_isr: None,
            ..
        } = e
        else {
            return Ok(());
        };
        let (Some(p), Some(r)) = (m.partition(e), m.replica(node, e)) else {
            return Ok(());
        };
        match p.first_disagreement(r, r.high_watermark, *high_watermark) {
            None => Ok(()),
            Some((b, c)) => Err(format!(
                "follower {node}'s log below its high watermark {} has {} where the committed log has {}",
                high_watermark.0,
                show(&b),
                c.map_or("no batch starting there".into(), |c| show(&c))
            )),
        }
    }
}

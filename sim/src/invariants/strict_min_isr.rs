//! Invariant 8, strict min ISR (KIP-966): a leader's high watermark moves only while the
//! ISR it decides over has at least `min(min.insync.replicas, replicas)` members.

use lode_broker::observe::Event;

use super::{Invariant, Model};

/// See the module.
pub struct StrictMinIsr;

impl Invariant for StrictMinIsr {
    fn name(&self) -> &'static str {
        "strict-min-isr"
    }

    fn check(&mut self, m: &Model, node: i32, e: &Event) -> Result<(), String> {
        let Event::HighWatermark {
            topic,
            partition,
            high_watermark,
            leader_isr: Some(isr),
        } = e
        else {
            return Ok(());
        };
        let min_isr = m.min_isr(topic, *partition);
        if isr.len() < min_isr {
            let ids: Vec<i32> = isr.iter().map(|b| b.0).collect();
            return Err(format!(
                "leader {node} moves its high watermark to {} with ISR {ids:?}, below min ISR {}",
                high_watermark.0, min_isr
            ));
        }
        Ok(())
    }
}

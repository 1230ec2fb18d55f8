//! Invariant 9, ack correctness: a broker answers an acks=all write (a produce, or an
//! offset commit to the offsets topic) only once its own high watermark passed the write's
//! last offset, that is once the write is committed. (That the high watermark moved only
//! with an ISR of at least min ISR is invariant 8.)

use lode_broker::observe::Event;

use super::{Invariant, Model};

/// See the module.
pub struct AckCorrectness;

impl Invariant for AckCorrectness {
    fn name(&self) -> &'static str {
        "ack-correctness"
    }

    fn check(&mut self, m: &Model, node: i32, e: &Event) -> Result<(), String> {
        let Event::Acked {
            topic,
            partition,
            last,
        } = e
        else {
            return Ok(());
        };
        let hw = m
            .partitions
            .get(&(topic.clone(), *partition))
            .and_then(|p| p.replicas.get(&node))
            .map(|r| r.high_watermark);
        match hw {
            Some(hw) if hw > *last => Ok(()),
            _ => Err(format!(
                "node {node} acknowledges an acks=all write ending at offset {} with its high watermark at {}",
                last.0,
                hw.map_or("nothing reported".to_owned(), |h| h.0.to_string())
            )),
        }
    }
}

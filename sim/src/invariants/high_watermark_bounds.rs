//! Invariant 7: a replica's high watermark never passes its log end (at every move, at
//! every opening, and at every truncation).

use lode_broker::observe::Event;

use super::{Invariant, Model};

/// See the module.
pub struct HighWatermarkBounds;

impl Invariant for HighWatermarkBounds {
    fn name(&self) -> &'static str {
        "high-watermark-bounds"
    }

    fn check(&mut self, m: &Model, node: i32, e: &Event) -> Result<(), String> {
        let r = m.replica(node, e);
        match e {
            Event::HighWatermark { high_watermark, .. } => {
                let end = r.map_or(lode_proto::Offset(0), super::Replica::log_end);
                if *high_watermark > end {
                    return Err(format!(
                        "node {node}'s high watermark moves to {}, past its log end {}",
                        high_watermark.0, end.0
                    ));
                }
            }
            Event::Opened {
                log_end,
                high_watermark,
                ..
            } if high_watermark > log_end => {
                return Err(format!(
                    "node {node} opens its log ending at {} with high watermark {}",
                    log_end.0, high_watermark.0
                ));
            }
            Event::Truncated { to, reason, .. } => {
                let hw = r.map_or(lode_proto::Offset(0), |r| r.high_watermark);
                if *to < hw {
                    return Err(format!(
                        "node {node} truncates to {}, below its high watermark {} ({reason})",
                        to.0, hw.0
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

//! Invariant 14: a consumer is served only batches below the serving replica's high
//! watermark (so what it reads is committed, and stays).

use lode_broker::observe::Event;

use super::{show, Invariant, Model};

/// See the module.
pub struct ConsumerBelowHw;

impl Invariant for ConsumerBelowHw {
    fn name(&self) -> &'static str {
        "consumer-below-hw"
    }

    fn check(&mut self, _m: &Model, node: i32, e: &Event) -> Result<(), String> {
        let Event::Served {
            batches,
            high_watermark,
            ..
        } = e
        else {
            return Ok(());
        };
        match batches.iter().find(|b| b.last >= *high_watermark) {
            Some(b) => Err(format!(
                "node {node} serves a consumer {} at high watermark {}",
                show(b),
                high_watermark.0
            )),
            None => Ok(()),
        }
    }
}

//! Invariant 5 (second half): one leader per epoch, and only that leader appends batches
//! stamped with the epoch.

use lode_broker::observe::Event;

use super::{show, Invariant, Model};

/// See the module.
pub struct OneWriterPerEpoch;

impl Invariant for OneWriterPerEpoch {
    fn name(&self) -> &'static str {
        "one-writer-per-epoch"
    }

    fn check(&mut self, m: &Model, node: i32, e: &Event) -> Result<(), String> {
        let Some(p) = m.partition(e) else {
            return Ok(());
        };
        match e {
            Event::Leader { epoch, .. } => match p.leaders.get(epoch) {
                Some(l) if l.node != node => Err(format!(
                    "node {node} leads epoch {}, which node {} led",
                    epoch.0, l.node
                )),
                _ => Ok(()),
            },
            Event::Appended {
                batches,
                as_leader: true,
                ..
            } => {
                for b in batches {
                    match p.leaders.get(&b.epoch) {
                        Some(l) if l.node == node => {}
                        Some(l) => {
                            return Err(format!(
                                "node {node} writes {} in epoch {}, led by node {}",
                                show(b),
                                b.epoch.0,
                                l.node
                            ))
                        }
                        None => {
                            return Err(format!(
                                "node {node} writes {} in epoch {}, which nobody took up",
                                show(b),
                                b.epoch.0
                            ))
                        }
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

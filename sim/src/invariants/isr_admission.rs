//! Invariant 11, ISR admission (KAFKA-7128): a replica joins the ISR under a leader only
//! once its log reaches the start of that leader's epoch (it may otherwise hold a
//! diverging tail from an older epoch above the high watermark). Checked when a partition
//! epoch is first applied, against the replica's log then, unless it reopened its log
//! since the leader took up the epoch (then the model cannot tell what it had).

use lode_broker::observe::Event;

use super::{Invariant, Model};

/// See the module.
pub struct IsrAdmission;

impl Invariant for IsrAdmission {
    fn name(&self) -> &'static str {
        "isr-admission"
    }

    fn check(&mut self, m: &Model, node: i32, e: &Event) -> Result<(), String> {
        let Event::PartitionChanged { state: s, .. } = e else {
            return Ok(());
        };
        let Some(p) = m.partition(e) else {
            return Ok(());
        };
        if s.partition_epoch <= p.partition_epoch_max {
            return Ok(());
        }
        let Some(prev) = p.views.get(&node) else {
            return Ok(());
        };
        if prev.leader_epoch != s.leader_epoch || prev.leader != s.leader {
            return Ok(());
        }
        let Some(l) = p.leaders.get(&s.leader_epoch) else {
            return Ok(());
        };
        for b in s.isr.iter().filter(|b| !prev.isr.contains(b)) {
            let Some(r) = p.replicas.get(&b.0) else {
                continue;
            };
            if r.opened_step > l.step {
                continue;
            }
            if r.log_end() < l.start {
                return Err(format!(
                    "broker {} joins the ISR of leader {} (epoch {}, started at offset {}) with its log ending at {}",
                    b.0,
                    l.node,
                    s.leader_epoch.0,
                    l.start.0,
                    r.log_end().0
                ));
            }
        }
        Ok(())
    }
}

//! Invariant 10: every partition state a node applies is well formed: the leader is in the
//! ISR; ISR and ELR are replicas and disjoint; the ELR is empty while the ISR has min ISR
//! members; no fenced broker is in the ISR; no unclean election while unclean election is
//! off.

use lode_broker::observe::Event;

use super::{Invariant, Model};

/// See the module.
pub struct ControllerState;

impl Invariant for ControllerState {
    fn name(&self) -> &'static str {
        "controller-state"
    }

    fn check(&mut self, m: &Model, node: i32, e: &Event) -> Result<(), String> {
        let Event::PartitionChanged { state: s, .. } = e else {
            return Ok(());
        };
        let ids = |v: &[lode_proto::BrokerId]| v.iter().map(|b| b.0).collect::<Vec<_>>();
        let what = format!(
            "node {node} applied leader {:?} epoch {} ISR {:?} ELR {:?} replicas {:?} (partition epoch {})",
            s.leader.map(|l| l.0),
            s.leader_epoch.0,
            ids(&s.isr),
            ids(&s.elr),
            ids(&s.replicas),
            s.partition_epoch
        );
        if let Some(l) = s.leader {
            if !s.isr.contains(&l) {
                return Err(format!("leader outside the ISR: {what}"));
            }
        }
        if s.isr.iter().chain(&s.elr).any(|b| !s.replicas.contains(b)) {
            return Err(format!("ISR or ELR member not a replica: {what}"));
        }
        if s.isr.iter().any(|b| s.elr.contains(b)) {
            return Err(format!("ISR and ELR overlap: {what}"));
        }
        let min_isr = m.settings.min_isr.min(s.replicas.len()).max(1);
        if s.isr.len() >= min_isr && !s.elr.is_empty() {
            return Err(format!("ELR with a full ISR: {what}"));
        }
        if !s.fenced_in_isr.is_empty() {
            return Err(format!(
                "fenced brokers {:?} in the ISR: {what}",
                ids(&s.fenced_in_isr)
            ));
        }
        if s.elected_unclean && !m.settings.unclean_election {
            return Err(format!(
                "unclean election with unclean election off: {what}"
            ));
        }
        Ok(())
    }
}

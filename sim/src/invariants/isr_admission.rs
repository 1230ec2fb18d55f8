//! Invariant 11, ISR admission (KAFKA-7128): a leader proposes a replica into the ISR only
//! once the replica's log reaches the start of the leader's epoch (below it, the replica
//! may hold a diverging tail of an older epoch that the high watermark does not cover).
//! Checked when the leader proposes, for the member it adds (swarm seed 424: with the
//! member set against the ISR the node had applied, a leader whose replication state was
//! a committed shrink behind seemed to add members it had all along), against the
//! replica's log as reported (it waits for
//! the fetch answer then, so its log is where it fetched from), unless it reopened its log
//! since the leader took up the epoch, or a later epoch has a leader already: a deposed
//! leader (paused, say) may act on fetches that waited in its queue while the replica
//! moved on to the new leader; its proposal carries a stale partition epoch, which the
//! controller refuses (and the controller invariants check that it does).

use lode_broker::observe::Event;

use lode_proto::Epoch;

use super::{Invariant, Model};

/// See the module.
pub struct IsrAdmission;

impl Invariant for IsrAdmission {
    fn name(&self) -> &'static str {
        "isr-admission"
    }

    fn check(&mut self, m: &Model, node: i32, e: &Event) -> Result<(), String> {
        let Event::IsrProposed {
            added: Some(added), ..
        } = e
        else {
            return Ok(());
        };
        let (Some(p), Some(leader)) = (m.partition(e), m.replica(node, e)) else {
            return Ok(());
        };
        let Some(epoch) = leader.leading else {
            return Ok(());
        };
        let Some(l) = p.leaders.get(&epoch) else {
            return Ok(());
        };
        if p.leaders.range(Epoch(epoch.0 + 1)..).next().is_some() {
            return Ok(());
        }
        // The member the proposal adds to the ISR the leader's replication state holds,
        // which may lag the metadata the node applied (a leader whose disk stalled applies
        // a committed shrink to its replication state only after it): the other members of
        // such a stale proposal were in the ISR it was based on, and the controller refuses
        // its stale partition epoch.
        for b in [added].into_iter().filter(|b| b.0 != node) {
            let Some(r) = p.replicas.get(&b.0) else {
                continue;
            };
            if r.opened_step > l.step {
                continue;
            }
            if r.log_end() < l.start {
                return Err(format!(
                    "leader {node} (epoch {}, started at offset {}) proposes broker {} into the ISR with its log ending at {}",
                    epoch.0,
                    l.start.0,
                    b.0,
                    r.log_end().0
                ));
            }
        }
        Ok(())
    }
}

//! Unit tests, one rule each.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use lode_proto::{BrokerId, Epoch, Instant, Offset, PartitionId};

use super::*;

/// A controller and the state it drives, every batch applied at once and checked.
pub(super) struct Cluster {
    pub state: MetadataState,
    pub ctl: Controller,
    pub offset: i64,
    pub now: Instant,
}

fn b(id: i32) -> BrokerId {
    BrokerId(id)
}

fn set(ids: &[i32]) -> BTreeSet<BrokerId> {
    ids.iter().map(|&i| BrokerId(i)).collect()
}

const P0: PartitionId = PartitionId(0);

impl Cluster {
    fn new() -> Cluster {
        let mut ctl = Controller::new(ControllerConfig::default());
        ctl.activate(&MetadataState::new(), Instant(0));
        Cluster {
            state: MetadataState::new(),
            ctl,
            offset: 0,
            now: Instant(0),
        }
    }

    /// `n` brokers, ids 1..=n, registered and unfenced.
    fn with_brokers(n: i32) -> Cluster {
        let mut c = Cluster::new();
        for id in 1..=n {
            c.register(id, id as u64, None).unwrap();
            c.heartbeat(id, true, false);
        }
        c
    }

    fn apply(&mut self, records: Vec<MetadataRecord>) -> Vec<MetadataRecord> {
        for r in &records {
            self.state.apply(Offset(self.offset), r).unwrap();
            self.offset += 1;
        }
        check_invariants(&self.state).unwrap();
        records
    }

    fn epoch(&self, id: i32) -> BrokerEpoch {
        self.state.broker(b(id)).unwrap().epoch
    }

    fn register(
        &mut self,
        id: i32,
        incarnation: u64,
        clean_shutdown_epoch: Option<BrokerEpoch>,
    ) -> Result<Vec<MetadataRecord>, RegisterBrokerError> {
        self.register_dir(id, incarnation, clean_shutdown_epoch, 7)
    }

    fn register_dir(
        &mut self,
        id: i32,
        incarnation: u64,
        clean_shutdown_epoch: Option<BrokerEpoch>,
        log_dir_id: u64,
    ) -> Result<Vec<MetadataRecord>, RegisterBrokerError> {
        let req = BrokerRegistrationRequest {
            id: b(id),
            incarnation,
            host: "localhost".into(),
            port: 9092 + id as u16,
            control_port: 9192 + id as u16,
            clean_shutdown_epoch,
            log_dir_id,
        };
        let records = self.ctl.register_broker(&self.state, &req, self.now)?;
        Ok(self.apply(records))
    }

    fn heartbeat(&mut self, id: i32, caught_up: bool, want_shutdown: bool) -> Vec<MetadataRecord> {
        let req = HeartbeatRequest {
            id: b(id),
            epoch: self.epoch(id),
            caught_up,
            want_shutdown,
        };
        let records = self.ctl.heartbeat(&self.state, &req, self.now).unwrap();
        self.apply(records)
    }

    fn advance_ms(&mut self, ms: u64) {
        self.now = self.now.saturating_add(Duration::from_millis(ms));
    }

    fn tick(&mut self) -> Vec<MetadataRecord> {
        let records = self.ctl.tick(&self.state, self.now);
        self.apply(records)
    }

    /// Lets `ids` miss their heartbeats until their sessions expire; everyone else
    /// heartbeats.
    fn expire(&mut self, ids: &[i32]) {
        self.advance_ms(self.ctl.config().broker_session_timeout_ms + 1);
        let others: Vec<i32> = self
            .state
            .brokers()
            .values()
            .filter(|r| !r.fenced && !ids.contains(&r.id.0))
            .map(|r| r.id.0)
            .collect();
        for id in others {
            self.heartbeat(id, true, false);
        }
        self.tick();
    }

    fn create(&mut self, name: &str, id: u128, partitions: i32, rf: i16, min_isr: i32) -> TopicId {
        let req = CreateTopicRequest {
            name: name.into(),
            id: TopicId(id),
            partitions,
            replication_factor: rf,
            min_insync_replicas: Some(min_isr),
            unclean_leader_election: None,
            fsync: Some(TopicFsync::Interval),
        };
        let records = self.ctl.create_topic(&self.state, &req).unwrap();
        self.apply(records);
        TopicId(id)
    }

    /// A one-partition topic with replication factor 3, min ISR 3 and `fsync=always`.
    fn create_synced(&mut self, name: &str, id: u128) -> TopicId {
        let req = CreateTopicRequest {
            name: name.into(),
            id: TopicId(id),
            partitions: 1,
            replication_factor: 3,
            min_insync_replicas: Some(3),
            unclean_leader_election: None,
            fsync: Some(TopicFsync::Always),
        };
        let records = self.ctl.create_topic(&self.state, &req).unwrap();
        self.apply(records);
        TopicId(id)
    }

    fn part(&self, topic: TopicId) -> PartitionState {
        self.state.partition(topic, P0).unwrap().clone()
    }

    fn alter_request(&self, topic: TopicId, isr: &[i32]) -> AlterPartitionRequest {
        let p = self.part(topic);
        let leader = p.leader.unwrap();
        AlterPartitionRequest {
            broker_id: leader,
            broker_epoch: self.epoch(leader.0),
            topic,
            partition: P0,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            new_isr: isr
                .iter()
                .map(|&id| IsrMember {
                    id: b(id),
                    epoch: self.epoch(id),
                })
                .collect(),
        }
    }

    fn alter(&mut self, req: &AlterPartitionRequest) -> Result<(), AlterPartitionError> {
        let records = self.ctl.alter_partition(&self.state, req)?;
        self.apply(records);
        Ok(())
    }
}

#[test]
fn round_robin_assignment_spreads_leaders() {
    let mut c = Cluster::with_brokers(3);
    let t = c.create("t", 0, 6, 2, 1);
    let topic = c.state.topic(t).unwrap();
    let replicas: Vec<Vec<i32>> = topic
        .partitions
        .values()
        .map(|p| p.replicas.iter().map(|r| r.0).collect())
        .collect();
    assert_eq!(
        replicas,
        [[1, 2], [2, 3], [3, 1], [1, 2], [2, 3], [3, 1]].map(Vec::from)
    );
    for p in topic.partitions.values() {
        assert_eq!(p.leader, Some(p.replicas[0]));
        assert_eq!(p.isr, p.replicas.iter().copied().collect());
        assert_eq!(
            (p.leader_epoch, p.partition_epoch),
            (Epoch(0), PartitionEpoch(0))
        );
    }
    // Another topic id shifts the start, so partition 0 of every topic is not led by 1.
    let t2 = c.create("u", 1, 1, 3, 1);
    assert_eq!(c.part(t2).leader, Some(b(2)));
}

#[test]
fn create_topic_rejections() {
    let mut c = Cluster::with_brokers(3);
    let req = |name: &str, partitions, rf| CreateTopicRequest {
        name: name.into(),
        id: TopicId(7),
        partitions,
        replication_factor: rf,
        min_insync_replicas: None,
        unclean_leader_election: None,
        fsync: Some(TopicFsync::Interval),
    };
    let err = |c: &Cluster, r| c.ctl.create_topic(&c.state, &r).unwrap_err();
    assert_eq!(
        err(&c, req("t", 1, 4)).kafka_code(),
        38,
        "RF above live brokers"
    );
    assert_eq!(err(&c, req("t", 1, 0)).kafka_code(), 38);
    assert_eq!(err(&c, req("t", 0, 1)).kafka_code(), 37);
    assert_eq!(err(&c, req("", 1, 1)).kafka_code(), 17);
    c.create("t", 7, 1, 3, 2);
    assert_eq!(err(&c, req("t", 1, 1)).kafka_code(), 36);
    assert_eq!(err(&c, req("u", 1, 1)).kafka_code(), 17, "topic id reused");
    // A fenced broker does not count.
    c.expire(&[3]);
    assert!(c.state.broker(b(3)).unwrap().fenced);
    let r = CreateTopicRequest {
        id: TopicId(8),
        ..req("u", 1, 3)
    };
    assert_eq!(
        err(&c, r),
        TopicError::InvalidReplicationFactor {
            requested: 3,
            available: 2
        }
    );
}

#[test]
fn new_broker_starts_fenced_and_unfences_when_caught_up() {
    let mut c = Cluster::new();
    c.register(1, 11, None).unwrap();
    assert!(c.state.broker(b(1)).unwrap().fenced);
    assert!(c.heartbeat(1, false, false).is_empty());
    assert!(c.state.broker(b(1)).unwrap().fenced);
    let records = c.heartbeat(1, true, false);
    assert!(matches!(records[..], [MetadataRecord::Unfence { .. }]));
    assert!(!c.state.broker(b(1)).unwrap().fenced);
    // Broker epoch = offset of the registration record.
    assert_eq!(c.epoch(1), BrokerEpoch(0));
    let stale = HeartbeatRequest {
        id: b(1),
        epoch: BrokerEpoch(5),
        caught_up: true,
        want_shutdown: false,
    };
    let err = c.ctl.heartbeat(&c.state, &stale, c.now).unwrap_err();
    assert_eq!(err.kafka_code(), 77);
}

#[test]
fn session_timeout_fences_and_moves_leadership() {
    let mut c = Cluster::with_brokers(3);
    let t = c.create("t", 0, 1, 3, 1);
    assert_eq!(c.part(t).leader, Some(b(1)));
    c.advance_ms(9_000);
    c.heartbeat(2, true, false);
    c.heartbeat(3, true, false);
    assert!(c.tick().is_empty(), "exactly the timeout is still alive");
    c.advance_ms(1);
    let records = c.tick();
    assert!(matches!(records[0], MetadataRecord::Fence { id, .. } if id == b(1)));
    let p = c.part(t);
    assert_eq!(
        p.leader,
        Some(b(2)),
        "next replica in order that is in the ISR"
    );
    assert_eq!(p.isr, set(&[2, 3]));
    assert!(p.elr.is_empty(), "ISR still at min ISR");
    assert_eq!(
        (p.leader_epoch, p.partition_epoch),
        (Epoch(1), PartitionEpoch(1))
    );
    // A new active controller gives every broker a fresh session.
    c.advance_ms(60_000);
    c.ctl = Controller::new(ControllerConfig::default());
    c.ctl.activate(&c.state, c.now);
    assert!(c.tick().is_empty());
}

#[test]
fn election_order_isr_then_elr_then_none() {
    let mut c = Cluster::with_brokers(4);
    let t = c.create("t", 0, 1, 3, 2);
    assert_eq!(c.part(t).replicas, vec![b(1), b(2), b(3)]);
    c.expire(&[2]);
    assert_eq!(
        (c.part(t).isr.clone(), c.part(t).leader),
        (set(&[1, 3]), Some(b(1)))
    );
    c.expire(&[1]);
    let p = c.part(t);
    assert_eq!(
        (p.isr.clone(), p.elr.clone(), p.leader),
        (set(&[3]), set(&[1]), Some(b(3)))
    );
    c.expire(&[3]);
    let p = c.part(t);
    assert_eq!((p.isr.clone(), p.elr.clone()), (set(&[]), set(&[1, 3])));
    assert_eq!((p.leader, p.last_known_leader), (None, Some(b(3))));
    assert_eq!(
        p.leader_epoch,
        Epoch(2),
        "a change to no leader bumps the epoch too"
    );
    // Broker 2 left the ISR while it was at min ISR: not eligible, stays out.
    c.heartbeat(2, true, false);
    assert_eq!(c.part(t).leader, None);
    // Broker 1 is in the ELR: elected as soon as it is unfenced.
    c.heartbeat(1, true, false);
    let p = c.part(t);
    assert_eq!(
        (p.leader, p.isr.clone(), p.elr.clone()),
        (Some(b(1)), set(&[1]), set(&[3]))
    );
    assert!(!p.elected_unclean);
    assert_eq!(p.last_known_leader, None);
}

#[test]
fn unclean_election_only_when_enabled() {
    for unclean in [false, true] {
        let mut c = Cluster::with_brokers(3);
        let t = c.create("t", 0, 1, 3, 1);
        let config = TopicConfig {
            min_insync_replicas: 1,
            unclean_leader_election: unclean,
            fsync: TopicFsync::Interval,
        };
        let records = c.ctl.alter_topic_config(&c.state, "t", config).unwrap();
        c.apply(records);
        c.alter(&c.alter_request(t, &[1])).unwrap();
        c.expire(&[1]);
        let p = c.part(t);
        if unclean {
            assert_eq!((p.leader, p.isr.clone()), (Some(b(2)), set(&[2])));
            assert!(p.elr.is_empty());
            assert!(p.elected_unclean);
        } else {
            assert_eq!(
                (p.leader, p.isr.clone(), p.elr.clone()),
                (None, set(&[]), set(&[1]))
            );
        }
    }
}

#[test]
fn unclean_restart_leaves_isr_and_elr_clean_restart_keeps_elr() {
    for clean in [false, true] {
        let mut c = Cluster::with_brokers(3);
        let t = c.create("t", 0, 1, 3, 3);
        c.expire(&[2]);
        assert_eq!(c.part(t).elr, set(&[2]));
        let old = c.epoch(2);
        let marker = clean.then_some(old);
        c.register(2, 99, marker).unwrap();
        assert!(c.epoch(2) > old);
        assert!(c.state.broker(b(2)).unwrap().fenced);
        assert_eq!(c.part(t).elr, if clean { set(&[2]) } else { set(&[]) });
    }
}

#[test]
fn unclean_restart_keeps_isr_and_elr_of_fsync_always_topics() {
    let mut c = Cluster::with_brokers(3);
    let t = c.create("t", 0, 1, 3, 3);
    let synced = c.create_synced("synced", 1);
    c.expire(&[2]);
    assert_eq!((c.part(t).elr, c.part(synced).elr), (set(&[2]), set(&[2])));
    c.register(2, 99, None).unwrap();
    // Only the fsync=interval topic may have lost acknowledged records on broker 2.
    assert_eq!((c.part(t).elr, c.part(synced).elr), (set(&[]), set(&[2])));
}

#[test]
fn a_replaced_log_directory_leaves_every_isr_and_elr() {
    // KAFKA-14139's lost disk: under fsync=always a restart keeps the broker's ELR places,
    // but not when its log directory is a new one, clean shutdown marker or not.
    for clean in [false, true] {
        let mut c = Cluster::with_brokers(3);
        let synced = c.create_synced("synced", 1);
        c.expire(&[2]);
        assert_eq!(c.part(synced).elr, set(&[2]));
        let marker = clean.then_some(c.epoch(2));
        c.register_dir(2, 99, marker, 8).unwrap();
        assert_eq!(c.part(synced).elr, set(&[]), "clean marker: {clean}");
        assert_eq!(c.state.broker(b(2)).unwrap().log_dir_id, 8);
    }
}

#[test]
fn a_new_process_may_replace_one_in_controlled_shutdown_at_once() {
    let mut c = Cluster::with_brokers(3);
    c.create("t", 0, 1, 3, 1);
    c.heartbeat(1, true, true);
    assert!(c.state.broker(b(1)).unwrap().shutting_down);
    // Its session is live, but it announced it is leaving.
    let old = c.epoch(1);
    c.register(1, 77, Some(old)).unwrap();
    assert!(c.epoch(1) > old);
}

#[test]
fn reregistration_fences_old_epoch_first_or_is_rejected() {
    let mut c = Cluster::with_brokers(3);
    let t = c.create("t", 0, 1, 3, 1);
    // Same incarnation: a retry, nothing to do.
    assert!(c.register(1, 1, None).unwrap().is_empty());
    // A new process while the old session is live: rejected.
    let err = c.register(1, 77, None).unwrap_err();
    assert_eq!(err.kafka_code(), 101);
    // Once the session expired (not yet fenced by a tick): old epoch fenced first.
    c.advance_ms(10_000);
    let old = c.epoch(1);
    let records = c.register(1, 77, Some(old)).unwrap();
    assert_eq!(
        records[0],
        MetadataRecord::Fence {
            id: b(1),
            epoch: old
        }
    );
    assert!(matches!(
        records.last(),
        Some(MetadataRecord::RegisterBroker { .. })
    ));
    assert_eq!(c.part(t).leader, Some(b(2)));
    assert!(!c.part(t).isr.contains(&b(1)));
}

#[test]
fn controlled_shutdown_moves_leadership_then_fences() {
    let mut c = Cluster::with_brokers(3);
    let t = c.create("t", 0, 1, 3, 2);
    let records = c.heartbeat(1, true, true);
    assert!(matches!(
        records[0],
        MetadataRecord::ControlledShutdown { .. }
    ));
    let p = c.part(t);
    assert_eq!((p.leader, p.isr.clone()), (Some(b(2)), set(&[2, 3])));
    let records = c.heartbeat(1, true, true);
    assert!(matches!(records[..], [MetadataRecord::Fence { .. }]));
    // A shutting-down broker may not rejoin the ISR.
    let mut req = c.alter_request(t, &[1, 2, 3]);
    req.new_isr[0].epoch = c.epoch(1);
    assert_eq!(
        c.alter(&req),
        Err(AlterPartitionError::IneligibleReplica(b(1)))
    );
}

#[test]
fn alter_partition_rejections_in_kafka_order() {
    let mut c = Cluster::with_brokers(4);
    let t = c.create("t", 0, 1, 3, 2);
    let ok = c.alter_request(t, &[1, 2]);
    let code = |c: &Cluster, r: &AlterPartitionRequest| {
        c.ctl.alter_partition(&c.state, r).unwrap_err().kafka_code()
    };

    let mut r = ok.clone();
    r.broker_epoch = BrokerEpoch(1234);
    assert_eq!(code(&c, &r), 77, "STALE_BROKER_EPOCH");
    let mut r = ok.clone();
    r.partition = PartitionId(5);
    assert_eq!(code(&c, &r), 3, "UNKNOWN_TOPIC_OR_PARTITION");
    let mut r = ok.clone();
    r.leader_epoch = Epoch(7);
    assert_eq!(code(&c, &r), 74, "FENCED_LEADER_EPOCH");
    let mut r = ok.clone();
    r.broker_id = b(2);
    r.broker_epoch = c.epoch(2);
    assert_eq!(code(&c, &r), 6, "NOT_LEADER_OR_FOLLOWER");
    let mut r = ok.clone();
    r.partition_epoch = PartitionEpoch(3);
    assert_eq!(code(&c, &r), 95, "INVALID_UPDATE_VERSION");
    assert_eq!(
        code(&c, &c.alter_request(t, &[2, 3])),
        42,
        "ISR lacks the leader"
    );
    assert_eq!(code(&c, &c.alter_request(t, &[1, 4])), 42, "not a replica");
    assert_eq!(code(&c, &c.alter_request(t, &[1, 1])), 42, "duplicate");
    let mut r = ok.clone();
    r.new_isr[1].epoch = BrokerEpoch(-1);
    assert_eq!(code(&c, &r), 107, "stale member epoch");

    // Shrink below min ISR: the replica leaving goes to the ELR; the leader epoch stays.
    c.alter(&ok).unwrap();
    c.alter(&c.alter_request(t, &[1])).unwrap();
    let p = c.part(t);
    assert_eq!((p.isr.clone(), p.elr.clone()), (set(&[1]), set(&[2])));
    assert_eq!(
        (p.leader_epoch, p.partition_epoch),
        (Epoch(0), PartitionEpoch(2))
    );
    // The old request is now stale.
    assert_eq!(code(&c, &ok), 95);
    // A fenced replica may not join.
    c.expire(&[3]);
    assert_eq!(
        code(&c, &c.alter_request(t, &[1, 3])),
        107,
        "INELIGIBLE_REPLICA"
    );
    // Back to min ISR: the ELR empties.
    c.alter(&c.alter_request(t, &[1, 2])).unwrap();
    assert_eq!((c.part(t).isr, c.part(t).elr), (set(&[1, 2]), set(&[])));
    // No change, no record.
    assert!(c
        .ctl
        .alter_partition(&c.state, &c.alter_request(t, &[1, 2]))
        .unwrap()
        .is_empty());
}

#[test]
fn apply_rejects_records_that_do_not_fit() {
    let mut c = Cluster::with_brokers(1);
    let epoch = c.epoch(1);
    let mut s = c.state.clone();
    let register = MetadataRecord::RegisterBroker {
        id: b(1),
        incarnation: 5,
        host: "h".into(),
        port: 1,
        control_port: 2,
        clean_shutdown_epoch: None,
        log_dir_id: 7,
    };
    assert_eq!(
        s.apply(Offset(100), &register),
        Err(ApplyError::RegisteredWhileUnfenced { id: b(1), epoch })
    );
    let fence = MetadataRecord::Fence {
        id: b(1),
        epoch: BrokerEpoch(99),
    };
    assert!(matches!(
        s.apply(Offset(100), &fence),
        Err(ApplyError::StaleBrokerEpoch { .. })
    ));
    assert!(matches!(
        s.apply(Offset(0), &register),
        Err(ApplyError::OffsetNotIncreasing { .. })
    ));
    assert_eq!(s, c.state, "a rejected record changes nothing");
    let t = c.create("t", 0, 1, 1, 1);
    let mut state = c.part(t);
    let stale = MetadataRecord::Partition {
        topic: t,
        partition: P0,
        state: state.clone(),
    };
    assert!(matches!(
        c.state.apply(Offset(100), &stale),
        Err(ApplyError::EpochNotAdvanced { .. })
    ));
    state.partition_epoch = PartitionEpoch(1);
    let out_of_range = MetadataRecord::Partition {
        topic: t,
        partition: PartitionId(1),
        state,
    };
    assert!(matches!(
        c.state.apply(Offset(100), &out_of_range),
        Err(ApplyError::UnknownPartition { .. })
    ));
}

#[test]
fn check_invariants_names_the_broken_rule() {
    let mut c = Cluster::with_brokers(3);
    let t = c.create("t", 0, 1, 3, 2);
    let broken = |c: &Cluster, f: &dyn Fn(&mut PartitionState)| {
        let mut s = c.state.clone();
        let mut p = c.part(t);
        f(&mut p);
        p.partition_epoch = PartitionEpoch(9);
        let r = MetadataRecord::Partition {
            topic: t,
            partition: P0,
            state: p,
        };
        s.apply(Offset(1000), &r).unwrap();
        check_invariants(&s).unwrap_err()
    };
    assert!(matches!(
        broken(&c, &|p| p.isr = set(&[2, 3])),
        Violation::LeaderNotInIsr { .. }
    ));
    assert!(matches!(
        broken(&c, &|p| p.isr = set(&[1, 4])),
        Violation::NotAReplica { .. }
    ));
    assert!(matches!(
        broken(&c, &|p| p.elr = set(&[1])),
        Violation::IsrElrOverlap { .. }
    ));
    assert!(matches!(
        broken(&c, &|p| {
            p.isr = set(&[1, 2]);
            p.elr = set(&[3]);
        }),
        Violation::ElrWithFullIsr { .. }
    ));
    c.expire(&[3]);
    assert!(matches!(
        broken(&c, &|p| p.isr = set(&[1, 2, 3])),
        Violation::IneligibleInIsr { .. }
    ));
}

#[test]
fn epoch_history_catches_epochs_going_backwards() {
    let mut c = Cluster::with_brokers(2);
    let t = c.create("t", 0, 1, 2, 1);
    let mut h = EpochHistory::new();
    h.observe(&c.state).unwrap();
    let before = c.state.clone();
    c.expire(&[1]);
    c.register(1, 50, None).unwrap();
    h.observe(&c.state).unwrap();
    assert!(matches!(
        h.observe(&before),
        Err(Violation::BrokerEpochNotIncreasing { .. })
    ));
    let mut h = EpochHistory::new();
    h.observe(&c.state).unwrap();
    let mut s = c.state.clone();
    let mut p = c.part(t);
    p.leader = Some(b(1));
    p.isr = set(&[1, 2]);
    p.partition_epoch = PartitionEpoch(p.partition_epoch.0 + 1);
    let r = MetadataRecord::Partition {
        topic: t,
        partition: P0,
        state: p,
    };
    s.apply(Offset(1000), &r).unwrap();
    assert!(matches!(
        h.observe(&s),
        Err(Violation::EpochNotIncreasing { .. })
    ));
}

#[test]
fn serde_round_trip_of_records_and_state() {
    let mut c = Cluster::with_brokers(3);
    let t = c.create("t", 0, 2, 3, 2);
    c.expire(&[1]);
    c.register(1, 42, None).unwrap();
    let mut records = vec![
        MetadataRecord::Unfence {
            id: b(1),
            epoch: BrokerEpoch(3),
        },
        MetadataRecord::ControlledShutdown {
            id: b(1),
            epoch: BrokerEpoch(3),
        },
        MetadataRecord::TopicConfig {
            id: t,
            config: TopicConfig {
                min_insync_replicas: 2,
                unclean_leader_election: true,
                fsync: TopicFsync::Interval,
            },
        },
        MetadataRecord::RemoveTopic {
            id: TopicId(u128::MAX),
        },
    ];
    let create = CreateTopicRequest {
        name: "u".into(),
        id: TopicId(u128::MAX - 1),
        partitions: 2,
        replication_factor: 2,
        min_insync_replicas: None,
        unclean_leader_election: Some(true),
        fsync: Some(TopicFsync::Interval),
    };
    records.extend(c.apply(c.ctl.create_topic(&c.state, &create).unwrap()));
    // An unclean restart after the session expired: Fence, partition changes, register.
    c.advance_ms(20_000);
    records.extend(c.register(2, 78, Some(BrokerEpoch(1))).unwrap());
    for r in &records {
        let bytes = postcard::to_stdvec(r).unwrap();
        assert_eq!(&postcard::from_bytes::<MetadataRecord>(&bytes).unwrap(), r);
    }
    let bytes = postcard::to_stdvec(&c.state).unwrap();
    let back: MetadataState = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back, c.state);
}

#[test]
fn lowering_min_isr_clears_the_elr_of_that_topic_only() {
    let mut c = Cluster::with_brokers(2);
    let t = c.create("t", 0, 1, 2, 2);
    let u = c.create("u", 1, 1, 2, 2);
    c.expire(&[2]);
    assert_eq!((c.part(t).elr, c.part(u).elr), (set(&[2]), set(&[2])));
    let config = TopicConfig {
        min_insync_replicas: 1,
        unclean_leader_election: false,
        fsync: TopicFsync::Interval,
    };
    let records = c.ctl.alter_topic_config(&c.state, "t", config).unwrap();
    c.apply(records);
    assert_eq!((c.part(t).elr, c.part(u).elr), (set(&[]), set(&[2])));
    assert_eq!(c.state.topic(t).unwrap().config, config);
    let err = c
        .ctl
        .alter_topic_config(&c.state, "nope", config)
        .unwrap_err();
    assert_eq!(err.kafka_code(), 3);
}

#[test]
fn producer_id_blocks_are_disjoint_and_survive_a_reregistration() {
    let mut c = Cluster::with_brokers(2);
    let alloc = |c: &mut Cluster, id: i32| {
        let records = c
            .ctl
            .allocate_producer_ids(&c.state, b(id), c.epoch(id))
            .unwrap();
        let [MetadataRecord::ProducerIds { broker, end }] = c.apply(records)[..] else {
            panic!("one ProducerIds record");
        };
        assert_eq!(broker, b(id));
        (end - PRODUCER_ID_BLOCK, end)
    };
    let first = alloc(&mut c, 1);
    let second = alloc(&mut c, 2);
    assert_eq!(first, (0, PRODUCER_ID_BLOCK));
    assert_eq!(
        second.0, first.1,
        "the next block starts where the last ended"
    );
    // A new process of broker 1 (its disk replaced: a new log directory) gets a new block,
    // not its old one again.
    c.advance_ms(60_000);
    c.tick();
    c.register_dir(1, 99, None, 8).unwrap();
    c.heartbeat(1, true, false);
    let third = alloc(&mut c, 1);
    assert_eq!(third.0, second.1);
    // A stale epoch or an unknown broker gets no block.
    let stale = c.ctl.allocate_producer_ids(&c.state, b(1), BrokerEpoch(0));
    assert_eq!(stale.unwrap_err().kafka_code(), 77);
    assert!(c
        .ctl
        .allocate_producer_ids(&c.state, b(9), BrokerEpoch(0))
        .is_err());
    // A block that does not advance is refused by apply, on every node alike.
    let backwards = MetadataRecord::ProducerIds {
        broker: b(2),
        end: second.1,
    };
    assert!(matches!(
        c.state.apply(Offset(1_000), &backwards),
        Err(ApplyError::ProducerIdsNotAdvanced { .. })
    ));
}

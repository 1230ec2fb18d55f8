use super::*;

const S: u64 = 1_000_000_000;

fn at(secs: u64) -> Instant {
    Instant(secs * S)
}

fn config() -> GroupConfig {
    GroupConfig {
        session_timeout_ms_min: 1_000,
        initial_rebalance_delay_ms: 3_000,
        ..GroupConfig::default()
    }
}

fn join_req(member_id: &str, protocols: &[&str]) -> JoinRequest {
    JoinRequest {
        member_id: member_id.to_owned(),
        client_id: "c".into(),
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 20_000,
        protocol_type: "consumer".into(),
        protocols: protocols
            .iter()
            .map(|p| ((*p).to_owned(), p.as_bytes().to_vec()))
            .collect(),
        ..JoinRequest::default()
    }
}

fn joins(out: &[Output]) -> BTreeMap<Waiter, JoinResponse> {
    out.iter()
        .filter_map(|o| match o {
            Output::Join(w, r) => Some((*w, r.clone())),
            _ => None,
        })
        .collect()
}

fn syncs(out: &[Output]) -> BTreeMap<Waiter, SyncResponse> {
    out.iter()
        .filter_map(|o| match o {
            Output::Sync(w, r) => Some((*w, r.clone())),
            _ => None,
        })
        .collect()
}

/// Two members join an empty group and sync: returns (coordinator, member a, member b).
fn stable_pair() -> (Coordinator, String, String) {
    let mut c = Coordinator::new(config(), 7);
    c.join(at(0), "g", join_req("", &["range", "roundrobin"]), 1);
    c.join(at(1), "g", join_req("", &["roundrobin", "range"]), 2);
    assert!(
        joins(&c.take_outputs()).is_empty(),
        "an empty group's first rebalance waits out the initial delay"
    );
    c.tick(at(3));
    let out = c.take_outputs();
    let j = joins(&out);
    assert_eq!(j.len(), 2);
    let (a, b) = (j[&1].member_id.clone(), j[&2].member_id.clone());
    assert_ne!(a, b);
    assert_eq!(j[&1].generation, 1);
    assert_eq!(j[&1].leader, a, "the first to join leads");
    assert_eq!(j[&1].members.len(), 2, "the leader sees every member");
    assert!(j[&2].members.is_empty(), "a follower sees none");
    // One vote each for range and roundrobin: the tie goes to the first listed.
    assert_eq!(j[&1].protocol.as_deref(), Some("range"));
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Persist(GroupRecord::Generation { generation: 1, .. })
    )));
    c.sync(at(3), "g", &b, 1, Vec::new(), 3);
    assert!(
        syncs(&c.take_outputs()).is_empty(),
        "a follower waits for the leader"
    );
    c.sync(
        at(3),
        "g",
        &a,
        1,
        vec![(a.clone(), b"A".to_vec()), (b.clone(), b"B".to_vec())],
        4,
    );
    let s = syncs(&c.take_outputs());
    assert_eq!(s[&3].assignment, b"B");
    assert_eq!(s[&4].assignment, b"A");
    assert_eq!(c.group("g").map(|g| g.state), Some(GroupState::Stable));
    (c, a, b)
}

#[test]
fn two_members_join_and_get_their_assignments() {
    let (mut c, a, b) = stable_pair();
    assert_eq!(c.heartbeat(at(4), "g", &a, 1), Ok(()));
    assert_eq!(
        c.heartbeat(at(4), "g", &b, 0),
        Err(GroupError::IllegalGeneration)
    );
    assert_eq!(
        c.heartbeat(at(4), "g", "nobody", 1),
        Err(GroupError::UnknownMemberId)
    );
}

#[test]
fn a_first_join_may_require_a_member_id() {
    let mut c = Coordinator::new(config(), 7);
    let mut req = join_req("", &["range"]);
    req.require_known_member_id = true;
    c.join(at(0), "g", req.clone(), 1);
    let j = joins(&c.take_outputs());
    assert_eq!(j[&1].error, Some(GroupError::MemberIdRequired));
    let id = j[&1].member_id.clone();
    assert!(!id.is_empty());
    // An id never handed out is refused; the given one is accepted.
    c.join(at(0), "g", join_req("made-up", &["range"]), 2);
    assert_eq!(
        joins(&c.take_outputs())[&2].error,
        Some(GroupError::UnknownMemberId)
    );
    c.join(at(0), "g", join_req(&id, &["range"]), 3);
    c.tick(at(3));
    let j = joins(&c.take_outputs());
    assert_eq!(j[&3].error, None);
    assert_eq!(j[&3].member_id, id);
    assert_eq!(j[&3].leader, id);
}

#[test]
fn a_silent_member_is_removed_and_the_group_rebalances() {
    let (mut c, a, b) = stable_pair();
    // a heartbeats, b falls silent past its 10 s session.
    c.heartbeat(at(9), "g", &a, 1).unwrap();
    c.tick(at(14));
    assert_eq!(
        c.group("g").map(|g| g.state),
        Some(GroupState::PreparingRebalance)
    );
    assert!(!c.group("g").is_some_and(|g| g.members.contains_key(&b)));
    assert_eq!(
        c.heartbeat(at(14), "g", &a, 1),
        Err(GroupError::RebalanceInProgress)
    );
    // a is the only member: its join completes the round at once.
    c.join(at(14), "g", join_req(&a, &["range"]), 5);
    let j = joins(&c.take_outputs());
    assert_eq!(j[&5].generation, 2);
    assert_eq!(j[&5].members.len(), 1);
    // b's commit with its old generation is refused.
    assert_eq!(
        c.check_commit(at(14), "g", &b, 1),
        Err(GroupError::UnknownMemberId)
    );
    assert_eq!(
        c.check_commit(at(14), "g", &a, 1),
        Err(GroupError::IllegalGeneration)
    );
    // Generation 2 is joined but not synced yet.
    assert_eq!(
        c.check_commit(at(14), "g", &a, 2),
        Err(GroupError::RebalanceInProgress)
    );
    c.sync(at(14), "g", &a, 2, vec![(a.clone(), b"AB".to_vec())], 6);
    assert_eq!(syncs(&c.take_outputs())[&6].assignment, b"AB");
    assert_eq!(c.check_commit(at(14), "g", &a, 2), Ok(()));
}

#[test]
fn a_member_that_does_not_rejoin_in_time_leaves() {
    let (mut c, a, b) = stable_pair();
    c.join(at(5), "g", join_req(&a, &["range"]), 5);
    // The leader's join starts a round; b keeps heartbeating but never joins.
    assert_eq!(
        c.heartbeat(at(6), "g", &b, 1),
        Err(GroupError::RebalanceInProgress)
    );
    assert!(joins(&c.take_outputs()).is_empty());
    c.tick(at(26));
    let j = joins(&c.take_outputs());
    assert_eq!(j[&5].generation, 2);
    assert_eq!(
        j[&5].members.len(),
        1,
        "b was dropped at the rebalance timeout"
    );
    assert_eq!(
        c.heartbeat(at(26), "g", &b, 2),
        Err(GroupError::UnknownMemberId)
    );
}

#[test]
fn leaving_rebalances_the_rest_and_an_empty_group_can_be_deleted() {
    let (mut c, a, b) = stable_pair();
    assert_eq!(c.check_delete("g"), Err(GroupError::NonEmptyGroup));
    assert_eq!(c.leave(at(5), "g", std::slice::from_ref(&b)), vec![Ok(())]);
    assert_eq!(
        c.group("g").map(|g| g.state),
        Some(GroupState::PreparingRebalance)
    );
    c.join(at(5), "g", join_req(&a, &["range"]), 9);
    assert_eq!(joins(&c.take_outputs())[&9].generation, 2);
    assert_eq!(c.leave(at(6), "g", std::slice::from_ref(&a)), vec![Ok(())]);
    assert_eq!(c.group("g").map(|g| g.state), Some(GroupState::Empty));
    assert_eq!(c.check_delete("g"), Ok(()));
    c.apply(GroupRecord::Deleted { group: "g".into() });
    assert!(c.group("g").is_none());
    assert_eq!(c.check_delete("g"), Err(GroupError::GroupIdNotFound));
}

#[test]
fn commits_outside_the_protocol_only_on_an_empty_group() {
    let (mut c, _a, _b) = stable_pair();
    assert_eq!(
        c.check_commit(at(4), "g", "", -1),
        Err(GroupError::UnknownMemberId)
    );
    assert_eq!(c.check_commit(at(4), "other", "", -1), Ok(()));
    assert_eq!(
        c.check_commit(at(4), "other", "m", 3),
        Err(GroupError::IllegalGeneration)
    );
}

#[test]
fn a_new_coordinator_replays_offsets_and_never_reuses_a_generation() {
    let mut c = Coordinator::new(config(), 8);
    let offset = |o| CommittedOffset {
        offset: o,
        leader_epoch: -1,
        metadata: Some("m".into()),
        commit_timestamp_ms: 0,
    };
    for r in [
        GroupRecord::Generation {
            group: "g".into(),
            generation: 41,
            protocol_type: Some("consumer".into()),
            protocol: Some("range".into()),
        },
        GroupRecord::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: 0,
            value: Some(offset(5)),
        },
        GroupRecord::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: 0,
            value: Some(offset(9)),
        },
        GroupRecord::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: 1,
            value: Some(offset(2)),
        },
        GroupRecord::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: 1,
            value: None,
        },
    ] {
        c.apply(r);
    }
    let g = c.group("g").unwrap();
    assert_eq!(g.offsets.get(&("t".into(), 0)), Some(&offset(9)));
    assert_eq!(g.offsets.get(&("t".into(), 1)), None);
    assert_eq!(g.state, GroupState::Empty);
    c.join(at(0), "g", join_req("", &["range"]), 1);
    c.tick(at(3));
    assert_eq!(joins(&c.take_outputs())[&1].generation, 42);
}

#[test]
fn inconsistent_protocols_and_bad_timeouts_are_refused() {
    let (mut c, _a, _b) = stable_pair();
    c.join(at(4), "g", join_req("", &["sticky"]), 7);
    assert_eq!(
        joins(&c.take_outputs())[&7].error,
        Some(GroupError::InconsistentGroupProtocol)
    );
    let mut req = join_req("", &["range"]);
    req.session_timeout_ms = 10;
    c.join(at(4), "h", req, 8);
    assert_eq!(
        joins(&c.take_outputs())[&8].error,
        Some(GroupError::InvalidSessionTimeout)
    );
}

#[test]
fn a_follower_rejoining_unchanged_gets_the_current_generation() {
    let (mut c, a, b) = stable_pair();
    c.join(at(4), "g", join_req(&b, &["roundrobin", "range"]), 9);
    let j = joins(&c.take_outputs());
    assert_eq!(j[&9].generation, 1);
    assert_eq!(j[&9].leader, a);
    assert_eq!(c.group("g").map(|g| g.state), Some(GroupState::Stable));
}

#[test]
fn a_commit_written_earlier_does_not_overwrite_a_later_one_applied_first() {
    let mut c = Coordinator::new(config(), 1);
    let commit = |offset: i64| GroupRecord::Offset {
        group: "g".into(),
        topic: "t".into(),
        partition: 0,
        value: Some(CommittedOffset {
            offset,
            leader_epoch: -1,
            metadata: None,
            commit_timestamp_ms: 0,
        }),
    };
    // Written at 11 and 10; replication answered 11 first.
    c.apply_at(commit(50), Some(11));
    c.apply_at(commit(40), Some(10));
    let committed = |c: &Coordinator| c.group("g").unwrap().offsets[&("t".into(), 0)].offset;
    assert_eq!(committed(&c), 50);
    c.apply_at(commit(60), Some(12));
    assert_eq!(committed(&c), 60);
    // Without a position (records of old tests and tools) a commit always applies.
    c.apply(commit(7));
    assert_eq!(committed(&c), 7);
}

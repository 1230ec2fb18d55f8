//! The consumer-group workload: members of one group (lode-client's [`GroupMember`]) join,
//! consume the run's topic from their committed offsets, commit, heartbeat, rebalance, leave
//! cleanly or crash (drop out without a word) and come back, while the nemesis works.
//!
//! Every commit and every committed-offset read goes into a history, with invocation and
//! completion times; every record a member reads is tagged with its *stint* (one member
//! owning one partition from one committed offset). The checks are in
//! [`crate::invariants::committed_offsets`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lode_client::{Client, Consumer, GroupError, GroupMember, MemberConfig};
use lode_proto::Offset;

use crate::chaos::{now_ms, Params, Rng, TOPIC};
use crate::trace::Line;

/// The group the members form.
pub const GROUP: &str = "sim-group";

/// Partitions of the offsets topic in the simulation (Kafka's default is 50; fewer keep
/// runs cheap, more than one keeps the group-to-partition hashing in play).
pub const OFFSETS_PARTITIONS: i32 = 2;

/// A member's session timeout (the brokers accept sessions down to 1 s in the simulation).
const SESSION_MS: u64 = 2_000;

/// How a commit ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Acknowledged.
    Ok,
    /// Refused by the group's fencing: certainly not applied.
    Fail,
    /// Unknown (timed out, coordinator moved, connection lost).
    Info,
}

/// One OffsetCommit.
#[derive(Clone, Debug)]
pub struct Commit {
    /// Member number.
    pub member: u32,
    /// The generation it committed in, and the coordinator that generation is of (the
    /// nonce the coordinator puts in its member ids: generations are numbered per
    /// coordinator, and a later coordinator may number again from one when the record of
    /// a generation was lost).
    pub generation: (String, i32),
    /// (partition, next offset) committed.
    pub offsets: Vec<(i32, i64)>,
    /// Simulated milliseconds since the workload started.
    pub invoked_ms: u64,
    /// See `invoked_ms`.
    pub completed_ms: u64,
    /// The outcome.
    pub outcome: CommitOutcome,
}

/// One successful OffsetFetch.
#[derive(Clone, Debug)]
pub struct Fetch {
    /// Member number (`u32::MAX` for the final read after healing).
    pub member: u32,
    /// (partition, committed offset or none).
    pub got: Vec<(i32, Option<i64>)>,
    /// Simulated milliseconds since the workload started.
    pub invoked_ms: u64,
    /// See `invoked_ms`.
    pub completed_ms: u64,
}

/// One member owning one partition from one starting offset.
#[derive(Clone, Debug)]
pub struct Stint {
    /// Member number.
    pub member: u32,
    /// Partition.
    pub partition: i32,
    /// The committed offset it resumed from (0 when nothing was committed).
    pub from: i64,
    /// The offsets it read, in order.
    pub read: Vec<i64>,
    /// When it started, simulated ms since the workload started.
    pub at_ms: u64,
}

/// What the group workload saw.
#[derive(Clone, Debug, Default)]
pub struct GroupHistory {
    /// Every commit.
    pub commits: Vec<Commit>,
    /// Every join answered: (coordinator, generation, simulated ms since the workload
    /// started); see [`Commit::generation`].
    pub joins: Vec<(String, i32, u64)>,
    /// Every successful committed-offset read.
    pub fetches: Vec<Fetch>,
    /// Every stint.
    pub stints: Vec<Stint>,
}

/// The history shared by the members.
pub type Shared = Arc<Mutex<GroupHistory>>;

fn with<T>(h: &Shared, f: impl FnOnce(&mut GroupHistory) -> T) -> T {
    f(&mut h.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
}

/// How a member's time in the group ended.
enum End {
    /// The workload is over.
    Done,
    /// Join again with the same member.
    Rejoin,
    /// Start over as a new member (after a leave or a crash).
    Restart,
}

/// What a member records with: its number, the clocks of the trace and of the workload,
/// the shared history and the trace.
struct Recorder<'a, L> {
    id: u32,
    trace_start: madsim::time::Instant,
    start: madsim::time::Instant,
    history: &'a Shared,
    log: &'a L,
}

/// Member `id` until the workload's end.
pub async fn member(
    id: u32,
    bootstrap: &str,
    p: &Params,
    (trace_start, start): (madsim::time::Instant, madsim::time::Instant),
    history: &Shared,
    log: &(impl Fn(String) + Send + Sync),
) {
    let rec = Recorder {
        id,
        trace_start,
        start,
        history,
        log,
    };
    let mut rng = Rng::new(p.seed ^ (0x6_7209 + u64::from(id)));
    let deadline = Duration::from_millis(p.duration_ms);
    let config = MemberConfig {
        session_timeout: Duration::from_millis(SESSION_MS),
        rebalance_timeout: Duration::from_millis(3 * SESSION_MS),
    };
    let mut incarnation = 0;
    while start.elapsed() < deadline {
        let Ok(client) = Client::connect(bootstrap, &format!("member-{id}-{incarnation}")).await
        else {
            madsim::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut m = GroupMember::new(
            Arc::clone(&client),
            crate::groups::GROUP,
            &[TOPIC],
            config.clone(),
        );
        loop {
            if start.elapsed() >= deadline {
                return;
            }
            let end = stint(&mut m, &client, &mut rng, p, &rec).await;
            match end {
                End::Done => return,
                End::Rejoin => {}
                End::Restart => break,
            }
        }
        incarnation += 1;
        // Down for a while before a new member with a new id joins.
        madsim::time::sleep(Duration::from_millis(rng.below(2_500))).await;
    }
}

/// One generation of a member: join, read the committed offsets, consume and commit until
/// the group moves on, the member leaves or crashes, or the workload ends.
async fn stint<L: Fn(String) + Send + Sync>(
    m: &mut GroupMember,
    client: &Arc<Client>,
    rng: &mut Rng,
    p: &Params,
    rec: &Recorder<'_, L>,
) -> End {
    let (id, trace_start, start, history, log) =
        (rec.id, rec.trace_start, rec.start, rec.history, rec.log);
    let deadline = Duration::from_millis(p.duration_ms);
    let parts = match m.join().await {
        Ok(parts) => parts,
        Err(e) => {
            log(Line::new(now_ms(trace_start), "group-join")
                .num("member", i64::from(id))
                .str("error", &e.to_string())
                .done());
            madsim::time::sleep(Duration::from_millis(200)).await;
            return End::Rejoin;
        }
    };
    let partitions: Vec<i32> = parts.iter().map(|(_, p)| *p).collect();
    let generation = m.generation();
    let coordinator = coordinator_of(m.member_id());
    with(history, |h| {
        h.joins.push((coordinator, generation, now_ms(start)))
    });
    log(Line::new(now_ms(trace_start), "group-join")
        .num("member", i64::from(id))
        .str("member_id", m.member_id())
        .num("generation", i64::from(m.generation()))
        .nums(
            "partitions",
            partitions
                .iter()
                .map(|p| i64::from(*p))
                .collect::<Vec<i64>>(),
        )
        .done());
    // Where to start: the committed offsets (from 0 where nothing is committed).
    let invoked_ms = now_ms(start);
    let committed = match m.committed(&parts).await {
        Ok(c) => c,
        Err(e) => {
            log(Line::new(now_ms(trace_start), "offset-fetch")
                .num("member", i64::from(id))
                .str("error", &e.to_string())
                .done());
            madsim::time::sleep(Duration::from_millis(100)).await;
            return End::Rejoin;
        }
    };
    let got: Vec<(i32, Option<i64>)> = committed.iter().map(|((_, p), o)| (*p, *o)).collect();
    log(Line::new(now_ms(trace_start), "offset-fetch")
        .num("member", i64::from(id))
        .str("got", &format!("{got:?}"))
        .done());
    let mut consumer = Consumer::new(Arc::clone(client));
    consumer.max_wait = Duration::from_millis(300);
    let first_stint = with(history, |h| {
        h.fetches.push(Fetch {
            member: id,
            got: got.clone(),
            invoked_ms,
            completed_ms: now_ms(start),
        });
        let first = h.stints.len();
        for (part, from) in &got {
            h.stints.push(Stint {
                member: id,
                partition: *part,
                from: from.unwrap_or(0).max(0),
                read: Vec::new(),
                at_ms: now_ms(start),
            });
        }
        first
    });
    for (part, from) in &got {
        consumer.assign(TOPIC, *part, Offset(from.unwrap_or(0).max(0)));
    }
    let stint_of = |part: i32| {
        got.iter()
            .position(|(p, _)| *p == part)
            .map(|i| first_stint + i)
    };
    let positions = |consumer: &Consumer| -> Vec<(String, i32, i64)> {
        got.iter()
            .filter_map(|(part, _)| {
                consumer
                    .position(TOPIC, *part)
                    .map(|o| (TOPIC.to_owned(), *part, o.0))
            })
            .collect()
    };
    // When this stint ends by the member's own doing, and how: a crash (it drops out
    // silently; the coordinator notices after the session timeout) or a clean leave.
    let walk_out = start.elapsed() + Duration::from_millis(3_000 + rng.below(12_000));
    let crash = rng.below(2) == 0;
    // A zombie in one stint of five: the member stops (a GC pause, a cut to the
    // coordinator) for longer than its session, then comes back as if nothing happened and
    // commits with its old generation, which the coordinator must refuse once the group
    // has moved on without it.
    let mut zombie = (rng.below(5) == 0).then(|| {
        (
            start.elapsed() + Duration::from_millis(500 + rng.below(5_000)),
            Duration::from_millis(SESSION_MS + 500 + rng.below(2_000)),
        )
    });
    let mut last_commit = start.elapsed();
    let mut last_heartbeat = start.elapsed();
    loop {
        if start.elapsed() >= deadline {
            // A clean end: commit what was read and leave.
            let _ = commit(rec, m, &positions(&consumer)).await;
            let _ = m.leave().await;
            return End::Done;
        }
        if !got.is_empty() {
            match madsim::time::timeout(Duration::from_secs(2), consumer.poll()).await {
                Ok(Ok(records)) => with(history, |h| {
                    for r in &records {
                        if let Some(s) = stint_of(r.partition).and_then(|i| h.stints.get_mut(i)) {
                            s.read.push(r.offset.0);
                        }
                    }
                }),
                Ok(Err(_)) | Err(_) => {
                    let _ = client.metadata(Some(&[TOPIC])).await;
                    madsim::time::sleep(Duration::from_millis(100)).await;
                }
            }
        } else {
            madsim::time::sleep(Duration::from_millis(200)).await;
        }
        if let Some((at, pause)) = zombie {
            if start.elapsed() >= at {
                zombie = None;
                log(Line::new(now_ms(trace_start), "group-member-pause")
                    .num("member", i64::from(id))
                    .num("ms", i64::try_from(pause.as_millis()).unwrap_or(i64::MAX))
                    .done());
                madsim::time::sleep(pause).await;
                if let Err(GroupError::Rejoin(_)) = commit(rec, m, &positions(&consumer)).await {
                    return End::Rejoin;
                }
            }
        }
        match (start.elapsed() >= walk_out, crash) {
            (true, true) => {
                log(Line::new(now_ms(trace_start), "group-member-crash")
                    .num("member", i64::from(id))
                    .done());
                return End::Restart;
            }
            (true, false) => {
                let _ = commit(rec, m, &positions(&consumer)).await;
                let left = m.leave().await;
                log(Line::new(now_ms(trace_start), "group-leave")
                    .num("member", i64::from(id))
                    .str("result", &format!("{left:?}"))
                    .done());
                return End::Restart;
            }
            (false, _) => {}
        }
        if start.elapsed() - last_commit >= Duration::from_millis(300) {
            last_commit = start.elapsed();
            if let Err(GroupError::Rejoin(_)) = commit(rec, m, &positions(&consumer)).await {
                return End::Rejoin;
            }
        }
        if start.elapsed() - last_heartbeat >= Duration::from_millis(SESSION_MS / 4) {
            last_heartbeat = start.elapsed();
            if let Err(GroupError::Rejoin(code)) = m.heartbeat().await {
                // Eager rebalancing: commit what was read, then join again.
                if code == 27 {
                    let _ = commit(rec, m, &positions(&consumer)).await;
                }
                return End::Rejoin;
            }
        }
    }
}

/// The coordinator a member id is from: the nonce it puts in the ids it hands out
/// (`{client}-{nonce}-{n}`).
fn coordinator_of(member_id: &str) -> String {
    member_id.rsplit('-').nth(1).unwrap_or_default().to_owned()
}

/// Commits `offsets` and records it.
async fn commit<L: Fn(String) + Send + Sync>(
    rec: &Recorder<'_, L>,
    m: &mut GroupMember,
    offsets: &[(String, i32, i64)],
) -> Result<(), GroupError> {
    let (id, trace_start, start, history, log) =
        (rec.id, rec.trace_start, rec.start, rec.history, rec.log);
    if offsets.is_empty() {
        return Ok(());
    }
    let invoked_ms = now_ms(start);
    let generation = (coordinator_of(m.member_id()), m.generation());
    let r = match madsim::time::timeout(Duration::from_secs(10), m.commit(offsets)).await {
        Ok(r) => r,
        Err(_) => Err(GroupError::Client(lode_client::ClientError::Timeout)),
    };
    let outcome = match &r {
        Ok(()) => CommitOutcome::Ok,
        Err(e) if e.definitely_not_applied() => CommitOutcome::Fail,
        Err(_) => CommitOutcome::Info,
    };
    let offsets: Vec<(i32, i64)> = offsets.iter().map(|(_, p, o)| (*p, *o)).collect();
    let line = Line::new(now_ms(trace_start), "offset-commit")
        .num("member", i64::from(id))
        .str("offsets", &format!("{offsets:?}"))
        .num("invoked_ms", invoked_ms as i64);
    log(match &r {
        Ok(()) => line.str("outcome", "ok"),
        Err(e) if outcome == CommitOutcome::Fail => {
            line.str("outcome", "fail").str("why", &e.to_string())
        }
        Err(e) => line.str("outcome", "info").str("why", &e.to_string()),
    }
    .done());
    with(history, |h| {
        h.commits.push(Commit {
            member: id,
            generation,
            offsets,
            invoked_ms,
            completed_ms: now_ms(start),
            outcome,
        });
    });
    r
}

/// The group's committed offsets once everything healed (the register's last read),
/// recorded as a fetch by member `u32::MAX`.
pub async fn final_read(
    bootstrap: &str,
    partitions: i32,
    start: madsim::time::Instant,
    history: &Shared,
) -> Result<(), String> {
    let client = Client::connect(bootstrap, "group-reader")
        .await
        .map_err(|e| e.to_string())?;
    let mut last = String::new();
    for _ in 0..50 {
        let invoked_ms = now_ms(start);
        match client.group_offsets(GROUP).await {
            Ok(offsets) => {
                // Every partition: one without a committed offset reads as none.
                let got = (0..partitions)
                    .map(|part| {
                        let o = offsets
                            .iter()
                            .find(|o| o.topic == TOPIC && o.partition == part);
                        (part, o.map(|o| o.offset))
                    })
                    .collect();
                with(history, |h| {
                    h.fetches.push(Fetch {
                        member: u32::MAX,
                        got,
                        invoked_ms,
                        completed_ms: now_ms(start),
                    });
                });
                return Ok(());
            }
            Err(e) => last = e.to_string(),
        }
        madsim::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!(
        "the group's offsets could not be read after healing: {last}"
    ))
}

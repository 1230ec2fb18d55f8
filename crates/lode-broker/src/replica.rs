//! Replication in combined mode: partition roles from the metadata, the leader's service of
//! follower fetches, the followers' fetchers, and the leader's ISR proposals.
//!
//! Followers fetch over the controller connections (`ReplicaFetch`): fetch offset = their
//! synced log end (their acknowledgement), the leader epoch they follow, the epoch of their
//! last batch. The leader fences stale or future epochs, answers divergence from its
//! leader-epoch cache, or sends batches up to its log end with its high watermark, and
//! advances the high watermark over the maximal ISR (`lode_core::replication`). ISR changes
//! go to the active controller as AlterPartition and take effect when committed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use lode_core::metadata::{AlterPartitionRequest, IsrMember, PartitionEpoch};
use lode_core::replication::{IsrProposal, ReplicationConfig};
use lode_env::task::JoinHandle;
use lode_proto::{BrokerId, Epoch, PartitionId};
use tokio::sync::{mpsc, Mutex};

use crate::codes;
use crate::control::{
    ControlPlane, ControlReply, ControlRequest, IncomingFetch, ReplicaFetch, ReplicaFetchReply,
};
use crate::partition::FollowError;
use crate::Broker;

/// Kafka's FENCED_LEADER_EPOCH, UNKNOWN_LEADER_EPOCH and INCONSISTENT_TOPIC_ID.
const FENCED_LEADER_EPOCH: i16 = 74;
const UNKNOWN_LEADER_EPOCH: i16 = 75;
const INCONSISTENT_TOPIC_ID: i16 = 103;
/// Bytes a follower asks for per fetch.
const FETCH_BYTES_MAX: u32 = 1 << 20;
/// How long a leader holds a fetch that is caught up before answering it empty.
const FETCH_WAIT: Duration = Duration::from_millis(500);

/// A running fetcher: the leader and epoch it follows, and its task.
type Fetcher = (BrokerId, Epoch, JoinHandle<()>);

/// The follower fetchers running on this broker, by partition.
#[derive(Default)]
pub struct Fetchers {
    running: Mutex<BTreeMap<(String, i32), Fetcher>>,
}

/// Serves follower fetches sent to this broker.
pub(crate) async fn serve(
    broker: Arc<Broker>,
    plane: Arc<ControlPlane>,
    mut fetches: mpsc::Receiver<IncomingFetch>,
) {
    while let Some((from, id, req)) = fetches.recv().await {
        // Each fetch on its own task: one that waits for records holds up no other.
        let (broker, plane) = (Arc::clone(&broker), Arc::clone(&plane));
        lode_env::task::spawn(async move {
            let (mut reply, first) = serve_one(&broker, &plane, from, &req).await;
            let mut proposals: Vec<IsrProposal> = first.into_iter().collect();
            let caught_up =
                matches!(&reply, ReplicaFetchReply::Records { records, .. } if records.is_empty());
            if caught_up {
                // Long poll: answer when the leader appends, or after the wait.
                if let Some(p) = broker.topics.partition(&req.topic, req.partition).await {
                    p.wait_for_records(req.fetch_offset, FETCH_WAIT, &broker.clock)
                        .await;
                    // Each serve may have made a proposal (the second after the controller
                    // answered the first): every one must be sent, or it stays pending.
                    let (again, later) = serve_one(&broker, &plane, from, &req).await;
                    reply = again;
                    proposals.extend(later);
                }
            }
            // The proposal goes out on its own task: the answer to the follower may wait
            // on a cut link for as long as the cut lasts, and a proposal that is never sent
            // stays pending (no other ISR change is proposed meanwhile).
            for p in proposals {
                let (b, pl) = (Arc::clone(&broker), Arc::clone(&plane));
                lode_env::task::spawn(propose(b, pl, req.topic.clone(), req.partition, p));
            }
            plane.reply_fetch(from, id, reply).await;
        });
    }
}

async fn serve_one(
    broker: &Broker,
    plane: &ControlPlane,
    from: BrokerId,
    req: &ReplicaFetch,
) -> (ReplicaFetchReply, Option<IsrProposal>) {
    let me = broker.config.node_id;
    let current = plane.read(|s| {
        let registered = s.broker(from).map(|b| b.epoch);
        s.topic_id(&req.topic).and_then(|id| {
            s.partition(id, PartitionId(req.partition))
                .map(|p| (id.0, p.leader, p.leader_epoch, registered))
        })
    });
    let Some((topic_id, leader, epoch, registered)) = current else {
        return (
            ReplicaFetchReply::Error(codes::UNKNOWN_TOPIC_OR_PARTITION),
            None,
        );
    };
    if registered.is_some_and(|r| req.broker_epoch < r) {
        // From an earlier process of the follower, delivered late.
        crate::observe::probe(me, "replica-fetch-stale-broker-epoch");
        return (ReplicaFetchReply::Error(codes::STALE_BROKER_EPOCH), None);
    }
    if req.leader_epoch != epoch {
        crate::observe::probe(me, "replica-fetch-fenced-epoch");
    }
    if req.leader_epoch < epoch {
        return (ReplicaFetchReply::Error(FENCED_LEADER_EPOCH), None);
    }
    if req.leader_epoch > epoch {
        return (ReplicaFetchReply::Error(UNKNOWN_LEADER_EPOCH), None);
    }
    if leader != Some(me) {
        return (
            ReplicaFetchReply::Error(codes::NOT_LEADER_OR_FOLLOWER),
            None,
        );
    }
    let Some((local_id, p)) = broker.topics.hosted(&req.topic, req.partition).await else {
        return (
            ReplicaFetchReply::Error(codes::UNKNOWN_TOPIC_OR_PARTITION),
            None,
        );
    };
    if local_id.as_u128() != req.topic_id || topic_id != req.topic_id {
        // Another topic of the same name here or in the follower (one side is behind on
        // a deletion): its batches are not the follower's topic's.
        crate::observe::probe(me, "replica-fetch-inconsistent-topic-id");
        return (ReplicaFetchReply::Error(INCONSISTENT_TOPIC_ID), None);
    }
    p.serve_replica(
        epoch,
        from,
        req.broker_epoch,
        req.fetch_offset,
        req.last_fetched_epoch,
        req.max_bytes as usize,
        broker.clock.now(),
    )
    .await
}

/// AlterPartition refusals after which the proposal certainly was not applied: the
/// controller checked it against the partition epoch it was based on, which was still
/// current. Only then may the leader fall back to the committed ISR.
const NOT_APPLIED: [i16; 2] = [codes::INVALID_REQUEST, codes::INELIGIBLE_REPLICA];

/// What one attempt at an ISR proposal learned.
enum Answer {
    Committed,
    NotApplied,
    Unknown,
}

/// Sends an ISR proposal to the controller until it is committed or certainly refused.
/// Any other answer leaves the leader unsure: a timeout may hide a commit; a stale
/// leader or partition epoch may mean an earlier attempt was applied (or, from a
/// controller that then failed over, that the refusal rested on records that never
/// committed). The proposal then stays pending (its additions stay in the maximal ISR, so
/// the high watermark waits for them) and is sent again, while it is still this leader's
/// pending proposal, until the metadata brings the partition's new state. Dropping it
/// instead (as lode did before) let the high watermark advance without replicas the
/// controller had already put in the ISR, and then elected from (seed 6204 of the swarm).
async fn propose(
    broker: Arc<Broker>,
    plane: Arc<ControlPlane>,
    topic: String,
    index: i32,
    proposal: IsrProposal,
) {
    let me = broker.config.node_id;
    let mut sent = false;
    loop {
        let request = broker.membership.epoch().and_then(|my_epoch| {
            plane.read(|s| {
                let id = s.topic_id(&topic)?;
                let p = s.partition(id, PartitionId(index))?;
                let new_isr = proposal
                    .isr
                    .iter()
                    .map(|b| match proposal.added {
                        // The member added: the registration whose fetch showed it caught up.
                        Some((added, epoch)) if added == *b => Some(IsrMember { id: *b, epoch }),
                        _ => s.broker(*b).map(|r| IsrMember {
                            id: *b,
                            epoch: r.epoch,
                        }),
                    })
                    .collect::<Option<Vec<_>>>()?;
                Some(AlterPartitionRequest {
                    broker_id: me,
                    broker_epoch: my_epoch,
                    topic: id,
                    partition: PartitionId(index),
                    leader_epoch: p.leader_epoch,
                    partition_epoch: PartitionEpoch(proposal.partition_epoch),
                    new_isr,
                })
            })
        });
        let answer = match request {
            // Not registered, or the metadata lacks the partition or a member: nothing was
            // sent this time; if nothing was sent before either, nothing was applied.
            None if !sent => Answer::NotApplied,
            None => Answer::Unknown,
            Some(r) => {
                sent = true;
                match plane
                    .request(ControlRequest::AlterPartition(r), Duration::from_secs(5))
                    .await
                {
                    ControlReply::Done { .. } | ControlReply::ProducerIds { .. } => {
                        Answer::Committed
                    }
                    ControlReply::Refused { code, message } => {
                        tracing::info!(
                            topic,
                            partition = index,
                            code,
                            message,
                            "ISR change refused"
                        );
                        crate::observe::probe(me, "isr-proposal-refused");
                        if NOT_APPLIED.contains(&code) {
                            Answer::NotApplied
                        } else {
                            Answer::Unknown
                        }
                    }
                }
            }
        };
        let Some(p) = broker.topics.partition(&topic, index).await else {
            return;
        };
        match answer {
            Answer::Committed => return,
            Answer::NotApplied => {
                p.proposal_rejected(&proposal);
                return;
            }
            // Unknown outcome: again, while it is still what this leader waits for.
            Answer::Unknown if p.awaits(&proposal) => {
                crate::observe::probe(me, "isr-proposal-outcome-unknown");
                broker.clock.sleep(Duration::from_millis(500)).await;
            }
            Answer::Unknown => return,
        }
    }
}

/// Gives every hosted partition the role the metadata says, and runs a fetcher for each
/// partition followed here.
pub(crate) async fn reconcile_roles(broker: &Arc<Broker>, plane: &Arc<ControlPlane>) {
    let me = broker.config.node_id;
    type Role = (
        String,
        i32,
        Option<BrokerId>,
        Epoch,
        Vec<BrokerId>,
        std::collections::BTreeSet<BrokerId>,
        i32,
        usize,
    );
    let roles: Vec<Role> = plane.read(|s| {
        s.topics()
            .values()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .filter(|(_, p)| p.replicas.contains(&me))
                    .map(|(i, p)| {
                        (
                            t.name.clone(),
                            i.0,
                            p.leader,
                            p.leader_epoch,
                            p.replicas.clone(),
                            p.isr.clone(),
                            p.partition_epoch.0,
                            p.effective_min_isr(&t.config),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    });
    let mut wanted: BTreeMap<(String, i32), (BrokerId, Epoch)> = BTreeMap::new();
    for (topic, index, leader, epoch, replicas, isr, partition_epoch, min_isr) in roles {
        let Some(p) = broker.topics.partition(&topic, index).await else {
            continue;
        };
        if leader == Some(me) {
            #[allow(unused_mut)]
            let mut config = ReplicationConfig::new(broker.config.replica_lag_time_max, min_isr);
            #[cfg(feature = "planted-bugs")]
            if let Some(crate::config::PlantedBug::Replication(bug)) = broker.config.planted {
                config.planted = Some(bug);
            }
            p.become_leader(
                me,
                epoch,
                replicas,
                isr,
                partition_epoch,
                config,
                broker.clock.now(),
            )
            .await;
        } else {
            p.become_follower(leader, epoch).await;
            if let Some(l) = leader {
                wanted.insert((topic, index), (l, epoch));
            }
        }
    }
    let mut running = broker.fetchers.running.lock().await;
    running.retain(|key, (l, e, task)| {
        let keep = wanted.get(key) == Some(&(*l, *e));
        if !keep {
            task.abort();
        }
        keep
    });
    for (key, (leader, epoch)) in wanted {
        if running.contains_key(&key) {
            continue;
        }
        let task = lode_env::task::spawn(follow(
            Arc::clone(broker),
            Arc::clone(plane),
            key.0.clone(),
            key.1,
            leader,
            epoch,
        ));
        running.insert(key, (leader, epoch, task));
    }
}

/// A follower's fetch loop for one partition, until the metadata moves it elsewhere.
async fn follow(
    broker: Arc<Broker>,
    plane: Arc<ControlPlane>,
    topic: String,
    index: i32,
    leader: BrokerId,
    epoch: Epoch,
) {
    loop {
        let Some((topic_id, p)) = broker.topics.hosted(&topic, index).await else {
            return;
        };
        let Some(broker_epoch) = broker.membership.epoch() else {
            // Not registered (yet, or any more): a fetch could not be told from a late one.
            broker.clock.sleep(Duration::from_millis(200)).await;
            continue;
        };
        let (fetch_offset, last_fetched_epoch) = p.replica_position().await;
        let req = ReplicaFetch {
            topic: topic.clone(),
            topic_id: topic_id.as_u128(),
            partition: index,
            leader_epoch: epoch,
            fetch_offset,
            last_fetched_epoch,
            max_bytes: FETCH_BYTES_MAX,
            broker_epoch,
        };
        match plane
            .fetch(leader, req, FETCH_WAIT + Duration::from_secs(2))
            .await
        {
            Some(ReplicaFetchReply::Records {
                high_watermark,
                records,
            }) => {
                // An empty answer already waited on the leader (long poll): fetch again.
                let done = p.follow(leader, epoch, &records, high_watermark).await;
                if !followed(&broker, &topic, index, done, "follower append failed").await {
                    return;
                }
            }
            Some(ReplicaFetchReply::Diverging {
                epoch: diverging,
                end_offset,
            }) => {
                tracing::debug!(
                    topic,
                    partition = index,
                    leader = leader.0,
                    fetch_offset = fetch_offset.0,
                    last_fetched_epoch = last_fetched_epoch.0,
                    diverging_epoch = diverging.0,
                    end_offset = end_offset.0,
                    "replica fetch diverges"
                );
                let done = p
                    .truncate_diverging(leader, epoch, diverging, end_offset)
                    .await;
                if !followed(&broker, &topic, index, done, "follower truncation failed").await {
                    return;
                }
            }
            Some(ReplicaFetchReply::Error(code)) => {
                tracing::debug!(topic, partition = index, code, "replica fetch refused");
                broker.clock.sleep(Duration::from_millis(200)).await;
            }
            None => broker.clock.sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Handles how a follower append or truncation went: false when the fetcher must stop (the
/// replica no longer follows this leader in this epoch); a log error waits a second.
async fn followed(
    broker: &Broker,
    topic: &str,
    index: i32,
    done: Result<(), FollowError>,
    what: &str,
) -> bool {
    match done {
        Ok(()) => true,
        Err(e @ FollowError::Fenced { .. }) => {
            crate::observe::probe(broker.config.node_id, "fetcher-fenced-by-role");
            tracing::debug!(topic, partition = index, error = %e, "fetcher stops");
            false
        }
        Err(e) => {
            tracing::warn!(topic, partition = index, error = %e, "{what}");
            broker.clock.sleep(Duration::from_secs(1)).await;
            true
        }
    }
}

/// The leaders' clock: ISR shrink proposals for members that lag too long.
pub(crate) async fn tick_loop(broker: Arc<Broker>, plane: Arc<ControlPlane>) {
    loop {
        broker.clock.sleep(Duration::from_millis(500)).await;
        let now = broker.clock.now();
        for (name, t) in broker.topics.all().await {
            for p in &t.partitions {
                if let Some(proposal) = p.tick(now) {
                    let (b, pl) = (Arc::clone(&broker), Arc::clone(&plane));
                    lode_env::task::spawn(propose(b, pl, name.clone(), p.index, proposal));
                }
            }
        }
    }
}

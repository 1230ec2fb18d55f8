//! A broker's life in combined mode: register with the active controller (saying whether
//! the last shutdown was clean, KIP-966), heartbeat to keep the session, and host the
//! partitions the applied metadata assigns to it.
//!
//! Hosting today opens (or removes) the local logs of every topic with a replica here;
//! only the leader takes writes. Followers replicate in the next step.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lode_core::metadata::{BrokerEpoch, BrokerRegistrationRequest, HeartbeatRequest, TopicFsync};
use lode_storage::{checkpoint, LogError};

use crate::control::{ControlPlane, ControlReply, ControlRequest};
use crate::topics::CreateError;
use crate::Broker;

/// The clean-shutdown marker of the broker (KIP-966): its broker epoch, written at a clean
/// shutdown, read and removed at start.
pub const CLEAN_SHUTDOWN_EPOCH: &str = "broker-epoch.clean";

/// Kafka's STALE_BROKER_EPOCH and BROKER_ID_NOT_REGISTERED.
const STALE_BROKER_EPOCH: i16 = 77;
const BROKER_ID_NOT_REGISTERED: i16 = 102;

/// How long a clean shutdown waits for the controller to move this broker's leaderships
/// away and fence it, before closing anyway.
pub const CONTROLLED_SHUTDOWN_MAX: Duration = Duration::from_secs(5);

/// This broker's epoch, once registered (-1 before).
#[derive(Debug)]
pub struct Membership {
    epoch: AtomicI64,
    /// Set by a clean shutdown: heartbeats ask to leave (controlled shutdown).
    want_shutdown: AtomicBool,
}

impl Default for Membership {
    fn default() -> Self {
        Membership {
            epoch: AtomicI64::new(-1),
            want_shutdown: AtomicBool::new(false),
        }
    }
}

impl Membership {
    /// The broker epoch, if registered.
    #[must_use]
    pub fn epoch(&self) -> Option<BrokerEpoch> {
        let e = self.epoch.load(Ordering::Acquire);
        (e >= 0).then_some(BrokerEpoch(e))
    }
}

/// What a starting broker tells the controller about its disk.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Restart {
    /// The epoch in the clean-shutdown marker, if the last stop was clean.
    pub clean: Option<BrokerEpoch>,
    /// The id of the log directory ([`log_dir_id`]).
    pub log_dir_id: u64,
    /// Planted bug: the marker is removed at start, before the broker registers.
    #[cfg(feature = "planted-bugs")]
    pub planted_drop_marker: bool,
}

/// Registers, then heartbeats until the broker stops.
pub(crate) async fn lifecycle(broker: Arc<Broker>, plane: Arc<ControlPlane>, restart: Restart) {
    let me = broker.config.node_id;
    let incarnation = lode_env::rng::seed_u64();
    let mut first = true;
    #[cfg(feature = "planted-bugs")]
    if restart.planted_drop_marker {
        drop_clean_marker(&broker.root).await;
    }
    loop {
        let epoch = register(&broker, &plane, incarnation, restart).await;
        if std::mem::take(&mut first) {
            // Before the epoch is stored: a clean stop from then on writes its own marker.
            drop_clean_marker(&broker.root).await;
        }
        broker.membership.epoch.store(epoch.0, Ordering::Release);
        crate::observe::emit(me, || crate::observe::Event::Registered { epoch: epoch.0 });
        tracing::info!(
            node = me.0,
            epoch = epoch.0,
            "registered with the controller"
        );
        heartbeat_until_stale(&broker, &plane, epoch).await;
        // The controller no longer knows this epoch (fenced and replaced, or a registration
        // answered by a controller whose entry was lost): register again, same process.
        tracing::warn!(
            node = me.0,
            epoch = epoch.0,
            "broker epoch is stale; registering again"
        );
    }
}

/// Registers until a controller accepts; returns the broker epoch.
async fn register(
    broker: &Broker,
    plane: &ControlPlane,
    incarnation: u64,
    restart: Restart,
) -> BrokerEpoch {
    let me = broker.config.node_id;
    loop {
        let reply = plane
            .request(
                ControlRequest::Register(BrokerRegistrationRequest {
                    id: me,
                    incarnation,
                    host: broker.config.advertised_host.clone(),
                    port: broker.config.advertised_port,
                    control_port: plane.control_port(),
                    clean_shutdown_epoch: restart.clean,
                    log_dir_id: restart.log_dir_id,
                }),
                Duration::from_secs(5),
            )
            .await;
        match reply {
            ControlReply::Done {
                broker_epoch: Some(e),
            } => return e,
            other => {
                tracing::info!(node = me.0, ?other, "registration not accepted yet");
                broker.clock.sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Heartbeats with `epoch` until the controller says it is not (or no longer) registered.
async fn heartbeat_until_stale(broker: &Broker, plane: &ControlPlane, epoch: BrokerEpoch) {
    let me = broker.config.node_id;
    loop {
        // Caught up once this node has applied its own registration.
        let caught_up = plane.read(|s| s.broker(me).is_some_and(|b| b.epoch == epoch));
        let reply = plane
            .request(
                ControlRequest::Heartbeat(HeartbeatRequest {
                    id: me,
                    epoch,
                    caught_up,
                    want_shutdown: broker.membership.want_shutdown.load(Ordering::Acquire),
                }),
                broker.config.heartbeat_interval,
            )
            .await;
        if let ControlReply::Refused { code, message } = reply {
            tracing::debug!(node = me.0, code, message, "heartbeat refused");
            // STALE_BROKER_EPOCH, BROKER_ID_NOT_REGISTERED: only a new registration helps.
            if code == STALE_BROKER_EPOCH || code == BROKER_ID_NOT_REGISTERED {
                return;
            }
        }
        broker.clock.sleep(broker.config.heartbeat_interval).await;
    }
}

/// Controlled shutdown: asks the controller to move this broker's leaderships and ISR
/// memberships to others and to fence it, and waits (at most [`CONTROLLED_SHUTDOWN_MAX`])
/// until the applied metadata shows it fenced. Clients move to the new leaders before the
/// logs close, and the next process with this id may register at once.
pub(crate) async fn controlled_shutdown(broker: &Broker, plane: &ControlPlane) {
    let me = broker.config.node_id;
    let Some(epoch) = broker.membership.epoch() else {
        return;
    };
    broker
        .membership
        .want_shutdown
        .store(true, Ordering::Release);
    let fenced = broker
        .clock
        .timeout(CONTROLLED_SHUTDOWN_MAX, async {
            loop {
                let reply = plane
                    .request(
                        ControlRequest::Heartbeat(HeartbeatRequest {
                            id: me,
                            epoch,
                            caught_up: true,
                            want_shutdown: true,
                        }),
                        Duration::from_secs(1),
                    )
                    .await;
                if let ControlReply::Refused { code, message } = reply {
                    tracing::debug!(node = me.0, code, message, "shutdown heartbeat refused");
                }
                if plane.read(|s| s.broker(me).is_none_or(|b| b.epoch != epoch || b.fenced)) {
                    return;
                }
                broker.clock.sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
    match fenced {
        Ok(()) => tracing::info!(node = me.0, "controlled shutdown done"),
        Err(_) => tracing::warn!(node = me.0, "controlled shutdown timed out; closing anyway"),
    }
}

/// Keeps local logs in line with the applied metadata.
pub(crate) async fn hosting(broker: Arc<Broker>, plane: Arc<ControlPlane>) {
    let mut applied = plane.quorum_applied();
    loop {
        reconcile(&broker, &plane).await;
        if applied.changed().await.is_err() {
            return;
        }
    }
}

/// Opens the logs of topics with a replica here, removes those of deleted topics, and gives
/// each hosted partition its role (leader, with the metadata's epoch, or follower).
///
/// Nothing happens until this node has applied its own current registration: only then has
/// it replayed the metadata log far enough to know which local topics were deleted (a
/// restarted broker must not take a half-replayed log for a cluster without its topics).
pub(crate) async fn reconcile(broker: &Arc<Broker>, plane: &Arc<ControlPlane>) {
    let me = broker.config.node_id;
    let caught_up = broker
        .membership
        .epoch()
        .is_some_and(|e| plane.read(|s| s.broker(me).is_some_and(|b| b.epoch == e)));
    if !caught_up {
        return;
    }
    let wanted: Vec<(String, i32, u128, TopicFsync)> = plane.read(|s| {
        s.topics()
            .values()
            .filter(|t| t.partitions.values().any(|p| p.replicas.contains(&me)))
            .map(|t| (t.name.clone(), t.partition_count, t.id.0, t.config.fsync))
            .collect()
    });
    for (name, partitions, id, fsync) in &wanted {
        let local = broker.topics.get(name).await;
        if local.as_ref().is_some_and(|t| t.id.as_u128() != *id) {
            // Deleted and created again while this broker was away: the old data goes.
            crate::observe::probe(me, "topic-recreated-while-away");
            tracing::info!(
                topic = name,
                "local topic has another id than the metadata's; removed"
            );
            if let Err(e) = broker.topics.delete(name).await {
                tracing::warn!(topic = name, error = %e, "removing a topic failed");
                continue;
            }
        }
        let made = if broker.topics.get(name).await.is_none() {
            broker
                .topics
                .create_with_id(name, *partitions, Some(uuid::Uuid::from_u128(*id)), *fsync)
                .await
                .map(|_| ())
        } else {
            // A creation cut short by a crash left only some of the partitions.
            broker
                .topics
                .complete(name, *partitions, *fsync)
                .await
                .map(|_| ())
        };
        match made {
            Ok(()) => {}
            // The disk failed: fail-stop, like any other storage fault (a restart
            // completes the topic from what the disk holds).
            Err(e @ CreateError::Io(_)) => {
                broker.halt.raise(format!("hosting topic {name}: {e}"));
                return;
            }
            Err(CreateError::Storage(e)) if e.is_storage_fault() => {
                broker.halt.raise(format!("hosting topic {name}: {e}"));
                return;
            }
            Err(e) => tracing::warn!(topic = name, error = %e, "hosting a topic failed"),
        }
    }
    for (name, _) in broker.topics.all().await {
        if !wanted.iter().any(|(n, ..)| *n == name) {
            if let Err(e) = broker.topics.delete(&name).await {
                tracing::warn!(topic = name, error = %e, "removing a topic failed");
            }
        }
    }
    crate::replica::reconcile_roles(broker, plane).await;
}

/// The file holding the log directory's id.
pub const LOG_DIR_ID: &str = "log-dir.id";

/// The id of this log directory: read from [`LOG_DIR_ID`], or drawn and written durably
/// when the directory has none (first start, or a replaced disk). The controller takes a
/// changed id to mean the broker lost its logs. An unreadable id file counts as none: the
/// broker then leaves its ISRs and ELRs, which is safe.
///
/// # Errors
/// When the new id cannot be written.
pub(crate) async fn log_dir_id(broker_root: &lode_env::Dir) -> Result<u64, LogError> {
    if let Ok(Some(Ok(b))) = checkpoint::read(broker_root, LOG_DIR_ID).await {
        if let Ok(id) = <[u8; 8]>::try_from(b.as_slice()) {
            return Ok(u64::from_be_bytes(id));
        }
    }
    let id = lode_env::rng::seed_u64();
    checkpoint::write(broker_root, LOG_DIR_ID, &id.to_be_bytes()).await?;
    tracing::info!(
        log_dir_id = format_args!("{id:016x}"),
        "new log directory id"
    );
    Ok(id)
}

/// Reads the clean-shutdown marker. It stays until a registration is accepted
/// ([`drop_clean_marker`]): a process that stops or crashes before it registers hosted
/// nothing and wrote nothing, so the next one may still say the last registered process
/// stopped cleanly (seed 208257: a restarted lone controller voter, stopped again before it
/// had elected itself, lost the marker, and its next registration took it out of the ELR of
/// an `fsync=interval` topic it alone held, which stayed offline for good).
pub(crate) async fn read_clean_marker(broker_root: &lode_env::Dir) -> Option<BrokerEpoch> {
    match checkpoint::read(broker_root, CLEAN_SHUTDOWN_EPOCH).await {
        Ok(Some(Ok(b))) => <[u8; 8]>::try_from(b.as_slice())
            .ok()
            .map(|b| BrokerEpoch(i64::from_be_bytes(b))),
        _ => None,
    }
}

/// Removes the clean-shutdown marker once a registration was accepted, before the broker
/// hosts anything: a crash from here on is an unclean one. A marker left behind (the
/// removal failed) is harmless: it names the previous broker epoch, which the controller
/// no longer holds for this broker.
async fn drop_clean_marker(broker_root: &lode_env::Dir) {
    match checkpoint::remove(broker_root, CLEAN_SHUTDOWN_EPOCH).await {
        Ok(true) => {
            if let Err(e) = broker_root.sync().await {
                tracing::warn!(error = %e, "clean-shutdown marker removal not synced");
            }
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "clean-shutdown marker not removed"),
    }
}

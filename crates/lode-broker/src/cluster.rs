//! A broker's life in combined mode: register with the active controller (saying whether
//! the last shutdown was clean, KIP-966), heartbeat to keep the session, and host the
//! partitions the applied metadata assigns to it.
//!
//! Hosting today opens (or removes) the local logs of every topic with a replica here;
//! only the leader takes writes. Followers replicate in the next step.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lode_core::metadata::{BrokerEpoch, BrokerRegistrationRequest, HeartbeatRequest};
use lode_storage::checkpoint;

use crate::control::{ControlPlane, ControlReply, ControlRequest};
use crate::Broker;

/// The clean-shutdown marker of the broker (KIP-966): its broker epoch, written at a clean
/// shutdown, read and removed at start.
pub const CLEAN_SHUTDOWN_EPOCH: &str = "broker-epoch.clean";

/// This broker's epoch, once registered (-1 before).
#[derive(Debug)]
pub struct Membership {
    epoch: AtomicI64,
}

impl Default for Membership {
    fn default() -> Self {
        Membership {
            epoch: AtomicI64::new(-1),
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

/// Registers, then heartbeats until the broker stops.
pub(crate) async fn lifecycle(
    broker: Arc<Broker>,
    plane: Arc<ControlPlane>,
    clean: Option<BrokerEpoch>,
) {
    let me = broker.config.node_id;
    let incarnation = lode_env::rng::seed_u64();
    let epoch = loop {
        let reply = plane
            .request(
                ControlRequest::Register(BrokerRegistrationRequest {
                    id: me,
                    incarnation,
                    host: broker.config.advertised_host.clone(),
                    port: broker.config.advertised_port,
                    clean_shutdown_epoch: clean,
                }),
                Duration::from_secs(5),
            )
            .await;
        match reply {
            ControlReply::Done {
                broker_epoch: Some(e),
            } => break e,
            other => {
                tracing::info!(node = me.0, ?other, "registration not accepted yet");
                broker.clock.sleep(Duration::from_millis(500)).await;
            }
        }
    };
    broker.membership.epoch.store(epoch.0, Ordering::Release);
    tracing::info!(
        node = me.0,
        epoch = epoch.0,
        "registered with the controller"
    );
    loop {
        // Caught up once this node has applied its own registration.
        let caught_up = plane.read(|s| s.broker(me).is_some_and(|b| b.epoch == epoch));
        let reply = plane
            .request(
                ControlRequest::Heartbeat(HeartbeatRequest {
                    id: me,
                    epoch,
                    caught_up,
                    want_shutdown: false,
                }),
                broker.config.heartbeat_interval,
            )
            .await;
        if let ControlReply::Refused { code, message } = reply {
            tracing::debug!(node = me.0, code, message, "heartbeat refused");
        }
        broker.clock.sleep(broker.config.heartbeat_interval).await;
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
pub(crate) async fn reconcile(broker: &Arc<Broker>, plane: &Arc<ControlPlane>) {
    let me = broker.config.node_id;
    let wanted: Vec<(String, i32, u128)> = plane.read(|s| {
        s.topics()
            .values()
            .filter(|t| t.partitions.values().any(|p| p.replicas.contains(&me)))
            .map(|t| (t.name.clone(), t.partition_count, t.id.0))
            .collect()
    });
    for (name, partitions, id) in &wanted {
        if broker.topics.get(name).await.is_none() {
            if let Err(e) = broker
                .topics
                .create_with_id(name, *partitions, Some(uuid::Uuid::from_u128(*id)))
                .await
            {
                tracing::warn!(topic = name, error = %e, "hosting a topic failed");
            }
        }
    }
    for (name, _) in broker.topics.all().await {
        if !wanted.iter().any(|(n, _, _)| *n == name) {
            if let Err(e) = broker.topics.delete(&name).await {
                tracing::warn!(topic = name, error = %e, "removing a topic failed");
            }
        }
    }
    crate::replica::reconcile_roles(broker, plane).await;
}

/// Reads and removes the clean-shutdown marker.
pub(crate) async fn take_clean_marker(broker_root: &lode_env::Dir) -> Option<BrokerEpoch> {
    let epoch = match checkpoint::read(broker_root, CLEAN_SHUTDOWN_EPOCH).await {
        Ok(Some(Ok(b))) if b.len() == 8 => Some(BrokerEpoch(i64::from_be_bytes(
            b.try_into().unwrap_or([0; 8]),
        ))),
        _ => None,
    };
    // Removed durably before the broker runs: a crash from here on is an unclean one.
    if matches!(
        checkpoint::remove(broker_root, CLEAN_SHUTDOWN_EPOCH).await,
        Ok(true)
    ) {
        let _ = broker_root.sync().await;
    }
    epoch
}

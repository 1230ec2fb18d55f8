//! A cluster of real brokers in combined mode on simulated nodes of one subnet, each with
//! its own simulated disk: start, power loss, crash, clean stop (the broker's own shutdown
//! path), restart. Used by the madsim tests and by the chaos runner.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lode_broker::{Broker, BrokerConfig};
use lode_client::Client;
use lode_env::clock::{Skew, SkewControl};
use lode_env::disk::{Faults, Latency};
use lode_env::{Clock, Env, SimDisk};
use lode_proto::BrokerId;
use madsim::runtime::{Handle, NodeHandle};

/// Brokers on `10.0.SUBNET.(i+1)`: Kafka on port 9092, the controller on 9093.
pub struct Cluster {
    /// The third byte of the brokers' addresses.
    pub subnet: u8,
    /// The simulated nodes, by broker id.
    pub nodes: Vec<NodeHandle>,
    /// Their disks, which survive restarts.
    pub disks: Vec<SimDisk>,
    /// Each broker's clock skew control.
    pub skews: Vec<SkewControl>,
    /// Per node: a clean stop was asked for (the node's task shuts its broker down).
    stop_asked: Vec<Arc<(AtomicBool, tokio::sync::Notify)>>,
    /// Per node: its broker finished a clean shutdown.
    stopped: Vec<Arc<(AtomicBool, tokio::sync::Notify)>>,
    /// Per node: bumped whenever the harness kills or restarts it, so the supervisor
    /// restarts only a process that halted by itself and was left alone since.
    generation: Vec<Arc<AtomicU64>>,
    /// Per disk: its faults when nothing is injected (its speed, a swarm parameter), which
    /// `disk_ok` returns it to.
    baseline: std::sync::Mutex<Vec<Faults>>,
}

/// How long the supervisor waits before starting a halted broker again (systemd's
/// `RestartSec`; a broker whose disk still fails halts again: a crash loop until the disk
/// is fixed, as on a real machine).
pub const RESTART_DELAY: Duration = Duration::from_secs(1);

/// Address of broker `i`'s Kafka listener: `10.0.SUBNET.(i+1):9092`.
#[must_use]
pub fn kafka(subnet: u8, i: i32) -> SocketAddr {
    SocketAddr::from(([10, 0, subnet, host(i)], 9092))
}

/// Address of broker `i`'s controller listener: `10.0.SUBNET.(i+1):9093`.
#[must_use]
pub fn controller(subnet: u8, i: i32) -> SocketAddr {
    SocketAddr::from(([10, 0, subnet, host(i)], 9093))
}

fn host(i: i32) -> u8 {
    u8::try_from(i + 1).unwrap_or(u8::MAX)
}

/// Broker `i` of `n`, every one a voter, with short sessions; `tweak` adjusts the rest.
#[must_use]
pub fn config(subnet: u8, n: i32, i: i32, tweak: impl Fn(&mut BrokerConfig)) -> BrokerConfig {
    let mut c = BrokerConfig::new(BrokerId(i), kafka(subnet, i));
    c.voters = (0..n)
        .map(|v| (BrokerId(v), controller(subnet, v)))
        .collect::<BTreeMap<_, _>>();
    c.session_timeout = Duration::from_millis(1500);
    c.heartbeat_interval = Duration::from_millis(200);
    tweak(&mut c);
    c
}

impl Cluster {
    /// Starts `n` brokers; a restarted node starts its broker again from its disk.
    ///
    /// # Panics
    /// Outside a madsim runtime.
    pub fn start(
        seed: u64,
        subnet: u8,
        n: i32,
        tweak: impl Fn(&mut BrokerConfig) + Clone + Send + Sync + 'static,
    ) -> Cluster {
        let handle = Handle::current();
        let mut nodes = Vec::new();
        let mut disks = Vec::new();
        let mut stop_asked = Vec::new();
        let mut stopped = Vec::new();
        let mut skews = Vec::new();
        let mut generation = Vec::new();
        // Halted brokers report here; the supervisor (on the harness's node, never killed)
        // restarts them.
        let (halts_tx, halts_rx) = tokio::sync::mpsc::unbounded_channel::<(i32, u64)>();
        for i in 0..n {
            let disk = SimDisk::new(format!("broker-{i}"), seed * 10 + i as u64);
            // The node's own clock: it keeps its skew across restarts, like hardware.
            let (clock, skew) = Clock::skewed(Skew::default());
            skews.push(skew);
            let d = disk.clone();
            let ask = Arc::new((AtomicBool::new(false), tokio::sync::Notify::new()));
            let done = Arc::new((AtomicBool::new(false), tokio::sync::Notify::new()));
            let (a, s) = (Arc::clone(&ask), Arc::clone(&done));
            let gen = Arc::new(AtomicU64::new(0));
            let (g, halts) = (Arc::clone(&gen), halts_tx.clone());
            let tweak = tweak.clone();
            nodes.push(
                handle
                    .create_node()
                    .name(format!("broker-{i}"))
                    .ip(kafka(subnet, i).ip())
                    .init(move || {
                        let d = d.clone();
                        let clock = clock.clone();
                        let (ask, done) = (Arc::clone(&a), Arc::clone(&s));
                        let (this, halts) = (g.load(Ordering::Acquire), halts.clone());
                        let config = config(subnet, n, i, tweak.clone());
                        async move {
                            let broker = match Broker::start(config, Env::simulated(&d, clock))
                                .await
                            {
                                Ok(b) => b,
                                Err(e) => {
                                    // A start can fail on an injected disk fault: the
                                    // process exits and its supervisor starts it again.
                                    tracing::warn!(node = i, error = %e, "broker did not start");
                                    lode_broker::observe::emit(BrokerId(i), || {
                                        lode_broker::observe::Event::Halted {
                                            reason: format!("start failed: {e}"),
                                        }
                                    });
                                    let _ = halts.send((i, this));
                                    return;
                                }
                            };
                            // Runs until killed, until it halts, or until a clean stop is
                            // asked for.
                            loop {
                                let asked = ask.1.notified();
                                if ask.0.load(Ordering::Acquire) {
                                    break;
                                }
                                tokio::select! {
                                    () = asked => {}
                                    why = broker.halted() => {
                                        lode_broker::observe::emit(BrokerId(i), || {
                                            lode_broker::observe::Event::Halted { reason: why }
                                        });
                                        let _ = halts.send((i, this));
                                        // The process is gone: the supervisor kills the
                                        // node's tasks and starts it again.
                                        std::future::pending::<()>().await;
                                    }
                                }
                            }
                            broker.shutdown().await;
                            done.0.store(true, Ordering::Release);
                            done.1.notify_waiters();
                            std::future::pending::<()>().await;
                        }
                    })
                    .build(),
            );
            disks.push(disk);
            stop_asked.push(ask);
            stopped.push(done);
            generation.push(gen);
        }
        let ids: Vec<_> = nodes.iter().map(NodeHandle::id).collect();
        madsim::task::spawn(supervise(halts_rx, ids, generation.clone()));
        Cluster {
            subnet,
            nodes,
            disks,
            skews,
            stop_asked,
            stopped,
            generation,
            baseline: std::sync::Mutex::new(vec![Faults::default(); n as usize]),
        }
    }

    /// Broker `i`'s disk takes `latency` per operation from now on, and again after every
    /// `disk_ok`.
    pub fn set_disk_latency(&self, i: i32, latency: Latency) {
        let faults = Faults {
            latency,
            ..Faults::default()
        };
        self.baseline_lock()[i as usize] = faults;
        self.disks[i as usize].set_faults(faults);
    }

    /// Broker `i`'s disk faults on top of its speed: `faults` with the baseline's latency.
    pub fn set_disk_faults(&self, i: i32, faults: Faults) {
        let latency = self.baseline_lock()[i as usize].latency;
        self.disks[i as usize].set_faults(Faults { latency, ..faults });
    }

    /// Broker `i`'s disk works again: no injected errors, no capacity limit, its own speed.
    pub fn disk_ok(&self, i: i32) {
        let faults = self.baseline_lock()[i as usize];
        let d = &self.disks[i as usize];
        d.set_faults(faults);
        d.set_capacity(None);
    }

    fn baseline_lock(&self) -> std::sync::MutexGuard<'_, Vec<Faults>> {
        self.baseline
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks broker `i` as killed or restarted by the harness: a halt it reported before
    /// is no longer the supervisor's to act on.
    fn touch(&self, i: i32) {
        self.generation[i as usize].fetch_add(1, Ordering::AcqRel);
    }

    /// The bootstrap list of the brokers `ids`.
    pub fn bootstrap(&self, ids: impl IntoIterator<Item = i32>) -> String {
        ids.into_iter()
            .map(|i| kafka(self.subnet, i).to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Power loss of broker `i`: the node dies, its unsynced writes are gone.
    pub fn power_loss(&self, i: i32) {
        self.touch(i);
        Handle::current().kill(self.nodes[i as usize].id());
        self.disks[i as usize].crash();
    }

    /// Broker `i`'s log disk fails and is replaced: the node dies and its partition logs
    /// (everything but the metadata log's directory) are gone when it restarts.
    pub fn wipe(&self, i: i32) -> usize {
        self.touch(i);
        Handle::current().kill(self.nodes[i as usize].id());
        let metadata = format!("{}-0", lode_broker::topics::METADATA_TOPIC);
        self.disks[i as usize].wipe(|path| path.split('/').next() == Some(metadata.as_str()))
    }

    /// A process crash of broker `i` (kill -9): the node dies; the page cache, which is
    /// the kernel's, keeps every write.
    pub fn crash(&self, i: i32) {
        self.touch(i);
        Handle::current().kill(self.nodes[i as usize].id());
    }

    /// A clean stop of broker `i` through the broker's shutdown path (controlled shutdown,
    /// logs closed, clean-shutdown marker); the node is killed once that finished, or after
    /// `max` if it did not.
    pub async fn clean_stop(&self, i: i32, max: Duration) {
        let (ask, done) = (&self.stop_asked[i as usize], &self.stopped[i as usize]);
        let finished = done.1.notified();
        done.0.store(false, Ordering::Release);
        ask.0.store(true, Ordering::Release);
        ask.1.notify_waiters();
        if !done.0.load(Ordering::Acquire) {
            let _ = madsim::time::timeout(max, finished).await;
        }
        self.touch(i);
        Handle::current().kill(self.nodes[i as usize].id());
    }

    /// Starts broker `i` again from its disk.
    pub fn restart(&self, i: i32) {
        self.touch(i);
        self.stop_asked[i as usize]
            .0
            .store(false, Ordering::Release);
        Handle::current().restart(self.nodes[i as usize].id());
    }

    /// Pauses broker `i` (its tasks stop running; its connections stay open).
    pub fn pause(&self, i: i32) {
        Handle::current().pause(self.nodes[i as usize].id());
    }

    /// Resumes a paused broker.
    pub fn resume(&self, i: i32) {
        Handle::current().resume(self.nodes[i as usize].id());
    }

    /// Stops every node.
    pub fn stop(&self) {
        for n in &self.nodes {
            Handle::current().kill(n.id());
        }
    }

    /// A node for clients on the same subnet.
    #[must_use]
    pub fn client_node(&self) -> NodeHandle {
        Handle::current()
            .create_node()
            .name("client")
            .ip([10, 0, self.subnet, 100].into())
            .build()
    }
}

/// A client of `bootstrap` once Metadata lists `brokers` brokers (registered and unfenced),
/// polling for up to 20 s.
///
/// # Panics
/// If they are not there by then.
pub async fn client_when_ready(bootstrap: &str, brokers: usize) -> Arc<Client> {
    for _ in 0..200 {
        madsim::time::sleep(Duration::from_millis(100)).await;
        if let Ok(c) = Client::connect(bootstrap, "sim").await {
            if c.metadata(None).await.is_ok() && c.brokers().await.len() == brokers {
                return c;
            }
        }
    }
    panic!("{brokers} brokers were not in Metadata within 20 s");
}

/// Restarts each broker that halted (or failed to start), `RESTART_DELAY` after it did,
/// unless the harness killed or restarted it meanwhile.
async fn supervise(
    mut halts: tokio::sync::mpsc::UnboundedReceiver<(i32, u64)>,
    ids: Vec<madsim::task::NodeId>,
    generation: Vec<Arc<AtomicU64>>,
) {
    while let Some((i, halted)) = halts.recv().await {
        let (Some(id), Some(gen)) = (ids.get(i as usize).copied(), generation.get(i as usize))
        else {
            continue;
        };
        if gen.load(Ordering::Acquire) != halted {
            continue;
        }
        // The process exits at once: none of its tasks runs on.
        Handle::current().kill(id);
        let gen = Arc::clone(gen);
        madsim::task::spawn(async move {
            madsim::time::sleep(RESTART_DELAY).await;
            if gen
                .compare_exchange(halted, halted + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                tracing::info!(node = i, "supervisor restarts a halted broker");
                Handle::current().restart(id);
            }
        });
    }
}

//! Tests that exist only in the simulation build: per-node clocks, simulated TCP, and the
//! partition log surviving power losses in the middle of its IO.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches fail loudly
#![cfg(madsim)]

use std::net::SocketAddr;
use std::time::Duration;

use lode_env::{net, Clock, Skew};
use madsim::runtime::{Handle, Runtime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[test]
fn disk_crash_scenario_holds_over_many_seeds() {
    let (mut lost, mut torn, mut runs) = (0, 0, 0);
    for seed in 0..40 {
        let o = lode_sim::disk_crash::run(seed).unwrap_or_else(|e| panic!("{e:#}"));
        lost += o.lost;
        torn += o.crashes.iter().map(|c| c.pages_torn).sum::<u64>();
        runs += 1;
        assert!(o.appended > 0, "seed {seed}: nothing appended");
    }
    assert_eq!(runs, 40);
    assert!(
        lost > 0,
        "no run lost an unsynced batch: the crashes prove nothing"
    );
    assert!(torn > 0, "no crash tore a page");
}

#[test]
fn same_seed_same_run() {
    for seed in [3, 11] {
        assert_eq!(
            lode_sim::disk_crash::run(seed).unwrap(),
            lode_sim::disk_crash::run(seed).unwrap()
        );
    }
    assert_ne!(
        lode_sim::disk_crash::run(3).unwrap(),
        lode_sim::disk_crash::run(4).unwrap()
    );
}

#[test]
fn each_node_has_its_own_clock() {
    let rt = Runtime::with_seed_and_config(1, madsim::Config::default());
    rt.block_on(async {
        let handle = Handle::current();
        let (fast, fast_ctl) = Clock::skewed(Skew {
            offset_ms: 0,
            drift_ppm: 100_000,
        });
        let (slow, _) = Clock::skewed(Skew {
            offset_ms: 0,
            drift_ppm: -50_000,
        });
        let spawn = |name: &str, clock: Clock| {
            handle.create_node().name(name).build().spawn(async move {
                let start = tokio::time::Instant::now();
                clock.sleep(Duration::from_secs(10)).await;
                start.elapsed()
            })
        };
        let f = spawn("fast", fast.clone());
        let s = spawn("slow", slow.clone());
        let (f, s) = (f.await.unwrap(), s.await.unwrap());
        // 10 s of a clock running 10% fast pass in about 9.09 s of true time; 5% slow: 10.53 s.
        assert!(
            f > Duration::from_millis(9_080) && f < Duration::from_millis(9_100),
            "{f:?}"
        );
        assert!(
            s > Duration::from_millis(10_520) && s < Duration::from_millis(10_540),
            "{s:?}"
        );

        // A wall-clock step backwards moves wall time, never monotonic time.
        let (m0, w0) = (fast.now(), fast.wall_ms());
        fast_ctl.set(Skew {
            offset_ms: -5_000,
            drift_ppm: 100_000,
        });
        let (m1, w1) = (fast.now(), fast.wall_ms());
        assert!(m1 >= m0);
        assert!(w1 <= w0 - 4_900, "wall {w0} -> {w1}");
    });
}

#[test]
fn simulated_tcp_echo_and_clogged_link() {
    let rt = Runtime::with_seed_and_config(2, madsim::Config::default());
    rt.block_on(async {
        let handle = Handle::current();
        let addr: SocketAddr = "10.0.0.1:9092".parse().unwrap();
        let server = handle
            .create_node()
            .name("server")
            .ip([10, 0, 0, 1].into())
            .build();
        server.spawn(async move {
            let l = net::listen(addr).await.unwrap();
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                lode_env::task::spawn(async move {
                    let mut buf = [0_u8; 5];
                    while s.read_exact(&mut buf).await.is_ok() {
                        if s.write_all(&buf).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let client = handle
            .create_node()
            .name("client")
            .ip([10, 0, 0, 2].into())
            .build();
        let server_id = server.id();
        let client_id = client.id();
        let ok = client
            .spawn(async move {
                madsim::time::sleep(Duration::from_millis(10)).await;
                let clock = Clock::system();
                let mut s = net::connect(addr).await.unwrap();
                s.write_all(b"hello").await.unwrap();
                let mut buf = [0_u8; 5];
                s.read_exact(&mut buf).await.unwrap();
                assert_eq!(&buf, b"hello");
                // Cut the link: the echo cannot arrive within the timeout.
                madsim::net::NetSim::current().clog_link(client_id, server_id);
                s.write_all(b"again").await.unwrap();
                let r = clock
                    .timeout(Duration::from_secs(1), s.read_exact(&mut buf))
                    .await;
                assert!(r.is_err(), "a clogged link delivered data");
                madsim::net::NetSim::current().unclog_link(client_id, server_id);
                let r = clock
                    .timeout(Duration::from_secs(30), s.read_exact(&mut buf))
                    .await;
                assert!(r.is_ok(), "data did not arrive after the link healed");
                assert_eq!(&buf, b"again");
                true
            })
            .await
            .unwrap();
        assert!(ok);
    });
}

/// The scenario's checks must catch a log that does not really sync and a recovery that
/// trusts a torn tail.
#[cfg(feature = "planted-bugs")]
#[test]
fn disk_crash_scenario_catches_planted_bugs() {
    use lode_storage::{LogConfig, PlantedBug};
    fn skip_sync(c: &mut LogConfig) {
        c.planted_bug = Some(PlantedBug::SyncSkipsDisk);
    }
    fn trust_tail(c: &mut LogConfig) {
        c.planted_bug = Some(PlantedBug::RecoveryTrustsTail);
    }
    type Plant = fn(&mut LogConfig);
    let plants: [(&str, Plant); 2] = [
        ("sync skips disk", skip_sync),
        ("recovery trusts tail", trust_tail),
    ];
    for (name, plant) in plants {
        let caught = (0..50).find_map(|seed| lode_sim::disk_crash::run_with(seed, plant).err());
        let err = caught.unwrap_or_else(|| panic!("planted bug {name:?} survived 50 seeds"));
        eprintln!("planted bug {name:?} caught: {err:#}");
    }
}

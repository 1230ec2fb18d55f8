//! Real `lode broker` processes on loopback for the integration tests: start, kill -9,
//! SIGTERM, SIGSTOP/SIGCONT, and polling helpers. Each node's log goes to a file in the
//! test's directory; a failing test prints their tails.
#![allow(dead_code)] // each test binary uses its own part

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lode_client::Client;

/// Cluster tests run one at a time: each runs several processes on a 2-core machine.
pub static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::new(());

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Node {
    pub id: i32,
    pub kafka: SocketAddr,
    pub data: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
    /// Extra `lode broker` flags.
    pub flags: Vec<String>,
}

impl Node {
    pub fn new(dir: &Path, id: i32, flags: &[&str]) -> Node {
        Node {
            id,
            kafka: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            data: dir.join(format!("broker-{id}")),
            log: dir.join(format!("broker-{id}.log")),
            child: None,
            flags: flags.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    pub fn start(&mut self, voters: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_lode"))
            .args([
                "broker",
                "--node-id",
                &self.id.to_string(),
                "--listen",
                &self.kafka.to_string(),
                "--data-dir",
                self.data.to_str().unwrap(),
                "--voters",
                voters,
            ])
            .args(&self.flags)
            .env("RUST_LOG", "warn,lode_broker=info,lode_core=info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM, then waits for a clean exit (status 0).
    pub fn terminate(&mut self) {
        let mut c = self.child.take().expect("running");
        signal(c.id(), "TERM");
        let status = c.wait().unwrap();
        assert!(
            status.success(),
            "broker {} exited with {status} on SIGTERM",
            self.id
        );
    }

    pub fn pause(&self) {
        signal(self.pid(), "STOP");
    }

    pub fn resume(&self) {
        signal(self.pid(), "CONT");
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid} failed");
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A paused process ignores SIGKILL until continued on some systems.
            signal(c.id(), "CONT");
        }
        self.kill();
    }
}

/// A cluster of `n` combined-mode nodes, all of them controller voters.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
    pub voters: String,
}

impl Cluster {
    pub fn start(n: i32, flags: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes: Vec<Node> = (0..n).map(|id| Node::new(dir.path(), id, flags)).collect();
        let voters = (0..n)
            .map(|id| format!("{id}@127.0.0.1:{}", free_port()))
            .collect::<Vec<_>>()
            .join(",");
        for node in &mut nodes {
            node.start(&voters);
        }
        Cluster { dir, nodes, voters }
    }

    /// Every node's Kafka address, comma separated.
    pub fn bootstrap(&self) -> String {
        self.bootstrap_except(&[])
    }

    /// The Kafka addresses of every node but those in `skip`, comma separated.
    pub fn bootstrap_except(&self, skip: &[i32]) -> String {
        self.nodes
            .iter()
            .filter(|n| !skip.contains(&n.id))
            .map(|n| n.kafka.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn restart(&mut self, id: i32) {
        let voters = self.voters.clone();
        self.nodes[id as usize].start(&voters);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for n in &self.nodes {
                eprintln!("----- broker {} log tail -----\n{}", n.id, n.log_tail(60));
            }
        }
    }
}

/// Polls `f` every 100 ms for up to `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {secs} s: {what}");
}

/// The live brokers and the controller, as the brokers at `bootstrap` describe them.
pub async fn view(bootstrap: &str) -> Option<(usize, i32)> {
    let c = Client::connect(bootstrap, "cluster-test").await.ok()?;
    c.metadata(None).await.ok()?;
    Some((c.brokers().await.len(), c.controller_id().await?))
}

/// Waits (up to 60 s) until the brokers at `bootstrap` report `n` live brokers.
pub async fn until_brokers(bootstrap: &str, n: usize) {
    eventually(60, &format!("{n} brokers registered"), || async {
        view(bootstrap).await.filter(|(live, _)| *live == n)
    })
    .await;
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

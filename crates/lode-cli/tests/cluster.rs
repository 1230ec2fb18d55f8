//! Three real `lode broker` processes in combined mode on loopback: kill -9 the active
//! controller, a new one is elected and a topic can still be created; restart the old one,
//! it registers again (back in Metadata) and follows.
#![cfg(not(madsim))]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lode_client::Client;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Node {
    id: i32,
    kafka: SocketAddr,
    data: std::path::PathBuf,
    child: Option<Child>,
}

impl Node {
    fn start(&mut self, voters: &str) {
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
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap(); // SIGKILL
            c.wait().unwrap();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `f` every 100 ms for up to `secs`.
async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
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
    panic!("timed out: {what}");
}

/// The live brokers and the controller, as the brokers at `bootstrap` describe them.
async fn view(bootstrap: &str) -> Option<(usize, i32)> {
    let c = Client::connect(bootstrap, "cluster-test").await.ok()?;
    c.metadata(None).await.ok()?;
    Some((c.brokers().await.len(), c.controller_id().await?))
}

#[test]
fn killing_the_active_controller_elects_another_and_it_rejoins() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = (0..3)
        .map(|id| Node {
            id,
            kafka: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            data: tmp.path().join(format!("broker-{id}")),
            child: None,
        })
        .collect();
    let voters = (0..3)
        .map(|id| format!("{id}@127.0.0.1:{}", free_port()))
        .collect::<Vec<_>>()
        .join(",");
    for n in &mut nodes {
        n.start(&voters);
    }
    let all = nodes
        .iter()
        .map(|n| n.kafka.to_string())
        .collect::<Vec<_>>()
        .join(",");
    rt.block_on(async {
        let controller = eventually(30, "three brokers registered and a controller", || {
            let all = all.clone();
            async move { view(&all).await.filter(|(n, _)| *n == 3).map(|(_, c)| c) }
        })
        .await;
        let client = Client::connect(&all, "cluster-test").await.unwrap();
        client.create_topic("before", 3, 3).await.unwrap();

        nodes[controller as usize].kill();
        let rest = nodes
            .iter()
            .filter(|n| n.id != controller)
            .map(|n| n.kafka.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let next = eventually(30, "a new controller, the dead broker fenced", || {
            let rest = rest.clone();
            async move {
                view(&rest)
                    .await
                    .filter(|(n, c)| *n == 2 && *c != controller)
                    .map(|(_, c)| c)
            }
        })
        .await;
        let client = Client::connect(&rest, "cluster-test").await.unwrap();
        client.create_topic("after", 2, 2).await.unwrap();
        let t = client.topic("before").await.unwrap();
        assert!(
            t.partitions
                .iter()
                .all(|p| p.leader != controller && p.leader >= 0),
            "{t:?}"
        );

        nodes[controller as usize].start(&voters);
        let back = eventually(30, "the old controller back in Metadata", || {
            let all = all.clone();
            async move { view(&all).await.filter(|(n, _)| *n == 3).map(|(_, c)| c) }
        })
        .await;
        // Pre-vote keeps the returning node from disrupting the leader it can reach.
        assert_eq!(back, next, "the returning node must follow, not take over");
    });
}

//! `lode`: the command-line entry point.
//!
//! - `lode dev`: a ready local setup for Kafka clients, with embedded defaults.
//! - `lode broker`: one broker node, configured by flags.
//! - `lode log recover DIR`: open a partition directory as the broker would (recovering
//!   it after a crash), check every batch's CRC and the indexes, and print a report.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use lode_broker::{Broker, BrokerConfig, FsyncPolicy};
use lode_env::{Clock, Dir, Env};
use lode_proto::BrokerId;
use lode_storage::{Log, LogConfig};

const USAGE: &str = "\
lode: a Kafka-compatible replicated log

usage:
  lode dev [--port PORT] [--data-dir DIR] [--brokers N] [--worker-threads N]
      a local cluster for Kafka clients in one process: N brokers (default 3, at most 9)
      on 127.0.0.1:PORT.. (default 9092..9094), controllers on PORT+100..; data in
      ./lode-data; topics replicated min(3, N) ways, min ISR 2 from 3 brokers up;
      --brokers 1 is a single broker without a metadata log; worker threads: half the
      cores unless given (the clients share the machine)
  lode broker [--config FILE] --node-id N --listen HOST:PORT --data-dir DIR [options]
      one broker node (addresses: IP:PORT or HOST:PORT, names resolved at start-up);
      flags override the TOML file (keys: node_id, listen, advertised,
      data_dir, fsync, fsync_interval_ms, auto_create_topics, default_partitions,
      message_bytes_max, frame_bytes_max, segment_bytes_max, page_cache_window_bytes,
      connections_max, voters,
      controller_listen, default_replication_factor, min_insync_replicas,
      replica_lag_time_max_ms, session_timeout_ms, worker_threads); options:
        --advertised HOST:PORT   address given to clients (default: the listen address)
        --fsync always|interval  sync policy (default always: group commit)
        --no-auto-create         do not create topics on metadata requests
        --partitions N           partitions of auto-created topics (default 1)
        --message-bytes-max N    largest record batch accepted (default 1048588)
        --voters ID@HOST:PORT,...  combined mode: the controller quorum's voters (a broker
                                 listed is a voter, else an observer)
        --controller-listen HOST:PORT  controller listener (default: own voter address)
        --replication-factor R   replication factor of auto-created topics (default 1)
        --min-insync-replicas N  min ISR of topics created without one (default 1)
        --replica-lag-time-max-ms MS  an ISR member behind for longer leaves the ISR
                                 (default 30000)
        --session-timeout-ms MS  a broker silent this long is fenced (default 9000)
        --worker-threads N       the runtime's worker threads (default: one per core)
  lode topic create NAME [--partitions N] [--replication-factor R]
  lode topic list | describe NAME | delete NAME
  lode produce TOPIC [--acks 0|1|all] [--key-separator SEP] [--compression CODEC]
      one record per line of standard input
  lode consume TOPIC [--partition P] [--from beginning|end|OFFSET] [--count N]
      prints values, one per line; stops after --count records or when idle for 2 s
  lode group list | describe GROUP
      consumer groups; describe prints members, committed offsets and lag
  lode group reset-offsets GROUP --topic TOPIC --to-earliest|--to-latest|--to-offset N
      sets the group's committed offsets (the group must have no active members)
  lode bench [--records N] [--record-bytes B] [--partitions P] [--acks 0|1|all]
             [--rate MSG_PER_S] [--linger-ms MS] [--compression none|gzip|snappy|lz4|zstd]
             [--replication-factor R] [--topic-config NAME=VALUE,...]
      produce throughput and latency against a running broker, beside the loopback ceiling
  (client commands take --bootstrap HOST:PORT, default 127.0.0.1:9092)
  lode log recover DIR        recover a partition directory and verify it
  lode --version
";

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lode: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[String]) -> anyhow::Result<()> {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["--version" | "-V"] => {
            println!("lode {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        [] | ["help" | "--help" | "-h"] => {
            print!("{USAGE}");
            Ok(())
        }
        ["dev", rest @ ..] => dev(rest),
        ["broker", rest @ ..] => broker(rest),
        ["log", "recover", dir] => recover(dir),
        ["topic", rest @ ..] => client_cmd(rest, commands::topic),
        ["produce", rest @ ..] => client_cmd(rest, commands::produce),
        ["consume", rest @ ..] => client_cmd(rest, commands::consume),
        ["group", rest @ ..] => client_cmd(rest, commands::group),
        ["bench", rest @ ..] => {
            // One thread: the producer, its sender, the consumer and the ack collector hand
            // every record to one another, and on this 2-core machine waking tasks across
            // threads cost more than running them in parallel gained (median 430 against
            // 300 MB/s, `lode bench --records 300000`, 4 runs each).
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("runtime")?;
            rt.block_on(bench::run(rest.iter().map(|s| (*s).to_owned()).collect()))
        }
        _ => bail!("unknown command {:?}\n\n{USAGE}", words.join(" ")),
    }
}

mod bench;
mod commands;

type ClientCommand =
    fn(Vec<String>) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>>>>;

/// Runs a command that talks to a cluster as a client.
fn client_cmd(args: &[&str], cmd: ClientCommand) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("runtime")?;
    rt.block_on(cmd(args.iter().map(|s| (*s).to_owned()).collect()))
}

/// Flags of the form `--name value` or `--switch`; the rest are positional.
pub(crate) struct Flags<'a> {
    args: &'a [&'a str],
    used: Vec<bool>,
}

impl<'a> Flags<'a> {
    /// The arguments not consumed as flags yet, in order.
    pub(crate) fn positional(&self) -> Vec<&'a str> {
        self.args
            .iter()
            .zip(&self.used)
            .filter(|(a, u)| !**u && !a.starts_with("--"))
            .map(|(a, _)| *a)
            .collect()
    }
    /// Marks a positional argument as used.
    pub(crate) fn take(&mut self, value: &str) {
        if let Some(i) = self
            .args
            .iter()
            .zip(&self.used)
            .position(|(a, u)| !*u && *a == value)
        {
            self.used[i] = true;
        }
    }
    fn new(args: &'a [&'a str]) -> Flags<'a> {
        Flags {
            args,
            used: vec![false; args.len()],
        }
    }
    pub(crate) fn value(&mut self, name: &str) -> anyhow::Result<Option<&'a str>> {
        match self.args.iter().position(|a| *a == name) {
            None => Ok(None),
            Some(i) => {
                let v = self
                    .args
                    .get(i + 1)
                    .with_context(|| format!("{name} needs a value"))?;
                self.used[i] = true;
                self.used[i + 1] = true;
                Ok(Some(v))
            }
        }
    }
    pub(crate) fn switch(&mut self, name: &str) -> bool {
        match self.args.iter().position(|a| *a == name) {
            None => false,
            Some(i) => {
                self.used[i] = true;
                true
            }
        }
    }
    pub(crate) fn finish(&self) -> anyhow::Result<()> {
        let unknown: Vec<&str> = self
            .args
            .iter()
            .zip(&self.used)
            .filter(|(_, u)| !**u)
            .map(|(a, _)| *a)
            .collect();
        if !unknown.is_empty() {
            bail!("unknown arguments {unknown:?}\n\n{USAGE}");
        }
        Ok(())
    }
}

fn dev(args: &[&str]) -> anyhow::Result<()> {
    let mut f = Flags::new(args);
    let port: u16 = f
        .value("--port")?
        .unwrap_or("9092")
        .parse()
        .context("--port takes a port number")?;
    let data = PathBuf::from(f.value("--data-dir")?.unwrap_or("lode-data"));
    let brokers: u16 = f
        .value("--brokers")?
        .unwrap_or("3")
        .parse()
        .context("--brokers takes a number from 1 to 9")?;
    let workers = worker_threads(f.value("--worker-threads")?, None)?.or_else(dev_worker_threads);
    f.finish()?;
    if !(1..=9).contains(&brokers) {
        bail!("--brokers takes a number from 1 to 9");
    }
    if brokers == 1 {
        let listen: SocketAddr = ([127, 0, 0, 1], port).into();
        let config = BrokerConfig::new(BrokerId(0), listen);
        return serve(vec![(config, data.join("broker-0"))], true, workers);
    }
    // A combined-mode cluster in one process: Kafka listeners on PORT, PORT+1, ...;
    // controller listeners 100 ports above. The first 1, 3 or 5 brokers (the largest odd
    // count available) are the controller voters, the others observers. Topics are
    // replicated min(3, N) ways, with min ISR 2 from three brokers up.
    let kafka = |i: u16| -> anyhow::Result<SocketAddr> {
        Ok((
            [127, 0, 0, 1],
            port.checked_add(i).context("--port too high")?,
        )
            .into())
    };
    let controller = |i: u16| -> anyhow::Result<SocketAddr> {
        Ok((
            [127, 0, 0, 1],
            port.checked_add(100 + i).context("--port too high")?,
        )
            .into())
    };
    let voter_count = match brokers {
        0..=2 => 1,
        3..=4 => 3,
        _ => 5,
    };
    let mut voters = std::collections::BTreeMap::new();
    for i in 0..voter_count {
        voters.insert(BrokerId(i32::from(i)), controller(i)?);
    }
    let mut nodes = Vec::new();
    for i in 0..brokers {
        let mut config = BrokerConfig::new(BrokerId(i32::from(i)), kafka(i)?);
        config.voters = voters.clone();
        config.controller_listen = Some(controller(i)?);
        config.default_replication_factor = i16::try_from(brokers.min(3)).unwrap_or(3);
        config.default_min_insync_replicas = if brokers >= 3 { 2 } else { 1 };
        nodes.push((config, data.join(format!("broker-{i}"))));
    }
    serve(nodes, true, workers)
}

/// `lode dev`'s default worker threads: half the cores, at least one. A dev cluster shares
/// the machine with its clients, and workers that outnumber the cores the clients leave
/// free make requests hop between threads: on 2 cores, `lode dev --brokers 1` with two
/// workers produced 343-562 MB/s in `lode bench --records 3000000`, with one 868-906
/// (3 runs each, alternating).
fn dev_worker_threads() -> Option<usize> {
    let cores = std::thread::available_parallelism().ok()?.get();
    Some((cores / 2).max(1))
}

/// The runtime's worker threads: the flag, else the file's key, else one per core.
fn worker_threads(flag: Option<&str>, file: Option<usize>) -> anyhow::Result<Option<usize>> {
    let n = match flag {
        Some(v) => Some(
            v.parse::<usize>()
                .context("--worker-threads takes a number")?,
        ),
        None => file,
    };
    if let Some(n) = n {
        if !(1..=1024).contains(&n) {
            bail!("worker threads must be from 1 to 1024, not {n}");
        }
    }
    Ok(n)
}

/// The broker's TOML configuration file; every key is optional, flags override it.
#[derive(serde::Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_id: Option<i32>,
    listen: Option<String>,
    advertised: Option<String>,
    data_dir: Option<PathBuf>,
    fsync: Option<String>,
    fsync_interval_ms: Option<u64>,
    auto_create_topics: Option<bool>,
    default_partitions: Option<i32>,
    message_bytes_max: Option<usize>,
    frame_bytes_max: Option<usize>,
    segment_bytes_max: Option<u64>,
    page_cache_window_bytes: Option<u64>,
    connections_max: Option<usize>,
    voters: Option<String>,
    controller_listen: Option<String>,
    default_replication_factor: Option<i16>,
    min_insync_replicas: Option<i32>,
    replica_lag_time_max_ms: Option<u64>,
    session_timeout_ms: Option<u64>,
    worker_threads: Option<usize>,
}

/// `HOST:PORT` as an address: an IP literal, or a host name resolved now, at start-up,
/// before the runtime exists (so with the standard library's blocking lookup; the choice
/// among the answers is `lode_env::net::pick`'s, as for the client).
fn socket_addr(s: &str) -> anyhow::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    let addrs = s
        .to_socket_addrs()
        .with_context(|| format!("{s:?}: give HOST:PORT, with a host name that resolves"))?;
    Ok(lode_env::net::pick(s, addrs)?)
}

/// Parses `ID@HOST:PORT,ID@HOST:PORT,...` (Kafka's controller.quorum.voters); host names
/// are resolved at start-up.
fn parse_voters(s: &str) -> anyhow::Result<std::collections::BTreeMap<BrokerId, SocketAddr>> {
    let mut out = std::collections::BTreeMap::new();
    for v in s.split(',').map(str::trim).filter(|v| !v.is_empty()) {
        let (id, addr) = v
            .split_once('@')
            .with_context(|| format!("voter {v:?}: give ID@HOST:PORT"))?;
        let id: i32 = id.parse().with_context(|| format!("voter id in {v:?}"))?;
        let addr = socket_addr(addr).with_context(|| format!("voter address in {v:?}"))?;
        if out.insert(BrokerId(id), addr).is_some() {
            bail!("voter {id} given twice");
        }
    }
    if out.is_empty() {
        bail!("--voters names no voter");
    }
    Ok(out)
}

fn broker(args: &[&str]) -> anyhow::Result<()> {
    let mut f = Flags::new(args);
    let file: FileConfig = match f.value("--config")? {
        None => FileConfig::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
            toml::from_str(&text).with_context(|| path.to_string())?
        }
    };
    let node: i32 = match f.value("--node-id")? {
        Some(v) => v.parse().context("--node-id takes a number")?,
        None => file
            .node_id
            .context("--node-id (or node_id in the config file) is required")?,
    };
    if !(0..1 << 20).contains(&node) {
        bail!("--node-id must be from 0 to {}", (1 << 20) - 1);
    }
    let listen = f
        .value("--listen")?
        .map(str::to_owned)
        .or(file.listen)
        .context("--listen is required")?;
    let listen = socket_addr(&listen).context("listen address")?;
    let data = f
        .value("--data-dir")?
        .map(PathBuf::from)
        .or(file.data_dir)
        .context("--data-dir is required")?;
    let mut config = BrokerConfig::new(BrokerId(node), listen);
    if let Some(adv) = f
        .value("--advertised")?
        .map(str::to_owned)
        .or(file.advertised)
    {
        let (host, port) = adv
            .rsplit_once(':')
            .context("advertised address takes HOST:PORT")?;
        config.advertised_host = host.to_owned();
        config.advertised_port = port.parse().context("advertised port")?;
    }
    let interval = Duration::from_millis(file.fsync_interval_ms.unwrap_or(1000));
    match f
        .value("--fsync")?
        .map(str::to_owned)
        .or(file.fsync)
        .as_deref()
    {
        None | Some("always") => config.fsync = FsyncPolicy::Always,
        Some("interval") => config.fsync = FsyncPolicy::Interval(interval),
        Some(other) => bail!("fsync takes always or interval, not {other:?}"),
    }
    if let Some(v) = file.auto_create_topics {
        config.auto_create_topics = v;
    }
    if f.switch("--no-auto-create") {
        config.auto_create_topics = false;
    }
    match f.value("--partitions")? {
        Some(n) => config.default_partitions = n.parse().context("--partitions takes a number")?,
        None => {
            config.default_partitions = file.default_partitions.unwrap_or(config.default_partitions)
        }
    }
    match f.value("--message-bytes-max")? {
        Some(n) => {
            config.message_bytes_max = n.parse().context("--message-bytes-max takes a number")?
        }
        None => {
            config.message_bytes_max = file.message_bytes_max.unwrap_or(config.message_bytes_max)
        }
    }
    config.frame_bytes_max = file.frame_bytes_max.unwrap_or(config.frame_bytes_max);
    config.segment_bytes_max = file.segment_bytes_max.unwrap_or(config.segment_bytes_max);
    config.page_cache_window_bytes = file
        .page_cache_window_bytes
        .unwrap_or(config.page_cache_window_bytes);
    config.connections_max = file.connections_max.unwrap_or(config.connections_max);
    if let Some(v) = f.value("--voters")?.map(str::to_owned).or(file.voters) {
        config.voters = parse_voters(&v)?;
    }
    if let Some(c) = f
        .value("--controller-listen")?
        .map(str::to_owned)
        .or(file.controller_listen)
    {
        config.controller_listen = Some(socket_addr(&c).context("controller listen address")?);
    }
    match f.value("--replication-factor")? {
        Some(n) => {
            config.default_replication_factor =
                n.parse().context("--replication-factor takes a number")?
        }
        None => {
            config.default_replication_factor = file
                .default_replication_factor
                .unwrap_or(config.default_replication_factor)
        }
    }
    match f.value("--min-insync-replicas")? {
        Some(n) => {
            config.default_min_insync_replicas =
                n.parse().context("--min-insync-replicas takes a number")?
        }
        None => {
            config.default_min_insync_replicas = file
                .min_insync_replicas
                .unwrap_or(config.default_min_insync_replicas)
        }
    }
    if config.default_min_insync_replicas < 1 {
        bail!("min ISR must be at least 1");
    }
    match f.value("--replica-lag-time-max-ms")? {
        Some(n) => {
            config.replica_lag_time_max = Duration::from_millis(
                n.parse()
                    .context("--replica-lag-time-max-ms takes milliseconds")?,
            )
        }
        None => {
            if let Some(ms) = file.replica_lag_time_max_ms {
                config.replica_lag_time_max = Duration::from_millis(ms);
            }
        }
    }
    match f.value("--session-timeout-ms")? {
        Some(n) => {
            config.session_timeout = Duration::from_millis(
                n.parse()
                    .context("--session-timeout-ms takes milliseconds")?,
            )
        }
        None => {
            if let Some(ms) = file.session_timeout_ms {
                config.session_timeout = Duration::from_millis(ms);
            }
        }
    }
    if !config.voters.is_empty()
        && config.controller_listen.is_none()
        && !config.voters.contains_key(&config.node_id)
    {
        bail!("an observer (a broker not among --voters) needs --controller-listen");
    }
    if config.default_partitions < 1
        || config.message_bytes_max < 64
        || config.frame_bytes_max < config.message_bytes_max
    {
        bail!("invalid limits: partitions >= 1, message_bytes_max >= 64, frame_bytes_max >= message_bytes_max");
    }
    let workers = worker_threads(f.value("--worker-threads")?, file.worker_threads)?;
    f.finish()?;
    serve(vec![(config, data)], false, workers)
}

fn serve(
    nodes: Vec<(BrokerConfig, PathBuf)>,
    dev: bool,
    worker_threads: Option<usize>,
) -> anyhow::Result<()> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = worker_threads {
        builder.worker_threads(n);
    }
    let rt = builder.enable_all().build().context("runtime")?;
    rt.block_on(async {
        // Handlers first: a SIGTERM during start-up must not kill the process uncleanly
        // (the default action); it is kept and acted on once the brokers are up.
        let mut signals = ShutdownSignals::install()?;
        let started = std::time::Instant::now();
        let mut brokers = Vec::new();
        let mut bootstrap = Vec::new();
        for (config, data) in nodes {
            let env =
                Env::host(&data).with_context(|| format!("data directory {}", data.display()))?;
            bootstrap.push(format!(
                "{}:{}",
                config.advertised_host, config.advertised_port
            ));
            let broker = Broker::start(config, env)
                .await
                .context("starting the broker")?;
            println!(
                "lode {}: broker {} ready in {} ms, data in {}",
                if dev { "dev" } else { "broker" },
                broker.config.node_id,
                started.elapsed().as_millis(),
                data.display()
            );
            brokers.push(broker);
        }
        // In a cluster, clients can use it once every broker started here is registered and
        // unfenced (an election and a registration round after start).
        for b in &brokers {
            if b.control.is_some() {
                let me = b.config.node_id;
                let ready = b
                    .clock
                    .timeout(Duration::from_secs(30), async {
                        while !b.in_service() {
                            b.clock.sleep(Duration::from_millis(50)).await;
                        }
                    })
                    .await;
                if ready.is_err() {
                    eprintln!(
                        "lode: broker {me} is not registered with a controller after 30 s; is a majority of --voters up?"
                    );
                }
            }
        }
        let bootstrap = bootstrap.join(",");
        println!("bootstrap {bootstrap}");
        if dev {
            println!("try: kcat -b {bootstrap} -L    (Ctrl-C stops it cleanly)");
        }
        // A broker whose storage failed halts (see lode_broker::halt): no clean shutdown,
        // the process exits with an error for its supervisor to restart it.
        let (halts_tx, mut halts) = tokio::sync::mpsc::channel(brokers.len().max(1));
        for b in &brokers {
            let (b, tx) = (std::sync::Arc::clone(b), halts_tx.clone());
            tokio::spawn(async move {
                let why = b.halted().await;
                let _ = tx.send((b.config.node_id, why)).await;
            });
        }
        let halted = tokio::select! {
            () = signals.wait() => None,
            Some(h) = halts.recv() => Some(h),
        };
        // All at once: each hands its leaderships to the others (controlled shutdown) while
        // every controller is still up.
        let stopping: Vec<_> = brokers
            .iter()
            .filter(|b| halted.as_ref().is_none_or(|(id, _)| *id != b.config.node_id))
            .map(|b| {
                let b = std::sync::Arc::clone(b);
                tokio::spawn(async move { b.shutdown().await })
            })
            .collect();
        for s in stopping {
            s.await.context("broker shutdown task")?;
        }
        match halted {
            Some((id, why)) => Err(anyhow::anyhow!(
                "broker {id} halted: {why}; restart it: recovery rebuilds its logs from the disk"
            )),
            None => Ok(()),
        }
    })
}

/// SIGTERM and SIGINT (Ctrl-C), caught from the moment they are installed.
struct ShutdownSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> anyhow::Result<ShutdownSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(ShutdownSignals {
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
        })
    }

    /// Until either arrives (or arrived since `install`).
    async fn wait(&mut self) {
        tokio::select! {
            biased;
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        tracing::info!("shutting down");
    }
}

fn recover(dir: &str) -> anyhow::Result<()> {
    let path = std::path::Path::new(dir);
    if !path.is_dir() {
        bail!("{dir} is not a directory");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("runtime")?;
    rt.block_on(async {
        let (log, report) = Log::open(Dir::real(path)?, Clock::system(), LogConfig::default())
            .await
            .with_context(|| format!("opening {dir}"))?;
        println!("clean shutdown: {}", report.clean_shutdown);
        println!(
            "scanned: {} bytes, cut: {} bytes",
            report.scanned_bytes, report.truncated_bytes
        );
        for f in &report.fallbacks {
            println!("fallback: {f}");
        }
        for s in &report.removed_segments {
            println!("removed segment: {s}");
        }
        println!(
            "offsets: start {} end {} high watermark {}; segments: {}",
            log.log_start_offset(),
            log.log_end_offset(),
            log.high_watermark(),
            log.segment_bases().len()
        );
        log.verify().await.context("verify")?;
        println!("verified: every batch passes its CRC; indexes and epochs match a full scan");
        log.close().await.context("close")?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::worker_threads;

    #[test]
    fn worker_threads_come_from_the_flag_then_the_file_and_must_be_sane() {
        assert_eq!(worker_threads(None, None).unwrap(), None);
        assert_eq!(worker_threads(None, Some(3)).unwrap(), Some(3));
        assert_eq!(worker_threads(Some("1"), Some(3)).unwrap(), Some(1));
        assert!(worker_threads(Some("0"), None).is_err());
        assert!(worker_threads(None, Some(0)).is_err());
        assert!(worker_threads(Some("two"), None).is_err());
    }

    #[test]
    fn addresses_take_ip_literals_and_host_names() {
        use super::{parse_voters, socket_addr};
        assert_eq!(
            socket_addr("10.1.2.3:9092").unwrap(),
            "10.1.2.3:9092".parse().unwrap()
        );
        // `localhost` comes from the hosts file, through the resolver.
        let named = socket_addr("localhost:9093").unwrap();
        assert!(named.ip().is_loopback() && named.port() == 9093, "{named}");
        for bad in ["localhost", "localhost:port", "10.1.2.3:70000", ""] {
            assert!(socket_addr(bad).is_err(), "{bad:?} accepted");
        }
        let voters = parse_voters("1@localhost:9093, 2@10.1.2.3:9093").unwrap();
        assert!(voters[&lode_proto::BrokerId(1)].ip().is_loopback());
        assert_eq!(voters.len(), 2);
        assert!(parse_voters("1@localhost:9093,1@10.1.2.3:9093").is_err());
        assert!(parse_voters("1@nowhere").is_err());
    }

    #[test]
    fn a_dev_cluster_leaves_cores_to_its_clients() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let n = super::dev_worker_threads().unwrap();
        assert!(n >= 1 && n <= cores.max(1), "{n} workers for {cores} cores");
        assert!(cores < 2 || n <= cores / 2, "{n} workers for {cores} cores");
    }
}

//! `lode bench`: an OpenMessaging-style produce/consume workload against a running broker,
//! measured beside this machine's loopback ceiling (a plain socket copy) in the same run.
//!
//! Produce latency is from `send` to acknowledgement; end-to-end latency from `send` to the
//! consumer receiving the record (the send instant travels in the record's first bytes).
//! The first tenth of the records are a warm-up and are not measured.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use lode_client::{Client, Consumer, Producer, ProducerConfig, RecordRef};
use lode_proto::Offset;

use crate::Flags;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Bytes per second one loopback TCP stream carries on this machine, measured for `secs`:
/// a plain blocking socket copy of 1 MiB writes between two threads of their own, so it does
/// not depend on the runtime the benchmark runs on.
fn loopback_ceiling(secs: f64) -> anyhow::Result<f64> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    let addr = listener.local_addr()?;
    let sink = std::thread::spawn(move || {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0_u8; 1 << 20];
        let mut total = 0_u64;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok::<u64, std::io::Error>(total);
            }
            total += n as u64;
        }
    });
    let mut s = std::net::TcpStream::connect(addr)?;
    let buf = vec![0x5a_u8; 1 << 20];
    let start = Instant::now();
    let mut sent = 0_u64;
    while start.elapsed().as_secs_f64() < secs {
        s.write_all(&buf)?;
        sent += buf.len() as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    drop(s);
    let received = sink
        .join()
        .map_err(|_| anyhow::anyhow!("loopback sink thread panicked"))??;
    Ok(received.min(sent) as f64 / start.elapsed().as_secs_f64())
}

/// Bytes per second of a plain buffered write of `bytes` into a fresh file in `dir`, without
/// and with the fdatasync at the end: what the broker's log appends cost on this machine's
/// page cache and disk, before any protocol work.
fn disk_ceiling(dir: &std::path::Path, bytes: usize) -> anyhow::Result<(f64, f64)> {
    use std::io::Write;
    let path = dir.join(format!(".lode-bench-disk-{}", std::process::id()));
    let mut f = std::fs::File::create(&path).with_context(|| format!("{}", path.display()))?;
    let chunk = vec![0x5a_u8; 256 << 10];
    let start = Instant::now();
    let mut written = 0;
    while written < bytes {
        f.write_all(&chunk)?;
        written += chunk.len();
    }
    let write_secs = start.elapsed().as_secs_f64();
    f.sync_data()?;
    let synced_secs = start.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok((written as f64 / write_secs, written as f64 / synced_secs))
}

fn list_configs(configs: &[(&str, &str)]) -> String {
    configs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `lode bench`.
pub(crate) fn run(args: Vec<String>) -> Pin<Box<dyn Future<Output = anyhow::Result<()>>>> {
    Box::pin(async move {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut f = Flags::new(&a);
        let bootstrap = f
            .value("--bootstrap")?
            .unwrap_or("127.0.0.1:9092")
            .to_owned();
        let records: usize = f
            .value("--records")?
            .unwrap_or("200000")
            .parse()
            .context("--records")?;
        let record_bytes: usize = f
            .value("--record-bytes")?
            .unwrap_or("1024")
            .parse()
            .context("--record-bytes")?;
        let partitions: i32 = f
            .value("--partitions")?
            .unwrap_or("1")
            .parse()
            .context("--partitions")?;
        let compression = crate::commands::parse_compression(f.value("--compression")?)?;
        let linger_ms: u64 = f
            .value("--linger-ms")?
            .unwrap_or("1")
            .parse()
            .context("--linger-ms")?;
        let rate: f64 = f
            .value("--rate")?
            .unwrap_or("0")
            .parse()
            .context("--rate (records/s, 0 = as fast as possible)")?;
        let replication_factor: i16 = f
            .value("--replication-factor")?
            .unwrap_or("-1")
            .parse()
            .context("--replication-factor (-1: the broker's default)")?;
        let topic_configs: Vec<(String, String)> = match f.value("--topic-config")? {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                        .with_context(|| format!("--topic-config takes NAME=VALUE,...; got {kv:?}"))
                })
                .collect::<anyhow::Result<_>>()?,
        };
        let acks = match f.value("--acks")?.unwrap_or("1") {
            "all" | "-1" => -1,
            "1" => 1,
            "0" => 0,
            other => bail!("--acks takes 0, 1 or all, not {other:?}"),
        };
        f.finish()?;
        if record_bytes < 16 {
            bail!("--record-bytes must be at least 16 (the send instant travels in the record)");
        }

        println!("loopback ceiling: measuring one TCP stream for 2 s ...");
        let ceiling = loopback_ceiling(2.0)?;
        println!("loopback ceiling: {:.0} MB/s", ceiling / 1e6);

        let client = Client::connect(&bootstrap, "lode-bench")
            .await
            .with_context(|| format!("connecting to {bootstrap}"))?;
        let topic = format!("lode-bench-{:08x}", lode_env::rng::seed_u64() as u32);
        let configs: Vec<(&str, &str)> = topic_configs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        client
            .create_topic_with(&topic, partitions, replication_factor, &configs)
            .await?;
        let described = client.topic(&topic).await?;
        let rf = described.partitions.first().map_or(0, |p| p.replicas.len());
        println!(
            "workload: {records} records of {record_bytes} B, {partitions} partitions (replication factor {rf}{}), acks={acks}, linger {linger_ms} ms, rate {}",
            if configs.is_empty() { String::new() } else { format!(", {}", list_configs(&configs)) },
            if rate > 0.0 { format!("{rate:.0}/s") } else { "max".into() }
        );

        // The consumer runs alongside, measuring end-to-end latency.
        let origin = Instant::now();
        // Its own client, so its long polls do not hold up the producer's connection.
        let consumer_client = Client::connect(&bootstrap, "lode-bench-consumer").await?;
        let consumer_topic = topic.clone();
        let warmup = records / 10;
        // How many records the consumer must see: all of them, until the producer knows how
        // many were acknowledged.
        let expected = Arc::new(std::sync::atomic::AtomicUsize::new(records));
        let expected_c = Arc::clone(&expected);
        let consumer = tokio::spawn(async move {
            let mut c = Consumer::new(consumer_client);
            c.max_wait = Duration::from_millis(100);
            for p in 0..partitions {
                c.assign(&consumer_topic, p, Offset(0));
            }
            let mut e2e = Vec::with_capacity(records);
            let mut seen = 0;
            let deadline = Instant::now() + Duration::from_secs(600);
            while seen < expected_c.load(std::sync::atomic::Ordering::Acquire)
                && Instant::now() < deadline
            {
                for r in c.poll().await? {
                    let v = r.value.unwrap_or_default();
                    let sent_ns = u64::from_be_bytes(v[..8].try_into().unwrap_or([0; 8]));
                    let index = u64::from_be_bytes(v[8..16].try_into().unwrap_or([0; 8]));
                    if index as usize >= warmup {
                        e2e.push(
                            origin
                                .elapsed()
                                .saturating_sub(Duration::from_nanos(sent_ns)),
                        );
                    }
                    seen += 1;
                }
            }
            Ok::<(Vec<Duration>, usize), lode_client::ClientError>((e2e, seen))
        });

        let config = ProducerConfig {
            acks,
            idempotent: acks == -1,
            compression,
            linger: Duration::from_millis(linger_ms),
            ..ProducerConfig::default()
        };
        let producer = Producer::new(Arc::clone(&client), config).await?;
        // A collector task awaits each acknowledgement as it arrives, so produce latency is
        // measured when the ack lands, not when the sending loop next looks. Acks of one
        // partition complete in order; across partitions, awaiting in send order can only
        // overstate a latency.
        let (ack_tx, mut ack_rx) =
            tokio::sync::mpsc::channel::<(usize, Instant, lode_client::producer::Delivery)>(
                100_000,
            );
        let collector = tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(records);
            let mut failed = 0_usize;
            while let Some((j, sent, d)) = ack_rx.recv().await {
                match d.await {
                    Ok(_) if j >= warmup => latencies.push(sent.elapsed()),
                    Ok(_) => {}
                    _ => failed += 1,
                }
            }
            (latencies, failed)
        });
        let start = Instant::now();
        let mut measured_start = start;
        let mut value = vec![0x42_u8; record_bytes];
        for i in 0..records {
            if i == warmup {
                measured_start = Instant::now();
            }
            if rate > 0.0 {
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    tokio::time::sleep(wait).await;
                }
            }
            let now = Instant::now();
            value[..8]
                .copy_from_slice(&(now.duration_since(origin).as_nanos() as u64).to_be_bytes());
            value[8..16].copy_from_slice(&(i as u64).to_be_bytes());
            let record = RecordRef {
                value: Some(&value),
                partition: Some((i as i32) % partitions),
                ..RecordRef::default()
            };
            let d = producer.send_ref(&topic, record).await?;
            ack_tx
                .send((i, now, d))
                .await
                .context("ack collector stopped")?;
        }
        producer.flush().await;
        drop(ack_tx);
        let (mut latencies, failed) = collector.await.context("ack collector")?;
        let elapsed = measured_start.elapsed().as_secs_f64();
        expected.store(records - failed, std::sync::atomic::Ordering::Release);
        let measured = records - warmup;
        let (mut e2e, seen) = consumer.await.context("consumer task")??;
        latencies.sort_unstable();
        e2e.sort_unstable();
        let mbps = measured as f64 * record_bytes as f64 / elapsed;
        println!(
            "produced: {:.0} msg/s, {:.1} MB/s ({:.2} of the loopback ceiling), {failed} failed",
            measured as f64 / elapsed,
            mbps / 1e6,
            mbps / ceiling,
        );
        println!(
            "produce latency: p50 {} p99 {} p99.9 {} max {}",
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.99)),
            ms(percentile(&latencies, 0.999)),
            ms(latencies.last().copied().unwrap_or_default())
        );
        println!(
            "end-to-end latency: p50 {} p99 {} p99.9 {} ({seen} records consumed)",
            ms(percentile(&e2e, 0.5)),
            ms(percentile(&e2e, 0.99)),
            ms(percentile(&e2e, 0.999))
        );
        // Measured after the workload: writing and deleting that volume just before it would
        // hand the broker freshly returned pages (slow on first touch on a VM) and skew it.
        let disk_dir = std::env::temp_dir();
        let (disk, synced) = disk_ceiling(&disk_dir, records.saturating_mul(record_bytes))?;
        println!(
            "disk ceiling: {:.0} MB/s written, {:.0} MB/s with the fdatasync (the same volume written plainly into a fresh file in {}); produced at {:.2} of the first",
            disk / 1e6,
            synced / 1e6,
            disk_dir.display(),
            mbps / disk
        );
        client.delete_topic(&topic).await?;
        if failed > 0 || seen < records - failed {
            bail!(
                "{failed} records failed, {} acknowledged ones not consumed",
                (records - failed).saturating_sub(seen)
            );
        }
        Ok(())
    })
}

//! Client commands: topics, produce, consume.

use std::future::Future;
use std::io::{BufRead, Write};
use std::pin::Pin;
use std::sync::Arc;

use anyhow::{bail, Context};
use lode_client::{Client, Consumer, Producer, ProducerConfig, Record};
use lode_proto::Offset;

use crate::Flags;

type Cmd = Pin<Box<dyn Future<Output = anyhow::Result<()>>>>;

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

async fn connect(f: &mut Flags<'_>) -> anyhow::Result<Arc<Client>> {
    let bootstrap = f
        .value("--bootstrap")?
        .unwrap_or("127.0.0.1:9092")
        .to_owned();
    Client::connect(&bootstrap, "lode-cli")
        .await
        .with_context(|| format!("connecting to {bootstrap}"))
}

/// Parses a `--compression` value.
pub(crate) fn parse_compression(v: Option<&str>) -> anyhow::Result<lode_proto::batch::Compression> {
    use lode_proto::batch::Compression;
    Ok(match v {
        None | Some("none") => Compression::None,
        Some("gzip") => Compression::Gzip,
        Some("snappy") => Compression::Snappy,
        Some("lz4") => Compression::Lz4,
        Some("zstd") => Compression::Zstd,
        Some(other) => bail!("--compression takes none, gzip, snappy, lz4 or zstd, not {other:?}"),
    })
}

fn parse_acks(v: Option<&str>) -> anyhow::Result<i16> {
    Ok(match v {
        None | Some("all" | "-1") => -1,
        Some("1") => 1,
        Some("0") => 0,
        Some(other) => bail!("--acks takes 0, 1 or all, not {other:?}"),
    })
}

/// `lode topic create|list|describe|delete`.
pub(crate) fn topic(args: Vec<String>) -> Cmd {
    Box::pin(async move {
        let a = strs(&args);
        let mut f = Flags::new(&a);
        let partitions: i32 = f
            .value("--partitions")?
            .unwrap_or("1")
            .parse()
            .context("--partitions")?;
        let rf: i16 = f
            .value("--replication-factor")?
            .unwrap_or("-1")
            .parse()
            .context("--replication-factor")?;
        let client = connect(&mut f).await?;
        let pos = f.positional();
        for p in &pos {
            f.take(p);
        }
        f.finish()?;
        match pos.as_slice() {
            ["create", name] => {
                client.create_topic(name, partitions, rf).await?;
                println!("created topic {name} with {partitions} partitions");
            }
            ["list"] => {
                for t in client.metadata(None).await? {
                    println!("{}", t.name);
                }
            }
            ["describe", name] => {
                let t = client.metadata(Some(&[name])).await?;
                let Some(t) = t.first() else {
                    bail!("no topic {name}")
                };
                println!("topic {} partitions {}", t.name, t.partitions.len());
                for p in &t.partitions {
                    println!(
                        "  partition {} leader {} replicas {:?} isr {:?}",
                        p.index, p.leader, p.replicas, p.isr
                    );
                }
            }
            ["delete", name] => {
                client.delete_topic(name).await?;
                println!("deleted topic {name}");
            }
            _ => bail!("usage: lode topic create NAME | list | describe NAME | delete NAME"),
        }
        Ok(())
    })
}

/// `lode produce TOPIC`: one record per line of standard input.
pub(crate) fn produce(args: Vec<String>) -> Cmd {
    Box::pin(async move {
        let a = strs(&args);
        let mut f = Flags::new(&a);
        let acks = parse_acks(f.value("--acks")?)?;
        let compression = parse_compression(f.value("--compression")?)?;
        let sep = f.value("--key-separator")?.map(str::to_owned);
        let client = connect(&mut f).await?;
        let pos = f.positional();
        let [topic] = pos.as_slice() else {
            bail!("usage: lode produce TOPIC")
        };
        f.take(topic);
        f.finish()?;
        let config = ProducerConfig {
            acks,
            idempotent: acks == -1,
            compression,
            ..ProducerConfig::default()
        };
        let producer = Producer::new(Arc::clone(&client), config).await?;
        let mut deliveries = Vec::new();
        for line in std::io::stdin().lock().lines() {
            let line = line.context("reading standard input")?;
            let (key, value) = match sep.as_deref().and_then(|s| line.split_once(s)) {
                Some((k, v)) => (Some(k.as_bytes().to_vec()), v.as_bytes().to_vec()),
                None => (None, line.into_bytes()),
            };
            deliveries.push(
                producer
                    .send(
                        topic,
                        Record {
                            key,
                            value: Some(value),
                            ..Record::default()
                        },
                    )
                    .await?,
            );
        }
        producer.flush().await;
        let (mut ok, mut failed) = (0, 0);
        for d in deliveries {
            match d.await {
                Ok(_) => ok += 1,
                Err(e) => {
                    failed += 1;
                    eprintln!("record failed: {e}");
                }
            }
        }
        eprintln!("{ok} records acknowledged, {failed} failed");
        if failed > 0 {
            bail!("{failed} records failed");
        }
        Ok(())
    })
}

/// `lode consume TOPIC`.
pub(crate) fn consume(args: Vec<String>) -> Cmd {
    Box::pin(async move {
        let a = strs(&args);
        let mut f = Flags::new(&a);
        let partition: Option<i32> = f
            .value("--partition")?
            .map(str::parse)
            .transpose()
            .context("--partition")?;
        let from = f.value("--from")?.unwrap_or("beginning").to_owned();
        let count: Option<usize> = f
            .value("--count")?
            .map(str::parse)
            .transpose()
            .context("--count")?;
        let client = connect(&mut f).await?;
        let pos = f.positional();
        let [topic] = pos.as_slice() else {
            bail!("usage: lode consume TOPIC")
        };
        f.take(topic);
        f.finish()?;
        let info = client.topic(topic).await?;
        let mut consumer = Consumer::new(Arc::clone(&client));
        for p in &info.partitions {
            if partition.is_some_and(|want| want != p.index) {
                continue;
            }
            let start = match from.as_str() {
                "beginning" => consumer
                    .offset_for(topic, p.index, -2)
                    .await?
                    .unwrap_or(Offset(0)),
                "end" => consumer
                    .offset_for(topic, p.index, -1)
                    .await?
                    .unwrap_or(Offset(0)),
                n => Offset(
                    n.parse()
                        .context("--from takes beginning, end or an offset")?,
                ),
            };
            consumer.assign(topic, p.index, start);
        }
        let mut seen = 0;
        let mut idle = 0;
        let stdout = std::io::stdout();
        while count.is_none_or(|c| seen < c) && idle < 4 {
            let records = consumer.poll().await?;
            if records.is_empty() {
                idle += 1;
                continue;
            }
            idle = 0;
            let mut out = stdout.lock();
            for r in records {
                if count.is_some_and(|c| seen >= c) {
                    break;
                }
                out.write_all(r.value.as_deref().unwrap_or_default())?;
                out.write_all(b"\n")?;
                seen += 1;
            }
        }
        Ok(())
    })
}

/// `lode group list | describe GROUP | reset-offsets GROUP --topic T --to-earliest|
/// --to-latest|--to-offset N`.
pub(crate) fn group(args: Vec<String>) -> Cmd {
    Box::pin(async move {
        let a = strs(&args);
        let mut f = Flags::new(&a);
        let topic = f.value("--topic")?.map(str::to_owned);
        let to_offset = f.value("--to-offset")?.map(str::to_owned);
        let to_earliest = f.switch("--to-earliest");
        let to_latest = f.switch("--to-latest");
        let client = connect(&mut f).await?;
        let pos = f.positional();
        for p in &pos {
            f.take(p);
        }
        match pos.as_slice() {
            ["list"] => {
                f.finish()?;
                let groups = client.list_groups().await?;
                if groups.is_empty() {
                    eprintln!("no groups");
                }
                for g in groups {
                    println!("{}\t{}\t{}", g.group_id, g.state, g.protocol_type);
                }
                Ok(())
            }
            ["describe", group] => {
                f.finish()?;
                describe_group(&client, group).await
            }
            ["reset-offsets", group] => {
                f.finish()?;
                let topic = topic.context("reset-offsets needs --topic TOPIC")?;
                let target = match (to_earliest, to_latest, to_offset.as_deref()) {
                    (true, false, None) => -2,
                    (false, true, None) => -1,
                    (false, false, Some(n)) => {
                        let n: i64 = n.parse().context("--to-offset takes an offset")?;
                        if n < 0 {
                            bail!("--to-offset takes an offset >= 0");
                        }
                        n
                    }
                    _ => bail!(
                        "reset-offsets takes one of --to-earliest, --to-latest, --to-offset N"
                    ),
                };
                let info = client.topic(&topic).await?;
                let consumer = Consumer::new(Arc::clone(&client));
                let mut offsets = Vec::new();
                for p in &info.partitions {
                    let offset = if target >= 0 {
                        target
                    } else {
                        consumer
                            .offset_for(&topic, p.index, target)
                            .await?
                            .unwrap_or(Offset(0))
                            .0
                    };
                    offsets.push((topic.clone(), p.index, offset));
                }
                client
                    .commit_group_offsets(group, &offsets)
                    .await
                    .map_err(|e| match e {
                        lode_client::ClientError::Broker { code: 25, .. } => anyhow::anyhow!(
                            "group {group} has active members: stop its consumers first"
                        ),
                        e => e.into(),
                    })?;
                for (t, p, o) in offsets {
                    println!("{t}\t{p}\t{o}");
                }
                Ok(())
            }
            other => {
                bail!("lode group takes list, describe GROUP or reset-offsets GROUP, not {other:?}")
            }
        }
    })
}

/// Prints a group's state and members, then each committed offset with the partition's
/// high watermark and the lag.
async fn describe_group(client: &Arc<Client>, group: &str) -> anyhow::Result<()> {
    let d = client.describe_group(group).await?;
    println!(
        "group {}: {} ({} {})",
        d.group_id, d.state, d.protocol_type, d.protocol
    );
    for m in &d.members {
        let parts: Vec<String> = m
            .partitions
            .iter()
            .map(|(t, p)| format!("{t}-{p}"))
            .collect();
        println!(
            "member {} client {} partitions [{}]",
            m.member_id,
            m.client_id,
            parts.join(" ")
        );
    }
    let consumer = Consumer::new(Arc::clone(client));
    println!("TOPIC\tPARTITION\tCOMMITTED\tEND\tLAG");
    for o in client.group_offsets(group).await? {
        let end = consumer.offset_for(&o.topic, o.partition, -1).await?;
        let (end, lag) = match end {
            Some(e) => (e.0.to_string(), (e.0 - o.offset).max(0).to_string()),
            None => ("-".into(), "-".into()),
        };
        println!("{}\t{}\t{}\t{end}\t{lag}", o.topic, o.partition, o.offset);
    }
    Ok(())
}

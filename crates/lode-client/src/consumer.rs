//! A consumer by assignment: the caller names partitions and positions; `poll` fetches
//! from each partition's leader and returns records in offset order per partition.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{BrokerId, FetchRequest, ListOffsetsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use lode_proto::batch::RecordBatch;
use lode_proto::Offset;

use crate::{Client, ClientError};

/// A record read from a partition. Its key, value and headers are slices of the fetch
/// response (of the decompressed records for a compressed batch): no copy per record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerRecord {
    /// Topic.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: Offset,
    /// Timestamp (create or log-append time).
    pub timestamp_ms: i64,
    /// Key.
    pub key: Option<Bytes>,
    /// Value.
    pub value: Option<Bytes>,
    /// Headers in order; keys may repeat.
    pub headers: Vec<(Bytes, Option<Bytes>)>,
}

/// See the module documentation.
pub struct Consumer {
    client: Arc<Client>,
    positions: BTreeMap<(String, i32), Offset>,
    /// How long a fetch waits for data on the broker.
    pub max_wait: Duration,
    /// Bytes per partition per fetch.
    pub partition_bytes_max: i32,
    /// Planted bug (simulator only): a partition whose fetch answers NOT_LEADER_OR_FOLLOWER
    /// is dropped from the assignment, as if it had been revoked, and never read again.
    #[cfg(feature = "planted-bugs")]
    pub planted_forget_on_not_leader: bool,
}

impl Consumer {
    /// A consumer with no assignment.
    #[must_use]
    pub fn new(client: Arc<Client>) -> Consumer {
        Consumer {
            client,
            positions: BTreeMap::new(),
            max_wait: Duration::from_millis(500),
            partition_bytes_max: 1 << 20,
            #[cfg(feature = "planted-bugs")]
            planted_forget_on_not_leader: false,
        }
    }

    /// Assigns `topic`/`partition`, starting at `offset`.
    pub fn assign(&mut self, topic: &str, partition: i32, offset: Offset) {
        self.positions.insert((topic.to_owned(), partition), offset);
    }

    /// The next offset to read from an assigned partition.
    #[must_use]
    pub fn position(&self, topic: &str, partition: i32) -> Option<Offset> {
        self.positions.get(&(topic.to_owned(), partition)).copied()
    }

    /// Moves an assigned partition to `offset`.
    pub fn seek(&mut self, topic: &str, partition: i32, offset: Offset) {
        self.assign(topic, partition, offset);
    }

    /// ListOffsets for one partition: -2 earliest, -1 latest, else the first offset with a
    /// timestamp at or after it (`None` if there is none).
    ///
    /// # Errors
    /// Broker and connection errors.
    pub async fn offset_for(
        &self,
        topic: &str,
        partition: i32,
        timestamp: i64,
    ) -> Result<Option<Offset>, ClientError> {
        let mut p = ListOffsetsPartition::default();
        p.partition_index = partition;
        p.timestamp = timestamp;
        p.current_leader_epoch = -1;
        let mut t = ListOffsetsTopic::default();
        t.name = TopicName(StrBytes::from_string(topic.to_owned()));
        t.partitions = vec![p];
        let mut req = ListOffsetsRequest::default();
        req.replica_id = BrokerId(-1);
        req.topics = vec![t];
        let conn = self.client.leader(topic, partition).await?;
        let resp = conn.call(&req).await?;
        let r = resp
            .topics
            .first()
            .and_then(|t| t.partitions.first())
            .ok_or_else(|| ClientError::Protocol("empty ListOffsets response".into()))?;
        if r.error_code != 0 {
            return Err(ClientError::Broker {
                api: "ListOffsets",
                code: r.error_code,
            });
        }
        Ok((r.offset >= 0).then_some(Offset(r.offset)))
    }

    /// Fetches once from every assigned partition and returns what arrived, in offset
    /// order per partition; positions advance past it, and only past what is returned.
    /// Cancellation safe: dropped before it returns, it moves no position.
    ///
    /// # Errors
    /// When nothing arrived: the first broker or connection error (OFFSET_OUT_OF_RANGE
    /// among them) or undecodable batch. When some partitions returned records, those are
    /// returned and the others' errors wait for the next poll (dropping them with the
    /// error would skip them: their positions have moved).
    pub async fn poll(&mut self) -> Result<Vec<ConsumerRecord>, ClientError> {
        let mut by_leader: BTreeMap<std::net::SocketAddr, Vec<(String, i32, Offset)>> =
            BTreeMap::new();
        let mut first_error = None;
        for ((topic, partition), offset) in &self.positions {
            // A partition without a reachable leader does not hold up the others.
            let conn = match self.client.leader(topic, *partition).await {
                Ok(c) => c,
                Err(e) => {
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            let addr = conn.addr();
            by_leader
                .entry(addr)
                .or_default()
                .push((topic.clone(), *partition, *offset));
        }
        let mut out = Vec::new();
        let mut moved = Vec::new();
        for (addr, parts) in by_leader {
            let mut topics: BTreeMap<String, Vec<FetchPartition>> = BTreeMap::new();
            for (topic, partition, offset) in &parts {
                let mut fp = FetchPartition::default();
                fp.partition = *partition;
                fp.fetch_offset = offset.0;
                fp.partition_max_bytes = self.partition_bytes_max;
                fp.current_leader_epoch = -1;
                fp.last_fetched_epoch = -1;
                fp.log_start_offset = -1;
                topics.entry(topic.clone()).or_default().push(fp);
            }
            let mut req = FetchRequest::default();
            req.replica_id = BrokerId(-1);
            req.max_wait_ms = i32::try_from(self.max_wait.as_millis()).unwrap_or(i32::MAX);
            req.min_bytes = 1;
            req.max_bytes = 64 << 20;
            req.session_epoch = -1;
            req.topics = topics
                .into_iter()
                .map(|(name, partitions)| {
                    let mut t = FetchTopic::default();
                    t.topic = TopicName(StrBytes::from_string(name));
                    t.partitions = partitions;
                    t
                })
                .collect();
            let conn = match self.client.conn(addr).await {
                Ok(c) => c,
                Err(e) => {
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            let resp = match conn.call(&req).await {
                Ok(r) => r,
                Err(e) => {
                    self.client.drop_conn(addr).await;
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            if resp.error_code != 0 {
                first_error.get_or_insert(ClientError::Broker {
                    api: "Fetch",
                    code: resp.error_code,
                });
                continue;
            }
            for t in resp.responses {
                let topic = t.topic.0.to_string();
                let shared_topic: Arc<str> = Arc::from(topic.as_str());
                for p in t.partitions {
                    if p.error_code != 0 {
                        if p.error_code == 6 || p.error_code == 3 {
                            self.client.invalidate(&topic).await;
                        }
                        #[cfg(feature = "planted-bugs")]
                        if self.planted_forget_on_not_leader && p.error_code == 6 {
                            self.positions.remove(&(topic.clone(), p.partition_index));
                        }
                        first_error.get_or_insert(ClientError::Broker {
                            api: "Fetch",
                            code: p.error_code,
                        });
                        continue;
                    }
                    let key = (topic.clone(), p.partition_index);
                    let Some(position) = self.positions.get(&key).copied() else {
                        continue;
                    };
                    let records = p.records.unwrap_or_default();
                    let mut next = position;
                    let mut rest = &records[..];
                    'batches: while !rest.is_empty() {
                        // A partial batch at the end of a fetch is normal: stop there.
                        let Ok((b, tail)) = RecordBatch::parse(rest) else {
                            break;
                        };
                        rest = tail;
                        if b.is_control() {
                            next = next.max(b.next_offset());
                            continue;
                        }
                        // Compressed batches are decompressed here, bounded by the fetch
                        // size times a generous ratio, so a bomb fails with a typed error.
                        let limit = usize::try_from(self.partition_bytes_max.max(1))
                            .unwrap_or(1 << 20)
                            .saturating_mul(64);
                        let bad = |e: lode_proto::batch::BatchError| {
                            ClientError::Protocol(format!("{topic}-{}: {e}", p.partition_index))
                        };
                        let buf = match b.decompressed_records(limit) {
                            Ok(std::borrow::Cow::Borrowed(section)) => records.slice_ref(section),
                            Ok(std::borrow::Cow::Owned(v)) => Bytes::from(v),
                            Err(e) => {
                                first_error.get_or_insert(bad(e));
                                break 'batches;
                            }
                        };
                        let recs = match b.records_in(&buf) {
                            Ok(r) => r,
                            Err(e) => {
                                first_error.get_or_insert(bad(e));
                                break 'batches;
                            }
                        };
                        let share = |s: &[u8]| buf.slice_ref(s);
                        // The batch's records are all returned or none: the position moves
                        // past whole batches only.
                        let mut batch_out = Vec::new();
                        for r in recs {
                            let r = match r {
                                Ok(r) => r,
                                Err(e) => {
                                    first_error.get_or_insert(ClientError::Protocol(e.to_string()));
                                    break 'batches;
                                }
                            };
                            let offset = b.base_offset().add(i64::from(r.offset_delta));
                            if offset < position {
                                continue;
                            }
                            batch_out.push(ConsumerRecord {
                                topic: Arc::clone(&shared_topic),
                                partition: p.partition_index,
                                offset,
                                timestamp_ms: if b.timestamp_type_log_append() {
                                    b.max_timestamp()
                                } else {
                                    b.base_timestamp().saturating_add(r.timestamp_delta)
                                },
                                key: r.key.map(share),
                                value: r.value.map(share),
                                headers: r
                                    .headers
                                    .iter()
                                    .map(|h| (share(h.key), h.value.map(share)))
                                    .collect(),
                            });
                        }
                        out.append(&mut batch_out);
                        next = next.max(b.next_offset());
                    }
                    moved.push((key, next));
                }
            }
        }
        // Positions move only here, with no await left: a poll dropped half-way (a caller's
        // timeout) moves nothing, so nothing it had fetched is skipped.
        for (key, next) in moved {
            self.positions.insert(key, next);
        }
        match first_error {
            Some(e) if out.is_empty() => Err(e),
            _ => Ok(out),
        }
    }
}

//! A batching producer: records accumulate per partition until the batch is full or has
//! lingered long enough, then go out as one RecordBatch v2. With idempotence on, batches
//! carry the producer id, epoch and per-partition sequence numbers, so a retry after a
//! lost response is recognised by the broker and never written twice; one batch per
//! partition is then in flight at a time, so retries never reorder records. Without
//! idempotence up to `in_flight_per_partition_max` batches of a partition are on the wire.
//! Each round the sender takes every due batch and sends one Produce per leader; requests
//! are pipelined on the connection.
//!
//! A record is encoded into its partition's open batch when it is sent (from borrowed
//! bytes with [`Producer::send_ref`]), and the records of a batch share one outcome: a
//! record costs no allocation of its own.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    InitProducerIdRequest, ProduceRequest, ProduceResponse, ProducerId, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use lode_env::Clock;
use lode_proto::batch::{Compression, RecordBatchBuilder};
use lode_proto::{Instant, Offset};
use tokio::sync::{Mutex, Notify, Semaphore};

use crate::{Client, ClientError, Connection};

/// One record to send.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// The key (decides the partition when none is given).
    pub key: Option<Vec<u8>>,
    /// The value.
    pub value: Option<Vec<u8>>,
    /// Headers, in order; keys may repeat.
    pub headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Create time; now if `None`.
    pub timestamp_ms: Option<i64>,
    /// The partition; by key hash (or round robin without a key) if `None`.
    pub partition: Option<i32>,
}

/// One record to send, borrowed: [`Producer::send_ref`] encodes it into its batch at once,
/// so the caller's buffers are free again when the call returns.
#[derive(Clone, Copy, Debug, Default)]
pub struct RecordRef<'a> {
    /// The key (decides the partition when none is given).
    pub key: Option<&'a [u8]>,
    /// The value.
    pub value: Option<&'a [u8]>,
    /// Headers, in order; keys may repeat.
    pub headers: &'a [(&'a [u8], Option<&'a [u8]>)],
    /// Create time; the time its batch opened if `None`.
    pub timestamp_ms: Option<i64>,
    /// The partition; by key hash (or round robin without a key) if `None`.
    pub partition: Option<i32>,
}

/// Producer settings.
#[derive(Clone, Debug)]
pub struct ProducerConfig {
    /// 0 (no response), 1 (leader wrote it) or -1 (all in-sync replicas have it).
    pub acks: i16,
    /// How long a batch waits for more records.
    pub linger: Duration,
    /// A batch is sent once it holds this many bytes of records.
    pub batch_bytes: usize,
    /// Idempotent producing (producer id and sequence numbers).
    pub idempotent: bool,
    /// Retries of a failed batch before its records fail.
    pub retries: u32,
    /// How long the broker may take to answer a Produce (sent as the request's
    /// `timeout_ms`). The producer itself waits this long plus
    /// [`REQUEST_TIMEOUT_MARGIN_PRODUCE`] for the answer, then breaks the connection and
    /// fails (or retries) the batch as unknown, as Kafka's `request.timeout.ms` does.
    pub request_timeout: Duration,
    /// Records buffered at most; `send` waits for room beyond it.
    pub buffered_records_max: usize,
    /// Compression of each batch's records.
    pub compression: Compression,
    /// Batches of one partition on the wire at once, without idempotence (with it, one:
    /// sequence numbers then keep order across retries). As in Kafka, more than one lets a
    /// retried batch land after a later one.
    pub in_flight_per_partition_max: usize,
}

/// How much longer than [`ProducerConfig::request_timeout`] the producer waits for an
/// answer, so that the broker's own `REQUEST_TIMED_OUT` (sent at the timeout) usually
/// arrives before the producer gives up on the connection.
pub const REQUEST_TIMEOUT_MARGIN_PRODUCE: Duration = Duration::from_secs(2);

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            acks: -1,
            linger: Duration::from_millis(5),
            batch_bytes: 256 * 1024,
            idempotent: true,
            retries: 5,
            request_timeout: Duration::from_secs(30),
            buffered_records_max: 100_000,
            compression: Compression::None,
            in_flight_per_partition_max: 5,
        }
    }
}

/// Where a record went: a future of its offset (-1 with acks=0), or of why it failed
/// ([`ClientError::Closed`] if the producer was dropped before its batch was answered).
/// The records of one batch share one outcome, so a record costs no allocation of its own.
#[must_use = "a delivery says whether the record was written"]
pub struct Delivery {
    outcome: Arc<Outcome>,
    /// The record's offset delta in its batch.
    index: u32,
}

impl Future for Delivery {
    type Output = Result<Offset, ClientError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.outcome.lock();
        match &state.result {
            Some(Ok(base)) if base.0 >= 0 => Poll::Ready(Ok(base.add(i64::from(self.index)))),
            Some(Ok(base)) => Poll::Ready(Ok(*base)),
            Some(Err(e)) => Poll::Ready(Err(copy_error(e))),
            None => {
                if !state.wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    state.wakers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

/// The outcome of one batch, shared by the deliveries of its records: the base offset or
/// the error, and the tasks waiting for it (one per delivery polled at most).
#[derive(Default)]
struct Outcome(std::sync::Mutex<OutcomeState>);

#[derive(Default)]
struct OutcomeState {
    result: Option<Result<Offset, ClientError>>,
    wakers: Vec<Waker>,
}

impl Outcome {
    fn lock(&self) -> std::sync::MutexGuard<'_, OutcomeState> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The producer's side of a batch's [`Outcome`]: settles it once; dropped unsettled (the
/// producer went away), it fails the deliveries with [`ClientError::Closed`].
struct Settle(Arc<Outcome>);

impl Settle {
    fn settle(self, result: Result<Offset, ClientError>) {
        self.set(result);
    }

    fn set(&self, result: Result<Offset, ClientError>) {
        let wakers = {
            let mut state = self.0.lock();
            if state.result.is_some() {
                return;
            }
            state.result = Some(result);
            std::mem::take(&mut state.wakers)
        };
        for w in wakers {
            w.wake();
        }
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        self.set(Err(ClientError::Closed));
    }
}

/// A batch filling up: its records are encoded as they are sent.
struct Pending {
    builder: RecordBatchBuilder,
    /// The base timestamp (the first record's, or the time the batch opened).
    base_ts: i64,
    records: usize,
    /// Its size as counted against [`ProducerConfig::batch_bytes`].
    bytes: usize,
    settle: Settle,
    created: Instant,
}

struct Inner {
    client: Arc<Client>,
    config: ProducerConfig,
    clock: Clock,
    /// Per topic and partition, batches waiting to be sent, oldest first; only the last one
    /// grows.
    accum: std::sync::Mutex<Accumulator>,
    buffered: AtomicU32,
    wake: Notify,
    room: Semaphore,
    drained: Notify,
    flush: AtomicBool,
    closed: AtomicBool,
    round_robin: AtomicU32,
    /// Producer id and epoch (-1 without idempotence). A batch whose outcome is unknown
    /// (it failed, but may have been appended) retires the id: its sequence numbers must
    /// never be reused, or the next batch would be taken for a retry of it.
    ids: std::sync::Mutex<(i64, i16)>,
    sequences: Mutex<BTreeMap<(String, i32), i32>>,
}

/// See the module documentation.
pub struct Producer {
    inner: Arc<Inner>,
}

/// Kafka's default partitioner hash (murmur2), so keys land where Java clients put them.
#[must_use]
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

fn record_bytes(r: &RecordRef<'_>) -> usize {
    16 + r.key.map_or(0, <[u8]>::len)
        + r.value.map_or(0, <[u8]>::len)
        + r.headers
            .iter()
            .map(|(k, v)| 4 + k.len() + v.map_or(0, <[u8]>::len))
            .sum::<usize>()
}

/// The batches of every partition: topic, then partition (ordered maps, so the sender's
/// rounds go in the same order in every run of a simulation).
#[derive(Default)]
struct Accumulator(BTreeMap<String, BTreeMap<i32, Queue>>);

impl Accumulator {
    fn queue(&mut self, topic: &str, partition: i32) -> &mut Queue {
        if !self.0.contains_key(topic) {
            self.0.insert(topic.to_owned(), BTreeMap::new());
        }
        self.0
            .get_mut(topic)
            .map(|t| t.entry(partition).or_default())
            .unwrap_or_else(|| unreachable!("inserted above"))
    }

    fn queues(&self) -> impl Iterator<Item = &Queue> {
        self.0.values().flat_map(BTreeMap::values)
    }

    /// Drops the queues with nothing waiting and nothing in flight.
    fn forget_idle(&mut self) {
        for t in self.0.values_mut() {
            t.retain(|_, q| !q.is_idle());
        }
        self.0.retain(|_, t| !t.is_empty());
    }
}

fn retriable(code: i16) -> bool {
    // NOT_LEADER_OR_FOLLOWER, LEADER_NOT_AVAILABLE, REQUEST_TIMED_OUT, NOT_ENOUGH_REPLICAS,
    // NOT_ENOUGH_REPLICAS_AFTER_APPEND, UNKNOWN_TOPIC_OR_PARTITION, KAFKA_STORAGE_ERROR.
    matches!(code, 3 | 5 | 6 | 7 | 19 | 20 | 56)
}

fn should_retry(e: &ClientError) -> bool {
    match e {
        ClientError::Broker { code, .. } => retriable(*code),
        ClientError::Io { .. } | ClientError::Timeout | ClientError::UnknownPartition(_) => true,
        _ => false,
    }
}

impl Producer {
    /// A producer on `client`; with idempotence, it first obtains a producer id.
    ///
    /// # Errors
    /// When InitProducerId fails.
    pub async fn new(client: Arc<Client>, config: ProducerConfig) -> Result<Producer, ClientError> {
        let (producer_id, producer_epoch) = if config.idempotent {
            init_producer_id(&client).await?
        } else {
            (-1, -1)
        };
        let inner = Arc::new(Inner {
            client,
            room: Semaphore::new(config.buffered_records_max),
            config,
            clock: Clock::system(),
            accum: std::sync::Mutex::new(Accumulator::default()),
            buffered: AtomicU32::new(0),
            wake: Notify::new(),
            drained: Notify::new(),
            flush: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            round_robin: AtomicU32::new(0),
            ids: std::sync::Mutex::new((producer_id, producer_epoch)),
            sequences: Mutex::new(BTreeMap::new()),
        });
        let sender = Arc::clone(&inner);
        lode_env::task::spawn(async move { sender.run().await });
        Ok(Producer { inner })
    }

    /// Queues `record` for `topic`; the returned [`Delivery`] yields its offset once
    /// acknowledged.
    ///
    /// # Errors
    /// Unknown topic, or a closed producer.
    pub async fn send(&self, topic: &str, record: Record) -> Result<Delivery, ClientError> {
        let headers: Vec<(&[u8], Option<&[u8]>)> = record
            .headers
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_deref()))
            .collect();
        self.send_ref(
            topic,
            RecordRef {
                key: record.key.as_deref(),
                value: record.value.as_deref(),
                headers: &headers,
                timestamp_ms: record.timestamp_ms,
                partition: record.partition,
            },
        )
        .await
    }

    /// Like [`Producer::send`], from borrowed bytes: the record is encoded into its
    /// partition's open batch before this returns, and nothing of it is kept.
    ///
    /// # Errors
    /// Unknown topic, or a closed producer.
    pub async fn send_ref(
        &self,
        topic: &str,
        record: RecordRef<'_>,
    ) -> Result<Delivery, ClientError> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(ClientError::Closed);
        }
        // Bounded buffer: a permit per record, returned when its batch completes.
        if inner.room.available_permits() == 0 {
            inner.wake.notify_one();
        }
        inner
            .room
            .acquire()
            .await
            .map_err(|_| ClientError::Closed)?
            .forget();
        let partitions = inner.client.partition_count(topic).await?;
        if partitions == 0 {
            inner.room.add_permits(1);
            return Err(ClientError::UnknownPartition(topic.to_owned()));
        }
        let n = i32::try_from(partitions).unwrap_or(i32::MAX);
        let partition = match (record.partition, record.key) {
            (Some(p), _) => p,
            (None, Some(k)) => (murmur2(k) & 0x7fff_ffff) % n,
            (None, None) => (inner.round_robin.fetch_add(1, Ordering::Relaxed) % n as u32) as i32,
        };
        let size = record_bytes(&record);
        let mut accum = inner
            .accum
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let queue = &mut accum.queue(topic, partition).batches;
        // A first batch for the partition starts a linger timer the sender must hear of.
        let first = queue.is_empty();
        // A record that would overflow the open batch starts the next one.
        let open = queue
            .back()
            .is_some_and(|b| b.bytes + size <= inner.config.batch_bytes || b.records == 0);
        if !open {
            let base_ts = record.timestamp_ms.unwrap_or_else(|| inner.clock.wall_ms());
            let mut builder = RecordBatchBuilder::new(Offset(0));
            builder
                .reserve(size.max(BATCH_RESERVE_BYTES.min(inner.config.batch_bytes)))
                .base_timestamp(base_ts)
                .compression(inner.config.compression);
            queue.push_back(Pending {
                builder,
                base_ts,
                records: 0,
                bytes: 0,
                settle: Settle(Arc::new(Outcome::default())),
                created: inner.clock.now(),
            });
        }
        let queued = queue.len();
        let Some(p) = queue.back_mut() else {
            return Err(ClientError::Closed);
        };
        let delta = record
            .timestamp_ms
            .map_or(0, |t| t.saturating_sub(p.base_ts));
        p.builder
            .push(record.key, record.value, record.headers, delta);
        let delivery = Delivery {
            outcome: Arc::clone(&p.settle.0),
            index: u32::try_from(p.records).unwrap_or(u32::MAX),
        };
        p.records += 1;
        p.bytes += size;
        let full = p.bytes >= inner.config.batch_bytes || queued > 1;
        // Counted under the accumulator's lock: the sender takes the record out under the
        // same lock and subtracts only after, so the count never underflows.
        inner.buffered.fetch_add(1, Ordering::AcqRel);
        drop(accum);
        if full || first {
            inner.wake.notify_one();
        }
        Ok(delivery)
    }

    /// Sends everything queued now and waits until it is acknowledged (or failed).
    pub async fn flush(&self) {
        loop {
            if self.inner.buffered.load(Ordering::Acquire) == 0 {
                return;
            }
            self.inner.flush.store(true, Ordering::Release);
            let drained = self.inner.drained.notified();
            self.inner.wake.notify_one();
            let _ = self
                .inner
                .clock
                .timeout(Duration::from_millis(50), drained)
                .await;
        }
    }

    /// Flushes and stops the sender.
    pub async fn close(self) {
        self.flush().await;
        self.inner.closed.store(true, Ordering::Release);
        self.inner.wake.notify_one();
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.wake.notify_one();
    }
}

/// A partition's batches: waiting ones, oldest first (only the last one grows), and how
/// many are on the wire (see [`ProducerConfig::in_flight_per_partition_max`]).
#[derive(Default)]
struct Queue {
    batches: VecDeque<Pending>,
    in_flight: usize,
}

impl Queue {
    fn is_idle(&self) -> bool {
        self.batches.is_empty() && self.in_flight == 0
    }
}

/// A batch on its way: where it goes, its records' outcome, and its bytes.
struct Outgoing {
    /// The producer id the batch was built with (-1 without idempotence).
    producer_id: i64,
    topic: String,
    partition: i32,
    records: usize,
    settle: Settle,
    batch: Result<Bytes, ClientError>,
}

/// The room a new batch reserves for its records (more when its first record is larger),
/// so that a batch grows by few copies without every partition's open batch holding
/// `batch_bytes`.
const BATCH_RESERVE_BYTES: usize = 64 * 1024;

impl Inner {
    /// The sender: each round takes the due batch of every partition with none in flight
    /// and sends them, one Produce request per leader, without waiting for the answers.
    async fn run(self: Arc<Self>) {
        loop {
            let next_due = {
                let accum = self.accum();
                accum
                    .queues()
                    .filter(|q| q.in_flight < self.in_flight_max())
                    .filter_map(|q| q.batches.front())
                    .map(|p| p.created.saturating_add(self.config.linger))
                    .min()
            };
            match next_due {
                Some(due) => {
                    // A batch already due goes at once: a zero timeout would still wait for
                    // the timer driver's next turn, which measured several milliseconds.
                    let left = due.saturating_since(self.clock.now());
                    if !left.is_zero() {
                        let _ = self.clock.timeout(left, self.wake.notified()).await;
                    }
                }
                None => {
                    if self.closed.load(Ordering::Acquire)
                        && self.buffered.load(Ordering::Acquire) == 0
                    {
                        return;
                    }
                    let _ = self
                        .clock
                        .timeout(Duration::from_millis(100), self.wake.notified())
                        .await;
                }
            }
            let flush = self.flush.load(Ordering::Acquire) || self.closed.load(Ordering::Acquire);
            let now = self.clock.now();
            let ready: Vec<((String, i32), Pending)> = {
                let mut accum = self.accum();
                let mut out = Vec::new();
                for (topic, queues) in &mut accum.0 {
                    for (&partition, queue) in queues.iter_mut() {
                        if queue.in_flight >= self.in_flight_max() {
                            continue;
                        }
                        let Some(front) = queue.batches.front() else {
                            continue;
                        };
                        let due = flush
                            || queue.batches.len() > 1
                            || front.bytes >= self.config.batch_bytes
                            || now.saturating_since(front.created) >= self.config.linger;
                        if due {
                            if let Some(p) = queue.batches.pop_front() {
                                queue.in_flight += 1;
                                out.push(((topic.clone(), partition), p));
                            }
                        }
                    }
                }
                accum.forget_idle();
                out
            };
            if ready.is_empty() {
                continue;
            }
            // One request per leader, carrying every partition it leads.
            let mut by_leader: BTreeMap<std::net::SocketAddr, (Arc<Connection>, Vec<Outgoing>)> =
                BTreeMap::new();
            let mut orphans = Vec::new();
            for ((topic, partition), pending) in ready {
                let out = self.outgoing(topic, partition, pending).await;
                match self.client.leader(&out.topic, out.partition).await {
                    Ok(conn) => by_leader
                        .entry(conn.addr())
                        .or_insert_with(|| (conn, Vec::new()))
                        .1
                        .push(out),
                    Err(e) => orphans.push((out, e)),
                }
            }
            for (_, (conn, batches)) in by_leader {
                let me = Arc::clone(&self);
                lode_env::task::spawn(async move { me.send_request(conn, batches).await });
            }
            for (out, e) in orphans {
                let me = Arc::clone(&self);
                lode_env::task::spawn(async move { me.retry_alone(out, e).await });
            }
        }
    }

    /// Starts over under `ids` (`(-1, -1)`: retired, none yet), every sequence at 0.
    async fn adopt_ids(&self, ids: (i64, i16)) {
        let mut seqs = self.sequences.lock().await;
        *self
            .ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = ids;
        seqs.clear();
    }

    fn ids(&self) -> (i64, i16) {
        *self
            .ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn accum(&self) -> std::sync::MutexGuard<'_, Accumulator> {
        self.accum
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn in_flight_max(&self) -> usize {
        if self.config.idempotent {
            1
        } else {
            self.config.in_flight_per_partition_max.max(1)
        }
    }

    /// The batch of `pending`, under the producer `ids` from `sequence` on.
    fn build(
        mut pending: RecordBatchBuilder,
        (producer_id, producer_epoch): (i64, i16),
        sequence: i32,
    ) -> Result<Vec<u8>, ClientError> {
        if producer_id >= 0 {
            pending.producer(producer_id, producer_epoch, sequence);
        }
        pending
            .try_finish()
            .map_err(|e| ClientError::Protocol(format!("building a batch: {e}")))
    }

    /// Builds the batch of `pending` with the partition's next sequence number.
    async fn outgoing(&self, topic: String, partition: i32, pending: Pending) -> Outgoing {
        let mut ids = self.ids();
        let mut no_id = None;
        if self.config.idempotent && ids.0 < 0 {
            // The id was retired and no new one came then: a batch goes only under a new one.
            match init_producer_id(&self.client).await {
                Ok(fresh) => {
                    self.adopt_ids(fresh).await;
                    ids = fresh;
                }
                Err(e) => no_id = Some(e),
            }
        }
        let sequence = if ids.0 >= 0 {
            *self
                .sequences
                .lock()
                .await
                .get(&(topic.clone(), partition))
                .unwrap_or(&0)
        } else {
            -1
        };
        let Pending {
            builder,
            records,
            settle,
            ..
        } = pending;
        let batch = match no_id {
            Some(e) => Err(e),
            None => Inner::build(builder, ids, sequence).map(Bytes::from),
        };
        Outgoing {
            producer_id: ids.0,
            topic,
            partition,
            records,
            settle,
            batch,
        }
    }

    fn request(&self, batches: &[&Outgoing]) -> ProduceRequest {
        let mut req = ProduceRequest::default();
        req.acks = self.config.acks;
        req.timeout_ms = i32::try_from(self.config.request_timeout.as_millis()).unwrap_or(i32::MAX);
        for out in batches {
            let Ok(batch) = &out.batch else { continue };
            let mut pd = PartitionProduceData::default();
            pd.index = out.partition;
            pd.records = Some(batch.clone());
            match req
                .topic_data
                .iter_mut()
                .find(|t| t.name.0.as_str() == out.topic)
            {
                Some(t) => t.partition_data.push(pd),
                None => {
                    let mut td = TopicProduceData::default();
                    td.name = TopicName(StrBytes::from_string(out.topic.clone()));
                    td.partition_data = vec![pd];
                    req.topic_data.push(td);
                }
            }
        }
        req
    }

    /// Sends one request with the batches of several partitions of one leader; a batch whose
    /// partition fails with a retriable error is retried on its own.
    async fn send_request(self: Arc<Self>, conn: Arc<Connection>, batches: Vec<Outgoing>) {
        let (built, broken): (Vec<Outgoing>, Vec<Outgoing>) =
            batches.into_iter().partition(|o| o.batch.is_ok());
        for out in broken {
            let e = match &out.batch {
                Err(e) => ClientError::Protocol(e.to_string()),
                Ok(_) => ClientError::Closed,
            };
            self.complete(out, Err(e)).await;
        }
        if built.is_empty() {
            return;
        }
        let req = self.request(&built.iter().collect::<Vec<_>>());
        let answers = self.exchange(&conn, &req).await;
        for out in built {
            let result = match &answers {
                Err(e) => Err(copy_error(e)),
                Ok(None) => Ok(Offset(-1)),
                Ok(Some(resp)) => partition_result(resp, &out.topic, out.partition),
            };
            match result {
                Err(e) if should_retry(&e) && self.config.retries > 0 => {
                    let me = Arc::clone(&self);
                    lode_env::task::spawn(async move { me.retry_alone(out, e).await });
                }
                other => {
                    if other.as_ref().is_err_and(should_retry) {
                        // Not retried here, but the next batch must find the new leader.
                        self.client.invalidate(&out.topic).await;
                    }
                    self.complete(out, other).await;
                }
            }
        }
    }

    /// Retries one batch alone after `first` failed it, up to the configured retries.
    async fn retry_alone(self: Arc<Self>, out: Outgoing, first: ClientError) {
        let mut error = first;
        let mut attempt = 0;
        let result = loop {
            if attempt >= self.config.retries || !should_retry(&error) {
                break Err(error);
            }
            attempt += 1;
            tracing::debug!(
                topic = out.topic,
                partition = out.partition,
                attempt,
                error = %error,
                "produce retry"
            );
            self.client.invalidate(&out.topic).await;
            self.clock
                .sleep(Duration::from_millis(50 * u64::from(attempt)))
                .await;
            let conn = match self.client.leader(&out.topic, out.partition).await {
                Ok(c) => c,
                Err(e) => {
                    error = e;
                    continue;
                }
            };
            let req = self.request(&[&out]);
            let r = match self.exchange(&conn, &req).await {
                Err(e) => Err(e),
                Ok(None) => Ok(Offset(-1)),
                Ok(Some(resp)) => partition_result(&resp, &out.topic, out.partition),
            };
            match r {
                Ok(base) => break Ok(base),
                Err(e) => error = e,
            }
        };
        self.complete(out, result).await;
    }

    /// One Produce exchange; `None` for acks=0, which has no response.
    async fn exchange(
        &self,
        conn: &Connection,
        req: &ProduceRequest,
    ) -> Result<Option<ProduceResponse>, ClientError> {
        let r = if req.acks == 0 {
            conn.send_only(req).await.map(|()| None)
        } else {
            conn.call_within(
                req,
                self.config.request_timeout + REQUEST_TIMEOUT_MARGIN_PRODUCE,
            )
            .await
            .map(Some)
        };
        if r.is_err() && conn.is_broken() {
            self.client.drop_conn(conn.addr()).await;
        }
        r
    }

    /// Ends a batch: advances the partition's sequence on success, answers every record,
    /// frees the partition for its next batch and the buffer for more records.
    async fn complete(&self, out: Outgoing, result: Result<Offset, ClientError>) {
        let count = i32::try_from(out.records).unwrap_or(i32::MAX);
        let key = (out.topic, out.partition);
        let current = out.producer_id >= 0 && out.producer_id == self.ids().0;
        if current && result.is_ok() {
            let mut seqs = self.sequences.lock().await;
            let s = seqs.entry(key.clone()).or_insert(0);
            *s = s.wrapping_add(count) & i32::MAX;
        } else if current {
            // Unknown outcome: start over under a new producer id, every sequence at 0. The
            // old id is retired even if no new one comes: a next batch under it would reuse
            // the failed batch's sequence and, had that one been appended, be answered as
            // its duplicate without being written.
            let mut fresh = Err(ClientError::Closed);
            for attempt in 0..5_u32 {
                fresh = init_producer_id(&self.client).await;
                if fresh.is_ok() {
                    break;
                }
                self.clock
                    .sleep(Duration::from_millis(100 * u64::from(attempt + 1)))
                    .await;
            }
            if let Err(e) = &fresh {
                tracing::warn!(error = %e, "no new producer id after a failed batch");
            }
            self.adopt_ids(fresh.unwrap_or((-1, -1))).await;
        }
        out.settle.settle(result);
        {
            let mut accum = self.accum();
            let (topic, partition) = &key;
            if let Some(queues) = accum.0.get_mut(topic) {
                if let Some(q) = queues.get_mut(partition) {
                    q.in_flight = q.in_flight.saturating_sub(1);
                    if q.is_idle() {
                        queues.remove(partition);
                    }
                }
                if queues.is_empty() {
                    accum.0.remove(topic);
                }
            }
        }
        self.buffered
            .fetch_sub(u32::try_from(out.records).unwrap_or(0), Ordering::AcqRel);
        self.room.add_permits(out.records);
        if self.buffered.load(Ordering::Acquire) == 0 {
            self.flush.store(false, Ordering::Release);
            self.drained.notify_waiters();
        }
        // The partition may have its next batch waiting.
        self.wake.notify_one();
    }
}

/// Asks any broker for a new producer id and epoch.
async fn init_producer_id(client: &Client) -> Result<(i64, i16), ClientError> {
    let mut req = InitProducerIdRequest::default();
    req.transactional_id = None;
    req.transaction_timeout_ms = -1;
    req.producer_id = ProducerId(-1);
    req.producer_epoch = -1;
    let conn = client.any_broker().await?;
    let resp = conn.call(&req).await?;
    if resp.error_code != 0 {
        return Err(ClientError::Broker {
            api: "InitProducerId",
            code: resp.error_code,
        });
    }
    Ok((resp.producer_id.0, resp.producer_epoch))
}

/// A copy of an error for each record of a failed batch.
fn copy_error(e: &ClientError) -> ClientError {
    match e {
        ClientError::Broker { api, code } => ClientError::Broker { api, code: *code },
        ClientError::Timeout => ClientError::Timeout,
        ClientError::Closed => ClientError::Closed,
        ClientError::UnknownPartition(s) => ClientError::UnknownPartition(s.clone()),
        ClientError::Io { addr, source } => ClientError::Io {
            addr: *addr,
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        other => ClientError::Protocol(other.to_string()),
    }
}

/// The outcome for one partition in a Produce response.
fn partition_result(
    resp: &ProduceResponse,
    topic: &str,
    partition: i32,
) -> Result<Offset, ClientError> {
    let p = resp
        .responses
        .iter()
        .filter(|t| t.name.0.as_str() == topic)
        .flat_map(|t| t.partition_responses.iter())
        .find(|p| p.index == partition)
        .ok_or_else(|| {
            ClientError::Protocol(format!("Produce response without {topic}-{partition}"))
        })?;
    match p.error_code {
        0 => Ok(Offset(p.base_offset)),
        code => Err(ClientError::Broker {
            api: "Produce",
            code,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use std::future::Future;
    use std::pin::pin;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::{Context, Poll, Wake, Waker};

    use super::{murmur2, ClientError, Delivery, Offset, Outcome, Settle};

    /// A waker that records that it was woken.
    struct Woken(AtomicBool);

    impl Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn batch_of(records: u32) -> (Settle, Vec<Delivery>) {
        let outcome = Arc::new(Outcome::default());
        let deliveries = (0..records)
            .map(|index| Delivery {
                outcome: Arc::clone(&outcome),
                index,
            })
            .collect();
        (Settle(outcome), deliveries)
    }

    #[tokio::test]
    async fn the_records_of_a_batch_share_its_outcome() {
        let (settle, mut deliveries) = batch_of(3);
        // One delivery is polled before the answer comes: it must be woken.
        let woken = Arc::new(Woken(AtomicBool::new(false)));
        let waker = Waker::from(Arc::clone(&woken));
        let mut cx = Context::from_waker(&waker);
        let mut last = pin!(deliveries.pop().unwrap());
        assert!(last.as_mut().poll(&mut cx).is_pending());
        assert!(!woken.0.load(Ordering::SeqCst));
        settle.settle(Ok(Offset(40)));
        assert!(woken.0.load(Ordering::SeqCst));
        assert!(matches!(last.poll(&mut cx), Poll::Ready(Ok(Offset(42)))));
        let offsets: Vec<Offset> = futures_offsets(deliveries).await;
        assert_eq!(offsets, vec![Offset(40), Offset(41)]);

        // acks=0: every record reports -1.
        let (settle, deliveries) = batch_of(2);
        settle.settle(Ok(Offset(-1)));
        assert_eq!(futures_offsets(deliveries).await, vec![Offset(-1); 2]);

        // A failed batch fails every record with its error.
        let (settle, deliveries) = batch_of(2);
        settle.settle(Err(ClientError::Broker {
            api: "Produce",
            code: 19,
        }));
        for d in deliveries {
            assert!(matches!(d.await, Err(ClientError::Broker { code: 19, .. })));
        }
    }

    #[tokio::test]
    async fn a_batch_dropped_unanswered_fails_its_records_as_closed() {
        let (settle, deliveries) = batch_of(2);
        drop(settle);
        for d in deliveries {
            assert!(matches!(d.await, Err(ClientError::Closed)));
        }
    }

    async fn futures_offsets(deliveries: Vec<Delivery>) -> Vec<Offset> {
        let mut out = Vec::new();
        for d in deliveries {
            out.push(d.await.unwrap());
        }
        out
    }

    #[test]
    fn murmur2_matches_kafka() {
        // The same values Kafka's Java partitioner and kafka-python's murmur2 give.
        assert_eq!(murmur2(b"21"), -973_932_308);
        assert_eq!(murmur2(b"foobar"), -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985_981_536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1_486_304_829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
            -58_897_971
        );
        assert_eq!(murmur2(b"abc"), 479_470_107);
    }
}

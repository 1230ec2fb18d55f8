//! One connection to one broker: framing, correlation ids, version negotiation and
//! pipelining.
//!
//! Requests are written under a lock, in the order callers take it, and each waits for its
//! own response: up to [`IN_FLIGHT_MAX`] requests are on the wire at once. A reader task
//! hands responses out in order (Kafka answers a connection's requests in the order they
//! came), checking each correlation id. After any IO or framing error the connection is
//! broken: every waiting and later call fails, and the [`Client`](crate::Client) drops it.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use lode_env::net::Stream;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::ClientError;

/// The highest version of each API this client speaks.
const OURS: &[(ApiKey, i16)] = &[
    (ApiKey::Produce, 9),
    (ApiKey::Fetch, 12),
    (ApiKey::ListOffsets, 7),
    (ApiKey::Metadata, 12),
    (ApiKey::ApiVersions, 3),
    (ApiKey::CreateTopics, 7),
    (ApiKey::DeleteTopics, 6),
    (ApiKey::InitProducerId, 4),
    (ApiKey::FindCoordinator, 3),
    (ApiKey::JoinGroup, 7),
    (ApiKey::SyncGroup, 5),
    (ApiKey::Heartbeat, 4),
    (ApiKey::LeaveGroup, 5),
    (ApiKey::OffsetCommit, 8),
    (ApiKey::OffsetFetch, 7),
    (ApiKey::ListGroups, 4),
    (ApiKey::DescribeGroups, 5),
];

/// Largest response frame accepted.
const RESPONSE_BYTES_MAX: usize = 256 << 20;

/// Requests awaiting their responses on one connection, at most.
pub const IN_FLIGHT_MAX: usize = 32;

/// A request on the wire, waiting for its response.
struct Waiter {
    correlation: i32,
    tx: oneshot::Sender<Result<Bytes, ClientError>>,
    _permit: OwnedSemaphorePermit,
}

type Waiters = Arc<std::sync::Mutex<VecDeque<Waiter>>>;

struct Writer {
    half: WriteHalf<Stream>,
    next_correlation: i32,
}

/// How long a request may wait for its answer (Kafka's `request.timeout.ms` is 30 s; a
/// broker may hold a Produce or Fetch that long itself).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(35);
/// How long the ApiVersions exchange that opens a connection may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to one broker, with the versions both sides speak.
pub struct Connection {
    addr: SocketAddr,
    client_id: StrBytes,
    versions: BTreeMap<i16, i16>,
    writer: tokio::sync::Mutex<Writer>,
    waiters: Waiters,
    in_flight: Arc<Semaphore>,
    broken: Arc<AtomicBool>,
    /// Dropped with the connection, which stops the reader task.
    _stop_reader: oneshot::Sender<()>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("addr", &self.addr)
            .field("broken", &self.broken.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Marks the connection broken unless disarmed: a write cancelled half way leaves a partial
/// frame on the wire, after which nothing more may be sent.
struct BreakOnDrop<'a>(&'a AtomicBool, bool);

impl Drop for BreakOnDrop<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.store(true, Ordering::Release);
        }
    }
}

fn take_waiter(waiters: &Waiters) -> Option<Waiter> {
    waiters
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .pop_front()
}

fn fail_all(waiters: &Waiters, addr: SocketAddr, why: &str) {
    while let Some(w) = take_waiter(waiters) {
        let _ = w.tx.send(Err(ClientError::Io {
            addr,
            source: std::io::Error::new(std::io::ErrorKind::ConnectionAborted, why.to_owned()),
        }));
    }
}

async fn reader(
    mut half: ReadHalf<Stream>,
    addr: SocketAddr,
    waiters: Waiters,
    broken: Arc<AtomicBool>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut buf = BytesMut::with_capacity(64 << 10);
    let why = loop {
        let frame = tokio::select! {
            // Biased: a random branch order would be a source of nondeterminism in simulation.
            biased;
            f = lode_env::net::read_frame(&mut half, &mut buf, 0, RESPONSE_BYTES_MAX) => f,
            _ = &mut stop => break "connection closed".to_owned(),
        };
        let body = match frame {
            Ok(Some(body)) => body,
            Ok(None) => break "closed by the broker".to_owned(),
            Err(e) => break e.to_string(),
        };
        let Some(w) = take_waiter(&waiters) else {
            break "a response nobody asked for".to_owned();
        };
        // The correlation id leads every response header version.
        let correlation = body
            .get(..4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        if correlation != Some(w.correlation) {
            let _ = w.tx.send(Err(ClientError::Protocol(format!(
                "correlation {correlation:?} for request {}",
                w.correlation
            ))));
            break "correlation mismatch".to_owned();
        }
        let _ = w.tx.send(Ok(body));
    };
    broken.store(true, Ordering::Release);
    tracing::debug!(%addr, why, "connection reader stopped");
    fail_all(&waiters, addr, &why);
}

impl Connection {
    /// Connects and negotiates versions with ApiVersions.
    ///
    /// # Errors
    /// When the connection or the negotiation fails.
    pub async fn connect(addr: SocketAddr, client_id: &str) -> Result<Connection, ClientError> {
        let stream = lode_env::net::connect(addr)
            .await
            .map_err(|e| ClientError::Io { addr, source: e })?;
        let (read, write) = tokio::io::split(stream);
        let waiters: Waiters = Arc::default();
        let broken = Arc::new(AtomicBool::new(false));
        let (stop_tx, stop_rx) = oneshot::channel();
        lode_env::task::spawn(reader(
            read,
            addr,
            Arc::clone(&waiters),
            Arc::clone(&broken),
            stop_rx,
        ));
        let mut c = Connection {
            addr,
            client_id: StrBytes::from_string(client_id.to_owned()),
            versions: BTreeMap::new(),
            writer: tokio::sync::Mutex::new(Writer {
                half: write,
                next_correlation: 0,
            }),
            waiters,
            in_flight: Arc::new(Semaphore::new(IN_FLIGHT_MAX)),
            broken,
            _stop_reader: stop_tx,
        };
        let resp: ApiVersionsResponse = c
            .call_at(&ApiVersionsRequest::default(), 0, HANDSHAKE_TIMEOUT)
            .await?;
        if resp.error_code != 0 {
            return Err(ClientError::Broker {
                api: "ApiVersions",
                code: resp.error_code,
            });
        }
        for (key, ours) in OURS {
            if let Some(theirs) = resp.api_keys.iter().find(|k| k.api_key == *key as i16) {
                let v = (*ours).min(theirs.max_version);
                if v >= theirs.min_version {
                    c.versions.insert(*key as i16, v);
                }
            }
        }
        Ok(c)
    }

    /// The broker's address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether an error has ended this connection.
    #[must_use]
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    /// The version of `R` this connection speaks (the highest both sides know).
    ///
    /// # Errors
    /// [`ClientError::Unsupported`] when the broker does not speak `R`.
    pub fn version_of<R: Request>(&self) -> Result<i16, ClientError> {
        self.versions
            .get(&R::KEY)
            .copied()
            .ok_or(ClientError::Unsupported(R::KEY))
    }

    fn io_error(&self, e: std::io::Error) -> ClientError {
        self.broken.store(true, Ordering::Release);
        ClientError::Io {
            addr: self.addr,
            source: e,
        }
    }

    fn frame<R: Request>(
        &self,
        req: &R,
        version: i16,
        correlation: i32,
    ) -> Result<Bytes, ClientError> {
        let key = ApiKey::try_from(R::KEY).map_err(|()| ClientError::Unsupported(R::KEY))?;
        let mut header = RequestHeader::default();
        header.request_api_key = R::KEY;
        header.request_api_version = version;
        header.correlation_id = correlation;
        header.client_id = Some(self.client_id.clone());
        let header_version = key.request_header_version(version);
        // Sized up front: a produce request carries whole batches, and growing the buffer
        // would copy them again.
        let size = header
            .compute_size(header_version)
            .and_then(|h| req.compute_size(version).map(|b| h + b))
            .map_err(ClientError::encode)?;
        let mut buf = BytesMut::with_capacity(4 + size);
        buf.put_i32(0);
        header
            .encode(&mut buf, header_version)
            .map_err(ClientError::encode)?;
        req.encode(&mut buf, version).map_err(ClientError::encode)?;
        let len = i32::try_from(buf.len() - 4)
            .map_err(|_| ClientError::Protocol("request too large".into()))?;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        Ok(buf.freeze())
    }

    /// Writes `req`; with `expect_response`, registers a waiter for its answer in the same
    /// order as the write.
    async fn write<R: Request>(
        &self,
        req: &R,
        version: i16,
        expect_response: bool,
    ) -> Result<Option<oneshot::Receiver<Result<Bytes, ClientError>>>, ClientError> {
        if self.is_broken() {
            return Err(self.io_error(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "connection broken by an earlier error",
            )));
        }
        let permit = Arc::clone(&self.in_flight)
            .acquire_owned()
            .await
            .map_err(|_| ClientError::Closed)?;
        let mut w = self.writer.lock().await;
        if self.is_broken() {
            return Err(self.io_error(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "connection broken by an earlier error",
            )));
        }
        w.next_correlation = w.next_correlation.wrapping_add(1);
        let correlation = w.next_correlation;
        let bytes = self.frame(req, version, correlation)?;
        let rx = if expect_response {
            let (tx, rx) = oneshot::channel();
            self.waiters
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push_back(Waiter {
                    correlation,
                    tx,
                    _permit: permit,
                });
            Some(rx)
        } else {
            None
        };
        let mut guard = BreakOnDrop(&self.broken, true);
        let written = async {
            w.half.write_all(&bytes).await?;
            w.half.flush().await
        }
        .await;
        guard.1 = false;
        written.map_err(|e| self.io_error(e))?;
        Ok(rx)
    }

    /// Sends `req` at the negotiated version and waits for its response. Calls from many
    /// tasks share the connection: their requests are pipelined.
    ///
    /// # Errors
    /// IO, protocol and decoding errors. The connection is broken after an IO or framing
    /// error and should be dropped.
    pub async fn call<R: Request>(&self, req: &R) -> Result<R::Response, ClientError> {
        let version = self.version_of::<R>()?;
        self.call_at(req, version, REQUEST_TIMEOUT).await
    }

    /// Like [`Connection::call`], giving up (and breaking the connection) after `timeout`.
    ///
    /// # Errors
    /// As `call`, and [`ClientError::Timeout`].
    pub async fn call_within<R: Request>(
        &self,
        req: &R,
        timeout: Duration,
    ) -> Result<R::Response, ClientError> {
        let version = self.version_of::<R>()?;
        self.call_at(req, version, timeout).await
    }

    /// Sends `req` expecting no response (Produce with acks=0).
    ///
    /// # Errors
    /// IO errors.
    pub async fn send_only<R: Request>(&self, req: &R) -> Result<(), ClientError> {
        let version = self.version_of::<R>()?;
        self.write(req, version, false).await.map(|_| ())
    }

    async fn call_at<R: Request>(
        &self,
        req: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<R::Response, ClientError> {
        let key = ApiKey::try_from(R::KEY).map_err(|()| ClientError::Unsupported(R::KEY))?;
        let Some(rx) = self.write(req, version, true).await? else {
            return Err(ClientError::Protocol("no response waiter".into()));
        };
        // A broker whose process is stopped still accepts connections (the kernel does) but
        // never answers: without a deadline the caller would wait forever. Responses come
        // in order, so a connection with a lost answer is unusable: it is broken.
        let answer = match lode_env::Clock::system().timeout(timeout, rx).await {
            Ok(a) => a,
            Err(_) => {
                self.broken.store(true, Ordering::Release);
                return Err(ClientError::Timeout);
            }
        };
        let mut buf = answer.map_err(|_| ClientError::Closed)??;
        ResponseHeader::decode(&mut buf, key.response_header_version(version))
            .map_err(ClientError::decode)?;
        let resp = R::Response::decode(&mut buf, version).map_err(ClientError::decode)?;
        if buf.has_remaining() {
            tracing::debug!(bytes = buf.remaining(), "trailing bytes in response");
        }
        Ok(resp)
    }
}

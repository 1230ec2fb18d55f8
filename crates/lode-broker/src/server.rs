//! The Kafka protocol server: accepts connections, reads length-prefixed frames, decodes
//! request headers, dispatches on API key and version, and writes responses in request
//! order (one request at a time per connection, as Kafka processes them).
//!
//! Bad input never takes the broker down: an oversized frame length closes the connection
//! before anything is allocated for it; an unknown API key, an unsupported version or an
//! undecodable request closes that connection (after answering, where the protocol allows:
//! ApiVersions with an unknown version gets the KIP-511 answer); a client that stalls
//! mid-frame is cut off after the frame timeout.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};
use lode_env::net::{Listener, Stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::codes;
use crate::handlers;
use crate::Broker;

/// The versions this broker speaks, per API key. Produce advertises 0-2 although only 3+
/// (RecordBatch v2) is accepted: older librdkafka enables compression only when Produce v0
/// is in range, and Kafka 4 does the same.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 0, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 7),
    (ApiKey::FindCoordinator, 0, 3),
    (ApiKey::JoinGroup, 0, 7),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::DeleteGroups, 0, 2),
];

fn supported(key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|(_, lo, hi)| (*lo, *hi))
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The socket failed or closed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The client sent something it must not.
    #[error("protocol: {0}")]
    Protocol(String),
    /// Idle or stalled past the limit.
    #[error("timed out: {0}")]
    Timeout(&'static str),
}

/// Accepts connections until the listener fails.
pub async fn serve(broker: Arc<Broker>, listener: Listener) {
    let slots = Arc::new(Semaphore::new(broker.config.connections_max));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                broker
                    .clock
                    .sleep(std::time::Duration::from_millis(50))
                    .await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(%peer, "too many connections; closing");
            continue;
        };
        let b = Arc::clone(&broker);
        lode_env::task::spawn(async move {
            let span = tracing::info_span!("connection", %peer);
            let _enter = span.enter();
            drop(_enter);
            match connection(b, stream).await {
                Ok(()) => tracing::debug!(%peer, "connection closed"),
                Err(e) => tracing::info!(%peer, error = %e, "connection ended"),
            }
            drop(permit);
        });
    }
}

/// Reads the next request frame, keeping bytes already read past it in `buf` (pipelined
/// requests): one read call takes in as much as the socket has, and no buffer is zeroed
/// first. `None` at a clean end of stream between frames.
async fn read_frame(
    broker: &Broker,
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> Result<Option<Bytes>, ConnectionError> {
    let max = broker.config.frame_bytes_max;
    loop {
        let need = match lode_env::net::take_frame(buf, 8, max) {
            Ok(Ok(frame)) => return Ok(Some(frame)),
            Ok(Err(need)) => need,
            Err(e) => {
                return Err(ConnectionError::Protocol(format!("{e}: allowed 8..={max}")));
            }
        };
        // Room for the rest of this frame (its length is checked above, so never more
        // than the maximum) or, between frames, a read's worth.
        buf.reserve(
            need.saturating_sub(buf.len())
                .max(if buf.is_empty() { 64 << 10 } else { 0 }),
        );
        // Waiting for the next request is bounded by the idle timeout; the rest of a frame,
        // once started, by one frame timeout for all the reads it takes.
        let (limit, what) = if buf.is_empty() {
            (broker.config.idle_timeout, "idle")
        } else {
            (broker.config.frame_timeout, "stalled mid-frame")
        };
        let filled = broker
            .clock
            .timeout(limit, async {
                loop {
                    let n = stream.read_buf(buf).await?;
                    if n == 0 || buf.len() >= need {
                        return Ok::<usize, std::io::Error>(n);
                    }
                }
            })
            .await;
        match filled {
            Err(_) => return Err(ConnectionError::Timeout(what)),
            Ok(Ok(0)) if buf.is_empty() => return Ok(None),
            Ok(Ok(0)) => {
                return Err(ConnectionError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed mid-frame",
                )))
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof && buf.is_empty() => {
                return Ok(None)
            }
            Ok(Err(e)) => return Err(e.into()),
        }
    }
}

/// Serves one connection, one request at a time.
async fn connection(broker: Arc<Broker>, mut stream: Stream) -> Result<(), ConnectionError> {
    let mut buf = BytesMut::new();
    while let Some(frame) = read_frame(&broker, &mut stream, &mut buf).await? {
        let reply = handle_frame(&broker, frame).await?;
        if let Some(bytes) = reply {
            stream.write_all(&bytes).await?;
            stream.flush().await?;
        }
    }
    Ok(())
}

/// Encodes a response frame: length, header, body.
pub(crate) fn encode_response<R: Encodable>(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
) -> Result<Bytes, ConnectionError> {
    let header_version = key.response_header_version(version);
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    // Sized up front: a fetch response carries whole batches, and growing the buffer
    // would copy them again.
    let size = header
        .compute_size(header_version)
        .and_then(|h| body.compute_size(version).map(|b| h + b))
        .unwrap_or(64);
    let mut buf = BytesMut::with_capacity(4 + size);
    buf.put_i32(0);
    header
        .encode(&mut buf, header_version)
        .map_err(|e| ConnectionError::Protocol(format!("encode header: {e}")))?;
    body.encode(&mut buf, version)
        .map_err(|e| ConnectionError::Protocol(format!("encode {key:?} v{version}: {e}")))?;
    let len = i32::try_from(buf.len() - 4)
        .map_err(|_| ConnectionError::Protocol("response too large".into()))?;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

fn api_versions_body(error_code: i16) -> ApiVersionsResponse {
    let mut r = ApiVersionsResponse::default();
    r.error_code = error_code;
    r.api_keys = SUPPORTED
        .iter()
        .map(|(k, lo, hi)| {
            let mut v = ApiVersion::default();
            v.api_key = *k as i16;
            v.min_version = *lo;
            v.max_version = *hi;
            v
        })
        .collect();
    r
}

/// A request frame, parsed.
#[derive(Debug)]
pub enum Parsed {
    /// An ApiVersions request at a version this broker does not know: answer KIP-511 style.
    UnknownApiVersionsVersion {
        /// To echo.
        correlation_id: i32,
    },
    /// A request to serve.
    Request {
        /// The API.
        key: ApiKey,
        /// Its version.
        version: i16,
        /// To echo.
        correlation_id: i32,
        /// The client's id, for logs.
        client_id: String,
        /// The decoded body (boxed: the variants differ a lot in size).
        body: Box<handlers::RequestBody>,
    },
}

/// Parses a request frame (without its length prefix): header, version checks, body.
///
/// # Errors
/// [`ConnectionError::Protocol`] for anything the connection must be closed for.
pub fn parse_frame(frame: Bytes) -> Result<Parsed, ConnectionError> {
    if frame.len() < 8 {
        return Err(ConnectionError::Protocol(format!(
            "frame of {} bytes has no header",
            frame.len()
        )));
    }
    let mut peek = frame.clone();
    let key_raw = peek.get_i16();
    let version = peek.get_i16();
    let correlation_id = peek.get_i32();
    let Ok(key) = ApiKey::try_from(key_raw) else {
        return Err(ConnectionError::Protocol(format!(
            "unknown API key {key_raw}"
        )));
    };
    let Some((lo, hi)) = supported(key) else {
        return Err(ConnectionError::Protocol(format!(
            "unsupported API {key:?}"
        )));
    };
    if key == ApiKey::ApiVersions && !(lo..=hi).contains(&version) {
        return Ok(Parsed::UnknownApiVersionsVersion { correlation_id });
    }
    if !(lo..=hi).contains(&version) {
        return Err(ConnectionError::Protocol(format!(
            "{key:?} v{version} outside {lo}..={hi}"
        )));
    }
    let mut buf = frame;
    let header = RequestHeader::decode(&mut buf, key.request_header_version(version))
        .map_err(|e| ConnectionError::Protocol(format!("bad request header: {e}")))?;
    let client_id = header
        .client_id
        .as_ref()
        .map(|c| c.to_string())
        .unwrap_or_default();
    if !(key == ApiKey::Produce && version < 3) {
        // kafka-protocol sizes arrays from the wire before reading them: reject any length
        // the body cannot hold before it gets the chance to allocate for it.
        match crate::wire_check::check_request(key as i16, version, &buf) {
            Ok(()) => {}
            // Kafka's own parser ignores bytes after the last field, and librdkafka sends
            // some (Metadata v12); they cannot make anything allocate, so tolerate them.
            Err(crate::wire_check::WireError::TrailingBytes { count }) => {
                tracing::debug!(
                    ?key,
                    version,
                    count,
                    "trailing bytes after the request body ignored"
                );
            }
            Err(e) => {
                return Err(ConnectionError::Protocol(format!(
                    "{key:?} v{version}: {e}"
                )))
            }
        }
    }
    let body = Box::new(handlers::decode_body(key, version, buf)?);
    Ok(Parsed::Request {
        key,
        version,
        correlation_id,
        client_id,
        body,
    })
}

/// Handles one request frame; `None` means no response is sent (acks=0 Produce).
async fn handle_frame(
    broker: &Arc<Broker>,
    frame: Bytes,
) -> Result<Option<Bytes>, ConnectionError> {
    match parse_frame(frame)? {
        Parsed::UnknownApiVersionsVersion { correlation_id } => {
            // KIP-511: answer an unknown ApiVersions version with a v0 body carrying
            // UNSUPPORTED_VERSION and our ranges, so the client can retry with one we know.
            tracing::debug!("ApiVersions version unsupported; answering with v0");
            let body = api_versions_body(codes::UNSUPPORTED_VERSION);
            encode_response(ApiKey::ApiVersions, 0, correlation_id, &body).map(Some)
        }
        Parsed::Request {
            key,
            version,
            correlation_id,
            client_id,
            body,
        } => {
            let span = tracing::debug_span!("request", api = ?key, version, correlation_id, client = %client_id);
            let _e = span.enter();
            drop(_e);
            handlers::dispatch(broker, key, version, correlation_id, &client_id, *body).await
        }
    }
}

/// Entry points for the fuzz targets in `fuzz/` and the tests that replay their corpora.
#[doc(hidden)]
pub mod fuzzing {
    /// Parses `data` as a request frame exactly as a connection does. Must never panic or
    /// allocate without bound.
    pub fn request_frame(data: &[u8]) {
        let _ = super::parse_frame(bytes::Bytes::copy_from_slice(data));
    }
}

/// The ApiVersions answer for a supported version.
pub(crate) fn api_versions_response() -> ApiVersionsResponse {
    api_versions_body(codes::NONE)
}

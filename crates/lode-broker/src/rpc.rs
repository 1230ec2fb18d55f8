//! Internal RPC between brokers and controllers: serde + postcard frames over lode-env
//! streams.
//!
//! A frame is `[length u32][version u8][postcard body]`; the length counts the version byte
//! and the body and is bounded. Messages
//! are one-way (a Raft response is a message of its own), so a sender never waits for a
//! peer: [`Peer::send`] connects on demand (opening with the caller's hello frame), gives up on a peer that does not accept or take
//! a frame within the timeout, and reconnects on the next send after a pause.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use lode_env::net::Stream;
use lode_env::Clock;
use lode_proto::{BrokerId, Instant};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

/// The frame format version this build speaks.
pub const RPC_VERSION: u8 = 1;
/// Largest frame accepted.
pub const FRAME_BYTES_MAX: usize = 64 << 20;

/// Why an internal RPC exchange failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// The connection failed.
    #[error("{addr}: {source}")]
    Io {
        /// The peer.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The peer sent something that is not a frame of ours.
    #[error("{addr}: bad frame: {reason}")]
    BadFrame {
        /// The peer.
        addr: SocketAddr,
        /// What is wrong.
        reason: String,
    },
    /// The peer did not answer in time.
    #[error("{addr}: timed out")]
    Timeout {
        /// The peer.
        addr: SocketAddr,
    },
    /// The message could not be encoded.
    #[error("encode: {0}")]
    Encode(String),
}

/// Encodes `msg` as a frame.
///
/// # Errors
/// [`RpcError::Encode`] if serialization fails or the frame is too large.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, RpcError> {
    let mut out = vec![0_u8; 5];
    out[4] = RPC_VERSION;
    let mut out = postcard::to_extend(msg, out).map_err(|e| RpcError::Encode(e.to_string()))?;
    let len = out.len() - 4;
    if len > FRAME_BYTES_MAX {
        return Err(RpcError::Encode(format!("frame of {len} bytes")));
    }
    let len = u32::try_from(len).map_err(|_| RpcError::Encode("frame too large".into()))?;
    out[..4].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// Reads the next frame from `stream` into a message; `Ok(None)` at a clean end of stream.
///
/// # Errors
/// IO errors, oversized frames, unknown versions and undecodable bodies.
pub async fn read<T: DeserializeOwned>(
    stream: &mut Stream,
    buf: &mut BytesMut,
    addr: SocketAddr,
) -> Result<Option<T>, RpcError> {
    let bad = |reason: String| RpcError::BadFrame { addr, reason };
    let frame = match lode_env::net::read_frame(stream, buf, 1, FRAME_BYTES_MAX).await {
        Ok(Some(frame)) => frame,
        Ok(None) => return Ok(None),
        Err(lode_env::net::FrameError::Io(source)) => return Err(RpcError::Io { addr, source }),
        Err(e) => return Err(bad(e.to_string())),
    };
    if frame[0] != RPC_VERSION {
        return Err(bad(format!("version {}", frame[0])));
    }
    postcard::from_bytes(&frame[1..])
        .map(Some)
        .map_err(|e| bad(e.to_string()))
}

/// An outbound connection to one peer, opened on demand.
pub struct Peer {
    /// The peer's id.
    pub id: BrokerId,
    /// Its address.
    pub addr: SocketAddr,
    hello: Vec<u8>,
    clock: Clock,
    timeout: Duration,
    state: Mutex<PeerState>,
}

struct PeerState {
    stream: Option<Stream>,
    /// No connection attempt before this (after a failure).
    retry_at: Instant,
}

impl Peer {
    /// A peer `id` at `addr`; `hello` is the frame that opens every connection to it;
    /// `timeout` bounds connecting and each write.
    #[must_use]
    pub fn new(
        id: BrokerId,
        addr: SocketAddr,
        hello: Vec<u8>,
        clock: Clock,
        timeout: Duration,
    ) -> Peer {
        Peer {
            id,
            addr,
            hello,
            clock,
            timeout,
            state: Mutex::new(PeerState {
                stream: None,
                retry_at: Instant(0),
            }),
        }
    }

    /// Sends one frame (already encoded). A failure drops the connection; the next send
    /// after a pause of one timeout reconnects. Messages may be lost: the protocols above
    /// retry on their own.
    ///
    /// # Errors
    /// When the peer cannot be reached or does not take the frame in time.
    pub async fn send(&self, frame: &[u8]) -> Result<(), RpcError> {
        let mut st = self.state.lock().await;
        let addr = self.addr;
        if st.stream.is_none() {
            let now = self.clock.now();
            if now < st.retry_at {
                return Err(RpcError::Io {
                    addr,
                    source: std::io::Error::new(std::io::ErrorKind::NotConnected, "backing off"),
                });
            }
            let connected = self
                .clock
                .timeout(self.timeout, async {
                    let mut s = lode_env::net::connect(addr).await?;
                    s.write_all(&self.hello).await?;
                    Ok::<Stream, std::io::Error>(s)
                })
                .await;
            match connected {
                Ok(Ok(s)) => st.stream = Some(s),
                Ok(Err(source)) => {
                    st.retry_at = now.saturating_add(self.timeout);
                    return Err(RpcError::Io { addr, source });
                }
                Err(_) => {
                    st.retry_at = now.saturating_add(self.timeout);
                    return Err(RpcError::Timeout { addr });
                }
            }
        }
        let Some(stream) = st.stream.as_mut() else {
            return Err(RpcError::Timeout { addr });
        };
        let written = self
            .clock
            .timeout(self.timeout, async {
                stream.write_all(frame).await?;
                stream.flush().await
            })
            .await;
        let err = match written {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(source)) => RpcError::Io { addr, source },
            Err(_) => RpcError::Timeout { addr },
        };
        st.stream = None;
        st.retry_at = self.clock.now().saturating_add(self.timeout);
        Err(err)
    }
}

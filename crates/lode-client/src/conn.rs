//! One connection to one broker: framing, correlation ids and version negotiation.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use lode_env::net::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
];

/// Largest response frame accepted.
const RESPONSE_BYTES_MAX: usize = 256 << 20;

/// A connection to one broker, with the versions both sides speak.
#[derive(Debug)]
pub struct Connection {
    stream: Stream,
    addr: SocketAddr,
    next_correlation: i32,
    client_id: StrBytes,
    versions: BTreeMap<i16, i16>,
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
        let mut c = Connection {
            stream,
            addr,
            next_correlation: 0,
            client_id: StrBytes::from_string(client_id.to_owned()),
            versions: BTreeMap::new(),
        };
        let resp: ApiVersionsResponse = c.call_at(&ApiVersionsRequest::default(), 0).await?;
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

    fn version_of<R: Request>(&self) -> Result<i16, ClientError> {
        self.versions
            .get(&R::KEY)
            .copied()
            .ok_or(ClientError::Unsupported(R::KEY))
    }

    fn frame<R: Request>(&mut self, req: &R, version: i16) -> Result<(i32, Bytes), ClientError> {
        let key = ApiKey::try_from(R::KEY).map_err(|()| ClientError::Unsupported(R::KEY))?;
        self.next_correlation = self.next_correlation.wrapping_add(1);
        let mut header = RequestHeader::default();
        header.request_api_key = R::KEY;
        header.request_api_version = version;
        header.correlation_id = self.next_correlation;
        header.client_id = Some(self.client_id.clone());
        let mut buf = BytesMut::with_capacity(256);
        buf.put_i32(0);
        header
            .encode(&mut buf, key.request_header_version(version))
            .map_err(ClientError::encode)?;
        req.encode(&mut buf, version).map_err(ClientError::encode)?;
        let len = i32::try_from(buf.len() - 4)
            .map_err(|_| ClientError::Protocol("request too large".into()))?;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        Ok((self.next_correlation, buf.freeze()))
    }

    /// Sends `req` at the negotiated version and waits for its response.
    ///
    /// # Errors
    /// IO, protocol and decoding errors. The connection should be dropped after one.
    pub async fn call<R: Request>(&mut self, req: &R) -> Result<R::Response, ClientError> {
        let version = self.version_of::<R>()?;
        self.call_at(req, version).await
    }

    /// Sends `req` expecting no response (Produce with acks=0).
    ///
    /// # Errors
    /// IO errors.
    pub async fn send_only<R: Request>(&mut self, req: &R) -> Result<(), ClientError> {
        let version = self.version_of::<R>()?;
        let (_, bytes) = self.frame(req, version)?;
        let addr = self.addr;
        self.stream
            .write_all(&bytes)
            .await
            .map_err(|e| ClientError::Io { addr, source: e })?;
        self.stream
            .flush()
            .await
            .map_err(|e| ClientError::Io { addr, source: e })
    }

    async fn call_at<R: Request>(
        &mut self,
        req: &R,
        version: i16,
    ) -> Result<R::Response, ClientError> {
        let key = ApiKey::try_from(R::KEY).map_err(|()| ClientError::Unsupported(R::KEY))?;
        let (correlation, bytes) = self.frame(req, version)?;
        let addr = self.addr;
        let io = |e| ClientError::Io { addr, source: e };
        self.stream.write_all(&bytes).await.map_err(io)?;
        self.stream.flush().await.map_err(io)?;
        let mut len = [0_u8; 4];
        self.stream.read_exact(&mut len).await.map_err(io)?;
        let len = usize::try_from(i32::from_be_bytes(len))
            .map_err(|_| ClientError::Protocol("negative frame".into()))?;
        if len > RESPONSE_BYTES_MAX {
            return Err(ClientError::Protocol(format!("response of {len} bytes")));
        }
        let mut body = vec![0_u8; len];
        self.stream.read_exact(&mut body).await.map_err(io)?;
        let mut buf = Bytes::from(body);
        let header = ResponseHeader::decode(&mut buf, key.response_header_version(version))
            .map_err(ClientError::decode)?;
        if header.correlation_id != correlation {
            return Err(ClientError::Protocol(format!(
                "correlation {} for request {correlation}",
                header.correlation_id
            )));
        }
        let resp = R::Response::decode(&mut buf, version).map_err(ClientError::decode)?;
        if buf.has_remaining() {
            tracing::debug!(bytes = buf.remaining(), "trailing bytes in response");
        }
        Ok(resp)
    }
}

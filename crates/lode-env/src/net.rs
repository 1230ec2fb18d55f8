//! The network: listen, accept and connect on reliable byte streams.
//!
//! Production uses tokio's TCP; under `--cfg madsim` the same names are madsim's simulated
//! TCP, which the simulator can clog, partition and slow down. A [`Stream`] implements
//! tokio's `AsyncRead` and `AsyncWrite` in both builds.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connected byte stream.
///
/// Written bytes are on their way when `poll_write` returns, in both builds: madsim's TCP
/// holds writes until a flush, which real sockets do not, so under simulation every write
/// flushes. Code that forgot a flush would otherwise work in production and hang in the
/// simulator.
#[derive(Debug)]
pub struct Stream {
    inner: tokio::net::TcpStream,
}

impl Stream {
    /// The peer's address.
    ///
    /// # Errors
    /// When the socket cannot tell.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => n,
            other => return other,
        };
        if cfg!(madsim) {
            if let Poll::Ready(Err(e)) = Pin::new(&mut self.inner).poll_flush(cx) {
                return Poll::Ready(Err(e));
            }
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A listening socket.
#[derive(Debug)]
pub struct Listener {
    inner: tokio::net::TcpListener,
}

/// Listens on `addr` (port 0 picks a free port; see [`Listener::local_addr`]).
///
/// # Errors
/// When the address cannot be bound.
pub async fn listen(addr: SocketAddr) -> io::Result<Listener> {
    Ok(Listener {
        inner: tokio::net::TcpListener::bind(addr).await?,
    })
}

/// Resolves `HOST:PORT` to one address: an IP literal at once, without a lookup; a host
/// name through the system's resolver (in the simulator, madsim's names of its nodes).
/// Each call looks the name up again, so a caller that resolves before it reconnects
/// follows a name that moved.
///
/// # Errors
/// No port, a name that does not resolve, or one that resolves to no address.
pub async fn resolve(host_port: &str) -> io::Result<SocketAddr> {
    if let Ok(addr) = host_port.parse::<SocketAddr>() {
        return Ok(addr);
    }
    pick(host_port, tokio::net::lookup_host(host_port).await?)
}

/// The address to use of those a name resolved to: the first IPv4 one, else the first.
///
/// # Errors
/// `NotFound` when there is none.
pub fn pick(
    host_port: &str,
    addrs: impl IntoIterator<Item = SocketAddr>,
) -> io::Result<SocketAddr> {
    let mut first = None;
    for addr in addrs {
        if addr.is_ipv4() {
            return Ok(addr);
        }
        first.get_or_insert(addr);
    }
    first.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host_port} resolves to no address"),
        )
    })
}

/// Connects to `addr`, with Nagle's algorithm off: the protocols on top batch for
/// themselves and want each frame sent at once.
///
/// # Errors
/// When the connection is refused or fails.
pub async fn connect(addr: SocketAddr) -> io::Result<Stream> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(Stream { inner: stream })
}

impl Listener {
    /// Waits for the next connection.
    ///
    /// # Errors
    /// When accepting fails (for example when out of file descriptors).
    pub async fn accept(&self) -> io::Result<(Stream, SocketAddr)> {
        let (stream, peer) = self.inner.accept().await?;
        stream.set_nodelay(true)?;
        Ok((Stream { inner: stream }, peer))
    }

    /// The address actually bound.
    ///
    /// # Errors
    /// When the socket cannot tell.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// Why a length-prefixed frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix is outside the bounds the reader accepts.
    #[error("frame length {0} out of bounds")]
    BadLength(i64),
    /// The peer closed the stream in the middle of a frame.
    #[error("connection closed mid-frame")]
    ClosedMidFrame,
    /// The stream failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The next frame `[length i32 big-endian][length bytes]` at the front of `buf`: `Ok(Ok(frame))`
/// with the prefix removed, or `Ok(Err(total))` when `buf` must first hold `total` bytes.
/// Lengths outside `len_min..=len_max` are an error, before any memory is reserved for them.
///
/// # Errors
/// [`FrameError::BadLength`].
pub fn take_frame(
    buf: &mut bytes::BytesMut,
    len_min: usize,
    len_max: usize,
) -> Result<Result<bytes::Bytes, usize>, FrameError> {
    use bytes::Buf;
    let Some(prefix) = buf.get(..4) else {
        return Ok(Err(4));
    };
    let len = i32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    let len = usize::try_from(len)
        .ok()
        .filter(|l| (len_min..=len_max).contains(l))
        .ok_or(FrameError::BadLength(i64::from(len)))?;
    if buf.len() < 4 + len {
        return Ok(Err(4 + len));
    }
    buf.advance(4);
    Ok(Ok(buf.split_to(len).freeze()))
}

/// Reads the next length-prefixed frame from `stream` (see [`take_frame`]), keeping bytes
/// read past it in `buf` for the next call: one read takes in as much as the stream has, and
/// no buffer is zeroed. `Ok(None)` at a clean end of stream between frames.
///
/// # Errors
/// See [`FrameError`].
pub async fn read_frame<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut bytes::BytesMut,
    len_min: usize,
    len_max: usize,
) -> Result<Option<bytes::Bytes>, FrameError> {
    use tokio::io::AsyncReadExt;
    loop {
        let need = match take_frame(buf, len_min, len_max)? {
            Ok(frame) => return Ok(Some(frame)),
            Err(need) => need,
        };
        // Room for the rest of this frame (bounded by `len_max`) or, between frames, a
        // read's worth.
        buf.reserve((need - buf.len()).max(if buf.is_empty() { 64 << 10 } else { 0 }));
        if stream.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(FrameError::ClosedMidFrame)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use bytes::BytesMut;

    use super::{take_frame, FrameError};

    #[test]
    fn frames_are_taken_whole_and_bad_lengths_refused() {
        let mut buf = BytesMut::from(&[0, 0][..]);
        assert_eq!(take_frame(&mut buf, 1, 10).unwrap().unwrap_err(), 4);
        buf.extend_from_slice(&[0, 3, b'a', b'b']);
        assert_eq!(take_frame(&mut buf, 1, 10).unwrap().unwrap_err(), 7);
        buf.extend_from_slice(b"cZ");
        assert_eq!(&take_frame(&mut buf, 1, 10).unwrap().unwrap()[..], b"abc");
        assert_eq!(&buf[..], b"Z");
        let mut huge = BytesMut::from(&0x7fff_ffff_i32.to_be_bytes()[..]);
        assert!(matches!(
            take_frame(&mut huge, 1, 10),
            Err(FrameError::BadLength(_))
        ));
        let mut negative = BytesMut::from(&(-1_i32).to_be_bytes()[..]);
        assert!(matches!(
            take_frame(&mut negative, 0, 10),
            Err(FrameError::BadLength(-1))
        ));
        let mut short = BytesMut::from(&0_i32.to_be_bytes()[..]);
        assert!(matches!(
            take_frame(&mut short, 1, 10),
            Err(FrameError::BadLength(0))
        ));
    }
}

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

//! The network: listen, accept and connect on reliable byte streams.
//!
//! Production uses tokio's TCP; under `--cfg madsim` the same names are madsim's simulated
//! TCP, which the simulator can clog, partition and slow down. A [`Stream`] implements
//! tokio's `AsyncRead` and `AsyncWrite` in both builds.

use std::io;
use std::net::SocketAddr;

/// A connected byte stream.
pub type Stream = tokio::net::TcpStream;

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
    Ok(Listener { inner: tokio::net::TcpListener::bind(addr).await? })
}

/// Connects to `addr`, with Nagle's algorithm off: the protocols on top batch for
/// themselves and want each frame sent at once.
///
/// # Errors
/// When the connection is refused or fails.
pub async fn connect(addr: SocketAddr) -> io::Result<Stream> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

impl Listener {
    /// Waits for the next connection.
    ///
    /// # Errors
    /// When accepting fails (for example when out of file descriptors).
    pub async fn accept(&self) -> io::Result<(Stream, SocketAddr)> {
        let (stream, peer) = self.inner.accept().await?;
        stream.set_nodelay(true)?;
        Ok((stream, peer))
    }

    /// The address actually bound.
    ///
    /// # Errors
    /// When the socket cannot tell.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

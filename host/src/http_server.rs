//! The HTTP/1.1 listener in front of the API, the web UI and the git
//! endpoints.
//!
//! `axum::serve` has no header-read timeout and no connection cap: a client
//! that opens connections and never finishes a request holds a task and a
//! file descriptor for ever, and enough of them starve the API and git. This
//! listener bounds each of those:
//! - a request head must arrive within the header timeout, counted from the
//!   connection's start or the end of the previous response, so it is also
//!   the keep-alive idle timeout;
//! - a connection whose client stops reading an answer, or stops sending a
//!   request body, for the idle timeout is closed;
//! - at most `max_connections` are served at once; one more is answered 503
//!   and closed, so a flood fails fast instead of queueing in the kernel;
//! - a connection is closed lingering: what the client still sends after
//!   its answer (the rest of a body too large to take) is read and dropped
//!   for a moment, so the client sees the 413 rather than a reset.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

/// Limits of the listener; `serve` flags and environment variables set them.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
        }
    }
}

/// File descriptors kept free of connections: the database, git processes
/// and their pipes, policy files.
const FD_RESERVE: u64 = 256;
/// Connections past the cap that get their 503 concurrently; more are closed
/// without an answer.
const REJECT_SLOTS: usize = 64;
/// How long connections may finish after shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long, and how many bytes, a closing connection reads and drops.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 16 << 20;

/// Raises the soft limit on open files to the hard limit (the default soft
/// limit of 1024 is far below what a server with a connection cap needs) and
/// returns the soft limit now in force.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
                return Err(io::Error::last_os_error());
            }
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Ok(lim.rlim_cur)
}

/// The cap that fits the open-file limit, with a warning when the configured
/// one does not.
pub fn fit_cap(configured: usize, nofile: u64) -> usize {
    let room = nofile.saturating_sub(FD_RESERVE).max(16);
    if configured as u64 > room {
        tracing::warn!(
            configured,
            nofile,
            cap = room,
            "AUTODEPLOY_MAX_CONNECTIONS is above what the open-file limit allows; lowered"
        );
        room as usize
    } else {
        configured
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets
/// open connections finish (for a bounded time).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let reject_slots = Arc::new(Semaphore::new(REJECT_SLOTS));
    // Every connection holds a receiver; once all are dropped, all are done.
    let (close_tx, close_rx) = watch::channel(());
    let mut full = false;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let service = TowerToHyperService::new(router);

    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of descriptors or memory: back off briefly instead
                    // of spinning; connections that finish free some.
                    if !is_per_connection_error(&e) {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            if !std::mem::replace(&mut full, true) {
                tracing::warn!(
                    max = limits.max_connections,
                    "connection cap reached; new connections are answered 503"
                );
            }
            reject(stream, &reject_slots);
            continue;
        };
        if std::mem::replace(&mut full, false) {
            tracing::info!("below the connection cap again");
        }
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(IdleIo::new(stream, limits.idle_timeout));
        // The client's address, for what counts per client (failed web
        // sign-ins), as axum's `ConnectInfo`.
        let inner = service.clone();
        // Boxed: taking the stream back after the connection (to linger)
        // needs an `Unpin` request future.
        let with_peer =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                Box::pin(hyper::service::Service::call(&inner, req))
            });
        let mut conn = builder.serve_connection(io, with_peer);
        let stop = shutdown.clone();
        let close_rx = close_rx.clone();
        tokio::spawn(async move {
            let result = tokio::select! {
                result = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => result,
                _ = stop.cancelled() => {
                    Pin::new(&mut conn).graceful_shutdown();
                    std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)).await
                }
            };
            match result {
                Ok(()) => linger(conn.into_parts().io.into_inner().inner).await,
                Err(e) => {
                    tracing::debug!(error = %error_chain(&e), "connection ended with an error");
                }
            }
            drop(permit);
            drop(close_rx);
        });
    }
    drop(listener);
    drop(close_rx);
    if tokio::time::timeout(SHUTDOWN_GRACE, close_tx.closed())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace period; dropped");
    }
}

/// An error with its causes: hyper's own message says only which step failed.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Errors that concern one connection only (it was reset before we took it).
fn is_per_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

const BUSY_BODY: &str = "{\"error\":\"too many open connections; try again shortly\"}";

/// Answers a connection past the cap with 503. The answer is written, the
/// sending side shut, and what the client still sends is read for a moment,
/// so the client sees the answer rather than a reset.
fn reject(stream: TcpStream, reject_slots: &Arc<Semaphore>) {
    let Ok(permit) = reject_slots.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut stream = stream;
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nretry-after: 5\r\nconnection: close\r\n\r\n{BUSY_BODY}",
            BUSY_BODY.len()
        );
        if let Ok(Ok(())) = tokio::time::timeout(LINGER, stream.write_all(answer.as_bytes())).await
        {
            linger(stream).await;
        }
        drop(permit);
    });
}

/// Shuts the sending side and reads what the client still sends, for a
/// moment, before the stream is closed: closing with unread data sends a
/// reset, which can destroy the answer before the client has read it.
async fn linger(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(LINGER, async {
        stream.shutdown().await?;
        let mut sink = vec![0u8; 16 << 10];
        let mut read = 0;
        while read < LINGER_BYTES {
            match stream.read(&mut sink).await? {
                0 => break,
                n => read += n,
            }
        }
        io::Result::Ok(())
    })
    .await;
}

/// A TCP stream whose writes fail once they have made no progress for the
/// idle timeout: a client that stops reading an answer frees its connection.
/// Reads are bounded elsewhere (the header timeout, and the body timeout in
/// the API's middleware), because the server may rightly wait on the client
/// to send the next request for long while a handler computes.
pub struct IdleIo {
    inner: TcpStream,
    timeout: Duration,
    write_stall: Option<Pin<Box<Sleep>>>,
}

impl IdleIo {
    fn new(inner: TcpStream, timeout: Duration) -> Self {
        IdleIo {
            inner,
            timeout,
            write_stall: None,
        }
    }

    /// Called when a write is pending: errors once it has been for too long.
    fn poll_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let timeout = self.timeout;
        let stall = self
            .write_stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + timeout)));
        match stall.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading",
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    fn on_write<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => match self.poll_stall(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
            done => {
                self.write_stall = None;
                done
            }
        }
    }
}

impl AsyncRead for IdleIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for IdleIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.on_write(cx, r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.on_write(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.on_write(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.on_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

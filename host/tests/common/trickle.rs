//! A loopback TCP server that accepts and then trickles: an HTTP status
//! line, then one byte every `every` of a header that never ends, so a git
//! client's per-read timeout never fires. Bounded: each connection is
//! closed after `max_life`, at most `MAX_OPEN` are open at once (more are
//! closed at once), and everything stops when the server is dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

const MAX_OPEN: usize = 4096;

pub struct Trickle {
    pub port: u16,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    /// Connections open now.
    pub open: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Trickle {
    pub async fn start(every: Duration, max_life: Duration) -> Trickle {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (acc, op) = (accepted.clone(), open.clone());
        let task = tokio::spawn(async move {
            // Dropped with this task: aborts every connection.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut stream, _)) = accepted else { continue };
                        acc.fetch_add(1, Ordering::SeqCst);
                        if op.load(Ordering::SeqCst) >= MAX_OPEN {
                            continue;
                        }
                        op.fetch_add(1, Ordering::SeqCst);
                        let op = op.clone();
                        conns.spawn(async move {
                            let _ = tokio::time::timeout(max_life, async {
                                let head: &[u8] = b"HTTP/1.1 200 OK\r\nX-Slow: ";
                                if stream.write_all(head).await.is_err() {
                                    return;
                                }
                                loop {
                                    tokio::time::sleep(every).await;
                                    // A closed peer ends the connection.
                                    if stream.write_all(b"a").await.is_err() {
                                        return;
                                    }
                                }
                            })
                            .await;
                            op.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Trickle {
            port,
            accepted,
            open,
            task,
        }
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Trickle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

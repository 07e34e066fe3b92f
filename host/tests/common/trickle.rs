//! A loopback TCP server that accepts and then trickles: an HTTP status
//! line, then one byte every `every` of a header that never ends, so a git
//! client's per-read timeout never fires. Bounded: each connection is
//! closed after `max_life`, at most `MAX_OPEN` are open at once (more are
//! closed at once), and everything stops when the server is dropped. It
//! runs on a thread and runtime of its own, so a busy test runtime never
//! slows its accepts.

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
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Trickle {
    pub fn start(every: Duration, max_life: Duration) -> Trickle {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let port = std_listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (acc, op) = (accepted.clone(), open.clone());
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let serve = async move {
            let listener = TcpListener::from_std(std_listener).unwrap();
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
                    _ = &mut stopped => return,
                }
            }
        };
        let thread = std::thread::spawn(move || runtime.block_on(serve));
        Trickle {
            port,
            accepted,
            open,
            stop: Some(stop),
            thread: Some(thread),
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
        // Returning from the serving future drops every connection.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

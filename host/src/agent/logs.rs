//! A deploy's log: kept in memory while it runs, streamed to the control
//! plane in chunks by byte offset (a retried chunk is trimmed there, so
//! nothing is doubled or lost), and cut to a tail for the final report.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::link::{Link, LogAnswer};

/// The final report's log tail is the last 64 KiB.
const MAX_TAIL: usize = 64 * 1024;
/// Unsent text kept while the control plane does not answer; it stores
/// 1 MiB per deployment at most, so more would be dropped there anyway.
const MAX_PENDING: usize = 1024 * 1024 + MAX_TAIL;
/// How often the log is posted while a deploy runs: the answer is also how
/// the agent learns of a cancel.
pub const POST_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Buf>>);

#[derive(Default)]
struct Buf {
    /// Offset of `pending`'s start: everything before it was stored.
    sent: u64,
    pending: String,
    tail: String,
    dropped: bool,
}

impl Log {
    pub fn push(&self, text: &str) {
        let mut b = self.0.lock().expect("log lock");
        b.tail.push_str(text);
        if b.tail.len() > 2 * MAX_TAIL {
            let cut = cut_point(&b.tail, MAX_TAIL);
            b.tail.drain(..cut);
        }
        if b.pending.len() + text.len() <= MAX_PENDING {
            b.pending.push_str(text);
        } else if !b.dropped {
            b.dropped = true;
            b.pending
                .push_str("[autodeploy: the log is too long; the rest is not stored]\n");
        }
    }

    /// The last 64 KiB.
    pub fn tail(&self) -> String {
        let b = self.0.lock().expect("log lock");
        b.tail[cut_point(&b.tail, MAX_TAIL)..].to_string()
    }

    fn unsent(&self) -> (u64, String) {
        let b = self.0.lock().expect("log lock");
        (b.sent, b.pending.clone())
    }

    fn stored(&self, offset: u64, len: usize) {
        let mut b = self.0.lock().expect("log lock");
        if b.sent == offset {
            b.pending.drain(..len);
            b.sent += len as u64;
        }
    }
}

/// Where to cut `s` to keep its last `max` bytes (a char boundary).
fn cut_point(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return 0;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    start
}

/// Posts `log` every `POST_EVERY` until `stop`, then what is left; cancels
/// `cancel` when the control plane says the deployment was cancelled.
pub async fn stream(
    link: Link,
    deployment: i64,
    log: Log,
    cancel: CancellationToken,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(POST_EVERY) => {}
        }
        if !post(&link, deployment, &log, &cancel).await {
            return;
        }
    }
    // The rest, retried a few times: the final report carries the tail anyway.
    for attempt in 0..5u32 {
        if log.unsent().1.is_empty() || !post(&link, deployment, &log, &cancel).await {
            return;
        }
        if !log.unsent().1.is_empty() {
            tokio::time::sleep(Duration::from_millis(500 * (attempt as u64 + 1))).await;
        }
    }
}

/// One post of what is unsent; false when the control plane will take no
/// more (the deployment ended or is not this node's).
async fn post(link: &Link, deployment: i64, log: &Log, cancel: &CancellationToken) -> bool {
    let (offset, chunk) = log.unsent();
    match link.post_log(deployment, offset, &chunk).await {
        Ok(LogAnswer::Stored { cancel: asked }) => {
            log.stored(offset, chunk.len());
            if asked && !cancel.is_cancelled() {
                tracing::info!(deployment, "the deployment was cancelled");
                cancel.cancel();
            }
            true
        }
        Ok(LogAnswer::Closed) => false,
        Err(e) => {
            tracing::debug!(deployment, error = %e, "posting the log failed; retrying");
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_chunks_advance_the_offset_and_later_text_stays_pending() {
        let log = Log::default();
        log.push("abc");
        let (offset, chunk) = log.unsent();
        assert_eq!((offset, chunk.as_str()), (0, "abc"));
        log.push("dé");
        log.stored(offset, chunk.len());
        assert_eq!(log.unsent(), (3, "dé".to_string()));
        // A stale acknowledgement changes nothing.
        log.stored(0, 3);
        assert_eq!(log.unsent(), (3, "dé".to_string()));
        assert_eq!(log.tail(), "abcdé");
    }

    #[test]
    fn the_tail_is_the_last_64_kib_on_a_char_boundary() {
        let log = Log::default();
        for _ in 0..50_000 {
            log.push("é");
        }
        log.push("end");
        let tail = log.tail();
        assert!(tail.len() <= MAX_TAIL && tail.len() > MAX_TAIL - 4);
        assert!(tail.ends_with("end"));
    }

    #[test]
    fn pending_text_is_bounded_with_one_marker() {
        let log = Log::default();
        let line = "x".repeat(1000) + "\n";
        for _ in 0..2000 {
            log.push(&line);
        }
        let (_, pending) = log.unsent();
        assert!(pending.len() <= MAX_PENDING + 100);
        assert_eq!(pending.matches("too long").count(), 1);
    }
}

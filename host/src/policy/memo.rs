//! Remembered answers of `parse-compose`. A policy imports nothing, so its
//! answer depends only on its input: the same file under the same policy
//! gives the same images. The image watcher reads every compose file every
//! tick, and most never change, so each (policy, file content) pair is
//! parsed once.
//!
//! Only `parse-compose` is remembered: it is the one call whose input is the
//! file alone. Answers the policy gave (images, or its own "invalid YAML"
//! error) are kept; a trap or an exhausted budget is not. The memo is
//! bounded in entries and in bytes, drops the least recently used entry
//! first, and is emptied whenever the active policy changes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{ComposeImages, Policy, PolicyError};

/// Entries kept by default: more compose files than a daemon watches.
pub const DEFAULT_ENTRIES: usize = 4096;
/// Bytes of answers kept by default (image names and error messages).
pub const DEFAULT_BYTES: usize = 32 << 20;

type Key = [u8; 32];
type Answer = Result<ComposeImages, String>;

struct Entry {
    answer: Answer,
    bytes: usize,
    /// When it was last used, in `Lru::clock` ticks; also its key in `order`.
    used: u64,
}

#[derive(Default)]
struct Lru {
    entries: HashMap<Key, Entry>,
    /// Last use -> key, oldest first.
    order: BTreeMap<u64, Key>,
    clock: u64,
    bytes: usize,
}

/// What the memo did since the daemon started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MemoStats {
    /// Calls answered from the memo.
    pub hits: u64,
    /// Calls that ran the policy.
    pub misses: u64,
    pub entries: usize,
    pub bytes: usize,
    pub max_entries: usize,
    pub max_bytes: usize,
    /// Times it was emptied because the active policy changed.
    pub clears: u64,
}

/// Both policy caches, as `GET /api/status` shows them.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyCacheStats {
    pub parse_compose: MemoStats,
    pub compiled: super::CompiledStats,
}

pub struct ParseMemo {
    lru: Mutex<Lru>,
    max_entries: usize,
    max_bytes: usize,
    hits: AtomicU64,
    misses: AtomicU64,
    clears: AtomicU64,
    /// Bumped by `clear`: an answer computed before it is not stored after.
    generation: AtomicU64,
}

impl Default for ParseMemo {
    fn default() -> Self {
        ParseMemo::new(DEFAULT_ENTRIES, DEFAULT_BYTES)
    }
}

impl ParseMemo {
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        ParseMemo {
            lru: Mutex::default(),
            max_entries: max_entries.max(1),
            max_bytes,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            clears: AtomicU64::new(0),
            generation: AtomicU64::new(0),
        }
    }

    /// The answer the policy with this sha256 gave for this exact text, if
    /// remembered: cheap enough to ask before handing the call to a decision
    /// thread.
    pub fn cached(
        &self,
        policy_sha256: &str,
        yaml: &str,
    ) -> Option<Result<ComposeImages, PolicyError>> {
        let answer = self.get(&key(policy_sha256, yaml))?;
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(into_result(answer))
    }

    /// `policy.parse_compose(yaml)`, answered from the memo when this policy
    /// already parsed this exact text.
    pub fn parse_compose(&self, policy: &Policy, yaml: &str) -> Result<ComposeImages, PolicyError> {
        let key = key(&policy.info().sha256, yaml);
        if let Some(answer) = self.get(&key) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return into_result(answer);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let generation = self.generation.load(Ordering::Acquire);
        let result = policy.parse_compose(yaml);
        let answer = match &result {
            Ok(images) => Ok(images.clone()),
            Err(PolicyError::Rejected { message, .. }) => Err(message.clone()),
            // A failure of the component (trap, budget, deadline) is not an
            // answer: the next tick asks again.
            Err(_) => return result,
        };
        self.put(key, answer, generation);
        result
    }

    /// Forgets every answer: the policy that gave them is no longer active.
    /// The generation to pass to [`ParseMemo::remember`]: taken before the
    /// call, so an answer that raced a policy switch is not kept.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Keeps the answer a policy gave outside this memo (a call made and
    /// logged by the caller); counts as a miss.
    pub fn remember(&self, policy_sha256: &str, yaml: &str, answer: &Answer, generation: u64) {
        self.misses.fetch_add(1, Ordering::Relaxed);
        self.put(key(policy_sha256, yaml), answer.clone(), generation);
    }

    pub fn clear(&self) {
        let mut lru = self.lock();
        self.generation.fetch_add(1, Ordering::AcqRel);
        *lru = Lru::default();
        self.clears.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stats(&self) -> MemoStats {
        let lru = self.lock();
        MemoStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: lru.entries.len(),
            bytes: lru.bytes,
            max_entries: self.max_entries,
            max_bytes: self.max_bytes,
            clears: self.clears.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        // The map stays consistent even if a holder panicked mid-way: every
        // change is made before the guard drops, in a few plain steps.
        self.lru.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, key: &Key) -> Option<Answer> {
        let mut lru = self.lock();
        lru.clock += 1;
        let now = lru.clock;
        let entry = lru.entries.get_mut(key)?;
        let before = std::mem::replace(&mut entry.used, now);
        let answer = entry.answer.clone();
        lru.order.remove(&before);
        lru.order.insert(now, *key);
        Some(answer)
    }

    fn put(&self, key: Key, answer: Answer, generation: u64) {
        let bytes = size(&answer);
        if bytes > self.max_bytes {
            return;
        }
        let mut lru = self.lock();
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        lru.clock += 1;
        let used = lru.clock;
        if let Some(old) = lru.entries.insert(
            key,
            Entry {
                answer,
                bytes,
                used,
            },
        ) {
            lru.order.remove(&old.used);
            lru.bytes -= old.bytes;
        }
        lru.order.insert(used, key);
        lru.bytes += bytes;
        while lru.entries.len() > self.max_entries || lru.bytes > self.max_bytes {
            let Some((_, oldest)) = lru.order.pop_first() else {
                break;
            };
            if let Some(gone) = lru.entries.remove(&oldest) {
                lru.bytes -= gone.bytes;
            }
        }
    }
}

/// The policy's sha256 and the file's text in one digest.
fn key(policy_sha256: &str, yaml: &str) -> Key {
    let mut h = Sha256::new();
    h.update(policy_sha256.as_bytes());
    h.update([0]);
    h.update(yaml.as_bytes());
    h.finalize().into()
}

/// Roughly what an answer holds on the heap, plus the entry itself.
fn size(answer: &Answer) -> usize {
    const OVERHEAD: usize = 128;
    OVERHEAD
        + match answer {
            Ok(found) => found
                .images
                .iter()
                .chain(&found.skipped)
                .map(|s| s.len() + std::mem::size_of::<String>())
                .sum::<usize>(),
            Err(message) => message.len(),
        }
}

fn into_result(answer: Answer) -> Result<ComposeImages, PolicyError> {
    answer.map_err(|message| PolicyError::Rejected {
        call: "parse-compose",
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images(n: usize) -> Answer {
        Ok(ComposeImages {
            images: (0..n).map(|i| format!("img{i}")).collect(),
            skipped: vec![],
        })
    }

    #[test]
    fn the_least_recently_used_entry_goes_first() {
        let memo = ParseMemo::new(2, usize::MAX);
        let (a, b, c) = (key("p", "a"), key("p", "b"), key("p", "c"));
        memo.put(a, images(1), 0);
        memo.put(b, images(1), 0);
        assert!(memo.get(&a).is_some());
        memo.put(c, images(1), 0);
        assert!(memo.get(&a).is_some(), "a was used after b");
        assert!(memo.get(&b).is_none(), "b was the oldest");
        assert!(memo.get(&c).is_some());
        assert_eq!(memo.stats().entries, 2);
    }

    #[test]
    fn the_byte_bound_holds() {
        let one = size(&images(10));
        let memo = ParseMemo::new(100, one * 3);
        for i in 0..10 {
            memo.put(key("p", &i.to_string()), images(10), 0);
        }
        let stats = memo.stats();
        assert_eq!(stats.entries, 3);
        assert!(stats.bytes <= one * 3);
        // An answer larger than the whole bound is not kept at all.
        memo.put(key("p", "big"), images(1000), 0);
        assert!(memo.get(&key("p", "big")).is_none());
    }

    #[test]
    fn an_answer_from_before_a_clear_is_not_stored() {
        let memo = ParseMemo::default();
        let generation = memo.generation.load(Ordering::Acquire);
        memo.clear();
        memo.put(key("p", "a"), images(1), generation);
        assert_eq!(memo.stats().entries, 0);
        assert_eq!(memo.stats().clears, 1);
    }

    #[test]
    fn the_key_tells_policies_and_files_apart() {
        assert_ne!(key("p1", "a"), key("p2", "a"));
        assert_ne!(key("p", "a"), key("p", "b"));
        // The separator keeps the two parts from sliding into each other.
        assert_ne!(key("ab", "c"), key("a", "bc"));
    }
}

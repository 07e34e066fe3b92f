//! Saturates every core for as long as the guard lives, so a test can show
//! that an answer does not depend on how busy the host is.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

pub struct CpuLoad {
    stop: Arc<AtomicBool>,
    spins: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl CpuLoad {
    /// Two busy threads per core: the test's own thread then gets a third of
    /// a core or less, as on a machine where every core is taken.
    pub fn saturate() -> CpuLoad {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let stop = Arc::new(AtomicBool::new(false));
        let spins = Arc::new(AtomicU64::new(0));
        let threads = (0..2 * cores.max(2))
            .map(|i| {
                let (stop, spins) = (stop.clone(), spins.clone());
                std::thread::Builder::new()
                    .name(format!("cpu-load-{i}"))
                    .spawn(move || {
                        let mut x = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            for _ in 0..100_000 {
                                x = std::hint::black_box(x.wrapping_mul(6364136223846793005) + 1);
                            }
                            spins.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                    .expect("spawn a load thread")
            })
            .collect();
        CpuLoad {
            stop,
            spins,
            threads,
        }
    }

    /// Rounds of busy work done so far: proof that the load ran.
    pub fn spins(&self) -> u64 {
        self.spins.load(Ordering::Relaxed)
    }
}

impl Drop for CpuLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

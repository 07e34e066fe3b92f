//! The policy runtime: loads a policy component, checks which version of the
//! contract it implements, and runs each decision in a fresh, bounded
//! instance.
//!
//! A component may implement `autodeploy:policy@0.1.0` or `@0.2.0`; `wit/`
//! holds one bindings module per version and the rest of the daemon sees
//! only the contract's plain types, always in 0.2.0 terms ([`Policy::run`]).
//!
//! A policy is compiled once; every decision instantiates it anew from an
//! `InstancePre` (a few microseconds with the pooling allocator) under an
//! instruction budget (wasmtime fuel) and a memory cap. A guest that loops,
//! runs out of memory or traps fails that one call with a `PolicyError`;
//! nothing else is affected.
//!
//! The budget counts instructions, not time, so the same input gets the same
//! answer on an idle host and on a saturated one. A wall-clock deadline (epoch
//! interruption) stays as a generous backstop only.

mod cache;
pub mod cli;
mod engine_config;
pub mod facts;
mod handle;
mod memo;
pub mod selftest;
mod wit;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

pub use autodeploy_policy_contract::model::{
    CommitDecision, ComposeImages, DigestChange, Facts, GitSource, ImageDecision, Lookup,
    NodeState, PinnedNode, PolicyMeta, Project, ProjectKind, TriggerSource, Verdict, WatchPlan,
};
pub use autodeploy_policy_contract::{Answer, Call, WitVersion};
use serde::Serialize;
use sha2::{Digest, Sha256};
use wasmtime::component::Linker;
use wasmtime::{
    Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store, Trap,
};

pub use cache::{CodeSource, CompiledStats, user_cache_dir};
pub use handle::{MAX_CONFIG_BYTES, PolicyHandle, Seed, SwapError, legacy_active};
pub use memo::{MemoStats, ParseMemo, PolicyCacheStats};

/// The default policy, built from `guest/` for contract 0.2.0 by `build.rs`.
pub const BUNDLED_POLICY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/default-policy.wasm"));

/// Bytes of each pooled linear memory kept mapped between instances.
const KEEP_RESIDENT: usize = 2 << 20;

/// How often the epoch advances; deadlines are rounded up to whole ticks.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Instructions one call may run by default: [`MIN_FUEL`] and some more, for
/// policies that do a little more than the bundled one. A few seconds of
/// guest time on one core of the 2-core development machine.
pub const DEFAULT_FUEL: u64 = 4_000_000_000;

/// The smallest budget the command line accepts. The bundled policy needs up
/// to ~2 billion instructions for a valid compose file at the 1 MiB size
/// limit (a 10,000-service file: ~0.43 billion); below this some would fail.
pub const MIN_FUEL: u64 = 2_500_000_000;
const _: () = assert!(DEFAULT_FUEL >= MIN_FUEL);

/// The default wall-clock backstop: several times what the default budget
/// takes to burn on an idle core, so only a host stalled far beyond normal
/// load ever reaches it, and the budget decides every outcome.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// Instructions (wasmtime fuel) one call may run; what bounds a decision.
    /// `None` turns metering off and leaves only the deadline: the benchmark
    /// uses it to measure what metering costs, the daemon never does.
    pub fuel: Option<u64>,
    /// Wall time one call may take: a backstop behind the fuel budget.
    pub deadline: Duration,
    /// Linear memory one instance may grow to, in bytes.
    pub memory_limit: usize,
    /// Instances that may be alive at once (the pooling allocator's slots).
    pub max_instances: u32,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            fuel: Some(DEFAULT_FUEL),
            deadline: DEFAULT_DEADLINE,
            memory_limit: 64 << 20,
            max_instances: 64,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("read policy {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("policy is not a valid WebAssembly component: {0}")]
    Invalid(String),
    #[error("policy imports {}, but a policy gets no host functions (no WASI, no clock, files or network)", .0.join(", "))]
    Imports(Vec<String>),
    #[error("policy does not implement {interface}: missing {}", .missing.join(", "))]
    Missing {
        interface: String,
        missing: Vec<String>,
    },
    #[error("policy does not match {interface}: {message}")]
    Incompatible {
        interface: &'static str,
        message: String,
    },
    #[error("policy call {call} exceeded its instruction budget of {fuel}")]
    Budget { call: &'static str, fuel: u64 },
    #[error("policy call {call} exceeded its deadline of {deadline:?}")]
    Deadline {
        call: &'static str,
        deadline: Duration,
    },
    #[error("policy call {call} exceeded its memory limit of {limit} bytes")]
    Memory { call: &'static str, limit: usize },
    #[error("policy call {call} trapped: {message}")]
    Trap { call: &'static str, message: String },
    /// The policy answered, with an error value of its own (e.g. invalid YAML).
    #[error("{message}")]
    Rejected { call: &'static str, message: String },
}

/// The engine all policies share, with the thread that advances its epoch.
pub struct PolicyRuntime {
    engine: Engine,
    config: PolicyConfig,
    stop: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
    /// Where compiled policies are kept, and how each load got its code.
    compiled: cache::CompiledCache,
}

impl PolicyRuntime {
    pub fn new(config: PolicyConfig) -> Result<Arc<Self>, PolicyError> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(config.max_instances)
            .total_core_instances(config.max_instances * 4)
            .total_memories(config.max_instances)
            .total_tables(config.max_instances * 2)
            .max_memory_size(config.memory_limit)
            // A fresh instance per decision would otherwise page-fault its
            // stack and heap back in every time; zeroing the first MiBs with
            // memset on release is cheaper than the faults.
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(64 << 10)
            // Where the kernel can list dirty pages (Linux 6.7+), only those
            // are reset: instantiation went from ~10 to ~3 us.
            .pagemap_scan(wasmtime::Enabled::Auto);
        // What shapes the compiled code is shared with build.rs, which
        // precompiles the bundled policy for this engine.
        let mut wasm = engine_config::policy_engine_config(config.fuel.is_some());
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm).map_err(|e| PolicyError::Invalid(format!("{e:#}")))?;

        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let (engine, stop) = (engine.clone(), stop.clone());
            std::thread::Builder::new()
                .name("policy-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .expect("spawn the policy epoch thread")
        };
        Ok(Arc::new(PolicyRuntime {
            engine,
            config,
            stop,
            ticker: Some(ticker),
            compiled: Default::default(),
        }))
    }

    pub fn load_bundled(self: &Arc<Self>) -> Result<Policy, PolicyError> {
        self.load(BUNDLED_POLICY, "bundled")
    }

    pub fn load_file(self: &Arc<Self>, path: &Path) -> Result<Policy, PolicyError> {
        let bytes = std::fs::read(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        self.load(&bytes, &path.display().to_string())
    }

    /// Compiles a component and checks it against the contract. `source` says
    /// where it came from, for `PolicyInfo`.
    pub fn load(self: &Arc<Self>, bytes: &[u8], source: &str) -> Result<Policy, PolicyError> {
        self.load_with(bytes, source, None)
    }

    /// [`PolicyRuntime::load`], taking the native code from `shared` (the
    /// database's, unchecked) when no local code is at hand and it checks
    /// out.
    pub fn load_with(
        self: &Arc<Self>,
        bytes: &[u8],
        source: &str,
        shared: Option<&crate::store::NativeCode>,
    ) -> Result<Policy, PolicyError> {
        let sha256 = crate::secrets::hex(&Sha256::digest(bytes));
        let (component, code_source) = self.component(bytes, &sha256, shared)?;
        let wit_version = wit::check_shape(&self.engine, &component)?;
        let incompatible = |e: wasmtime::Error| PolicyError::Incompatible {
            interface: wit_version.interface(),
            message: format!("{e:#}"),
        };
        let pre = Linker::new(&self.engine)
            .instantiate_pre(&component)
            .map_err(incompatible)?;
        let pre = wit::Pre::new(wit_version, pre).map_err(incompatible)?;
        let mut policy = Policy {
            runtime: self.clone(),
            component,
            code_source,
            pre,
            info: PolicyInfo {
                name: String::new(),
                version: String::new(),
                wit_version,
                sha256,
                source: source.into(),
            },
        };
        let (name, version) = policy.session()?.policy_info()?;
        policy.info.name = name;
        policy.info.version = version;
        Ok(policy)
    }
}

impl Drop for PolicyRuntime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(ticker) = self.ticker.take() {
            let _ = ticker.join();
        }
    }
}

/// What is known about a loaded policy; every decision is stored with it.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyInfo {
    pub name: String,
    pub version: String,
    /// The contract version the component implements.
    pub wit_version: WitVersion,
    pub sha256: String,
    pub source: String,
}

/// A compiled, checked policy. Each method runs one decision in a fresh
/// instance; use [`Policy::session`] to make several calls on one instance.
pub struct Policy {
    runtime: Arc<PolicyRuntime>,
    /// Kept to share its native code with other replicas.
    component: wasmtime::component::Component,
    code_source: CodeSource,
    pre: wit::Pre<CallState>,
    info: PolicyInfo,
}

impl Policy {
    pub fn info(&self) -> &PolicyInfo {
        &self.info
    }

    /// Where this process got the policy's native code.
    pub fn code_source(&self) -> CodeSource {
        self.code_source
    }

    /// The contract version the component implements.
    pub fn wit_version(&self) -> WitVersion {
        self.info.wit_version
    }

    /// One instance for several calls. After any failed call it refuses
    /// further calls: a trapped instance cannot be entered again.
    pub fn session(&self) -> Result<PolicySession, PolicyError> {
        let config = &self.runtime.config;
        let mut store = Store::new(
            &self.runtime.engine,
            CallState {
                limit: config.memory_limit,
                hit_limit: false,
            },
        );
        store.limiter(|state| state);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(deadline_ticks(config.deadline));
        refuel(&mut store, config);
        let instance = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| classify("instantiate", e, &store, config))?;
        Ok(PolicySession {
            store,
            instance,
            config: config.clone(),
            broken: false,
            last_fuel: None,
        })
    }

    /// Answers one call in 0.2.0 terms, whatever version the component
    /// implements. A policy's own error value (invalid YAML, a missing
    /// branch) is part of the answer; `Err` is a failure of the component
    /// (trap, budget, deadline, memory).
    pub fn run(&self, call: &Call) -> Result<Answer, PolicyError> {
        self.session()?.run(call)
    }

    /// Answers one call in the terms of the component's own contract version:
    /// for a 0.1.0 component, without the gates the host adds. What its own
    /// conformance vectors test.
    pub fn run_own(&self, call: &Call) -> Result<Answer, PolicyError> {
        self.session()?.run_own(call)
    }

    pub fn parse_compose(&self, yaml: &str) -> Result<ComposeImages, PolicyError> {
        self.session()?.parse_compose(yaml)
    }

    pub fn watch_plan(&self, project: &Project, facts: &Facts) -> Result<WatchPlan, PolicyError> {
        self.session()?.watch_plan(project, facts)
    }

    pub fn decide_commit(
        &self,
        project: &Project,
        facts: &Facts,
        source: TriggerSource,
        remote_head: Option<&str>,
    ) -> Result<CommitDecision, PolicyError> {
        self.session()?
            .decide_commit(project, facts, source, remote_head)
    }

    pub fn decide_images(
        &self,
        project: &Project,
        facts: &Facts,
        prior: &BTreeMap<String, String>,
        lookups: &BTreeMap<String, Lookup>,
    ) -> Result<ImageDecision, PolicyError> {
        self.session()?
            .decide_images(project, facts, prior, lookups)
    }

    pub fn check_auto_deploy(
        &self,
        project: &Project,
        facts: &Facts,
        enable: bool,
    ) -> Result<Verdict, PolicyError> {
        self.session()?.check_auto_deploy(project, facts, enable)
    }

    pub fn check_deployable(
        &self,
        project: &Project,
        facts: &Facts,
        source: TriggerSource,
    ) -> Result<Verdict, PolicyError> {
        self.session()?.check_deployable(project, facts, source)
    }
}

pub struct PolicySession {
    store: Store<CallState>,
    instance: wit::Instance,
    config: PolicyConfig,
    broken: bool,
    last_fuel: Option<u64>,
}

impl PolicySession {
    /// Instructions (fuel) the last call used, whatever its outcome; `None`
    /// before the first call or when metering is off.
    pub fn last_fuel(&self) -> Option<u64> {
        self.last_fuel
    }

    fn call<T>(
        &mut self,
        call: &'static str,
        f: impl FnOnce(&wit::Instance, &mut Store<CallState>) -> wasmtime::Result<T>,
    ) -> Result<T, PolicyError> {
        if self.broken {
            return Err(PolicyError::Trap {
                call,
                message: "this instance failed an earlier call and cannot be entered again".into(),
            });
        }
        self.store
            .set_epoch_deadline(deadline_ticks(self.config.deadline));
        refuel(&mut self.store, &self.config);
        let result = f(&self.instance, &mut self.store);
        self.last_fuel = self.config.fuel.and_then(|budget| {
            let left = self.store.get_fuel().ok()?;
            Some(budget.saturating_sub(left))
        });
        result.map_err(|e| {
            self.broken = true;
            classify(call, e, &self.store, &self.config)
        })
    }

    pub fn policy_info(&mut self) -> Result<(String, String), PolicyError> {
        self.call("policy-info", |i, s| i.policy_info(s))
    }

    pub fn run(&mut self, call: &Call) -> Result<Answer, PolicyError> {
        self.call(call.name(), |i, s| i.run(s, call))
    }

    pub fn run_own(&mut self, call: &Call) -> Result<Answer, PolicyError> {
        self.call(call.name(), |i, s| i.run_own(s, call))
    }

    pub fn parse_compose(&mut self, yaml: &str) -> Result<ComposeImages, PolicyError> {
        let call = "parse-compose";
        self.call(call, |i, s| i.parse_compose(s, yaml))?
            .map_err(|message| PolicyError::Rejected { call, message })
    }

    pub fn watch_plan(
        &mut self,
        project: &Project,
        facts: &Facts,
    ) -> Result<WatchPlan, PolicyError> {
        self.call("watch-plan", |i, s| i.watch_plan(s, project, facts))
    }

    pub fn decide_commit(
        &mut self,
        project: &Project,
        facts: &Facts,
        source: TriggerSource,
        remote_head: Option<&str>,
    ) -> Result<CommitDecision, PolicyError> {
        let call = "decide-commit";
        self.call(call, |i, s| {
            i.decide_commit(s, project, facts, source, remote_head)
        })?
        .map_err(|message| PolicyError::Rejected { call, message })
    }

    pub fn decide_images(
        &mut self,
        project: &Project,
        facts: &Facts,
        prior: &BTreeMap<String, String>,
        lookups: &BTreeMap<String, Lookup>,
    ) -> Result<ImageDecision, PolicyError> {
        self.call("decide-images", |i, s| {
            i.decide_images(s, project, facts, prior, lookups)
        })
    }

    pub fn check_auto_deploy(
        &mut self,
        project: &Project,
        facts: &Facts,
        enable: bool,
    ) -> Result<Verdict, PolicyError> {
        self.call("check-auto-deploy", |i, s| {
            i.check_auto_deploy(s, project, facts, enable)
        })
    }

    pub fn check_deployable(
        &mut self,
        project: &Project,
        facts: &Facts,
        source: TriggerSource,
    ) -> Result<Verdict, PolicyError> {
        self.call("check-deployable", |i, s| {
            i.check_deployable(s, project, facts, source)
        })
    }
}

/// Per-instance state: enforces the memory cap and remembers that it did, so
/// the resulting trap can be reported as what it is.
struct CallState {
    limit: usize,
    hit_limit: bool,
}

impl ResourceLimiter for CallState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.hit_limit = true;
            return Err(wasmtime::Error::msg(format!(
                "memory limit of {} bytes reached",
                self.limit
            )));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; no sane policy needs more.
        Ok(desired <= 100_000)
    }
}

fn classify(
    call: &'static str,
    err: wasmtime::Error,
    store: &Store<CallState>,
    config: &PolicyConfig,
) -> PolicyError {
    if store.data().hit_limit {
        PolicyError::Memory {
            call,
            limit: config.memory_limit,
        }
    } else if let (Some(Trap::OutOfFuel), Some(fuel)) = (err.downcast_ref::<Trap>(), config.fuel) {
        PolicyError::Budget { call, fuel }
    } else if matches!(err.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
        PolicyError::Deadline {
            call,
            deadline: config.deadline,
        }
    } else {
        PolicyError::Trap {
            call,
            message: format!("{err:#}"),
        }
    }
}

/// Each call starts with the whole budget: what an earlier call in the same
/// session used does not count against the next one.
fn refuel(store: &mut Store<CallState>, config: &PolicyConfig) {
    if let Some(fuel) = config.fuel {
        // Fails only when the engine does not meter, and `PolicyRuntime::new`
        // enables metering whenever a budget is set.
        let _ = store.set_fuel(fuel);
    }
}

fn deadline_ticks(deadline: Duration) -> u64 {
    // One extra tick: the current one may be about to end.
    (deadline.as_nanos().div_ceil(EPOCH_TICK.as_nanos()) as u64).max(1) + 1
}

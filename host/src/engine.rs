//! The wasmtime `Engine` and `Linker` shared by every plugin of a host, and the epoch ticker
//! that enforces call deadlines.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig,
    component::{Component, HasSelf, Linker},
};

use crate::{
    bindings::Policy,
    cache::{CompileStats, Counters, DiskCache, Obtained},
    context::{CallCtx, MAX_CORE_INSTANCES, MAX_MEMORIES, MAX_TABLES},
    error::{Error, Result},
};

/// One epoch tick. Deadlines are counted in ticks.
pub(crate) const TICK: Duration = Duration::from_millis(1);

/// How instances get their memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// wasmtime's pooling allocator with room for this many concurrent instances: memory slots
    /// are reserved once and reused, which makes instantiation several times cheaper. Needs
    /// virtual address space (about 4 GiB per slot, never touched); if the reservation fails
    /// the host falls back to `OnDemand` and logs a warning.
    Pooling {
        /// Concurrent instances (and memories) the pool holds.
        max_instances: u32,
        /// Largest memory any plugin may have, in bytes.
        max_memory_bytes: usize,
    },
    /// `mmap` per instance. Works everywhere.
    OnDemand,
}

impl Default for Allocation {
    fn default() -> Self {
        Allocation::Pooling {
            max_instances: 128,
            max_memory_bytes: 64 << 20,
        }
    }
}

/// Engine, linker and ticker. Dropping it stops the ticker thread.
pub(crate) struct Runtime {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<CallCtx>,
    pub(crate) max_memory_bytes: Option<usize>,
    /// Plugin instances the pool holds at once (`None`: on-demand allocation, no cap). The
    /// chain's concurrency limits are reserved against it, less one slot kept for the
    /// instances a load creates to validate a plugin.
    pub(crate) pool_instances: Option<u32>,
    /// Components compiled in this process, by the SHA-256 of their bytes: a policy set
    /// applied again (another config, another order) does not recompile what it already has.
    compiled: Mutex<HashMap<String, Component>>,
    /// Compiled components kept between runs, MAC-verified (see [`crate::cache`]).
    disk: Option<DiskCache>,
    counters: Counters,
    _ticker: Ticker,
}

/// Compiled components kept in memory; past it the cache starts over.
const MAX_COMPILED: usize = 64;

fn config(allocation: Allocation) -> Config {
    let mut cfg = Config::new();
    cfg.epoch_interruption(true);
    cfg.wasm_component_model(true);
    cfg.concurrency_support(false);
    cfg.max_wasm_stack(512 << 10);
    if let Allocation::Pooling {
        max_instances,
        max_memory_bytes,
    } = allocation
    {
        // Sized so that `max_instances` plugin instances always fit: each may use at most
        // the memories, tables and core instances the limiter allows it.
        let per = |n: usize| max_instances.saturating_mul(n as u32);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(max_instances)
            .total_core_instances(per(MAX_CORE_INSTANCES))
            .total_memories(per(MAX_MEMORIES))
            .total_tables(per(MAX_TABLES))
            .max_core_instances_per_component(MAX_CORE_INSTANCES as u32)
            .max_memories_per_component(MAX_MEMORIES as u32)
            .max_tables_per_component(MAX_TABLES as u32)
            .max_memory_size(max_memory_bytes)
            // Reset a slot's first pages with memset instead of giving them back to the
            // kernel: a fresh instance per call would otherwise page-fault them all again.
            .linear_memory_keep_resident(256 << 10)
            .table_keep_resident(64 << 10);
        cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        cfg.memory_init_cow(true);
    }
    cfg
}

impl Runtime {
    pub(crate) fn new(allocation: Allocation, cache_dir: Option<&std::path::Path>) -> Result<Self> {
        let (engine, max_memory_bytes, pool_instances) = match allocation {
            Allocation::Pooling {
                max_memory_bytes,
                max_instances,
            } => match Engine::new(&config(allocation)) {
                Ok(engine) => (engine, Some(max_memory_bytes), Some(max_instances)),
                Err(e) => {
                    tracing::warn!(
                        "pooling allocator unavailable ({e:#}); using on-demand allocation"
                    );
                    (Self::on_demand()?, None, None)
                }
            },
            Allocation::OnDemand => (Self::on_demand()?, None, None),
        };
        let mut linker = Linker::new(&engine);
        Policy::add_to_linker::<CallCtx, HasSelf<CallCtx>>(&mut linker, |ctx| ctx)
            .map_err(|e| Error::Engine(format!("{e:#}")))?;
        let disk = match cache_dir {
            Some(dir) => Some(DiskCache::open(dir, &engine)?),
            None => None,
        };
        let ticker = Ticker::start(engine.clone());
        Ok(Self {
            disk,
            counters: Counters::default(),
            engine,
            linker,
            max_memory_bytes,
            pool_instances,
            compiled: Mutex::new(HashMap::new()),
            _ticker: ticker,
        })
    }

    /// The component with these bytes' SHA-256: from this process's memory, else from the
    /// on-disk cache (MAC verified), else compiled by `compile` and written to both.
    pub(crate) fn compiled(
        &self,
        sha256: &str,
        compile: impl FnOnce() -> wasmtime::Result<Component>,
    ) -> wasmtime::Result<Component> {
        if let Some(c) = self.cache().get(sha256) {
            self.counters.count(Obtained::Memory);
            return Ok(c.clone());
        }
        let from_disk = self.disk.as_ref().and_then(|disk| {
            disk.get(sha256, &self.engine)
                .unwrap_or_else(|why| {
                    tracing::warn!("{why}; compiling again");
                    self.counters.count(Obtained::Rejected);
                    None
                })
                .inspect(|_| self.counters.count(Obtained::Disk))
        });
        let component = match from_disk {
            Some(c) => c,
            None => {
                let c = compile()?;
                self.counters.count(Obtained::Compiled);
                if let Some(disk) = &self.disk
                    && let Err(why) = disk.put(sha256, &c)
                {
                    tracing::warn!("compile cache: {why}");
                }
                c
            }
        };
        let mut cache = self.cache();
        if cache.len() >= MAX_COMPILED {
            cache.clear();
        }
        cache.insert(sha256.to_owned(), component.clone());
        Ok(component)
    }

    /// How components were obtained since the host started.
    pub(crate) fn compile_stats(&self) -> CompileStats {
        self.counters.snapshot()
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Component>> {
        self.compiled.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn on_demand() -> Result<Engine> {
        Engine::new(&config(Allocation::OnDemand)).map_err(|e| Error::Engine(format!("{e:#}")))
    }
}

/// Increments the engine's epoch every [`TICK`] until dropped.
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("mxpolicy-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    engine.increment_epoch();
                }
            })
            .ok();
        if thread.is_none() {
            tracing::error!("could not start the epoch thread: plugin deadlines are not enforced");
        }
        Self { stop, thread }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

//! The model manager: loads models on demand (one load per model however
//! many requests want it), keeps what is resident under the memory budget
//! by evicting idle models least-recently-used first, never evicts a model
//! that is generating, and unloads models idle past the timeout.
//!
//! A request whose memory is held by running work waits for it instead of
//! failing: requests that need to load take turns in one FIFO queue (a
//! request for a resident model queues too while others wait, or a stream
//! of them would starve a load forever), each with a deadline and its
//! cancel token. Only a model that could not fit even with every unpinned
//! model unloaded fails at once.
//!
//! Runtime-agnostic on purpose (std mutex, `futures` shared futures,
//! `event-listener`, `futures-timer`): the same code runs under tokio, in
//! a plain thread with `block_on`, and in the browser.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arny_engine_api::{
    Adapter, CancelToken, DeviceRequest, EngineError, InferenceEngine, LoadOptions, Model,
    ModelSource, Session, SessionOptions,
};
use futures::FutureExt;
use futures::future::Shared;
use web_time::Instant;

use crate::events::{Event, EventBus, UnloadReason};
use crate::manifest::EngineKind;
use crate::{Result, SdkError};

/// What identifies one resident copy of weights: the engine and the file.
/// Specialists whose models resolve to the same key share it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelKey {
    pub engine: EngineKind,
    pub path: PathBuf,
}

/// A model the manager may load.
#[derive(Clone)]
pub struct ModelRef {
    /// The manifest id (the first one, when several share a file).
    pub id: String,
    pub key: ModelKey,
    /// The weights, when the app supplied them instead of a file.
    pub bytes: Option<Arc<[u8]>>,
    pub engine: Arc<dyn InferenceEngine>,
    pub context_length: Option<u32>,
    pub threads: Option<u32>,
    pub device: DeviceRequest,
    /// Bytes it is expected to take before it has loaded (the file size).
    pub estimate: u64,
    /// Specialists served by it, for events.
    pub specialists: Vec<String>,
}

/// A specialist's LoRA adapter, loaded over its model on first use and kept
/// while the model is resident (its bytes count against the budget).
#[derive(Clone)]
pub struct AdapterRef {
    /// For events and errors: the known id or the file name.
    pub name: String,
    /// The file (canonical); also what identifies it.
    pub path: PathBuf,
    /// The adapter's bytes, when the app supplied them instead of a file.
    pub bytes: Option<Arc<[u8]>>,
    pub scale: f32,
}

type LoadResult = std::result::Result<Arc<dyn Model>, Arc<EngineError>>;
#[cfg(not(target_arch = "wasm32"))]
type LoadFuture = futures::future::BoxFuture<'static, LoadResult>;
#[cfg(target_arch = "wasm32")]
type LoadFuture = futures::future::LocalBoxFuture<'static, LoadResult>;

enum Slot {
    Loading(Shared<LoadFuture>),
    Ready(Arc<dyn Model>),
}

struct Entry {
    model_ref: ModelRef,
    slot: Slot,
    /// Leases alive (requests using the model).
    active: usize,
    /// While loading: when the load started.
    last_used: Instant,
    pinned: bool,
    weight_bytes: u64,
    /// Idle sessions kept per role, so a returning role finds its system
    /// prompt already in the KV cache.
    sessions: HashMap<String, Box<dyn Session>>,
    /// Bytes of sessions lent out to requests right now.
    lent_session_bytes: u64,
    /// Adapters loaded over the model, by file. They live as long as the
    /// model: llama.cpp frees an adapter's memory only with its model.
    adapters: HashMap<PathBuf, (String, Arc<dyn Adapter>)>,
    /// Which insertion this is: a request that joined a load that failed
    /// must not touch a newer entry for the same file.
    generation: u64,
}

impl Entry {
    fn bytes(&self) -> u64 {
        let idle: u64 = self.sessions.values().map(|s| s.resident_bytes()).sum();
        let adapters: u64 = self
            .adapters
            .values()
            .map(|(_, a)| a.info().resident_bytes)
            .sum();
        match self.slot {
            Slot::Loading(_) => self.model_ref.estimate,
            Slot::Ready(_) => self.weight_bytes + idle + self.lent_session_bytes + adapters,
        }
    }
    fn evictable(&self) -> bool {
        self.active == 0 && !self.pinned && matches!(self.slot, Slot::Ready(_))
    }
    fn idle_session_bytes(&self) -> u64 {
        self.sessions.values().map(|s| s.resident_bytes()).sum()
    }
    /// What stays however long a request waits: a pinned model's weights
    /// and adapters (its idle sessions can still go).
    fn fixed_bytes(&self) -> u64 {
        if self.pinned {
            self.bytes() - self.idle_session_bytes() - self.lent_session_bytes
        } else {
            0
        }
    }
    /// Running work that will give memory back without anyone's help.
    fn will_free(&self) -> bool {
        self.lent_session_bytes > 0 || matches!(self.slot, Slot::Loading(_))
    }
}

/// What a request for a model does next.
enum Step {
    /// Wait for (or start, and wait for) this load.
    Join(Shared<LoadFuture>, u64),
    Wait(SdkError),
}

/// Whether `needed` more bytes fit, now or later.
enum Room {
    Now,
    /// Running work holds what is missing; it will free it.
    Later(SdkError),
    Never(SdkError),
}

/// One loaded model in [`ManagerStatus`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadedModel {
    pub model: String,
    pub engine: String,
    pub path: String,
    pub specialists: Vec<String>,
    /// `loading` or `ready`.
    pub state: &'static str,
    /// Where it runs (`cpu (4 threads)`, `wgpu: … (Vulkan, DiscreteGpu)`),
    /// once loaded.
    pub device: Option<String>,
    pub bytes: u64,
    /// Requests using it now.
    pub active: usize,
    pub pinned: bool,
    /// Milliseconds since it was last used.
    pub idle_ms: u64,
    /// LoRA adapters loaded over it.
    pub adapters: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ManagerStatus {
    pub budget_bytes: u64,
    pub resident_bytes: u64,
    pub idle_unload_secs: f64,
    pub models: Vec<LoadedModel>,
}

pub(crate) struct ManagerInner {
    budget: u64,
    idle_timeout: Duration,
    /// How long a request may wait for memory, in milliseconds.
    queue_timeout_ms: AtomicU64,
    state: Mutex<HashMap<ModelKey, Entry>>,
    /// Tickets of the requests waiting for a turn, oldest first. Locked
    /// only on its own or inside `state`, never the other way round.
    queue: Mutex<VecDeque<u64>>,
    next_id: AtomicU64,
    /// Notified whenever memory may have been freed or a turn passed.
    freed: event_listener::Event,
    /// Bytes a new session of a model took last time, by model, so a
    /// session waits for its room before it allocates.
    session_bytes: Mutex<HashMap<ModelKey, u64>>,
    events: Arc<EventBus>,
}

/// How long a request waits for memory unless the app says otherwise.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a waiting request looks at its cancel token and deadline
/// between notifications.
const WAIT_TICK: Duration = Duration::from_millis(20);

/// A place in the queue; leaving it (served, cancelled, timed out or
/// dropped with its future) lets the next request have its turn.
struct Ticket<'a> {
    inner: &'a ManagerInner,
    id: u64,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut q = self.inner.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.retain(|t| *t != self.id);
        drop(q);
        self.inner.freed.notify(usize::MAX);
    }
}

/// Why and until when a request waits, and what stops it early.
struct Wait<'a> {
    model: &'a str,
    started: Instant,
    deadline: Instant,
    cancel: &'a CancelToken,
}

impl Wait<'_> {
    /// Until notified or the next tick; fails once cancelled or past the
    /// deadline (with `why`, the budget error that made it wait).
    async fn until_freed(
        &self,
        listener: event_listener::EventListener,
        why: SdkError,
    ) -> Result<()> {
        self.check(why)?;
        futures::future::select(listener, futures_timer::Delay::new(WAIT_TICK)).await;
        Ok(())
    }

    fn check(&self, why: SdkError) -> Result<()> {
        if self.cancel.is_cancelled() {
            return Err(SdkError::Engine(EngineError::Cancelled));
        }
        if Instant::now() >= self.deadline {
            return Err(SdkError::QueueTimeout {
                model: self.model.to_string(),
                waited_ms: self.started.elapsed().as_millis() as u64,
                reason: why.to_string(),
            });
        }
        Ok(())
    }
}

#[derive(Clone)]
pub struct ModelManager {
    inner: Arc<ManagerInner>,
}

impl ModelManager {
    // In a page the load futures are not Send (see `LoadFuture`), so
    // neither is the state; nothing there crosses threads.
    #[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
    pub fn new(budget: u64, idle_timeout: Duration, events: Arc<EventBus>) -> Self {
        Self {
            inner: Arc::new(ManagerInner {
                budget,
                idle_timeout,
                queue_timeout_ms: AtomicU64::new(DEFAULT_QUEUE_TIMEOUT.as_millis() as u64),
                state: Mutex::new(HashMap::new()),
                queue: Mutex::new(VecDeque::new()),
                next_id: AtomicU64::new(1),
                freed: event_listener::Event::new(),
                session_bytes: Mutex::new(HashMap::new()),
                events,
            }),
        }
    }

    /// How long a request may wait for memory held by running work
    /// before it fails with [`SdkError::QueueTimeout`].
    pub fn set_queue_timeout(&self, timeout: Duration) {
        let ms = timeout.as_millis().min(u64::MAX as u128) as u64;
        self.inner.queue_timeout_ms.store(ms, Ordering::Relaxed);
    }

    pub fn queue_timeout(&self) -> Duration {
        Duration::from_millis(self.inner.queue_timeout_ms.load(Ordering::Relaxed))
    }

    fn wait<'a>(&self, model: &'a str, cancel: &'a CancelToken) -> Wait<'a> {
        let started = Instant::now();
        let timeout = self.queue_timeout();
        Wait {
            model,
            started,
            deadline: started + timeout,
            cancel,
        }
    }

    fn notify(&self) {
        self.inner.freed.notify(usize::MAX);
    }

    /// Whether `ticket` may act now: nobody is queued, or it heads the
    /// queue. Without a ticket and with others queued, takes one.
    fn my_turn<'a>(&'a self, ticket: &mut Option<Ticket<'a>>) -> bool {
        let mut q = self.inner.queue.lock().unwrap_or_else(|e| e.into_inner());
        match ticket {
            Some(t) => q.front() == Some(&t.id),
            None if q.is_empty() => true,
            None => {
                let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
                q.push_back(id);
                *ticket = Some(Ticket {
                    inner: &self.inner,
                    id,
                });
                false
            }
        }
    }

    /// Joins the back of the queue (when not in it already).
    fn enqueue<'a>(&'a self, ticket: &mut Option<Ticket<'a>>) {
        if ticket.is_none() {
            let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
            self.inner
                .queue
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back(id);
            *ticket = Some(Ticket {
                inner: &self.inner,
                id,
            });
        }
    }

    /// What a new session of the model took last time; `None` before
    /// its first.
    fn session_estimate(&self, key: &ModelKey) -> Option<u64> {
        let known = self
            .inner
            .session_bytes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        known.get(key).copied()
    }

    fn learn_session_bytes(&self, key: &ModelKey, bytes: u64) {
        let mut known = self
            .inner
            .session_bytes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let slot = known.entry(key.clone()).or_insert(0);
        *slot = (*slot).max(bytes);
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn downgrade(&self) -> std::sync::Weak<ManagerInner> {
        Arc::downgrade(&self.inner)
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn from_inner(inner: Arc<ManagerInner>) -> Self {
        Self { inner }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ModelKey, Entry>> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The model, loaded if needed. Concurrent callers for one model share
    /// one load; a failed load fails all of them with the same typed error
    /// and leaves nothing behind, so a later call tries again. When the
    /// memory it needs is held by running work, waits for it in turn (see
    /// the module docs) until the queue timeout or `cancel`.
    pub async fn acquire(&self, r: &ModelRef, cancel: &CancelToken) -> Result<Lease> {
        let wait = self.wait(&r.id, cancel);
        let mut ticket = None;
        loop {
            // Listening before looking: a free between the two still wakes us.
            let listener = self.inner.freed.listen();
            let step = {
                let mut st = self.lock();
                let turn = self.my_turn(&mut ticket);
                match st.get_mut(&r.key) {
                    Some(e) if turn && matches!(e.slot, Slot::Ready(_)) => {
                        let Slot::Ready(m) = &e.slot else {
                            unreachable!("matched above")
                        };
                        e.active += 1;
                        e.last_used = Instant::now();
                        return Ok(Lease {
                            manager: self.clone(),
                            id: r.id.clone(),
                            key: r.key.clone(),
                            model: m.clone(),
                        });
                    }
                    // A load in flight was admitted already: share it.
                    Some(Entry {
                        slot: Slot::Loading(f),
                        active,
                        generation,
                        ..
                    }) => {
                        *active += 1;
                        Step::Join(f.clone(), *generation)
                    }
                    None if turn => {
                        // A model is admitted with room for one session, or
                        // several loaded at once could leave none for any.
                        // Before the first session is measured, half the
                        // weights: a small model's KV cache and compute
                        // buffers come close to that at a 512-token context.
                        // (Capped so a model that fits alone still loads.)
                        let prior =
                            (r.estimate / 2).min(self.inner.budget.saturating_sub(r.estimate));
                        let session = self.session_estimate(&r.key).unwrap_or(prior);
                        let needed = r.estimate + session;
                        match self.room(&mut st, &r.id, needed, None) {
                            Room::Now => {
                                let (f, generation) = self.start_load(&mut st, r);
                                Step::Join(f, generation)
                            }
                            Room::Later(why) => {
                                self.enqueue(&mut ticket);
                                Step::Wait(why)
                            }
                            Room::Never(e) => return Err(e),
                        }
                    }
                    // Others are ahead of us.
                    _ => Step::Wait(SdkError::MemoryBudget {
                        model: r.id.clone(),
                        needed: r.estimate,
                        available: 0,
                        budget: self.inner.budget,
                        busy: vec!["requests queued ahead of it".into()],
                    }),
                }
            };
            match step {
                Step::Join(f, generation) => {
                    drop(ticket);
                    return self.finish_load(r, f, generation).await;
                }
                Step::Wait(why) => wait.until_freed(listener, why).await?,
            }
        }
    }

    fn start_load(
        &self,
        st: &mut HashMap<ModelKey, Entry>,
        r: &ModelRef,
    ) -> (Shared<LoadFuture>, u64) {
        let fut = load_future(r.clone(), self.inner.events.clone()).shared();
        let generation = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        st.insert(
            r.key.clone(),
            Entry {
                model_ref: r.clone(),
                slot: Slot::Loading(fut.clone()),
                active: 1,
                last_used: Instant::now(),
                pinned: false,
                weight_bytes: 0,
                sessions: HashMap::new(),
                lent_session_bytes: 0,
                adapters: HashMap::new(),
                generation,
            },
        );
        self.inner.events.emit(Event::Loading {
            model: r.id.clone(),
            specialists: r.specialists.clone(),
        });
        (fut, generation)
    }

    /// Waits for a load this request counted itself into (`active`), and
    /// turns that count into a lease, or takes it back on failure.
    async fn finish_load(
        &self,
        r: &ModelRef,
        fut: Shared<LoadFuture>,
        generation: u64,
    ) -> Result<Lease> {
        // Dropped before the load ends (a cancelled request): uncount.
        let mut pending = Pending {
            manager: self,
            key: &r.key,
            generation,
            armed: true,
        };
        let mine = fut.clone();
        let result = fut.await;
        // Whoever gets here first publishes the result; the others find
        // it published. The slot must still hold *this* load: after a
        // failure a newer load may be in it.
        let mut st = self.lock();
        pending.armed = false;
        let Some(e) = st.get_mut(&r.key).filter(|e| e.generation == generation) else {
            // Failed and removed by whoever published it.
            return Err(SdkError::Load {
                model: r.id.clone(),
                source: result.err().unwrap_or_else(|| {
                    Arc::new(EngineError::engine(
                        "sdk",
                        "the model was unloaded while it loaded",
                    ))
                }),
            });
        };
        if matches!(&e.slot, Slot::Loading(f) if f.ptr_eq(&mine)) {
            match &result {
                Ok(model) => {
                    e.weight_bytes = model.info().resident_bytes.max(1);
                    e.slot = Slot::Ready(model.clone());
                    let ms = e.last_used.elapsed().as_secs_f64() * 1e3;
                    e.last_used = Instant::now();
                    let bytes = e.weight_bytes;
                    self.inner.events.emit(Event::Loaded {
                        model: r.id.clone(),
                        bytes,
                        ms,
                    });
                    // The estimate was a guess; the real size may not fit.
                    let _ = self.evict_for(&mut st, &r.key);
                }
                Err(error) => {
                    st.remove(&r.key);
                    self.inner.events.emit(Event::LoadFailed {
                        model: r.id.clone(),
                        error: error.to_string(),
                    });
                }
            }
            self.notify();
        }
        match result {
            Ok(model) => Ok(Lease {
                manager: self.clone(),
                id: r.id.clone(),
                key: r.key.clone(),
                model,
            }),
            Err(error) => Err(SdkError::Load {
                model: r.id.clone(),
                source: error,
            }),
        }
    }

    fn resident(st: &HashMap<ModelKey, Entry>) -> u64 {
        st.values().map(Entry::bytes).sum()
    }

    /// Whether `needed` more bytes fit; when they can now, makes room by
    /// evicting idle models (least recently used first, never `keep`) and
    /// then idle pooled sessions. Evicts nothing when they cannot.
    fn room(
        &self,
        st: &mut HashMap<ModelKey, Entry>,
        model: &str,
        needed: u64,
        keep: Option<&ModelKey>,
    ) -> Room {
        let budget = self.inner.budget;
        let used = Self::resident(st);
        if used + needed <= budget {
            return Room::Now;
        }
        let freeable: u64 = st
            .iter()
            .map(|(k, e)| {
                if e.evictable() && Some(k) != keep {
                    e.bytes()
                } else {
                    e.idle_session_bytes()
                }
            })
            .sum();
        let available = budget.saturating_sub(used) + freeable;
        if needed <= available {
            self.free_up(st, needed, keep);
            return Room::Now;
        }
        let busy = st
            .values()
            .filter(|e| !e.evictable())
            .map(|e| {
                let why = if e.pinned {
                    "pinned"
                } else if matches!(e.slot, Slot::Loading(_)) {
                    "loading"
                } else {
                    "generating"
                };
                format!("{} ({why})", e.model_ref.id)
            })
            .collect();
        let err = SdkError::MemoryBudget {
            model: model.to_string(),
            needed,
            available,
            budget,
            busy,
        };
        let fixed: u64 = st.values().map(Entry::fixed_bytes).sum();
        let keep_bytes = keep.and_then(|k| st.get(k)).map_or(0, |e| {
            e.weight_bytes
                + e.adapters
                    .values()
                    .map(|(_, a)| a.info().resident_bytes)
                    .sum::<u64>()
        });
        let someone_will_free = st.values().any(Entry::will_free)
            || (keep.is_none() && st.values().any(|e| e.active > 0 && !e.pinned));
        if needed + fixed + keep_bytes > budget || !someone_will_free {
            Room::Never(err)
        } else {
            Room::Later(err)
        }
    }

    fn free_up(&self, st: &mut HashMap<ModelKey, Entry>, needed: u64, keep: Option<&ModelKey>) {
        let budget = self.inner.budget;
        let mut idle: Vec<(Instant, ModelKey)> = st
            .iter()
            .filter(|(k, e)| e.evictable() && Some(*k) != keep)
            .map(|(k, e)| (e.last_used, k.clone()))
            .collect();
        idle.sort_by_key(|(t, _)| *t);
        for (_, key) in idle {
            if Self::resident(st) + needed <= budget {
                return;
            }
            self.unload_locked(st, &key, UnloadReason::Evicted);
        }
        let mut pooled: Vec<(Instant, ModelKey)> = st
            .iter()
            .filter(|(_, e)| !e.sessions.is_empty())
            .map(|(k, e)| (e.last_used, k.clone()))
            .collect();
        pooled.sort_by_key(|(t, _)| *t);
        for (_, key) in pooled {
            if Self::resident(st) + needed <= budget {
                return;
            }
            if let Some(e) = st.get_mut(&key) {
                let dropped = e.idle_session_bytes();
                e.sessions.clear();
                tracing::debug!(model = %e.model_ref.id, bytes = dropped, "dropped idle sessions for room");
            }
        }
    }

    /// After something grew (a real size known, a new session), evict idle
    /// models other than `keep` until the total fits again.
    fn evict_for(&self, st: &mut HashMap<ModelKey, Entry>, keep: &ModelKey) -> Result<()> {
        let budget = self.inner.budget;
        let mut idle: Vec<(Instant, ModelKey)> = st
            .iter()
            .filter(|(k, e)| *k != keep && e.evictable())
            .map(|(k, e)| (e.last_used, k.clone()))
            .collect();
        idle.sort_by_key(|(t, _)| *t);
        for (_, key) in idle {
            if Self::resident(st) <= budget {
                break;
            }
            self.unload_locked(st, &key, UnloadReason::Evicted);
        }
        let used = Self::resident(st);
        if used > budget {
            let model = st
                .get(keep)
                .map(|e| e.model_ref.id.clone())
                .unwrap_or_default();
            return Err(SdkError::MemoryBudget {
                model,
                needed: used,
                available: budget,
                budget,
                busy: Vec::new(),
            });
        }
        Ok(())
    }

    fn unload_locked(
        &self,
        st: &mut HashMap<ModelKey, Entry>,
        key: &ModelKey,
        reason: UnloadReason,
    ) {
        if let Some(e) = st.remove(key) {
            let bytes = e.bytes();
            tracing::info!(model = %e.model_ref.id, bytes, ?reason, "unloading model");
            self.inner.events.emit(Event::Unloaded {
                model: e.model_ref.id.clone(),
                bytes,
                reason,
            });
            self.notify();
        }
    }

    /// Keeps a model resident whatever the idle time or budget pressure.
    pub fn pin(&self, key: &ModelKey) {
        if let Some(e) = self.lock().get_mut(key) {
            e.pinned = true;
        }
    }

    /// Unloads every unpinned model nobody has used for the idle timeout.
    /// Returns how many were unloaded.
    pub fn unload_idle(&self) -> usize {
        let mut st = self.lock();
        let timeout = self.inner.idle_timeout;
        let stale: Vec<ModelKey> = st
            .iter()
            .filter(|(_, e)| e.evictable() && e.last_used.elapsed() >= timeout)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &stale {
            self.unload_locked(&mut st, k, UnloadReason::Idle);
        }
        stale.len()
    }

    /// Unloads one model now if nobody is using it. Returns whether it did.
    pub fn unload(&self, key: &ModelKey) -> bool {
        let mut st = self.lock();
        if st
            .get(key)
            .is_some_and(|e| e.active == 0 && matches!(e.slot, Slot::Ready(_)))
        {
            self.unload_locked(&mut st, key, UnloadReason::Requested);
            true
        } else {
            false
        }
    }

    pub fn status(&self) -> ManagerStatus {
        let st = self.lock();
        let mut models: Vec<LoadedModel> = st
            .iter()
            .map(|(k, e)| LoadedModel {
                model: e.model_ref.id.clone(),
                engine: k.engine.id().to_string(),
                path: k.path.display().to_string(),
                specialists: e.model_ref.specialists.clone(),
                state: match e.slot {
                    Slot::Loading(_) => "loading",
                    Slot::Ready(_) => "ready",
                },
                device: match &e.slot {
                    Slot::Loading(_) => None,
                    Slot::Ready(m) => Some(m.info().device.clone()),
                },
                bytes: e.bytes(),
                active: e.active,
                pinned: e.pinned,
                idle_ms: e.last_used.elapsed().as_millis() as u64,
                adapters: {
                    let mut names: Vec<String> =
                        e.adapters.values().map(|(n, _)| n.clone()).collect();
                    names.sort();
                    names
                },
            })
            .collect();
        models.sort_by(|a, b| a.model.cmp(&b.model));
        ManagerStatus {
            budget_bytes: self.inner.budget,
            resident_bytes: Self::resident(&st),
            idle_unload_secs: self.inner.idle_timeout.as_secs_f64(),
            models,
        }
    }

    pub fn idle_timeout(&self) -> Duration {
        self.inner.idle_timeout
    }
}

fn load_future(r: ModelRef, events: Arc<EventBus>) -> LoadFuture {
    let load = async move {
        tracing::info!(model = %r.id, path = %r.key.path.display(), "loading model");
        let model = r.id.clone();
        // llama.cpp reports once per tensor: pass on whole percents only.
        let last = Mutex::new(-1i32);
        let options = LoadOptions {
            context_length: r.context_length,
            threads: r.threads,
            device: r.device,
            progress: Some(Arc::new(move |fraction: f32| {
                let percent = (fraction.clamp(0.0, 1.0) * 100.0) as i32;
                let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                if percent > *last {
                    *last = percent;
                    events.emit(Event::LoadProgress {
                        model: model.clone(),
                        fraction,
                    });
                }
            })),
            ..LoadOptions::default()
        };
        let source = match &r.bytes {
            Some(bytes) => ModelSource::Bytes {
                name: r.id.clone(),
                bytes: bytes.clone(),
            },
            None => ModelSource::Path(r.key.path.clone()),
        };
        r.engine.load(source, options).await.map_err(Arc::new)
    };
    #[cfg(not(target_arch = "wasm32"))]
    return load.boxed();
    // In the browser engines' futures are not Send (JS promises); nothing
    // there moves between threads.
    #[cfg(target_arch = "wasm32")]
    return load.boxed_local();
}

/// A request counted into a model's load; uncounted if it goes away
/// before the load ends. The last one to go abandons the load, so no
/// half-loaded entry waits for a poller that will never come.
struct Pending<'a> {
    manager: &'a ModelManager,
    key: &'a ModelKey,
    generation: u64,
    armed: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut st = self.manager.lock();
        let Some(e) = st
            .get_mut(self.key)
            .filter(|e| e.generation == self.generation)
        else {
            return;
        };
        e.active = e.active.saturating_sub(1);
        if e.active == 0 && matches!(e.slot, Slot::Loading(_)) {
            tracing::info!(model = %e.model_ref.id, "load abandoned: every request for it went away");
            st.remove(self.key);
        }
        drop(st);
        self.manager.notify();
    }
}

/// A model in use. While any lease on a model is alive, the model is
/// never evicted or unloaded. Dropping it marks the model used now.
pub struct Lease {
    manager: ModelManager,
    id: String,
    key: ModelKey,
    model: Arc<dyn Model>,
}

impl Lease {
    pub fn model(&self) -> &Arc<dyn Model> {
        &self.model
    }

    pub fn key(&self) -> &ModelKey {
        &self.key
    }

    /// `adapter` loaded over this lease's model: the copy already loaded,
    /// else a new load (an [`Event::AdapterLoaded`]), counted against the
    /// budget. `specialist` names who wants it, for events and errors.
    pub async fn adapter(
        &self,
        specialist: &str,
        adapter: &AdapterRef,
    ) -> Result<Arc<dyn Adapter>> {
        if let Some((_, a)) = self
            .manager
            .lock()
            .get(&self.key)
            .and_then(|e| e.adapters.get(&adapter.path))
        {
            return Ok(a.clone());
        }
        let started = Instant::now();
        let source = match &adapter.bytes {
            Some(bytes) => ModelSource::Bytes {
                name: adapter.name.clone(),
                bytes: bytes.clone(),
            },
            None => ModelSource::Path(adapter.path.clone()),
        };
        let loaded = self
            .model
            .load_adapter(source, adapter.scale)
            .await
            .map_err(|e| SdkError::Adapter {
                specialist: specialist.to_string(),
                adapter: adapter.name.clone(),
                source: Arc::new(e),
            })?;
        let mut st = self.manager.lock();
        let Some(e) = st.get_mut(&self.key) else {
            return Ok(loaded);
        };
        // Two requests may have loaded it at once: keep the first.
        let kept = e
            .adapters
            .entry(adapter.path.clone())
            .or_insert_with(|| (adapter.name.clone(), loaded.clone()))
            .1
            .clone();
        if Arc::ptr_eq(&kept, &loaded) {
            self.manager.inner.events.emit(Event::AdapterLoaded {
                model: e.model_ref.id.clone(),
                adapter: adapter.name.clone(),
                specialist: specialist.to_string(),
                bytes: loaded.info().resident_bytes,
                ms: started.elapsed().as_secs_f64() * 1e3,
            });
            self.manager.evict_for(&mut st, &self.key)?;
        }
        Ok(kept)
    }

    /// A session for `role`: the one kept from its last request when there
    /// is one (its KV cache still holds the role's system prompt), else a
    /// new one with `adapter`, counted against the budget; when the budget
    /// is held by other requests' sessions, waits for them (queue timeout,
    /// `cancel`). A role always comes with the same adapter, so a kept
    /// session's cache is never reused under another one. It goes back to
    /// the pool when the returned guard drops, whatever happened to the
    /// request.
    pub async fn session(
        &self,
        role: &str,
        context_length: Option<u32>,
        adapter: Option<Arc<dyn Adapter>>,
        cancel: &CancelToken,
    ) -> Result<PooledSession<'_>> {
        let kept = {
            let mut st = self.manager.lock();
            match st.get_mut(&self.key) {
                Some(e) => {
                    let s = e.sessions.remove(role);
                    if let Some(s) = &s {
                        e.lent_session_bytes += s.resident_bytes();
                    }
                    s
                }
                None => None,
            }
        };
        let session = match kept {
            Some(s) => s,
            None => self.new_session(context_length, adapter, cancel).await?,
        };
        Ok(PooledSession {
            lease: self,
            role: role.to_string(),
            session: Some(session),
        })
    }

    /// Reserves room for a session (what the last one of this model took)
    /// before allocating it, so waiting happens before the memory is used.
    async fn new_session(
        &self,
        context_length: Option<u32>,
        adapter: Option<Arc<dyn Adapter>>,
        cancel: &CancelToken,
    ) -> Result<Box<dyn Session>> {
        let manager = &self.manager;
        let wait = manager.wait(&self.id, cancel);
        loop {
            let listener = manager.inner.freed.listen();
            let reserved = manager.session_estimate(&self.key).unwrap_or(0);
            let room = {
                let mut st = manager.lock();
                let room = manager.room(&mut st, &self.id, reserved, Some(&self.key));
                if let (Room::Now, Some(e)) = (&room, st.get_mut(&self.key)) {
                    e.lent_session_bytes += reserved;
                }
                room
            };
            match room {
                Room::Now => {}
                Room::Later(why) => {
                    wait.until_freed(listener, why).await?;
                    continue;
                }
                Room::Never(e) => return Err(e),
            }
            let created = self
                .model
                .new_session(SessionOptions {
                    context_length,
                    adapter: adapter.clone(),
                })
                .await;
            let mut st = manager.lock();
            if let Some(e) = st.get_mut(&self.key) {
                e.lent_session_bytes = e.lent_session_bytes.saturating_sub(reserved);
            }
            let session = match created {
                Ok(s) => s,
                Err(e) => {
                    drop(st);
                    manager.notify();
                    return Err(e.into());
                }
            };
            let bytes = session.resident_bytes();
            manager.learn_session_bytes(&self.key, bytes);
            let fits = bytes <= reserved
                || match manager.room(&mut st, &self.id, bytes, Some(&self.key)) {
                    Room::Now => true,
                    Room::Later(_) => false,
                    Room::Never(e) => return Err(e),
                };
            if fits {
                if let Some(e) = st.get_mut(&self.key) {
                    e.lent_session_bytes += bytes;
                }
                return Ok(session);
            }
            // Bigger than reserved and no room yet: free it, wait, and try
            // again now that its size is known.
            drop(st);
            drop(session);
            manager.notify();
        }
    }
}

/// A session borrowed from a model's pool.
pub struct PooledSession<'a> {
    lease: &'a Lease,
    role: String,
    session: Option<Box<dyn Session>>,
}

impl PooledSession<'_> {
    pub fn get(&mut self) -> &mut dyn Session {
        self.session.as_deref_mut().expect("present until drop")
    }
}

impl Drop for PooledSession<'_> {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        let mut st = self.lease.manager.lock();
        if let Some(e) = st.get_mut(&self.lease.key) {
            e.lent_session_bytes = e
                .lent_session_bytes
                .saturating_sub(session.resident_bytes());
            // One kept per role; a concurrent request's extra one is dropped.
            e.sessions
                .entry(std::mem::take(&mut self.role))
                .or_insert(session);
        }
        drop(st);
        self.lease.manager.notify();
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut st = self.manager.lock();
        if let Some(e) = st.get_mut(&self.key) {
            e.active = e.active.saturating_sub(1);
            e.last_used = Instant::now();
        }
        drop(st);
        self.manager.notify();
    }
}

#[cfg(test)]
mod tests {
    //! The manager on the mock engine: budgets, single-flight loads,
    //! eviction and pinning in milliseconds, no model file involved.

    use arny_engine_api::mock::{MockEngine, MockSpec};
    use futures::executor::block_on;
    use futures::future::{join, join_all};

    use super::*;

    const MB: u64 = 1 << 20;

    fn manager(
        budget: u64,
    ) -> (
        ModelManager,
        futures::channel::mpsc::UnboundedReceiver<Event>,
    ) {
        let events = Arc::new(EventBus::default());
        let rx = events.subscribe();
        (
            ModelManager::new(budget, Duration::from_secs(3600), events),
            rx,
        )
    }

    fn model(engine: &MockEngine, name: &str) -> ModelRef {
        ModelRef {
            id: name.into(),
            key: ModelKey {
                engine: EngineKind::Gguf,
                path: PathBuf::from(name),
            },
            bytes: None,
            engine: Arc::new(engine.clone()),
            context_length: None,
            threads: None,
            device: DeviceRequest::Auto,
            estimate: 100 * MB,
            specialists: vec![format!("{name}-specialist")],
        }
    }

    fn engine() -> MockEngine {
        let spec = MockSpec {
            weight_bytes: 100 * MB,
            session_bytes: 10 * MB,
            fail: false,
        };
        MockEngine::new()
            .with_model("a", spec)
            .with_model("b", spec)
            .with_model("c", spec)
            .with_model("broken", MockSpec { fail: true, ..spec })
    }

    fn loaded(m: &ModelManager) -> Vec<String> {
        m.status().models.into_iter().map(|m| m.model).collect()
    }

    fn unloads(
        rx: &mut futures::channel::mpsc::UnboundedReceiver<Event>,
    ) -> Vec<(String, UnloadReason)> {
        let mut out = Vec::new();
        while let Ok(e) = rx.try_recv() {
            if let Event::Unloaded { model, reason, .. } = e {
                out.push((model, reason));
            }
        }
        out
    }

    #[test]
    fn concurrent_requests_share_one_load() {
        let e = engine();
        let (m, _rx) = manager(1 << 30);
        let a = model(&e, "a");
        let gate = e.hold();
        let none = CancelToken::new();
        let waiters = join_all((0..4).map(|_| m.acquire(&a, &none)));
        let (leases, ()) = block_on(join(waiters, async move { drop(gate) }));
        assert_eq!(e.loads(), 1);
        assert!(leases.iter().all(|l| l.is_ok()));
        assert_eq!(m.status().models[0].active, 4);
        drop(leases);
        assert_eq!(m.status().models[0].active, 0);
    }

    #[test]
    fn a_failed_load_fails_every_waiter_and_leaves_nothing() {
        let e = engine();
        let (m, _rx) = manager(1 << 30);
        let broken = model(&e, "broken");
        let gate = e.hold();
        let none = CancelToken::new();
        let waiters = join_all((0..3).map(|_| m.acquire(&broken, &none)));
        let (results, ()) = block_on(join(waiters, async move { drop(gate) }));
        assert_eq!(e.loads(), 1);
        for r in results {
            match r {
                Err(SdkError::Load { model, source }) => {
                    assert_eq!(model, "broken");
                    assert!(matches!(*source, EngineError::Corrupt { .. }));
                }
                Err(other) => panic!("{other}"),
                Ok(_) => panic!("a broken model loaded"),
            }
        }
        assert!(loaded(&m).is_empty());
        // Nothing was kept: the next request tries again.
        assert!(block_on(m.acquire(&broken, &CancelToken::new())).is_err());
        assert_eq!(e.loads(), 2);
    }

    #[test]
    fn idle_models_are_evicted_least_recently_used_first() {
        let e = engine();
        let (m, mut rx) = manager(250 * MB);
        for name in ["a", "b"] {
            drop(block_on(m.acquire(&model(&e, name), &CancelToken::new())).unwrap());
        }
        // `a` was used last: `b` is the one to go.
        drop(block_on(m.acquire(&model(&e, "a"), &CancelToken::new())).unwrap());
        let _c = block_on(m.acquire(&model(&e, "c"), &CancelToken::new())).unwrap();
        assert_eq!(loaded(&m), ["a", "c"]);
        assert_eq!(unloads(&mut rx), [("b".to_string(), UnloadReason::Evicted)]);
        assert!(m.status().resident_bytes <= 250 * MB);
    }

    #[test]
    fn busy_models_are_never_evicted_and_a_waiter_times_out_naming_them() {
        let e = engine();
        let (m, mut rx) = manager(250 * MB);
        m.set_queue_timeout(Duration::from_millis(60));
        let _a = block_on(m.acquire(&model(&e, "a"), &CancelToken::new())).unwrap();
        let _b = block_on(m.acquire(&model(&e, "b"), &CancelToken::new())).unwrap();
        let started = Instant::now();
        match block_on(m.acquire(&model(&e, "c"), &CancelToken::new())) {
            Err(SdkError::QueueTimeout {
                model,
                waited_ms,
                reason,
            }) => {
                assert_eq!(model, "c");
                assert!(waited_ms >= 60, "{waited_ms}");
                assert!(reason.contains("a (generating)"), "{reason}");
                assert!(reason.contains("b (generating)"), "{reason}");
            }
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("loaded past the budget"),
        }
        assert!(started.elapsed() >= Duration::from_millis(60));
        assert_eq!(e.loads(), 2);
        assert!(unloads(&mut rx).is_empty());
    }

    #[test]
    fn a_request_waits_for_memory_a_finishing_request_frees() {
        let e = engine();
        let (m, mut rx) = manager(250 * MB);
        let a = block_on(m.acquire(&model(&e, "a"), &CancelToken::new())).unwrap();
        let _b = block_on(m.acquire(&model(&e, "b"), &CancelToken::new())).unwrap();
        let c = model(&e, "c");
        let finish_a = async {
            futures_timer::Delay::new(Duration::from_millis(30)).await;
            drop(a);
        };
        let (got, ()) = block_on(join(m.acquire(&c, &CancelToken::new()), finish_a));
        let _c = got.unwrap();
        let mut now = loaded(&m);
        now.sort();
        assert_eq!(now, ["b", "c"]);
        assert_eq!(unloads(&mut rx), [("a".to_string(), UnloadReason::Evicted)]);
    }

    #[test]
    fn waiting_requests_are_served_first_come_first_served() {
        let e = engine();
        let (m, _rx) = manager(250 * MB);
        let a = block_on(m.acquire(&model(&e, "a"), &CancelToken::new())).unwrap();
        let b = block_on(m.acquire(&model(&e, "b"), &CancelToken::new())).unwrap();
        let order = Mutex::new(Vec::new());
        let (c, mm) = (model(&e, "c"), model(&e, "b"));
        // `c` queues first (needs room); the later request for resident
        // `b` must not overtake it, or a busy model would starve loads.
        let first = async {
            let l = m.acquire(&c, &CancelToken::new()).await.unwrap();
            order.lock().unwrap().push("c");
            drop(l);
        };
        let second = async {
            futures_timer::Delay::new(Duration::from_millis(10)).await;
            let l = m.acquire(&mm, &CancelToken::new()).await.unwrap();
            order.lock().unwrap().push("b");
            drop(l);
        };
        let free = async {
            futures_timer::Delay::new(Duration::from_millis(40)).await;
            drop(a);
            futures_timer::Delay::new(Duration::from_millis(20)).await;
            drop(b);
        };
        block_on(join(join(first, second), free));
        assert_eq!(*order.lock().unwrap(), ["c", "b"]);
    }

    #[test]
    fn a_queued_request_is_cancelled_within_a_tick() {
        let e = engine();
        let (m, _rx) = manager(250 * MB);
        let _a = block_on(m.acquire(&model(&e, "a"), &CancelToken::new())).unwrap();
        let _b = block_on(m.acquire(&model(&e, "b"), &CancelToken::new())).unwrap();
        let cancel = CancelToken::new();
        let c = model(&e, "c");
        let started = Instant::now();
        let canceller = async {
            futures_timer::Delay::new(Duration::from_millis(30)).await;
            cancel.cancel();
        };
        let (got, ()) = block_on(join(m.acquire(&c, &cancel), canceller));
        assert!(matches!(got, Err(SdkError::Engine(EngineError::Cancelled))));
        // The default deadline is 30 s; the cancel ends the wait.
        assert!(started.elapsed() < Duration::from_secs(5));
        // Nothing is left queued: the next request for a resident model
        // goes straight through.
        drop(block_on(m.acquire(&model(&e, "a"), &CancelToken::new())).unwrap());
        assert!(m.inner.queue.lock().unwrap().is_empty());
    }

    #[test]
    fn a_model_that_cannot_fit_even_alone_fails_at_once() {
        let e = engine();
        let (m, _rx) = manager(90 * MB);
        assert!(matches!(
            block_on(m.acquire(&model(&e, "a"), &CancelToken::new())),
            Err(SdkError::MemoryBudget { .. })
        ));
        assert_eq!(e.loads(), 0);
    }

    #[test]
    fn a_session_waits_for_sessions_other_requests_hold() {
        let e = engine();
        // Room for the weights and one session.
        let (m, _rx) = manager(115 * MB);
        let lease = block_on(m.acquire(&model(&e, "a"), &CancelToken::new())).unwrap();
        let first = block_on(lease.session("math", None, None, &CancelToken::new())).unwrap();
        let none = CancelToken::new();
        let second = lease.session("chat", None, None, &none);
        let finish_first = async {
            futures_timer::Delay::new(Duration::from_millis(30)).await;
            drop(first);
        };
        let (got, ()) = block_on(join(second, finish_first));
        let _s = got.unwrap();
        // The idle `math` session went to make room for `chat`.
        assert_eq!(m.status().resident_bytes, 110 * MB);
    }

    #[test]
    fn pinned_models_stay_and_idle_ones_unload() {
        let e = engine();
        let events = Arc::new(EventBus::default());
        let mut rx = events.subscribe();
        let m = ModelManager::new(1 << 30, Duration::ZERO, events);
        let (a, b) = (model(&e, "a"), model(&e, "b"));
        drop(block_on(m.acquire(&a, &CancelToken::new())).unwrap());
        drop(block_on(m.acquire(&b, &CancelToken::new())).unwrap());
        m.pin(&a.key);
        assert_eq!(m.unload_idle(), 1);
        assert_eq!(loaded(&m), ["a"]);
        assert_eq!(unloads(&mut rx), [("b".to_string(), UnloadReason::Idle)]);
        // A pinned model is not evicted for room either.
        let small = ModelManager::new(
            150 * MB,
            Duration::from_secs(3600),
            Arc::new(EventBus::default()),
        );
        drop(block_on(small.acquire(&a, &CancelToken::new())).unwrap());
        small.pin(&a.key);
        assert!(matches!(
            block_on(small.acquire(&b, &CancelToken::new())),
            Err(SdkError::MemoryBudget { .. })
        ));
    }

    #[test]
    fn sessions_count_against_the_budget_and_are_kept_per_role() {
        let e = engine();
        let (m, _rx) = manager(1 << 30);
        let lease = block_on(m.acquire(&model(&e, "a"), &CancelToken::new())).unwrap();
        assert_eq!(m.status().resident_bytes, 100 * MB);
        {
            let mut s = block_on(lease.session("math", None, None, &CancelToken::new())).unwrap();
            let _ = s.get();
            assert_eq!(m.status().resident_bytes, 110 * MB);
        }
        // Returned to the pool: still counted, and reused by its role.
        assert_eq!(m.status().resident_bytes, 110 * MB);
        drop(block_on(lease.session("math", None, None, &CancelToken::new())).unwrap());
        assert_eq!(m.status().resident_bytes, 110 * MB);
        drop(block_on(lease.session("chat", None, None, &CancelToken::new())).unwrap());
        assert_eq!(m.status().resident_bytes, 120 * MB);
    }
}

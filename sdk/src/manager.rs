//! The model manager: loads models on demand (one load per model however
//! many requests want it), keeps what is resident under the memory budget
//! by evicting idle models least-recently-used first, never evicts a model
//! that is generating, and unloads models idle past the timeout.
//!
//! Runtime-agnostic on purpose (std mutex, `futures` shared futures): the
//! same code runs under tokio, in a plain thread with `block_on`, and in
//! the browser.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arny_engine_api::{
    Adapter, DeviceRequest, EngineError, InferenceEngine, LoadOptions, Model, ModelSource, Session,
    SessionOptions,
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
    state: Mutex<HashMap<ModelKey, Entry>>,
    events: Arc<EventBus>,
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
                state: Mutex::new(HashMap::new()),
                events,
            }),
        }
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
    /// and leaves nothing behind, so a later call tries again.
    pub async fn acquire(&self, r: &ModelRef) -> Result<Lease> {
        loop {
            let waiting = {
                let mut st = self.lock();
                match st.get_mut(&r.key) {
                    Some(e) => match &e.slot {
                        Slot::Ready(m) => {
                            e.active += 1;
                            e.last_used = Instant::now();
                            return Ok(Lease {
                                manager: self.clone(),
                                key: r.key.clone(),
                                model: m.clone(),
                            });
                        }
                        Slot::Loading(f) => f.clone(),
                    },
                    None => {
                        self.make_room(&mut st, &r.id, r.estimate)?;
                        let fut = load_future(r.clone(), self.inner.events.clone()).shared();
                        st.insert(
                            r.key.clone(),
                            Entry {
                                model_ref: r.clone(),
                                slot: Slot::Loading(fut.clone()),
                                active: 0,
                                last_used: Instant::now(),
                                pinned: false,
                                weight_bytes: 0,
                                sessions: HashMap::new(),
                                lent_session_bytes: 0,
                                adapters: HashMap::new(),
                            },
                        );
                        self.inner.events.emit(Event::Loading {
                            model: r.id.clone(),
                            specialists: r.specialists.clone(),
                        });
                        fut
                    }
                }
            };
            let mine = waiting.clone();
            let result = waiting.await;
            // Whoever gets here first publishes the result; the others find
            // it published and loop to take their lease. The slot must still
            // hold *this* load: after a failure a newer load may be in it.
            let mut st = self.lock();
            let still_loading = matches!(
                st.get(&r.key).map(|e| &e.slot),
                Some(Slot::Loading(f)) if f.ptr_eq(&mine)
            );
            if still_loading {
                match result {
                    Ok(model) => {
                        let e = st.get_mut(&r.key).expect("checked above");
                        e.weight_bytes = model.info().resident_bytes.max(1);
                        e.slot = Slot::Ready(model);
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
                        return Err(SdkError::Load {
                            model: r.id.clone(),
                            source: error,
                        });
                    }
                }
            } else if let Err(error) = result {
                return Err(SdkError::Load {
                    model: r.id.clone(),
                    source: error,
                });
            }
        }
    }

    fn resident(st: &HashMap<ModelKey, Entry>) -> u64 {
        st.values().map(Entry::bytes).sum()
    }

    /// Frees room for `needed` more bytes by evicting idle models, least
    /// recently used first. Fails without evicting anything when even
    /// evicting every idle model would not be enough.
    fn make_room(&self, st: &mut HashMap<ModelKey, Entry>, model: &str, needed: u64) -> Result<()> {
        let budget = self.inner.budget;
        let used = Self::resident(st);
        if used + needed <= budget {
            return Ok(());
        }
        let freeable: u64 = st
            .values()
            .filter(|e| e.evictable())
            .map(Entry::bytes)
            .sum();
        let available = budget.saturating_sub(used) + freeable;
        if needed > available {
            let busy = st
                .values()
                .filter(|e| !e.evictable())
                .map(|e| {
                    let why = if e.pinned {
                        "pinned"
                    } else if e.active > 0 {
                        "generating"
                    } else {
                        "loading"
                    };
                    format!("{} ({why})", e.model_ref.id)
                })
                .collect();
            return Err(SdkError::MemoryBudget {
                model: model.to_string(),
                needed,
                available,
                budget,
                busy,
            });
        }
        let mut idle: Vec<(Instant, ModelKey)> = st
            .iter()
            .filter(|(_, e)| e.evictable())
            .map(|(k, e)| (e.last_used, k.clone()))
            .collect();
        idle.sort_by_key(|(t, _)| *t);
        for (_, key) in idle {
            if Self::resident(st) + needed <= budget {
                break;
            }
            self.unload_locked(st, &key, UnloadReason::Evicted);
        }
        Ok(())
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

/// A model in use. While any lease on a model is alive, the model is
/// never evicted or unloaded. Dropping it marks the model used now.
pub struct Lease {
    manager: ModelManager,
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
    /// new one with `adapter`, counted against the budget. A role always
    /// comes with the same adapter, so a kept session's cache is never
    /// reused under another one. It goes back to the pool when the
    /// returned guard drops, whatever happened to the request.
    pub async fn session(
        &self,
        role: &str,
        context_length: Option<u32>,
        adapter: Option<Arc<dyn Adapter>>,
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
            None => {
                let s = self
                    .model
                    .new_session(SessionOptions {
                        context_length,
                        adapter,
                    })
                    .await?;
                let bytes = s.resident_bytes();
                let mut st = self.manager.lock();
                if let Some(e) = st.get_mut(&self.key) {
                    e.lent_session_bytes += bytes;
                }
                if let Err(err) = self.manager.evict_for(&mut st, &self.key) {
                    if let Some(e) = st.get_mut(&self.key) {
                        e.lent_session_bytes = e.lent_session_bytes.saturating_sub(bytes);
                    }
                    return Err(err);
                }
                s
            }
        };
        Ok(PooledSession {
            lease: self,
            role: role.to_string(),
            session: Some(session),
        })
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
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut st = self.manager.lock();
        if let Some(e) = st.get_mut(&self.key) {
            e.active = e.active.saturating_sub(1);
            e.last_used = Instant::now();
        }
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
        let waiters = join_all((0..4).map(|_| m.acquire(&a)));
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
        let waiters = join_all((0..3).map(|_| m.acquire(&broken)));
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
        assert!(block_on(m.acquire(&broken)).is_err());
        assert_eq!(e.loads(), 2);
    }

    #[test]
    fn idle_models_are_evicted_least_recently_used_first() {
        let e = engine();
        let (m, mut rx) = manager(250 * MB);
        for name in ["a", "b"] {
            drop(block_on(m.acquire(&model(&e, name))).unwrap());
        }
        // `a` was used last: `b` is the one to go.
        drop(block_on(m.acquire(&model(&e, "a"))).unwrap());
        let _c = block_on(m.acquire(&model(&e, "c"))).unwrap();
        assert_eq!(loaded(&m), ["a", "c"]);
        assert_eq!(unloads(&mut rx), [("b".to_string(), UnloadReason::Evicted)]);
        assert!(m.status().resident_bytes <= 250 * MB);
    }

    #[test]
    fn busy_models_are_never_evicted() {
        let e = engine();
        let (m, mut rx) = manager(250 * MB);
        let _a = block_on(m.acquire(&model(&e, "a"))).unwrap();
        let _b = block_on(m.acquire(&model(&e, "b"))).unwrap();
        match block_on(m.acquire(&model(&e, "c"))) {
            Err(SdkError::MemoryBudget { model, busy, .. }) => {
                assert_eq!(model, "c");
                let mut busy = busy;
                busy.sort();
                assert_eq!(busy, ["a (generating)", "b (generating)"]);
            }
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("loaded past the budget"),
        }
        assert_eq!(e.loads(), 2);
        assert!(unloads(&mut rx).is_empty());
    }

    #[test]
    fn pinned_models_stay_and_idle_ones_unload() {
        let e = engine();
        let events = Arc::new(EventBus::default());
        let mut rx = events.subscribe();
        let m = ModelManager::new(1 << 30, Duration::ZERO, events);
        let (a, b) = (model(&e, "a"), model(&e, "b"));
        drop(block_on(m.acquire(&a)).unwrap());
        drop(block_on(m.acquire(&b)).unwrap());
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
        drop(block_on(small.acquire(&a)).unwrap());
        small.pin(&a.key);
        assert!(matches!(
            block_on(small.acquire(&b)),
            Err(SdkError::MemoryBudget { .. })
        ));
    }

    #[test]
    fn sessions_count_against_the_budget_and_are_kept_per_role() {
        let e = engine();
        let (m, _rx) = manager(1 << 30);
        let lease = block_on(m.acquire(&model(&e, "a"))).unwrap();
        assert_eq!(m.status().resident_bytes, 100 * MB);
        {
            let mut s = block_on(lease.session("math", None, None)).unwrap();
            let _ = s.get();
            assert_eq!(m.status().resident_bytes, 110 * MB);
        }
        // Returned to the pool: still counted, and reused by its role.
        assert_eq!(m.status().resident_bytes, 110 * MB);
        drop(block_on(lease.session("math", None, None)).unwrap());
        assert_eq!(m.status().resident_bytes, 110 * MB);
        drop(block_on(lease.session("chat", None, None)).unwrap());
        assert_eq!(m.status().resident_bytes, 120 * MB);
    }
}

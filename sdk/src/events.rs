//! What the assistant is doing, as a stream a UI can show ("Loading math
//! specialist…").

use std::sync::Mutex;

use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnloadReason {
    /// Nobody used it for `idle_unload_secs`.
    Idle,
    /// Made room for another model under the memory budget.
    Evicted,
    /// The app asked (or the assistant was dropped).
    Requested,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The gateway decided where a request goes.
    Routed {
        label: String,
        confidence: f32,
        /// Who will answer: a specialist, `cloud`, or the local stand-in.
        handler: String,
        strategy: String,
        ms: f64,
    },
    /// A model started loading for these specialists.
    Loading {
        model: String,
        specialists: Vec<String>,
    },
    /// How far a load has got, in `[0, 1]`, for engines that report it.
    LoadProgress {
        model: String,
        fraction: f32,
    },
    Loaded {
        model: String,
        bytes: u64,
        ms: f64,
    },
    LoadFailed {
        model: String,
        error: String,
    },
    Unloaded {
        model: String,
        bytes: u64,
        reason: UnloadReason,
    },
    /// A specialist's (or the gateway's) LoRA adapter was loaded over its model.
    AdapterLoaded {
        model: String,
        adapter: String,
        specialist: String,
        bytes: u64,
        ms: f64,
    },
    /// A request went to the cloud endpoint.
    CloudRequest {
        model: String,
    },
}

/// Fan-out to any number of subscribers; a dropped receiver unsubscribes.
#[derive(Default)]
pub struct EventBus {
    subscribers: Mutex<Vec<UnboundedSender<Event>>>,
}

impl EventBus {
    pub fn subscribe(&self) -> UnboundedReceiver<Event> {
        let (tx, rx) = unbounded();
        self.attach(tx);
        rx
    }

    /// Adds a subscriber the caller made.
    pub fn attach(&self, tx: UnboundedSender<Event>) {
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
    }

    pub fn emit(&self, event: Event) {
        tracing::debug!(?event, "assistant event");
        let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subs.retain(|s| s.unbounded_send(event.clone()).is_ok());
    }
}

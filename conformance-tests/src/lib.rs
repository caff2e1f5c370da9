//! # arny-conformance: the engine TCK
//!
//! One behaviour suite for every engine, written against
//! `arny-engine-api`'s traits alone. An engine joins by providing a
//! [`Target`] (itself plus two models in its own format) and invoking
//! [`engine_tck!`] in a test file; nothing in the suite may change for it.
//!
//! The suite runs on two models, both real files loaded by the engine:
//! * the **tiny** generated model (`arny-tiny-models`, random weights) for
//!   the contract: every rule of `engine-api`'s session contract, caching,
//!   sampling, cancellation, stop strings, bad files. Its forward pass
//!   costs microseconds, so these cases are cheap even on a software GPU;
//! * the **reference** model, SmolLM2-135M-Instruct, for behaviour only a
//!   trained model has (it answers 2+2, writes non-ASCII text) and for the
//!   real tokenizer, template and batch-shape agreement.

use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::Arc;

use arny_engine_api::{InferenceEngine, LoadOptions, Model, ModelSource};

pub mod cases;
pub mod compare;
pub mod peft;

pub use arny_tiny_models::{Storage, TinyArch, TinyModel};

/// What an engine brings to the suite.
pub struct Target {
    pub engine: Arc<dyn InferenceEngine>,
    /// The reference model (SmolLM2-135M-Instruct) in this engine's format.
    pub model_path: PathBuf,
    /// `TinyModel::default()` in this engine's format.
    pub tiny_model_path: PathBuf,
    pub options: LoadOptions,
}

/// The reference model's GGUF file (the default model, from the cache);
/// panics with how to get it when it is missing.
pub fn reference_gguf() -> PathBuf {
    arny_model_store::require_default_model().unwrap_or_else(|e| panic!("{e}"))
}

/// The tiny model's GGUF file, written on first use.
pub fn tiny_gguf() -> PathBuf {
    TinyModel::default()
        .file()
        .unwrap_or_else(|e| panic!("writing the tiny model: {e}"))
}

/// Which of the target's models a case runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Tiny,
    Reference,
}

/// What the suite knows about a model before the engine says anything.
#[derive(Debug, Clone)]
pub struct Facts {
    pub which: Which,
    pub vocab_size: u32,
    pub trained_context_length: u32,
    pub parameters: RangeInclusive<u64>,
}

impl Facts {
    pub fn of(which: Which) -> Self {
        match which {
            // SmolLM2-135M: 134.5 M parameters, 49152-token vocabulary, 8k
            // context.
            Which::Reference => Self {
                which,
                vocab_size: 49_152,
                trained_context_length: 8192,
                parameters: 130_000_000..=140_000_000,
            },
            Which::Tiny => {
                let tiny = TinyModel::default();
                let n = tiny.parameters();
                Self {
                    which,
                    vocab_size: tiny.vocab_size() as u32,
                    trained_context_length: tiny.context_length,
                    parameters: n..=n,
                }
            }
        }
    }
}

/// A target with one of its models loaded, shared by that model's cases.
pub struct Tck {
    pub target: Target,
    pub which: Which,
    pub model_path: PathBuf,
    pub model: Arc<dyn Model>,
    pub facts: Facts,
}

impl Tck {
    /// Loads one of the target's models; panics with the engine's message
    /// if that fails, since no case can run without it.
    pub fn load(target: Target, which: Which) -> Self {
        let model_path = match which {
            Which::Tiny => target.tiny_model_path.clone(),
            Which::Reference => target.model_path.clone(),
        };
        let model = futures::executor::block_on(target.engine.load(
            ModelSource::Path(model_path.clone()),
            target.options.clone(),
        ))
        .unwrap_or_else(|e| {
            panic!(
                "{} engine cannot load the {which:?} model {}: {e}",
                target.engine.id(),
                model_path.display()
            )
        });
        Self {
            target,
            which,
            model_path,
            model,
            facts: Facts::of(which),
        }
    }
}

/// Generates one `#[test]` per TCK case for the target returned by
/// `$target` (a `fn() -> Target`), in two modules: `tiny::` (the contract,
/// on the generated model) and `reference::` (behaviour, on SmolLM2). Each
/// model is loaded once per test binary.
#[macro_export]
macro_rules! engine_tck {
    ($target:path) => {
        fn __tck(which: $crate::Which) -> &'static $crate::Tck {
            use ::std::sync::OnceLock;
            static TINY: OnceLock<$crate::Tck> = OnceLock::new();
            static REFERENCE: OnceLock<$crate::Tck> = OnceLock::new();
            let slot = match which {
                $crate::Which::Tiny => &TINY,
                $crate::Which::Reference => &REFERENCE,
            };
            slot.get_or_init(|| $crate::Tck::load($target(), which))
        }
        $crate::engine_tck!(@cases tiny, Tiny,
            info_is_consistent,
            tokenizer_round_trips,
            special_tokens_parse,
            chat_template_matches_reference,
            greedy_is_deterministic_across_sessions,
            max_tokens_is_exact,
            stop_string_truncates_output,
            cancel_after_k_tokens,
            second_turn_reuses_kv_cache,
            seeded_sampling_is_reproducible,
            temperature_differs_from_greedy,
            logits_agree_across_paths,
            truncate_then_continue_matches_fresh,
            truncate_past_the_end_is_a_no_op,
            empty_eval_is_a_no_op,
            context_length_is_resolved_or_refused,
            tokens_outside_the_vocabulary_are_refused,
            context_overflow_is_typed_and_recoverable,
            empty_prompt_is_invalid,
            bad_files_give_typed_errors,
            sessions_run_concurrently,
            adapters_follow_capabilities,
            constraint_holds_whatever_the_logits,
            top_logprobs_rank_the_choice,
            embeddings_follow_capabilities,
        );
        $crate::engine_tck!(@cases reference, Reference,
            info_is_consistent,
            tokenizer_round_trips,
            special_tokens_parse,
            chat_template_matches_reference,
            greedy_answers_two_plus_two,
            constrained_json_names_the_capital,
            embeddings_follow_capabilities,
            streamed_pieces_are_utf8_safe,
            logits_agree_across_paths,
            truncate_then_continue_matches_fresh,
        );
    };
    (@cases $module:ident, $which:ident, $($case:ident),* $(,)?) => {
        mod $module {
            $(
                #[test]
                fn $case() {
                    $crate::block_on($crate::cases::$case(super::__tck($crate::Which::$which)));
                }
            )*
        }
    };
}

/// Runs a case's future to completion (used by [`engine_tck!`]).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}

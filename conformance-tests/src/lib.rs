//! # arny-conformance: the engine TCK
//!
//! One behaviour suite for every engine, written against
//! `arny-engine-api`'s traits alone. An engine joins by providing a
//! [`Target`] (itself plus the reference model in its own format) and
//! invoking [`engine_tck!`] in a test file; nothing in the suite may change
//! for it. The reference model is SmolLM2-135M-Instruct, so a few cases
//! check what that model is known to do (answer 2+2, use ChatML).
//!
//! Every case runs on the real model: real tokens, real logits, real files.

use std::path::PathBuf;
use std::sync::Arc;

use arny_engine_api::{InferenceEngine, LoadOptions, Model, ModelSource};

pub mod cases;
pub mod compare;

/// What an engine brings to the suite.
pub struct Target {
    pub engine: Arc<dyn InferenceEngine>,
    /// The reference model (SmolLM2-135M-Instruct) in this engine's format.
    pub model_path: PathBuf,
    pub options: LoadOptions,
}

/// A target with its model loaded once and shared by the cases.
pub struct Tck {
    pub target: Target,
    pub model: Arc<dyn Model>,
}

impl Tck {
    /// Loads the target's model; panics with the engine's message if that
    /// fails, since no case can run without it.
    pub fn load(target: Target) -> Self {
        let model = futures::executor::block_on(target.engine.load(
            ModelSource::Path(target.model_path.clone()),
            target.options.clone(),
        ))
        .unwrap_or_else(|e| {
            panic!(
                "{} engine cannot load the reference model {}: {e}",
                target.engine.id(),
                target.model_path.display()
            )
        });
        Self { target, model }
    }
}

/// Generates one `#[test]` per TCK case for the target returned by
/// `$target` (a `fn() -> Target`). The model is loaded once per test binary.
#[macro_export]
macro_rules! engine_tck {
    ($target:path) => {
        fn __tck() -> &'static $crate::Tck {
            static TCK: ::std::sync::OnceLock<$crate::Tck> = ::std::sync::OnceLock::new();
            TCK.get_or_init(|| $crate::Tck::load($target()))
        }
        $crate::engine_tck!(@cases
            info_is_consistent,
            tokenizer_round_trips,
            special_tokens_parse,
            chat_template_matches_reference,
            greedy_answers_two_plus_two,
            greedy_is_deterministic_across_sessions,
            max_tokens_is_exact,
            stop_string_truncates_output,
            cancel_after_k_tokens,
            streamed_pieces_are_utf8_safe,
            second_turn_reuses_kv_cache,
            seeded_sampling_is_reproducible,
            temperature_differs_from_greedy,
            logits_agree_across_paths,
            truncate_then_continue_matches_fresh,
            context_overflow_is_typed_and_recoverable,
            empty_prompt_is_invalid,
            bad_files_give_typed_errors,
            sessions_run_concurrently,
        );
    };
    (@cases $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::block_on($crate::cases::$case(__tck()));
            }
        )*
    };
}

/// Runs a case's future to completion (used by [`engine_tck!`]).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}

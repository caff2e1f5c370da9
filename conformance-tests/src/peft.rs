//! An engine running a shipped adapter against PEFT's tuned model in torch.
//!
//! `arny tune` records, for held-out examples, the top-1 choice of PEFT's
//! tuned model and of the base at every position (float32 in torch, the
//! base read from the same GGUF). An engine that applies the adapter as
//! PEFT does makes the same choices: it agrees with the tuned model about
//! as often as its base agrees with PEFT's base, and where the adapter
//! changes PEFT's choice, it changes the engine's too. A wrong Q/K row
//! permutation or scale breaks that last figure first.

use std::sync::Arc;

use arny_engine_api::{Adapter, EngineError, LogitsRequest, Model, SessionOptions, TokenId};
use serde::Deserialize;

use crate::compare::argmax;

#[derive(Deserialize)]
struct Reference {
    examples: Vec<Example>,
}

#[derive(Deserialize)]
struct Example {
    tokens: Vec<TokenId>,
    tuned: Choices,
    base: Choices,
}

#[derive(Deserialize)]
struct Choices {
    top1: Vec<TokenId>,
}

/// How closely an engine follows PEFT.
#[derive(Debug, Clone, PartialEq)]
pub struct PeftAgreement {
    /// Teacher-forced positions compared.
    pub positions: usize,
    /// Top-1 agreement with PEFT's tuned model, the adapter on.
    pub tuned: f64,
    /// Top-1 agreement with PEFT's base, no adapter.
    pub base: f64,
    /// Positions where the adapter changes PEFT's choice.
    pub changed: usize,
    /// Of those, the share where the engine with the adapter makes PEFT's
    /// tuned choice.
    pub follows: f64,
}

/// Runs `reference` (a shipped adapter's `.reference.json`) through
/// `model` with and without `adapter`.
pub async fn agreement(
    model: &dyn Model,
    adapter: Arc<dyn Adapter>,
    reference: &str,
) -> Result<PeftAgreement, EngineError> {
    let refs: Reference = serde_json::from_str(reference)
        .map_err(|e| EngineError::InvalidInput(format!("the PEFT reference: {e}")))?;
    let (mut tuned_same, mut base_same, mut changed, mut followed, mut total) = (0, 0, 0, 0, 0);
    for ex in &refs.examples {
        let n = ex.tokens.len();
        if ex.tuned.top1.len() != n || ex.base.top1.len() != n {
            return Err(EngineError::InvalidInput(
                "the PEFT reference's choices do not cover every position".into(),
            ));
        }
        let top1 = async |a: Option<Arc<dyn Adapter>>| -> Result<Vec<TokenId>, EngineError> {
            let mut s = model
                .new_session(SessionOptions {
                    adapter: a,
                    ..Default::default()
                })
                .await?;
            let l = s.eval(&ex.tokens, LogitsRequest::All).await?;
            Ok((0..l.rows()).map(|i| argmax(l.row(i)) as TokenId).collect())
        };
        let got_tuned = top1(Some(adapter.clone())).await?;
        let got_base = top1(None).await?;
        for p in 0..n {
            total += 1;
            tuned_same += usize::from(got_tuned[p] == ex.tuned.top1[p]);
            base_same += usize::from(got_base[p] == ex.base.top1[p]);
            if ex.tuned.top1[p] != ex.base.top1[p] {
                changed += 1;
                followed += usize::from(got_tuned[p] == ex.tuned.top1[p]);
            }
        }
    }
    let rate = |n: usize, d: usize| n as f64 / d.max(1) as f64;
    Ok(PeftAgreement {
        positions: total,
        tuned: rate(tuned_same, total),
        base: rate(base_same, total),
        changed,
        follows: rate(followed, changed),
    })
}

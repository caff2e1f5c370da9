//! Cross-engine comparison: one model file (or its conversions) through two
//! engines, on the same tokens. The reference engine (llama.cpp) quantizes
//! activations, so bit-equality is not expected; what is measured is how
//! often the two agree on the next token and how far apart their
//! distributions are.
//!
//! For each prompt, the reference continues it greedily for `positions`
//! tokens; both engines then read that exact sequence (teacher forcing)
//! and their next-token distributions at each continuation position are
//! compared: top-1 agreement, and KL(reference ‖ candidate) in nats. Then
//! both continue the prompt greedily on their own for `greedy_tokens`
//! tokens and the continuations are compared.

use std::sync::Arc;

use arny_engine_api::{
    Adapter, EngineError, GenerateRequest, Model, Prompt, SessionOptions, TokenId, generate,
    prompt_tokens, teacher_forced_logits,
};
use serde::Serialize;

/// Twenty prompts of different kinds: chat, reasoning, code, lists, prose.
pub const PROMPTS: [&str; 20] = [
    "What is 2+2?",
    "Explain photosynthesis in two sentences.",
    "Write a haiku about the sea.",
    "List three fruits that are red.",
    "How do I reverse a string in Python?",
    "What is the capital of France?",
    "I feel stressed about my exams. Any advice?",
    "Plan a short morning routine.",
    "Translate 'good morning' into Spanish.",
    "Why is the sky blue?",
    "Give me a tip for better sleep.",
    "What is 15% of 80?",
    "Describe a cat to someone who has never seen one.",
    "Write one sentence about the moon.",
    "What are the primary colors?",
    "Name a famous scientist and what they discovered.",
    "How many days are in a leap year?",
    "Suggest a name for a small bakery.",
    "What does a compiler do?",
    "Tell me a fun fact about octopuses.",
];

#[derive(Debug, Clone)]
pub struct CompareOptions {
    pub prompts: Vec<String>,
    /// Teacher-forced positions per prompt.
    pub positions: usize,
    /// Free-running greedy tokens per prompt.
    pub greedy_tokens: u32,
}

impl Default for CompareOptions {
    fn default() -> Self {
        Self {
            prompts: PROMPTS.iter().map(|s| s.to_string()).collect(),
            positions: 64,
            greedy_tokens: 32,
        }
    }
}

/// One prompt's figures.
#[derive(Debug, Clone, Serialize)]
pub struct PromptReport {
    pub prompt: String,
    pub positions: usize,
    pub top1_agreement: f64,
    pub mean_kl: f64,
    pub max_kl: f64,
    /// Tokens the free-running greedy continuations share before they differ.
    pub greedy_common_prefix: usize,
    pub greedy_tokens: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub reference: String,
    pub candidate: String,
    pub prompts: Vec<PromptReport>,
    /// Over all positions of all prompts.
    pub top1_agreement: f64,
    pub mean_kl: f64,
    pub max_kl: f64,
    /// Prompts whose greedy continuations are identical.
    pub greedy_identical: usize,
    /// Where the engines disagree on top-1: how much more likely the
    /// reference found its own choice than the candidate's, as a median
    /// log-probability gap in nats (`None` when they always agree). Small
    /// values mean near-ties, which rounding alone can flip.
    pub disagreement_gap_median: Option<f64>,
    /// For scale: the reference's median gap between its top two tokens
    /// over all positions.
    pub top2_gap_median: f64,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The gap in nats between the reference's top two tokens.
fn top2_gap(z: &[f32]) -> f64 {
    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &v in z {
        if v > a {
            (a, b) = (v, a);
        } else if v > b {
            b = v;
        }
    }
    (a - b) as f64
}

/// log-softmax in f64.
pub fn log_softmax(z: &[f32]) -> Vec<f64> {
    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = z.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
    z.iter().map(|&v| v as f64 - lse).collect()
}

/// KL(p ‖ q) in nats, from logits.
pub fn kl_divergence(p_logits: &[f32], q_logits: &[f32]) -> f64 {
    let (lp, lq) = (log_softmax(p_logits), log_softmax(q_logits));
    lp.iter()
        .zip(&lq)
        .map(|(a, b)| a.exp() * (a - b))
        .sum::<f64>()
        .max(0.0)
}

pub fn argmax(z: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in z.iter().enumerate() {
        if *v > z[best] {
            best = i;
        }
    }
    best
}

async fn greedy(
    model: &dyn Model,
    adapter: &Option<Arc<dyn Adapter>>,
    prompt: &str,
    n: u32,
) -> Result<Vec<TokenId>, EngineError> {
    let mut s = model.new_session(with_adapter(adapter)).await?;
    let mut req = GenerateRequest::chat(prompt);
    req.prompt = as_prompt(model, prompt);
    req.max_tokens = n;
    req.ignore_eos = true;
    Ok(generate(model, s.as_mut(), req, |_| {}).await?.tokens)
}

/// A user turn in the model's chat template, or for a base model (no
/// template) the text itself: what `arny generate` sends either.
fn as_prompt(model: &dyn Model, text: &str) -> Prompt {
    match model.chat_template() {
        Some(_) => Prompt::Chat(vec![arny_engine_api::ChatMessage::user(text.to_string())]),
        None => Prompt::Text(text.to_string()),
    }
}

fn with_adapter(adapter: &Option<Arc<dyn Adapter>>) -> SessionOptions {
    SessionOptions {
        adapter: adapter.clone(),
        ..SessionOptions::default()
    }
}

/// Compares `candidate` with `reference` on `opts`' prompts.
pub async fn compare(
    reference: &dyn Model,
    candidate: &dyn Model,
    opts: &CompareOptions,
) -> Result<Comparison, EngineError> {
    compare_adapted((reference, None), (candidate, None), opts).await
}

/// [`compare`] with each side's sessions running an adapter its model
/// loaded (the same adapter file on both, for a fair comparison).
pub async fn compare_adapted(
    (reference, ref_adapter): (&dyn Model, Option<Arc<dyn Adapter>>),
    (candidate, cand_adapter): (&dyn Model, Option<Arc<dyn Adapter>>),
    opts: &CompareOptions,
) -> Result<Comparison, EngineError> {
    if reference.info().vocab_size != candidate.info().vocab_size {
        return Err(EngineError::InvalidInput(format!(
            "vocabularies differ: {} vs {} tokens",
            reference.info().vocab_size,
            candidate.info().vocab_size
        )));
    }
    let mut reports = Vec::new();
    let (mut agree, mut total, mut kl_sum, mut kl_max, mut identical) =
        (0usize, 0usize, 0f64, 0f64, 0usize);
    let (mut disagreement_gaps, mut top2_gaps) = (Vec::new(), Vec::new());
    let mut rs = reference.new_session(with_adapter(&ref_adapter)).await?;
    let mut cs = candidate.new_session(with_adapter(&cand_adapter)).await?;
    for prompt in &opts.prompts {
        let tokens = prompt_tokens(reference, &as_prompt(reference, prompt))?;
        let theirs = prompt_tokens(candidate, &as_prompt(candidate, prompt))?;
        if tokens != theirs {
            return Err(EngineError::InvalidInput(format!(
                "the engines tokenize {prompt:?} differently"
            )));
        }
        // The reference's own continuation is the text both read.
        let cont = greedy(reference, &ref_adapter, prompt, opts.positions as u32).await?;
        let mut seq = tokens.clone();
        seq.extend_from_slice(&cont);
        let rl = teacher_forced_logits(rs.as_mut(), &seq).await?;
        let cl = teacher_forced_logits(cs.as_mut(), &seq).await?;
        // Row i predicts seq[i + 1]: the continuation's predictions start at
        // the prompt's last row.
        let first = tokens.len() - 1;
        let last = seq.len() - 1; // exclusive: the last row predicts past the text
        let (mut a, mut n, mut ks, mut km) = (0usize, 0usize, 0f64, 0f64);
        for row in first..last {
            let (r, c) = (rl.row(row), cl.row(row));
            let (ra, ca) = (argmax(r), argmax(c));
            a += (ra == ca) as usize;
            if ra != ca {
                // Logit differences are log-probability differences.
                disagreement_gaps.push((r[ra] - r[ca]) as f64);
            }
            top2_gaps.push(top2_gap(r));
            let kl = kl_divergence(r, c);
            ks += kl;
            km = km.max(kl);
            n += 1;
        }
        let g_ref = greedy(reference, &ref_adapter, prompt, opts.greedy_tokens).await?;
        let g_cand = greedy(candidate, &cand_adapter, prompt, opts.greedy_tokens).await?;
        let common = g_ref
            .iter()
            .zip(&g_cand)
            .take_while(|(x, y)| x == y)
            .count();
        identical += (g_ref == g_cand) as usize;
        agree += a;
        total += n;
        kl_sum += ks;
        kl_max = kl_max.max(km);
        reports.push(PromptReport {
            prompt: prompt.clone(),
            positions: n,
            top1_agreement: a as f64 / n.max(1) as f64,
            mean_kl: ks / n.max(1) as f64,
            max_kl: km,
            greedy_common_prefix: common,
            greedy_tokens: g_ref.len(),
        });
    }
    Ok(Comparison {
        reference: format!("{} ({})", reference.info().engine, reference.info().device),
        candidate: format!("{} ({})", candidate.info().engine, candidate.info().device),
        prompts: reports,
        top1_agreement: agree as f64 / total.max(1) as f64,
        mean_kl: kl_sum / total.max(1) as f64,
        max_kl: kl_max,
        greedy_identical: identical,
        disagreement_gap_median: median(disagreement_gaps),
        top2_gap_median: median(top2_gaps).unwrap_or(0.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_is_zero_for_equal_and_positive_for_different_distributions() {
        let a = [1.0f32, 2.0, 3.0];
        assert!(kl_divergence(&a, &a).abs() < 1e-12);
        // Shifting every logit changes nothing.
        assert!(kl_divergence(&a, &[11.0, 12.0, 13.0]).abs() < 1e-12);
        // Two-point check against a hand computation.
        let (p, q) = ([0.0f32, 0.0], [(3.0f32).ln(), 0.0]); // p = (.5,.5), q = (.75,.25)
        let want = 0.5 * (0.5f64 / 0.75).ln() + 0.5 * (0.5f64 / 0.25).ln();
        assert!((kl_divergence(&p, &q) - want).abs() < 1e-6);
        assert!(
            kl_divergence(&q, &p) > 0.0 && (kl_divergence(&q, &p) - want).abs() > 1e-3,
            "KL is not symmetric"
        );
    }

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[-1.0]), 0);
    }
}

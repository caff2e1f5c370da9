//! The one sampler every engine uses.
//!
//! Engines hand over raw logits; everything from repetition penalty to the
//! random draw happens here, so identical logits and seed give identical
//! tokens on llama.cpp, ExecuTorch and Burn alike. The pipeline follows
//! llama.cpp's default order: penalties, top-k, temperature, top-p, min-p,
//! draw. A constraint's [`TokenMask`] comes first of all: tokens it does not
//! allow are never candidates.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::constraint::TokenMask;
use crate::{EngineError, Result, TokenId};

/// How to pick the next token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// 0 (or below) means greedy: always the most likely token.
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 disables.
    pub top_k: u32,
    /// Keep the smallest set whose probability reaches p; 1 disables.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the best one; 0 disables.
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of recent tokens; 1 disables.
    pub repetition_penalty: f32,
    /// Subtracted from the logit of every token seen in the window
    /// (OpenAI's `presence_penalty`); 0 disables.
    pub presence_penalty: f32,
    /// Subtracted once per occurrence in the window (OpenAI's
    /// `frequency_penalty`); 0 disables.
    pub frequency_penalty: f32,
    /// How many recent tokens the penalties look at.
    pub repeat_last_n: usize,
    /// `None`: the model's default seed from its load options.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repeat_last_n: 64,
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Deterministic argmax decoding.
    pub fn greedy() -> Self {
        Self::default()
    }

    /// For conversation: llama.cpp's default sampler (temperature 0.8,
    /// top-k 40, top-p 0.95, min-p 0.05) plus a repetition penalty of 1.1
    /// over the last 64 tokens, llama.cpp's long-time default, which keeps
    /// a small model from answering with one sentence over and over.
    pub fn interactive() -> Self {
        Self {
            temperature: 0.8,
            repetition_penalty: 1.1,
            ..Self::default()
        }
    }

    /// Sampling at `temperature` with the default filters.
    pub fn with_temperature(temperature: f32) -> Self {
        Self {
            temperature,
            ..Self::default()
        }
    }

    /// Rejects values that would make the distribution meaningless.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(EngineError::InvalidInput(what.to_string()));
        if !self.temperature.is_finite() {
            return bad("temperature must be finite");
        }
        if !(0.0..=1.0).contains(&self.top_p) || self.top_p.is_nan() {
            return bad("top_p must be in [0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) || self.min_p.is_nan() {
            return bad("min_p must be in [0, 1]");
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad("repetition_penalty must be a positive number");
        }
        if !(-2.0..=2.0).contains(&self.presence_penalty) || self.presence_penalty.is_nan() {
            return bad("presence_penalty must be in [-2, 2]");
        }
        if !(-2.0..=2.0).contains(&self.frequency_penalty) || self.frequency_penalty.is_nan() {
            return bad("frequency_penalty must be in [-2, 2]");
        }
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

/// A seeded sampler; keep one per generation.
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    candidates: Vec<(TokenId, f32)>,
    penalized: Vec<f32>,
}

impl Sampler {
    /// `default_seed` applies when `params.seed` is `None`.
    pub fn new(params: SamplingParams, default_seed: u64) -> Result<Self> {
        params.validate()?;
        let seed = params.seed.unwrap_or(default_seed);
        Ok(Self {
            params,
            rng: ChaCha8Rng::seed_from_u64(seed),
            candidates: Vec::new(),
            penalized: Vec::new(),
        })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from `logits`, given the tokens so far (for the
    /// repetition penalty). Fails only on empty or all-NaN logits.
    pub fn sample(&mut self, logits: &[f32], history: &[TokenId]) -> Result<TokenId> {
        self.sample_allowed(logits, history, None)
    }

    /// As [`Sampler::sample`], choosing only among the tokens `mask`
    /// allows; fails when none of them has a logit.
    pub fn sample_allowed(
        &mut self,
        logits: &[f32],
        history: &[TokenId],
        mask: Option<&TokenMask>,
    ) -> Result<TokenId> {
        if logits.is_empty() {
            return Err(EngineError::InvalidInput("empty logits".into()));
        }
        // Penalized logits live in a reused buffer, taken out of `self` for
        // the duration of the call so the candidates can borrow it.
        let mut scratch = std::mem::take(&mut self.penalized);
        let logits = apply_penalty(&self.params, logits, history, &mut scratch);
        let picked = if self.params.is_greedy() {
            match mask {
                None => argmax(logits),
                Some(mask) => argmax_allowed(logits, mask),
            }
        } else {
            self.collect_candidates(logits, mask);
            if self.candidates.is_empty() {
                None
            } else {
                self.filter_and_normalize();
                Some(self.draw())
            }
        };
        self.penalized = scratch;
        picked.ok_or_else(|| match mask {
            Some(_) => EngineError::ConstraintFailed("no allowed token has a logit".into()),
            None => EngineError::InvalidInput("logits are all NaN".into()),
        })
    }

    fn collect_candidates(&mut self, logits: &[f32], mask: Option<&TokenMask>) {
        self.candidates.clear();
        match mask {
            None => self.candidates.extend(
                logits
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| !l.is_nan())
                    .map(|(i, &l)| (i as TokenId, l)),
            ),
            Some(mask) => {
                let out = &mut self.candidates;
                mask.for_each_allowed(|t| {
                    if let Some(&l) = logits.get(t as usize)
                        && !l.is_nan()
                    {
                        out.push((t, l));
                    }
                });
            }
        }
        // Stable order (logit desc, id asc) makes every later step
        // independent of how the engine laid out its logits.
        let k = self.params.top_k as usize;
        if k > 0 && k < self.candidates.len() {
            self.candidates
                .select_nth_unstable_by(k - 1, |a, b| cmp_desc(*a, *b));
            self.candidates.truncate(k);
        }
        self.candidates.sort_unstable_by(|a, b| cmp_desc(*a, *b));
    }

    /// Turns the sorted candidates into probabilities and applies top-p and
    /// min-p. Afterwards `candidates[i].1` is a probability and they sum to 1.
    fn filter_and_normalize(&mut self) {
        let inv_t = 1.0 / self.params.temperature;
        let max = self.candidates[0].1 * inv_t;
        let mut sum = 0.0f64;
        for c in &mut self.candidates {
            let e = ((c.1 * inv_t) - max).exp();
            c.1 = e;
            sum += f64::from(e);
        }
        for c in &mut self.candidates {
            c.1 = (f64::from(c.1) / sum) as f32;
        }
        let top_p = self.params.top_p;
        if top_p < 1.0 {
            let mut cum = 0.0f32;
            let mut keep = self.candidates.len();
            for (i, c) in self.candidates.iter().enumerate() {
                cum += c.1;
                if cum >= top_p {
                    keep = i + 1;
                    break;
                }
            }
            self.candidates.truncate(keep.max(1));
        }
        let min_p = self.params.min_p;
        if min_p > 0.0 {
            let floor = self.candidates[0].1 * min_p;
            let keep = self.candidates.iter().take_while(|c| c.1 >= floor).count();
            self.candidates.truncate(keep.max(1));
        }
        let total: f32 = self.candidates.iter().map(|c| c.1).sum();
        for c in &mut self.candidates {
            c.1 /= total;
        }
    }

    fn draw(&mut self) -> TokenId {
        // 24 random bits give an exactly representable f32 in [0, 1).
        let u = (self.rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32;
        let mut cum = 0.0f32;
        for c in &self.candidates {
            cum += c.1;
            if u < cum {
                return c.0;
            }
        }
        self.candidates[self.candidates.len() - 1].0
    }
}

fn apply_penalty<'a>(
    params: &SamplingParams,
    logits: &'a [f32],
    history: &[TokenId],
    scratch: &'a mut Vec<f32>,
) -> &'a [f32] {
    let p = params.repetition_penalty;
    let (presence, frequency) = (params.presence_penalty, params.frequency_penalty);
    let off = p == 1.0 && presence == 0.0 && frequency == 0.0;
    if off || params.repeat_last_n == 0 || history.is_empty() {
        return logits;
    }
    scratch.clear();
    scratch.extend_from_slice(logits);
    let start = history.len().saturating_sub(params.repeat_last_n);
    let mut seen = history[start..].to_vec();
    seen.sort_unstable();
    // Each distinct token once, with how often it occurred.
    for run in seen.chunk_by(|a, b| a == b) {
        if let Some(l) = scratch.get_mut(run[0] as usize) {
            if p != 1.0 {
                *l = if *l > 0.0 { *l / p } else { *l * p };
            }
            *l -= presence + frequency * run.len() as f32;
        }
    }
    scratch
}

fn cmp_desc(a: (TokenId, f32), b: (TokenId, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Index of the largest logit; the lowest id wins ties. NaNs are skipped.
pub fn argmax(logits: &[f32]) -> Option<TokenId> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &l) in logits.iter().enumerate() {
        if l.is_nan() {
            continue;
        }
        match best {
            Some((_, b)) if l <= b => {}
            _ => best = Some((i, l)),
        }
    }
    best.map(|(i, _)| i as TokenId)
}

/// [`argmax`] over the tokens `mask` allows.
fn argmax_allowed(logits: &[f32], mask: &TokenMask) -> Option<TokenId> {
    let mut best: Option<(TokenId, f32)> = None;
    // Allowed tokens come in increasing id order, so `>` keeps the lowest
    // id on ties, as `argmax` does.
    mask.for_each_allowed(|t| {
        if let Some(&l) = logits.get(t as usize)
            && !l.is_nan()
            && best.is_none_or(|(_, b)| l > b)
        {
            best = Some((t, l));
        }
    });
    best.map(|(t, _)| t)
}

/// The `n` most likely tokens with their log-probabilities, best first
/// (lowest id first on ties).
pub fn top_log_probs(logits: &[f32], n: usize) -> Vec<(TokenId, f32)> {
    if n == 0 || logits.is_empty() {
        return Vec::new();
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let norm = sum.ln();
    let mut all: Vec<(TokenId, f32)> = logits
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.is_nan())
        .map(|(i, &l)| (i as TokenId, l))
        .collect();
    let n = n.min(all.len());
    if n < all.len() {
        all.select_nth_unstable_by(n - 1, |a, b| cmp_desc(*a, *b));
        all.truncate(n);
    }
    all.sort_unstable_by(|a, b| cmp_desc(*a, *b));
    all.into_iter()
        .map(|(t, l)| (t, (f64::from(l - max) - norm) as f32))
        .collect()
}

/// `log softmax(logits)[token]`, computed stably.
pub fn log_prob(logits: &[f32], token: TokenId) -> Option<f32> {
    let x = *logits.get(token as usize)?;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    Some(((f64::from(x - max)) - sum.ln()) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..SamplingParams::default()
        }
    }

    #[test]
    fn greedy_picks_argmax_and_lowest_id_on_ties() {
        let mut s = Sampler::new(SamplingParams::greedy(), 0).unwrap();
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 3.0], &[]).unwrap(), 1);
        assert_eq!(s.sample(&[f32::NAN, 0.5, 0.2], &[]).unwrap(), 1);
        assert!(s.sample(&[f32::NAN, f32::NAN], &[]).is_err());
        assert!(s.sample(&[], &[]).is_err());
    }

    #[test]
    fn same_seed_same_tokens_and_different_seed_differs() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 37) % 101) as f32 / 20.0).collect();
        let run = |seed| {
            let mut s = Sampler::new(params(1.0), seed).unwrap();
            (0..64)
                .map(|_| s.sample(&logits, &[]).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let logits = [0.0, 5.0, 4.9, 1.0];
        let mut s = Sampler::new(
            SamplingParams {
                top_k: 1,
                ..params(2.0)
            },
            3,
        )
        .unwrap();
        for _ in 0..50 {
            assert_eq!(s.sample(&logits, &[]).unwrap(), 1);
        }
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // p = softmax([10, 9.9, 0, 0]) ~ [0.525, 0.475, 0.00003, 0.00003]
        let logits = [10.0, 9.9, 0.0, 0.0];
        let mut s = Sampler::new(
            SamplingParams {
                top_p: 0.9,
                ..params(1.0)
            },
            11,
        )
        .unwrap();
        let mut seen = [0usize; 4];
        for _ in 0..400 {
            seen[s.sample(&logits, &[]).unwrap() as usize] += 1;
        }
        assert!(seen[0] > 100 && seen[1] > 100, "{seen:?}");
        assert_eq!(seen[2] + seen[3], 0);
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        let logits = [2.0, 1.9, -5.0];
        let mut s = Sampler::new(
            SamplingParams {
                min_p: 0.1,
                ..params(1.0)
            },
            5,
        )
        .unwrap();
        for _ in 0..300 {
            assert_ne!(s.sample(&logits, &[]).unwrap(), 2);
        }
    }

    #[test]
    fn temperature_sharpens_and_flattens() {
        let logits = [1.0, 0.0];
        let count_top = |t: f32| {
            let mut s = Sampler::new(params(t), 99).unwrap();
            (0..2000)
                .filter(|_| s.sample(&logits, &[]).unwrap() == 0)
                .count()
        };
        let cold = count_top(0.25);
        let hot = count_top(4.0);
        // p(top) = 0.98 at t = 0.25 and 0.56 at t = 4.
        assert!(cold > 1900, "{cold}");
        assert!((1000..1300).contains(&hot), "{hot}");
    }

    #[test]
    fn repetition_penalty_steers_greedy_away_from_recent_tokens() {
        let logits = [2.0, 1.9, -1.0];
        let p = SamplingParams {
            repetition_penalty: 1.5,
            ..SamplingParams::greedy()
        };
        let mut s = Sampler::new(p, 0).unwrap();
        assert_eq!(s.sample(&logits, &[0]).unwrap(), 1);
        assert_eq!(s.sample(&logits, &[2]).unwrap(), 0);
        // Negative logits get more negative, never promoted.
        let neg = [-1.0, -1.2];
        assert_eq!(s.sample(&neg, &[0]).unwrap(), 1);
    }

    #[test]
    fn invalid_params_are_rejected() {
        for p in [
            SamplingParams {
                top_p: 1.5,
                ..Default::default()
            },
            SamplingParams {
                min_p: -0.1,
                ..Default::default()
            },
            SamplingParams {
                temperature: f32::NAN,
                ..Default::default()
            },
            SamplingParams {
                repetition_penalty: 0.0,
                ..Default::default()
            },
        ] {
            assert!(matches!(
                Sampler::new(p, 0),
                Err(EngineError::InvalidInput(_))
            ));
        }
    }

    #[test]
    fn log_prob_matches_softmax() {
        let logits = [1.0f32, 2.0, 3.0];
        let z: f32 = logits.iter().map(|l| l.exp()).sum();
        for (i, l) in logits.iter().enumerate() {
            let want = (l.exp() / z).ln();
            assert!((log_prob(&logits, i as u32).unwrap() - want).abs() < 1e-6);
        }
        assert!(log_prob(&logits, 3).is_none());
    }
}

//! Intent routing for Arny's gateway.
//!
//! A [`Gateway`] turns a user message into a [`Decision`]: one label (a
//! specialist's name or [`CLOUD`]) and a calibrated confidence. The
//! decision rule is fixed and explicit: the most probable label wins, and a
//! specialist whose probability is under the threshold yields `cloud`.
//! Calibrated means the probabilities are fitted so that, on held-out
//! examples, "0.8" is right about 80% of the time; raising the threshold
//! then trades accuracy of local answers against cloud share predictably.
//!
//! Strategies implement [`Classifier`]:
//! - [`ExampleClassifier`]: logistic regression on text features, trained
//!   at load time from the specialists' example utterances (milliseconds,
//!   no model, runs in the browser);
//! - [`ModelScorer`]: scores each label by the log-probability a language
//!   model gives its name as the answer (no free-form output is parsed);
//! - [`Ensemble`]: a weighted log-linear pool of the two.

mod examples;
mod features;
mod linear;
mod scorer;

use std::sync::Arc;

pub use examples::{CalibrationReport, ExampleClassifier, ExampleOptions};
pub use features::Featurizer;
pub use scorer::{
    LabelPrompt, ModelScorer, ScorerOptions, answer_word, system_prompt, training_example,
};

use arny_engine_api::EngineError;

/// The label for requests no local specialist should answer.
pub const CLOUD: &str = "cloud";

/// Threshold of the reference design: under it, a request goes to the cloud.
pub const DEFAULT_THRESHOLD: f32 = 0.7;

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("gateway configuration: {0}")]
    Config(String),
    #[error("gateway model: {0}")]
    Engine(#[from] EngineError),
}

/// Example utterances for one label.
#[derive(Debug, Clone)]
pub struct LabelExamples {
    pub label: String,
    pub examples: Vec<String>,
}

/// A routing strategy: calibrated probabilities over a fixed label set.
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
pub trait Classifier: Send + Sync {
    /// `examples`, `model`, `ensemble`.
    fn strategy(&self) -> &'static str;
    fn labels(&self) -> &[String];
    /// One probability per label, in [`Classifier::labels`] order, summing
    /// to 1.
    async fn probabilities(&self, text: &str) -> Result<Vec<f32>, RouterError>;
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
impl Classifier for ExampleClassifier {
    fn strategy(&self) -> &'static str {
        "examples"
    }
    fn labels(&self) -> &[String] {
        ExampleClassifier::labels(self)
    }
    async fn probabilities(&self, text: &str) -> Result<Vec<f32>, RouterError> {
        Ok(ExampleClassifier::probabilities(self, text))
    }
}

/// Two classifiers over the same labels, pooled as
/// `p ∝ p_a^(1-w) · p_b^w`. A log-linear pool keeps a confident "no" from
/// either side, which averaging would dilute.
pub struct Ensemble {
    a: Arc<dyn Classifier>,
    b: Arc<dyn Classifier>,
    weight_b: f32,
}

impl Ensemble {
    pub fn new(
        a: Arc<dyn Classifier>,
        b: Arc<dyn Classifier>,
        weight_b: f32,
    ) -> Result<Self, RouterError> {
        if a.labels() != b.labels() {
            return Err(RouterError::Config(format!(
                "ensemble members disagree on labels: {:?} vs {:?}",
                a.labels(),
                b.labels()
            )));
        }
        if !(0.0..=1.0).contains(&weight_b) {
            return Err(RouterError::Config(format!(
                "ensemble weight {weight_b} is not in [0, 1]"
            )));
        }
        Ok(Self { a, b, weight_b })
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
impl Classifier for Ensemble {
    fn strategy(&self) -> &'static str {
        "ensemble"
    }
    fn labels(&self) -> &[String] {
        self.a.labels()
    }
    async fn probabilities(&self, text: &str) -> Result<Vec<f32>, RouterError> {
        let pa = self.a.probabilities(text).await?;
        let pb = self.b.probabilities(text).await?;
        let w = self.weight_b;
        let mut z: Vec<f32> = pa
            .iter()
            .zip(&pb)
            .map(|(a, b)| (1.0 - w) * a.max(1e-9).ln() + w * b.max(1e-9).ln())
            .collect();
        linear::softmax(&mut z);
        Ok(z)
    }
}

/// A label's probability.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LabelScore {
    pub label: String,
    pub probability: f32,
}

/// What the gateway decided for one message.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Decision {
    /// Where the request goes: a specialist's name or `cloud`.
    pub label: String,
    /// The most probable label, before the threshold was applied.
    pub top: String,
    /// Probability of `top`.
    pub confidence: f32,
    /// True when `top` was a specialist but under the threshold.
    pub below_threshold: bool,
    /// The best specialist (never `cloud`): who answers when the cloud
    /// may not be used.
    pub best_local: Option<String>,
    /// Every label's probability, most probable first.
    pub scores: Vec<LabelScore>,
    pub strategy: &'static str,
    /// Time spent deciding.
    pub ms: f64,
}

/// A classifier plus the decision rule.
pub struct Gateway {
    classifier: Arc<dyn Classifier>,
    threshold: f32,
}

impl Gateway {
    pub fn new(classifier: Arc<dyn Classifier>, threshold: f32) -> Result<Self, RouterError> {
        if !(0.0..=1.0).contains(&threshold) {
            return Err(RouterError::Config(format!(
                "threshold {threshold} is not in [0, 1]"
            )));
        }
        Ok(Self {
            classifier,
            threshold,
        })
    }

    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    pub fn classifier(&self) -> &Arc<dyn Classifier> {
        &self.classifier
    }

    pub async fn route(&self, text: &str) -> Result<Decision, RouterError> {
        let started = web_time::Instant::now();
        let probs = self.classifier.probabilities(text).await?;
        let labels = self.classifier.labels();
        let mut scores: Vec<LabelScore> = labels
            .iter()
            .zip(&probs)
            .map(|(l, p)| LabelScore {
                label: l.clone(),
                probability: *p,
            })
            .collect();
        scores.sort_by(|a, b| b.probability.total_cmp(&a.probability));
        let top = scores[0].clone();
        let below = top.label != CLOUD && top.probability < self.threshold;
        let label = if below {
            CLOUD.to_string()
        } else {
            top.label.clone()
        };
        let best_local = scores
            .iter()
            .find(|s| s.label != CLOUD)
            .map(|s| s.label.clone());
        Ok(Decision {
            label,
            top: top.label,
            confidence: top.probability,
            below_threshold: below,
            best_local,
            scores,
            strategy: self.classifier.strategy(),
            ms: started.elapsed().as_secs_f64() * 1e3,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sets() -> Vec<LabelExamples> {
        let s = |l: &str, e: &[&str]| LabelExamples {
            label: l.into(),
            examples: e.iter().map(|x| x.to_string()).collect(),
        };
        vec![
            s(
                "math",
                &[
                    "what is 3 + 4",
                    "solve 2x = 8",
                    "compute 15% of 90",
                    "square root of 81",
                    "divide 120 by 8",
                    "what is 7 times 6",
                ],
            ),
            s(
                "wellness",
                &[
                    "i feel sad today",
                    "how do i handle stress",
                    "i am anxious about work",
                    "help me relax",
                    "i feel lonely",
                    "i can't sleep because i worry",
                ],
            ),
            s(
                CLOUD,
                &[
                    "write a poem about rain",
                    "who won the world cup in 1998",
                    "translate hello to spanish",
                    "explain photosynthesis",
                    "write a python function",
                    "what is the capital of peru",
                ],
            ),
        ]
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        // The example classifier never awaits anything.
        let mut f = std::pin::pin!(f);
        let waker = std::task::Waker::noop();
        match f.as_mut().poll(&mut std::task::Context::from_waker(waker)) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => unreachable!(),
        }
    }

    #[test]
    fn routes_and_applies_the_threshold() {
        let c = ExampleClassifier::train(&sets(), &ExampleOptions::default()).unwrap();
        let g = Gateway::new(Arc::new(c), 0.5).unwrap();
        let d = block_on(g.route("what is 12 times 9")).unwrap();
        assert_eq!(d.top, "math", "{d:?}");
        let d = block_on(g.route("I feel so stressed and sad")).unwrap();
        assert_eq!(d.top, "wellness", "{d:?}");
        let total: f32 = d.scores.iter().map(|s| s.probability).sum();
        assert!((total - 1.0).abs() < 1e-4);

        // Threshold 1.0: every specialist decision becomes cloud, and the
        // best local specialist is still reported.
        let c = ExampleClassifier::train(&sets(), &ExampleOptions::default()).unwrap();
        let g = Gateway::new(Arc::new(c), 1.0).unwrap();
        let d = block_on(g.route("what is 12 times 9")).unwrap();
        assert_eq!(d.label, CLOUD);
        assert!(d.below_threshold);
        assert_eq!(d.best_local.as_deref(), Some("math"));
    }

    #[test]
    fn bad_configurations_are_refused() {
        let mut s = sets();
        s[0].examples.truncate(1);
        assert!(matches!(
            ExampleClassifier::train(&s, &ExampleOptions::default()),
            Err(RouterError::Config(_))
        ));
        assert!(ExampleClassifier::train(&sets()[..1], &ExampleOptions::default()).is_err());
        let c = ExampleClassifier::train(&sets(), &ExampleOptions::default()).unwrap();
        assert!(Gateway::new(Arc::new(c), 1.5).is_err());
    }
}

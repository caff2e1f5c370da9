//! The example classifier: trained at load time from the specialists'
//! example utterances, calibrated by cross-validation. No model needed, so it
//! also runs in the browser before any weights arrive.

use std::collections::HashMap;

use crate::features::Featurizer;
use crate::linear::{Linear, Row, TrainOptions, fit_temperature, softmax};
use crate::{LabelExamples, RouterError};

/// How the example classifier trains.
#[derive(Debug, Clone)]
pub struct ExampleOptions {
    pub l2: f32,
    pub epochs: usize,
    /// Folds for the cross-validated temperature.
    pub folds: usize,
}

impl Default for ExampleOptions {
    fn default() -> Self {
        Self {
            // Chosen by cross-validated log-loss on the built-in examples.
            l2: 3e-4,
            epochs: 300,
            folds: 5,
        }
    }
}

/// What calibration found, for logs and reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CalibrationReport {
    /// The fitted softmax temperature.
    pub temperature: f32,
    /// Out-of-fold accuracy on the training examples.
    pub cv_accuracy: f32,
    /// Out-of-fold mean negative log-likelihood after calibration.
    pub cv_nll: f32,
    pub examples: usize,
    pub features: usize,
    pub train_ms: f64,
}

pub struct ExampleClassifier {
    labels: Vec<String>,
    featurizer: Featurizer,
    vocab: HashMap<String, usize>,
    model: Linear,
    temperature: f32,
    report: CalibrationReport,
}

impl ExampleClassifier {
    pub fn train(sets: &[LabelExamples], opts: &ExampleOptions) -> Result<Self, RouterError> {
        let started = web_time::Instant::now();
        if sets.len() < 2 {
            return Err(RouterError::Config(
                "the gateway needs at least two labels to choose between".into(),
            ));
        }
        for s in sets {
            let n = s.examples.iter().filter(|e| !e.trim().is_empty()).count();
            if n < 2 {
                return Err(RouterError::Config(format!(
                    "label `{}` has {n} example utterance(s); the gateway needs at least 2 per label",
                    s.label
                )));
            }
        }
        let featurizer = Featurizer::default();
        let labels: Vec<String> = sets.iter().map(|s| s.label.clone()).collect();
        // (features, class, index within its class) for stratified folds.
        let mut data = Vec::new();
        for (y, s) in sets.iter().enumerate() {
            for (i, e) in s
                .examples
                .iter()
                .filter(|e| !e.trim().is_empty())
                .enumerate()
            {
                data.push((featurizer.features(e), y, i));
            }
        }
        let classes = labels.len();
        let train_opts = TrainOptions {
            l2: opts.l2,
            epochs: opts.epochs,
            ..TrainOptions::default()
        };

        // Out-of-fold logits: the model is asked about examples it did not
        // see, which is what real requests are.
        let folds = opts.folds.max(2);
        let mut oof_logits = Vec::with_capacity(data.len());
        let mut oof_labels = Vec::with_capacity(data.len());
        for k in 0..folds {
            let train: Vec<_> = data.iter().filter(|d| d.2 % folds != k).collect();
            let test: Vec<_> = data.iter().filter(|d| d.2 % folds == k).collect();
            if test.is_empty() {
                continue;
            }
            let vocab = build_vocab(train.iter().map(|d| &d.0));
            let rows = rows(&vocab, train.iter().map(|d| (&d.0, d.1)));
            let m = Linear::train(&rows, classes, vocab.len(), &train_opts);
            for d in test {
                oof_logits.push(m.logits(&encode(&vocab, &d.0)));
                oof_labels.push(d.1);
            }
        }
        let temperature = fit_temperature(&oof_logits, &oof_labels);
        let correct = oof_logits
            .iter()
            .zip(&oof_labels)
            .filter(|(z, y)| argmax(z) == **y)
            .count();
        let cv_nll = crate::linear::nll(&oof_logits, &oof_labels, temperature);

        let vocab = build_vocab(data.iter().map(|d| &d.0));
        let rows = rows(&vocab, data.iter().map(|d| (&d.0, d.1)));
        let model = Linear::train(&rows, classes, vocab.len(), &train_opts);
        let report = CalibrationReport {
            temperature,
            cv_accuracy: correct as f32 / oof_labels.len().max(1) as f32,
            cv_nll,
            examples: data.len(),
            features: model.features(),
            train_ms: started.elapsed().as_secs_f64() * 1e3,
        };
        tracing::debug!(?report, "example classifier trained");
        Ok(Self {
            labels,
            featurizer,
            vocab,
            model,
            temperature,
            report,
        })
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    pub fn report(&self) -> &CalibrationReport {
        &self.report
    }

    /// Calibrated probabilities, one per label, in label order.
    pub fn probabilities(&self, text: &str) -> Vec<f32> {
        let x = encode(&self.vocab, &self.featurizer.features(text));
        let mut z: Vec<f32> = self
            .model
            .logits(&x)
            .into_iter()
            .map(|v| v / self.temperature)
            .collect();
        softmax(&mut z);
        z
    }
}

fn build_vocab<'a>(docs: impl Iterator<Item = &'a Vec<(String, f32)>>) -> HashMap<String, usize> {
    let mut vocab = HashMap::new();
    for d in docs {
        for (k, _) in d {
            let n = vocab.len();
            vocab.entry(k.clone()).or_insert(n);
        }
    }
    vocab
}

fn encode(vocab: &HashMap<String, usize>, f: &[(String, f32)]) -> Vec<(usize, f32)> {
    f.iter()
        .filter_map(|(k, v)| vocab.get(k).map(|&i| (i, *v)))
        .collect()
}

fn rows<'a>(
    vocab: &HashMap<String, usize>,
    docs: impl Iterator<Item = (&'a Vec<(String, f32)>, usize)>,
) -> Vec<Row> {
    docs.map(|(f, y)| Row {
        x: encode(vocab, f),
        y,
    })
    .collect()
}

pub(crate) fn argmax(z: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in z.iter().enumerate() {
        if *v > z[best] {
            best = i;
        }
    }
    best
}

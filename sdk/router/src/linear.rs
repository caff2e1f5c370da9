//! Multinomial logistic regression on sparse features, and temperature
//! calibration.
//!
//! Small by design: a few hundred examples and a few thousand features
//! train in milliseconds, so the classifier is rebuilt from the manifest at
//! every start (and in the browser) instead of being shipped as weights.

/// A training row: sparse `(feature index, value)` pairs and a class.
pub struct Row {
    pub x: Vec<(usize, f32)>,
    pub y: usize,
}

/// Weights of a trained classifier.
#[derive(Debug, Clone)]
pub struct Linear {
    classes: usize,
    features: usize,
    /// `w[f * classes + c]`.
    w: Vec<f32>,
    b: Vec<f32>,
}

pub struct TrainOptions {
    /// L2 penalty on the weights.
    pub l2: f32,
    pub epochs: usize,
    pub learning_rate: f32,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            l2: 1e-3,
            epochs: 400,
            learning_rate: 1.0,
        }
    }
}

impl Linear {
    /// Full-batch gradient descent with Nesterov momentum. The loss is
    /// convex and the inputs are unit vectors, so a fixed step converges.
    pub fn train(rows: &[Row], classes: usize, features: usize, opts: &TrainOptions) -> Self {
        let mut m = Self {
            classes,
            features,
            w: vec![0.0; features * classes],
            b: vec![0.0; classes],
        };
        if rows.is_empty() {
            return m;
        }
        let mut vw = vec![0.0f32; m.w.len()];
        let mut vb = vec![0.0f32; classes];
        let mut gw = vec![0.0f32; m.w.len()];
        let mut gb = vec![0.0f32; classes];
        let mut p = vec![0.0f32; classes];
        let n = rows.len() as f32;
        let mu = 0.9f32;
        for _ in 0..opts.epochs {
            // Look-ahead point for Nesterov.
            let look_w: Vec<f32> = m.w.iter().zip(&vw).map(|(w, v)| w + mu * v).collect();
            let look_b: Vec<f32> = m.b.iter().zip(&vb).map(|(b, v)| b + mu * v).collect();
            gw.iter_mut().for_each(|g| *g = 0.0);
            gb.iter_mut().for_each(|g| *g = 0.0);
            for r in rows {
                logits_into(&look_w, &look_b, classes, &r.x, &mut p);
                softmax(&mut p);
                p[r.y] -= 1.0;
                for (c, d) in p.iter().enumerate() {
                    gb[c] += d / n;
                }
                for &(f, v) in &r.x {
                    let base = f * classes;
                    for c in 0..classes {
                        gw[base + c] += p[c] * v / n;
                    }
                }
            }
            for i in 0..m.w.len() {
                let g = gw[i] + opts.l2 * look_w[i];
                vw[i] = mu * vw[i] - opts.learning_rate * g;
                m.w[i] += vw[i];
            }
            for c in 0..classes {
                vb[c] = mu * vb[c] - opts.learning_rate * gb[c];
                m.b[c] += vb[c];
            }
        }
        m
    }

    pub fn logits(&self, x: &[(usize, f32)]) -> Vec<f32> {
        let mut out = vec![0.0; self.classes];
        logits_into(&self.w, &self.b, self.classes, x, &mut out);
        out
    }

    pub fn features(&self) -> usize {
        self.features
    }
}

fn logits_into(w: &[f32], b: &[f32], classes: usize, x: &[(usize, f32)], out: &mut [f32]) {
    out.copy_from_slice(b);
    for &(f, v) in x {
        let base = f * classes;
        for c in 0..classes {
            out[c] += w[base + c] * v;
        }
    }
}

/// In-place softmax, stable for any finite input.
pub fn softmax(z: &mut [f32]) {
    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in z.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in z.iter_mut() {
        *v /= sum;
    }
}

/// Mean negative log-likelihood of `labels` under `softmax(logits / t)`.
pub fn nll(logits: &[Vec<f32>], labels: &[usize], t: f32) -> f32 {
    let mut total = 0.0f64;
    for (z, &y) in logits.iter().zip(labels) {
        let mut p: Vec<f32> = z.iter().map(|v| v / t).collect();
        softmax(&mut p);
        total -= (p[y].max(1e-12) as f64).ln();
    }
    (total / logits.len().max(1) as f64) as f32
}

/// The temperature that minimises held-out NLL (Guo et al., 2017): one
/// scalar, so it changes confidence without changing any decision.
/// Golden-section search on log T over [0.05, 20].
pub fn fit_temperature(logits: &[Vec<f32>], labels: &[usize]) -> f32 {
    if logits.is_empty() {
        return 1.0;
    }
    let f = |lt: f32| nll(logits, labels, lt.exp());
    let (mut a, mut b) = (0.05f32.ln(), 20f32.ln());
    let g = (5f32.sqrt() - 1.0) / 2.0;
    let mut c = b - g * (b - a);
    let mut d = a + g * (b - a);
    let (mut fc, mut fd) = (f(c), f(d));
    for _ in 0..60 {
        if fc < fd {
            b = d;
            d = c;
            fd = fc;
            c = b - g * (b - a);
            fc = f(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + g * (b - a);
            fd = f(d);
        }
    }
    ((a + b) / 2.0).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_a_separable_problem() {
        let rows: Vec<Row> = (0..30)
            .map(|i| Row {
                x: vec![(i % 3, 1.0)],
                y: i % 3,
            })
            .collect();
        let m = Linear::train(&rows, 3, 3, &TrainOptions::default());
        for c in 0..3 {
            let mut z = m.logits(&[(c, 1.0)]);
            softmax(&mut z);
            let best = (0..3).max_by(|&a, &b| z[a].total_cmp(&z[b])).unwrap();
            assert_eq!(best, c);
            assert!(z[c] > 0.8, "{z:?}");
        }
    }

    #[test]
    fn temperature_softens_overconfident_mistakes() {
        // Confident logits, half of them wrong: the best temperature is large.
        let logits = vec![
            vec![5.0, 0.0],
            vec![5.0, 0.0],
            vec![0.0, 5.0],
            vec![0.0, 5.0],
        ];
        let labels = vec![0, 1, 1, 0];
        assert!(fit_temperature(&logits, &labels) > 5.0);
        // Confident and right: the temperature goes down.
        let labels = vec![0, 0, 1, 1];
        assert!(fit_temperature(&logits, &labels) < 1.0);
    }
}

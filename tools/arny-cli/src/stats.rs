//! Medians and spread of repeated measurements, for the benchmarks.

use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub samples: Vec<f64>,
}

impl Stats {
    pub fn of(mut samples: Vec<f64>) -> Self {
        samples.sort_by(f64::total_cmp);
        let n = samples.len();
        let median = if n == 0 {
            0.0
        } else if n % 2 == 1 {
            samples[n / 2]
        } else {
            (samples[n / 2 - 1] + samples[n / 2]) / 2.0
        };
        Self {
            median,
            min: samples.first().copied().unwrap_or(0.0),
            max: samples.last().copied().unwrap_or(0.0),
            samples,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Stats;

    #[test]
    fn medians() {
        assert_eq!(Stats::of(vec![3.0, 1.0, 2.0]).median, 2.0);
        assert_eq!(Stats::of(vec![4.0, 1.0, 2.0, 3.0]).median, 2.5);
        let s = Stats::of(Vec::new());
        assert_eq!((s.median, s.min, s.max), (0.0, 0.0, 0.0));
    }
}

//! Cost of one sampling step over a SmolLM2-sized vocabulary; this runs once
//! per generated token on every engine.

use arny_engine_api::{Sampler, SamplingParams};
use criterion::{Criterion, criterion_group, criterion_main};

fn logits(vocab: usize) -> Vec<f32> {
    // Deterministic, roughly bell-shaped logits.
    (0..vocab)
        .map(|i| {
            let x = ((i as u64 * 2_654_435_761) % 10_007) as f32 / 10_007.0;
            (x - 0.5) * 20.0
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let l = logits(49_152);
    let history: Vec<u32> = (0..64).collect();
    let mut greedy = Sampler::new(SamplingParams::greedy(), 0).unwrap();
    c.bench_function("sample/greedy/49152", |b| {
        b.iter(|| greedy.sample(&l, &history).unwrap())
    });
    let mut topk = Sampler::new(SamplingParams::with_temperature(0.8), 0).unwrap();
    c.bench_function("sample/t0.8_topk40_topp0.95/49152", |b| {
        b.iter(|| topk.sample(&l, &history).unwrap())
    });
    let mut full = Sampler::new(
        SamplingParams {
            temperature: 0.8,
            top_k: 0,
            top_p: 0.95,
            min_p: 0.0,
            repetition_penalty: 1.1,
            ..SamplingParams::default()
        },
        0,
    )
    .unwrap();
    c.bench_function("sample/t0.8_full_vocab_penalty/49152", |b| {
        b.iter(|| full.sample(&l, &history).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

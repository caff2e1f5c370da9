//! The packed kernels on the default model's own matrices: every
//! projection of one decoded token (210 Q4_1 blocks and the 49,152-row
//! Q8_0 output matrix), and one block's projections for a 64-token
//! prefill batch, with each kernel this CPU runs, on one thread.
//!
//!   cargo bench -p arny-qmatmul

use std::sync::Arc;

use arny_gguf::GgufFile;
use arny_qmatmul::{Kernel, QMatrix, QType, matmul_with};
use criterion::{Criterion, criterion_group, criterion_main};

fn matrices() -> Vec<QMatrix> {
    let path = arny_model_store::require_default_model().expect("the default model");
    let bytes: Arc<[u8]> = std::fs::read(path).unwrap().into();
    let file = GgufFile::from_bytes(&bytes).unwrap();
    file.tensors
        .iter()
        .filter(|t| t.dims.len() == 2)
        .map(|t| {
            let ty = QType::from_ggml(t.ggml_type).expect("a packed type");
            let (cols, rows) = (t.dims[0] as usize, t.dims[1] as usize);
            QMatrix::new(ty, rows, cols, bytes.clone(), t.start as usize).unwrap()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let all = matrices();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let bytes: usize = all.iter().map(|w| w.bytes().len()).sum();
    let mut g = c.benchmark_group("decode one token");
    g.sample_size(10);
    for kernel in Kernel::available() {
        let x: Vec<f32> = (0..1536)
            .map(|i| ((i * 7919) % 97) as f32 / 48.0 - 1.0)
            .collect();
        let mut out = vec![0f32; 49_152];
        g.bench_function(
            format!("{} ({} MB)", kernel.name(), bytes / 1_000_000),
            |b| {
                b.iter(|| {
                    pool.install(|| {
                        for w in &all {
                            matmul_with(kernel, &x[..w.cols()], 1, w, &mut out[..w.rows()]);
                        }
                    })
                })
            },
        );
    }
    g.finish();
    let block: Vec<&QMatrix> = all.iter().filter(|w| w.rows() < 49_152).take(7).collect();
    let mut g = c.benchmark_group("prefill 64 tokens, one block");
    g.sample_size(10);
    for kernel in Kernel::available() {
        let x: Vec<f32> = (0..64 * 1536)
            .map(|i| ((i * 7919) % 97) as f32 / 48.0 - 1.0)
            .collect();
        let mut out = vec![0f32; 64 * 1536];
        g.bench_function(kernel.name(), |b| {
            b.iter(|| {
                pool.install(|| {
                    for w in &block {
                        let (xs, os) = (&x[..64 * w.cols()], &mut out[..64 * w.rows()]);
                        matmul_with(kernel, xs, 64, w, os);
                    }
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

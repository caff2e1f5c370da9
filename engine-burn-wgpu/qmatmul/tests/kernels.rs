//! Every kernel against the scalar reference, and the reference against
//! f32 arithmetic on `arny-gguf`'s dequantization (itself checked against
//! the `gguf` Python package): on random blocks of every type and on the
//! default model's own tensors.

use std::sync::Arc;

use arny_gguf::GgufFile;
use arny_qmatmul::{
    ActKind, Activations, Kernel, Matvec, QMatrix, QType, matmul_quantized, matmul_with,
    matvec_many,
};
use half::f16;

/// xorshift64*: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn byte(&mut self) -> u8 {
        (self.next() >> 56) as u8
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Random blocks of `ty` with finite scales of a realistic size.
fn random_matrix(rng: &mut Rng, ty: QType, rows: usize, cols: usize) -> QMatrix {
    let blocks = rows * cols / ty.block();
    let mut data = Vec::with_capacity(blocks * ty.block_bytes());
    let scale = |rng: &mut Rng| f16::from_f32(rng.unit() * 0.05).to_le_bytes();
    for _ in 0..blocks {
        let mut b: Vec<u8> = (0..ty.block_bytes()).map(|_| rng.byte()).collect();
        // Where each format keeps its f16 scales.
        let at: &[usize] = match ty {
            QType::Q4_0 | QType::Q8_0 => &[0],
            QType::Q4_1 | QType::Q4_K => &[0, 2],
            QType::Q6_K => &[208],
        };
        for &i in at {
            b[i..i + 2].copy_from_slice(&scale(rng));
        }
        data.extend_from_slice(&b);
    }
    QMatrix::new(ty, rows, cols, data.into(), 0).unwrap()
}

fn dequantized(w: &QMatrix) -> Vec<f32> {
    arny_gguf::dequant::dequantize(w.ty().ggml(), w.bytes(), w.rows() * w.cols()).unwrap()
}

fn random_x(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.unit() * 2.0).collect()
}

/// `Σ_k a[k]·b[k]` and `Σ_k |a[k]·b[k]|` (the scale float rounding is
/// relative to) in f64.
fn dot(a: &[f32], b: &[f32]) -> (f64, f64) {
    a.iter().zip(b).fold((0.0, 0.0), |(s, m), (&x, &y)| {
        let p = x as f64 * y as f64;
        (s + p, m + p.abs())
    })
}

/// Checks `kernel`'s `x · Wᵀ` against f32 on the dequantized weights and
/// activations (only float rounding apart), and against the unquantized
/// `x` (apart by at most half an 8-bit step per value).
fn check(kernel: Kernel, w: &QMatrix, x: &[f32], m: usize) {
    let mut out = vec![0f32; m * w.rows()];
    matmul_with(kernel, x, m, w, &mut out);
    let wf = dequantized(w);
    let acts = Activations::quantize(w.ty().activation(), x, m, w.cols());
    let block = w.ty().activation().block();
    for i in 0..m {
        let xq = acts.dequantize_row(i);
        let xi = &x[i * w.cols()..(i + 1) * w.cols()];
        for r in 0..w.rows() {
            let wr = &wf[r * w.cols()..(r + 1) * w.cols()];
            let got = out[i * w.rows() + r] as f64;
            let (want, mag) = dot(wr, &xq);
            // Q8_1 keeps `d · Σq` per block as f16, as llama.cpp does: the
            // Q4_1 minimum's term carries that rounding (half an f16 ulp).
            let s_rounding: f64 = if w.ty() == QType::Q4_1 {
                let row = &w.bytes()[r * w.row_bytes()..(r + 1) * w.row_bytes()];
                row.chunks_exact(20)
                    .zip(xq.chunks(32))
                    .map(|(b, xb)| {
                        let m = f16::from_le_bytes([b[2], b[3]]).to_f64().abs();
                        let s: f64 = xb.iter().map(|&v| v as f64).sum();
                        m * (s.abs() * 2f64.powi(-11) + 6e-8)
                    })
                    .sum()
            } else {
                0.0
            };
            assert!(
                (got - want).abs() <= 1e-5 * mag + 1e-6 + s_rounding,
                "{} {:?} row {r} of input {i}: {got} vs {want} (Σ|w·x| {mag})",
                kernel.name(),
                w.ty()
            );
            // Q8_K rounds to 127 steps of the block's largest value too.
            let bound: f64 = xi
                .chunks(block)
                .zip(wr.chunks(block))
                .map(|(xb, wb)| {
                    let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
                    let step = amax / 127.0;
                    wb.iter().map(|v| v.abs() as f64).sum::<f64>() * step * 0.5
                })
                .sum::<f64>();
            let (exact, mag) = dot(wr, xi);
            assert!(
                (got - exact).abs() <= bound * 1.01 + 1e-4 * mag,
                "{} {:?}: {got} vs unquantized {exact}, beyond {bound}",
                kernel.name(),
                w.ty()
            );
        }
    }
}

#[test]
fn every_kernel_matches_the_reference_on_random_blocks() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for ty in QType::ALL {
        for (rows, cols, m) in [(37, 512, 1), (19, 768, 5), (3, 256, 2)] {
            let w = random_matrix(&mut rng, ty, rows, cols);
            let x = random_x(&mut rng, m * cols);
            for kernel in Kernel::available() {
                check(kernel, &w, &x, m);
            }
        }
    }
}

#[test]
fn simd_kernels_equal_scalar_closely() {
    // Beyond the f32 comparison: the SIMD sums differ from the reference
    // only in float order, so by a few ulps of the result's magnitude.
    let mut rng = Rng(42);
    for ty in QType::ALL {
        let w = random_matrix(&mut rng, ty, 64, 1024);
        let x = random_x(&mut rng, 4 * 1024);
        let mut want = vec![0f32; 4 * 64];
        matmul_with(Kernel::Scalar, &x, 4, &w, &mut want);
        for kernel in Kernel::available() {
            let mut got = vec![0f32; 4 * 64];
            matmul_with(kernel, &x, 4, &w, &mut got);
            let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
            for (g, e) in got.iter().zip(&want) {
                assert!(
                    (g - e).abs() <= scale * 1e-5,
                    "{} {ty:?}: {g} vs {e}",
                    kernel.name()
                );
            }
        }
    }
}

#[test]
fn integer_lane_kernels_equal_scalar_bit_for_bit() {
    // NEON (every type) and simd128 (the K-quants) sum each block in
    // integers and take the scalar kernel's float steps, so their results
    // are its bits, not merely close. Activations at full scale (±127) and
    // bytes from the whole range exercise the sums' widest values.
    let mut rng = Rng(0xC0FF_EE00);
    for ty in QType::ALL {
        let w = random_matrix(&mut rng, ty, 24, 1024);
        let mut x = random_x(&mut rng, 3 * 1024);
        for v in x.iter_mut().step_by(5) {
            *v = if *v < 0.0 { -2.0 } else { 2.0 };
        }
        let mut want = vec![0f32; 3 * 24];
        matmul_with(Kernel::Scalar, &x, 3, &w, &mut want);
        for kernel in Kernel::available() {
            let exact = match kernel {
                Kernel::Neon | Kernel::NeonDotprod => true,
                Kernel::Simd128 => matches!(ty, QType::Q4_K | QType::Q6_K),
                _ => false,
            };
            if !exact {
                continue;
            }
            let mut got = vec![0f32; 3 * 24];
            matmul_with(kernel, &x, 3, &w, &mut got);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{} {ty:?}", kernel.name());
            // Decode's path (one row, several output rows per call) too.
            let mut one = vec![0f32; 24];
            matmul_with(kernel, &x[..1024], 1, &w, &mut one);
            assert_eq!(
                bits(&one),
                bits(&want[..24]),
                "{} {ty:?}, one row",
                kernel.name()
            );
        }
    }
}

#[test]
fn batches_equal_one_row_at_a_time_on_any_pool() {
    let mut rng = Rng(7);
    // 37 rows: nine four-row steps and one left over, in every task.
    for m in [9, 37] {
        for ty in QType::ALL {
            let w = random_matrix(&mut rng, ty, 50, 512);
            let x = random_x(&mut rng, m * 512);
            for kernel in Kernel::available() {
                batch_equals_rowwise(kernel, &w, &x, m);
            }
        }
    }
}

#[test]
fn fused_products_equal_each_alone_with_their_epilogue_once_a_row() {
    let mut rng = Rng(11);
    for ty in QType::ALL {
        let ws = [
            random_matrix(&mut rng, ty, 40, 512),
            random_matrix(&mut rng, ty, 24, 512),
        ];
        let x = random_x(&mut rng, 512);
        let acts = Activations::quantize(ty.activation(), &x, 1, 512);
        for kernel in Kernel::available() {
            let alone: Vec<Vec<f32>> = ws
                .iter()
                .map(|w| {
                    let mut out = vec![0f32; w.rows()];
                    matmul_quantized(kernel, &acts, w, &mut out);
                    out
                })
                .collect();
            let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| vec![0f32; w.rows()]).collect();
            let mut parts: Vec<Matvec<'_>> = outs
                .iter_mut()
                .zip(&ws)
                .map(|(out, w)| Matvec {
                    acts: &acts,
                    w,
                    out,
                })
                .collect();
            // The epilogue sees each output value once, after its product.
            let visits = std::sync::Mutex::new(vec![vec![0u32; 40], vec![0u32; 24]]);
            matvec_many(kernel, &mut parts, &|p, first, piece| {
                for (j, v) in piece.iter_mut().enumerate() {
                    assert_eq!(v.to_bits(), alone[p][first + j].to_bits());
                    visits.lock().unwrap()[p][first + j] += 1;
                    *v += 1.0;
                }
            });
            assert!(
                visits
                    .into_inner()
                    .unwrap()
                    .iter()
                    .flatten()
                    .all(|&c| c == 1)
            );
            for (out, alone) in outs.iter().zip(&alone) {
                let want: Vec<f32> = alone.iter().map(|v| v + 1.0).collect();
                assert!(out == &want, "{} {ty:?}", kernel.name());
            }
        }
    }
}

/// `m` rows of `x` multiplied as one batch give, bit for bit, what they
/// give one at a time: a prompt must not depend on how it is batched.
fn batch_equals_rowwise(kernel: Kernel, w: &QMatrix, x: &[f32], m: usize) {
    let (rows, cols, ty) = (w.rows(), w.cols(), w.ty());
    let mut rowwise = vec![0f32; m * rows];
    for (x, out) in x.chunks_exact(cols).zip(rowwise.chunks_exact_mut(rows)) {
        matmul_with(kernel, x, 1, w, out);
    }
    #[cfg(not(target_family = "wasm"))]
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let mut batch = vec![0f32; m * rows];
        pool.install(|| matmul_with(kernel, x, m, w, &mut batch));
        assert!(
            batch == rowwise,
            "{} {ty:?}, {m} rows on {threads} threads",
            kernel.name()
        );
    }
    // A page has one thread.
    #[cfg(target_family = "wasm")]
    {
        let mut batch = vec![0f32; m * rows];
        matmul_with(kernel, x, m, w, &mut batch);
        assert!(batch == rowwise, "{} {ty:?}, {m} rows", kernel.name());
    }
}

#[test]
fn the_default_models_tensors_multiply_as_dequantized() {
    let path = arny_model_store::require_default_model().unwrap();
    let bytes: Arc<[u8]> = std::fs::read(&path).unwrap().into();
    let file = GgufFile::from_bytes(&bytes).unwrap();
    let mut rng = Rng(3);
    let mut seen = Vec::new();
    for name in [
        "blk.0.attn_q.weight",
        "blk.7.ffn_down.weight",
        "blk.29.ffn_gate.weight",
        "token_embd.weight",
    ] {
        let t = file.tensor(name).unwrap();
        let ty = QType::from_ggml(t.ggml_type).unwrap();
        let (cols, rows) = (t.dims[0] as usize, t.dims[1] as usize);
        let start = t.start as usize; // absolute in the file
        let w = QMatrix::new(ty, rows, cols, bytes.clone(), start).unwrap();
        assert!(
            w.bytes() == file.tensor_data(&bytes, t).unwrap(),
            "{name}'s bytes"
        );
        // A slice of the rows keeps the test quick on the 49152-row table.
        let rows_used = rows.min(1024);
        let part = QMatrix::new(ty, rows_used, cols, bytes.clone(), start).unwrap();
        let x = random_x(&mut rng, 2 * cols);
        for kernel in Kernel::available() {
            check(kernel, &part, &x, 2);
        }
        seen.push(ty);
    }
    assert!(seen.contains(&QType::Q4_1) && seen.contains(&QType::Q8_0));
}

#[test]
fn a_k_quant_models_tensors_multiply_as_dequantized() {
    // The default model has no K-quant blocks; Gemma 3 270M (Q4_K_M) has
    // real Q4_K and Q6_K ones. scripts/test.sh fetches it before the
    // cross-target runs (`arny models fetch gemma3-270m-q4_k_m`).
    use std::io::{Read, Seek, SeekFrom};
    let path = arny_model_store::locate(&arny_model_store::GEMMA3_270M_Q4_K_M)
        .expect("Gemma 3 270M in the model cache: arny models fetch gemma3-270m-q4_k_m");
    // The header, then only the rows used: the whole 253 MB file in a
    // wasm32 test's memory took Node past the size at which it crashes on
    // exit (see scripts/wasi-run.mjs).
    let mut f = std::fs::File::open(&path).unwrap();
    let len = f.metadata().unwrap().len();
    let file = GgufFile::read(std::io::BufReader::new(&mut f), len).unwrap();
    let mut rng = Rng(5);
    let mut seen = Vec::new();
    for ty in [QType::Q4_K, QType::Q6_K] {
        // The first and the last matrix of the type: early and late layers.
        let of_type: Vec<_> = file
            .tensors
            .iter()
            .filter(|t| t.dims.len() == 2 && QType::from_ggml(t.ggml_type) == Some(ty))
            .collect();
        for t in [of_type.first(), of_type.last()].into_iter().flatten() {
            let cols = t.dims[0] as usize;
            let rows = (t.dims[1] as usize).min(512);
            let mut part = vec![0u8; rows * cols / ty.block() * ty.block_bytes()];
            f.seek(SeekFrom::Start(t.start)).unwrap();
            f.read_exact(&mut part).unwrap();
            let part = QMatrix::new(ty, rows, cols, part.into(), 0).unwrap();
            let x = random_x(&mut rng, 2 * cols);
            for kernel in Kernel::available() {
                check(kernel, &part, &x, 2);
            }
            seen.push(ty);
        }
    }
    assert!(
        seen.contains(&QType::Q4_K) && seen.contains(&QType::Q6_K),
        "{seen:?}"
    );
}

#[test]
fn embedding_rows_decode_as_the_file_does() {
    let mut rng = Rng(11);
    for ty in QType::ALL {
        let w = random_matrix(&mut rng, ty, 5, 512);
        let all = dequantized(&w);
        for r in 0..5 {
            let mut row = Vec::new();
            w.dequantize_row(r, &mut row);
            assert_eq!(row, all[r * 512..(r + 1) * 512]);
        }
    }
}

#[test]
fn f16_weights_become_q8_0_within_its_step() {
    let mut rng = Rng(5);
    let values = random_x(&mut rng, 4 * 64);
    let w = QMatrix::quantize_q8_0(&values, 4, 64).unwrap();
    assert_eq!(w.ty(), QType::Q8_0);
    for (chunk, got) in values.chunks(32).zip(dequantized(&w).chunks(32)) {
        let amax = chunk.iter().fold(0f32, |a, v| a.max(v.abs()));
        for (v, g) in chunk.iter().zip(got) {
            assert!((v - g).abs() <= amax / 127.0 * 0.51 + 1e-3 * amax);
        }
    }
    assert!(QMatrix::quantize_q8_0(&values, 4, 60).is_err());
}

#[test]
fn shapes_that_do_not_fit_are_refused() {
    let data: Arc<[u8]> = vec![0u8; 20 * 16].into();
    assert!(QMatrix::new(QType::Q4_1, 16, 32, data.clone(), 0).is_ok());
    // One byte short, a partial block, no rows, past the end.
    assert!(QMatrix::new(QType::Q4_1, 16, 32, data.clone(), 1).is_err());
    assert!(QMatrix::new(QType::Q4_1, 16, 48, data.clone(), 0).is_err());
    assert!(QMatrix::new(QType::Q4_1, 0, 32, data.clone(), 0).is_err());
    assert!(QMatrix::new(QType::Q4_K, 1, 256, data.clone(), 200).is_err());
    assert!(QMatrix::new(QType::Q8_0, usize::MAX / 2, 32, data, 0).is_err());
}

#[test]
fn a_non_finite_scale_is_found() {
    let mut rng = Rng(7);
    let (rows, cols) = (40, 512);
    for ty in QType::ALL {
        let w = random_matrix(&mut rng, ty, rows, cols);
        assert!(w.scales_finite(), "{ty:?}");
        let blocks = rows * cols / ty.block();
        // Every f16 field (Q4_1's and Q4_K's minimum too), in the first,
        // a middle and the last block.
        let fields: &[usize] = match ty {
            QType::Q4_0 | QType::Q8_0 => &[0],
            QType::Q4_1 | QType::Q4_K => &[0, 2],
            QType::Q6_K => &[208],
        };
        for &field in fields {
            for (block, value) in [
                (0, f16::NAN),
                (blocks / 2 + 1, f16::INFINITY),
                (blocks - 1, f16::NEG_INFINITY),
            ] {
                let mut bytes = w.bytes().to_vec();
                let at = block * ty.block_bytes() + field;
                bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
                let bad = QMatrix::new(ty, rows, cols, bytes.into(), 0).unwrap();
                assert!(
                    !bad.scales_finite(),
                    "{ty:?}: {value} at block {block}, byte {field}"
                );
            }
        }
    }
}

#[test]
fn activations_round_as_llama_cpp_does() {
    // 127 / max scaling, ties to even: 0.5 and 1.5 steps land on 0 and 2.
    let mut x = vec![0f32; 32];
    x[0] = 127.0;
    x[1] = 0.5;
    x[2] = 1.5;
    x[3] = -2.5;
    let a = Activations::quantize(ActKind::Q8_1, &x, 1, 32);
    let q = a.dequantize_row(0);
    assert_eq!(&q[..4], &[127.0, 0.0, 2.0, -2.0]);
    // Q8_K maps the largest magnitude to -127, whatever its sign.
    let mut y = vec![0.25f32; 256];
    y[9] = 2.0;
    let k = Activations::quantize(ActKind::Q8_K, &y, 1, 256);
    let back = k.dequantize_row(0);
    assert!((back[9] - 2.0).abs() < 1e-6);
    assert!((back[0] - 0.25).abs() <= 2.0 / 127.0 / 2.0 + 1e-6);
}

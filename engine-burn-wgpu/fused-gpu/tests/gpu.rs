//! The fused kernels against f32 arithmetic on the host (RMSNorm's sum of
//! squares in f64 there: the kernel's order is its own), on the shapes the
//! decoder uses: a model's rows, Q/K heads (QK-norm), widths that are not
//! a multiple of the cube's 32 units, and more cubes than one launch
//! dimension counts. They run on whatever wgpu adapter there is; here
//! lavapipe (`scripts/setup.sh --with burn`). No adapter fails them.

use arny_fused_gpu::{Gate, NotCubeF32, attention, gated, rms_norm, rope};
use burn::tensor::{Device, Tensor, TensorData};

/// Reproducible values in [-scale, scale): each a hash of its index and
/// the stream's seed (SplitMix64's finalizer).
struct Rng(u64);

impl Rng {
    fn values(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = self.0;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                ((z >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * scale
            })
            .collect()
    }
}

/// One wgpu device per process: Burn registers its runtime once.
fn gpu() -> Device {
    static DEVICE: std::sync::OnceLock<Device> = std::sync::OnceLock::new();
    DEVICE
        .get_or_init(|| {
            Device::wgpu_options()
                .init()
                .expect("a wgpu adapter (lavapipe: scripts/setup.sh --with burn)")
        })
        .clone()
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

#[test]
fn rms_norm_equals_f32_arithmetic() {
    let device = gpu();
    let mut rng = Rng(0x5eed);
    // (rows, width): a decoded token of a 576-wide model, a prompt, QK-norm
    // over 9 heads of 64, widths off the 32-unit stride, one value a row,
    // and 70,000 rows (past 65,535 cubes: the second launch dimension).
    for (rows, e) in [(1, 576), (7, 576), (9, 64), (5, 100), (3, 1), (70_000, 3)] {
        let x = rng.values(rows * e, 3.0);
        let w = rng.values(e, 2.0);
        let eps = 1e-5;
        let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [rows, e]), &device);
        let wt = Tensor::<1>::from_data(TensorData::new(w.clone(), [e]), &device);
        let y = host(rms_norm(&xt, &wt, eps).unwrap());
        assert_eq!(y.len(), rows * e);
        for (r, (xr, yr)) in x.chunks_exact(e).zip(y.chunks_exact(e)).enumerate() {
            let sum: f64 = xr.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
            let rms = ((sum / e as f64) as f32 + eps).sqrt();
            for (i, (&v, &got)) in xr.iter().zip(yr).enumerate() {
                let want = v / rms * w[i];
                assert!(
                    (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "[{rows} × {e}] row {r} column {i}: {got} against {want}"
                );
            }
        }
    }
}

#[test]
fn rope_equals_f32_arithmetic() {
    let device = gpu();
    let mut rng = Rng(0xb0b);
    // (positions, heads, head size): decode, a prompt, an odd number of
    // pairs, and 4,100 × 16 × 64 (2.1M pairs: past 65,535 cubes of 32).
    for (s, h, d) in [(1, 9, 64), (6, 3, 64), (5, 2, 6), (4_100, 16, 64)] {
        let half = d / 2;
        let x = rng.values(s * h * d, 4.0);
        let angles: Vec<f32> = rng.values(s * half, 3.0);
        let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
        let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
        let table =
            |v: &[f32]| Tensor::<2>::from_data(TensorData::new(v.to_vec(), [s, half]), &device);
        let (ct, st) = (table(&cos), table(&sin));
        for neox in [false, true] {
            let xt = Tensor::<3>::from_data(TensorData::new(x.clone(), [s, h, d]), &device);
            let y = host(rope(&xt, &ct, &st, neox).unwrap());
            for (n, (xh, yh)) in x.chunks_exact(d).zip(y.chunks_exact(d)).enumerate() {
                let p = n / h;
                for j in 0..half {
                    let (a, b) = if neox {
                        (j, j + half)
                    } else {
                        (2 * j, 2 * j + 1)
                    };
                    let (c, sn) = (cos[p * half + j], sin[p * half + j]);
                    let want = [xh[a] * c - xh[b] * sn, xh[a] * sn + xh[b] * c];
                    // A shader compiler may fuse a product into the sum.
                    for (got, want) in [yh[a], yh[b]].into_iter().zip(want) {
                        assert!(
                            (got - want).abs() <= 1e-6 * 8.0,
                            "[{s} × {h} × {d}] neox {neox}, head {n} pair {j}: {got} against {want}"
                        );
                    }
                }
            }
        }
    }
}

/// Attention of `seq` positions (the last ones of `total`) with `heads`
/// query heads over `kv` KV heads, causal, or with a sliding `window`,
/// against f64 softmax sums on the host.
fn check_attention(
    rng: &mut Rng,
    (seq, heads, kv, hd, total): (usize, usize, usize, usize, usize),
    window: Option<usize>,
) {
    let device = gpu();
    let group = heads / kv;
    let past = total - seq;
    let q = rng.values(seq * heads * hd, 1.0);
    // A cache with room for 5 more positions, NaN there: never read.
    let cap = total + 5;
    let cached = |rng: &mut Rng| {
        let mut c = vec![f32::NAN; kv * cap * hd];
        for h in 0..kv {
            c[h * cap * hd..][..total * hd].copy_from_slice(&rng.values(total * hd, 1.0));
        }
        c
    };
    let (k, v) = (cached(rng), cached(rng));
    let seen = |i: usize, t: usize| {
        let p = past + i;
        t <= p && window.is_none_or(|w| t + w > p)
    };
    let mut mask = Vec::with_capacity(group * seq * total);
    for _ in 0..group {
        for i in 0..seq {
            mask.extend((0..total).map(|t| if seen(i, t) { 0.0 } else { f32::NEG_INFINITY }));
        }
    }
    let scale = 1.0 / (hd as f32).sqrt();
    let t3 = |v: &[f32], shape: [usize; 3]| {
        Tensor::<3>::from_data(TensorData::new(v.to_vec(), shape), &device)
    };
    let y = attention(
        &t3(&q, [seq, heads, hd]),
        &t3(&k, [kv, cap, hd]),
        &t3(&v, [kv, cap, hd]),
        total,
        &t3(&mask, [1, group * seq, total]),
        scale,
    )
    .unwrap();
    assert_eq!(y.dims(), [seq, heads, hd]);
    let y = host(y);
    for i in 0..seq {
        for h in 0..heads {
            let (qr, kvh) = (&q[(i * heads + h) * hd..][..hd], h / group);
            let row = |t: usize| (kvh * cap + t) * hd;
            let scores: Vec<Option<f64>> = (0..total)
                .map(|t| {
                    seen(i, t).then(|| {
                        let dot: f64 = (0..hd)
                            .map(|d| f64::from(qr[d]) * f64::from(k[row(t) + d]))
                            .sum();
                        dot * f64::from(scale)
                    })
                })
                .collect();
            let top = scores.iter().flatten().fold(f64::MIN, |a, &b| a.max(b));
            let weights: Vec<f64> = scores
                .iter()
                .map(|s| s.map_or(0.0, |s| (s - top).exp()))
                .collect();
            let sum: f64 = weights.iter().sum();
            for d in 0..hd {
                let want: f64 = (0..total)
                    .map(|t| weights[t] * f64::from(v[row(t) + d]))
                    .sum::<f64>()
                    / sum;
                let got = y[(i * heads + h) * hd + d];
                assert!(
                    (f64::from(got) - want).abs() <= 1e-5,
                    "seq {seq}, heads {heads}/{kv}, hd {hd}, total {total}, window {window:?}: \
                     position {i} head {h} value {d}: {got} against {want}"
                );
            }
        }
    }
}

#[test]
fn attention_equals_softmax_sums() {
    let mut rng = Rng(0xa77);
    // Decode on the default model's shape (9 query heads over 3, 64 wide)
    // at one key, within one chunk of 32, and across several (the last one
    // part full); a few positions at once; Gemma 3's 256-wide heads; a
    // head size off the 32-unit stride; a sliding window that hides whole
    // chunks before the first seen key.
    check_attention(&mut rng, (1, 9, 3, 64, 1), None);
    check_attention(&mut rng, (1, 9, 3, 64, 20), None);
    check_attention(&mut rng, (1, 9, 3, 64, 100), None);
    check_attention(&mut rng, (5, 4, 2, 64, 70), None);
    check_attention(&mut rng, (2, 4, 1, 256, 40), None);
    check_attention(&mut rng, (3, 6, 6, 40, 33), None);
    check_attention(&mut rng, (2, 4, 2, 64, 150), Some(48));
}

/// Off a CubeCL device the kernels refuse, for the caller's tensor-op path.
#[test]
fn other_devices_get_their_tensors_back() {
    let device = Device::flex();
    let x = Tensor::<2>::from_data(
        TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]),
        &device,
    );
    let w = Tensor::<1>::from_data(TensorData::new(vec![1.0f32, 1.0], [2]), &device);
    assert_eq!(rms_norm(&x, &w, 1e-6).unwrap_err(), NotCubeF32);
    let x3 = Tensor::<3>::from_data(TensorData::new(vec![1.0f32, 2.0], [1, 1, 2]), &device);
    let t = Tensor::<2>::from_data(TensorData::new(vec![0.5f32], [1, 1]), &device);
    assert_eq!(rope(&x3, &t, &t, true).unwrap_err(), NotCubeF32);
    let m = Tensor::<3>::from_data(TensorData::new(vec![0.0f32], [1, 1, 1]), &device);
    assert_eq!(
        attention(&x3, &x3, &x3, 1, &m, 1.0).unwrap_err(),
        NotCubeF32
    );
}

#[test]
fn gated_activations_equal_their_formulas() {
    let device = gpu();
    let mut rng = Rng(0x6a7e);
    // A decoded token of a 1536-wide MLP, a prompt's rows, a width off the
    // 32-unit stride.
    for (rows, n) in [(1, 1536), (7, 1536), (3, 45)] {
        let g = rng.values(rows * n, 8.0);
        let u = rng.values(rows * n, 2.0);
        let t = |v: &[f32]| Tensor::<2>::from_data(TensorData::new(v.to_vec(), [rows, n]), &device);
        let c = (2.0 / std::f32::consts::PI).sqrt();
        for (act, f) in [
            (
                Gate::Silu,
                (|x: f32, _| x / (1.0 + (-x).exp())) as fn(f32, f32) -> f32,
            ),
            (Gate::GeluTanh, |x: f32, c: f32| {
                0.5 * x * (1.0 + ((x + 0.044_715 * x * x * x) * c).tanh())
            }),
        ] {
            let y = host(gated(&t(&g), &t(&u), act).unwrap());
            for (i, &got) in y.iter().enumerate() {
                let want = f(g[i], c) * u[i];
                assert!(
                    (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "{act:?} [{rows} × {n}] value {i}: {got} against {want} (gate {})",
                    g[i]
                );
            }
        }
    }
}

//! The rearranged blocks against `arny-gguf`'s dequantization (itself
//! checked against the `gguf` Python package), bit for bit, and the shaders
//! against f32 arithmetic on those weights: random blocks of every type, the
//! shapes decode and prefill use, and the default model's own tensors. The
//! shaders run on whatever wgpu adapter there is; here that is lavapipe
//! (Mesa's Vulkan on the CPU, installed by `scripts/setup.sh --with burn`).
//! No adapter at all fails these tests rather than skipping them.

use arny_gguf::GgufFile;
use arny_qmatmul::{QMatrix, QType};
use arny_qmatmul_gpu::{GpuQMatrix, Layout, Packed};
use burn::tensor::{Device, Tensor, TensorData};
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

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Random blocks of `ty` with finite scales of a realistic size.
fn random_matrix(rng: &mut Rng, ty: QType, rows: usize, cols: usize) -> QMatrix {
    let blocks = rows * cols / ty.block();
    let mut data = Vec::with_capacity(blocks * ty.block_bytes());
    for _ in 0..blocks {
        let mut b: Vec<u8> = (0..ty.block_bytes())
            .map(|_| (rng.next() >> 56) as u8)
            .collect();
        let at: &[usize] = match ty {
            QType::Q4_0 | QType::Q8_0 => &[0],
            QType::Q4_1 | QType::Q4_K => &[0, 2],
            QType::Q6_K => &[208],
        };
        for &i in at {
            b[i..i + 2].copy_from_slice(&f16::from_f32(rng.unit() * 0.05).to_le_bytes());
        }
        data.extend_from_slice(&b);
    }
    QMatrix::new(ty, rows, cols, data.into(), 0).unwrap()
}

fn dequantized(w: &QMatrix) -> Vec<f32> {
    arny_gguf::dequant::dequantize(w.ty().ggml(), w.bytes(), w.rows() * w.cols()).unwrap()
}

/// Equal as numbers (llama.cpp's `(q - 8)·d` gives -0 where `d·q - 8d`
/// gives +0; nothing else may differ).
fn assert_same(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    if let Some(i) = (0..a.len()).find(|&i| a[i] != b[i]) {
        panic!("{what}: weight {i} is {} here, {} in arny-gguf", a[i], b[i]);
    }
}

#[test]
fn rearranged_blocks_decode_to_the_same_weights() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for ty in QType::ALL {
        let w = random_matrix(&mut rng, ty, 6, 512);
        let p = Packed::new(&w);
        assert_eq!(p.layout, Layout::of(ty));
        assert_same(&p.dequantize(), &dequantized(&w), ty.name());
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

/// `x · Wᵀ` on the GPU against f64 sums over the same f32 weights: each
/// output within 1e-5 of the sum of the products' magnitudes.
fn check(device: &Device, w: &QMatrix, m: usize, rng: &mut Rng, what: &str) {
    let (n, k) = (w.rows(), w.cols());
    let weights = Packed::new(w).dequantize();
    let x: Vec<f32> = (0..m * k).map(|_| rng.unit() * 2.0).collect();
    let g = GpuQMatrix::upload(w, device).unwrap();
    let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [m, k]), device);
    let y = g.matmul(xt).into_data();
    let y = y.as_slice::<f32>().unwrap();
    assert_eq!(y.len(), m * n);
    let mut worst = 0f64;
    for r in 0..m {
        for c in 0..n {
            let (mut s, mut mag) = (0f64, 0f64);
            for i in 0..k {
                let p = x[r * k + i] as f64 * weights[c * k + i] as f64;
                s += p;
                mag += p.abs();
            }
            let err = (y[r * n + c] as f64 - s).abs() / mag.max(1e-30);
            worst = worst.max(err);
        }
    }
    assert!(worst < 1e-5, "{what}: relative error {worst:e}");
}

#[test]
fn shaders_equal_f32_arithmetic() {
    let device = gpu();
    let mut rng = Rng(42);
    for ty in QType::ALL {
        // Decode (1 row), a partly filled cube (3 rows), a full one (8),
        // then prefill's path through decoded slices (19 rows); 96 blocks
        // of 32 per row, so the 32 units take 3 each.
        for m in [1, 3, 8, 19] {
            let w = random_matrix(&mut rng, ty, 70, 3072);
            check(&device, &w, m, &mut rng, &format!("{} m={m}", ty.name()));
        }
        // Fewer groups than units.
        let w = random_matrix(&mut rng, ty, 5, 256);
        check(&device, &w, 2, &mut rng, &format!("{} narrow", ty.name()));
    }
}

/// The device's decoding of a row range equals the host's, bit for bit:
/// every product in it is exact in f32.
#[test]
fn decoded_slices_equal_the_host_decoding() {
    let device = gpu();
    let mut rng = Rng(11);
    for ty in QType::ALL {
        let w = random_matrix(&mut rng, ty, 70, 512);
        let host = Packed::new(&w).dequantize();
        let g = GpuQMatrix::upload(&w, &device).unwrap();
        let got = g.dequantize_rows(3, 40).into_data();
        assert_eq!(g.bytes(), Packed::new(&w).bytes());
        let got = got.as_slice::<f32>().unwrap();
        let want: Vec<u32> = host[3 * 512..43 * 512]
            .iter()
            .map(|v| v.to_bits())
            .collect();
        let got: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
        assert!(got == want, "{}", ty.name());
    }
}

/// More cubes than one launch dimension may count (four output columns a
/// cube: Gemma's 262144-token vocabulary) fold into a second dimension, and
/// more values than one binding may hold split into parts.
#[test]
fn wide_outputs_fold_and_split() {
    let device = gpu();
    let mut rng = Rng(7);
    let w = random_matrix(&mut rng, QType::Q8_0, 270_002, 32);
    check(&device, &w, 1, &mut rng, "270002 columns");
    // Past PART_BYTES of values (72 MB here) the matrix is held in two
    // parts; both paths stitch them together.
    let w = random_matrix(&mut rng, QType::Q8_0, 140_000, 512);
    let parts = format!("{:?}", GpuQMatrix::upload(&w, &device).unwrap());
    assert!(parts.ends_with("2 parts)"), "{parts}");
    check(&device, &w, 1, &mut rng, "140000 × 512, decode");
    check(&device, &w, 9, &mut rng, "140000 × 512, prefill");
}

#[test]
fn the_default_models_tensors() {
    let device = gpu();
    let path = arny_model_store::require_default_model().unwrap();
    let bytes: std::sync::Arc<[u8]> = std::fs::read(path).unwrap().into();
    let f = GgufFile::from_bytes(&bytes).unwrap();
    let mut rng = Rng(3);
    let mut seen = Vec::new();
    for t in &f.tensors {
        let Some(ty) = QType::from_ggml(t.ggml_type) else {
            continue;
        };
        if seen.contains(&ty) || t.dims.len() != 2 {
            continue;
        }
        seen.push(ty);
        let (cols, rows) = (t.dims[0] as usize, t.dims[1] as usize);
        let w = QMatrix::new(ty, rows, cols, bytes.clone(), t.start as usize).unwrap();
        assert_same(&Packed::new(&w).dequantize(), &dequantized(&w), &t.name);
        // The first 256 rows are enough for the shader.
        let w = w.row_range(0, rows.min(256)).unwrap();
        check(&device, &w, 4, &mut rng, &t.name);
    }
    assert!(!seen.is_empty(), "the default model holds block types");
}

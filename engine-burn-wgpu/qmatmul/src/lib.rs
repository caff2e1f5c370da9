//! `y = x · Wᵀ` where `W` stays in the GGUF block format it was stored in.
//!
//! A weight row of Q4_1 is 20 bytes per 32 values instead of 128 in f32;
//! decode reads every weight once per token, so reading the blocks as they
//! are is most of the speed. The activations are quantized to 8 bits per
//! block the way llama.cpp's CPU backend does it (Q8_0, Q8_1 or Q8_K,
//! depending on the weight type), and each block's product is an integer
//! dot product scaled once: the same arithmetic as llama.cpp, so results
//! agree with it to float rounding.
//!
//! Kernels: [`Kernel::Scalar`] is the reference every other kernel is
//! tested against; [`Kernel::Avx2`] and [`Kernel::Avx512Vnni`] (x86-64,
//! picked at run time), [`Kernel::Neon`] (aarch64) and [`Kernel::Simd128`]
//! (wasm32 built with `+simd128`) each have code for every block type.

// The threaded page build is a nightly build anyway (std rebuilt with
// atomics); its workers sleep with `memory.atomic.wait32`.
#![cfg_attr(
    all(target_family = "wasm", target_feature = "atomics"),
    feature(stdarch_wasm_atomic_wait)
)]

mod act;
#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(all(target_family = "wasm", target_feature = "atomics"))]
pub mod pool;
mod scalar;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::sync::Arc;

pub use act::{ActKind, Activations};

/// The block formats the kernels read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum QType {
    Q4_0,
    Q4_1,
    Q8_0,
    Q4_K,
    Q6_K,
}

impl QType {
    pub const ALL: [QType; 5] = [Self::Q4_0, Self::Q4_1, Self::Q8_0, Self::Q4_K, Self::Q6_K];

    /// From a ggml type id (`ggml_type` in ggml.h).
    pub fn from_ggml(ty: u32) -> Option<Self> {
        Some(match ty {
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            12 => Self::Q4_K,
            14 => Self::Q6_K,
            _ => return None,
        })
    }

    pub fn ggml(self) -> u32 {
        match self {
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q8_0 => 8,
            Self::Q4_K => 12,
            Self::Q6_K => 14,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q8_0 => "Q8_0",
            Self::Q4_K => "Q4_K",
            Self::Q6_K => "Q6_K",
        }
    }

    /// Values per block.
    pub fn block(self) -> usize {
        match self {
            Self::Q4_K | Self::Q6_K => 256,
            _ => 32,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
            Self::Q4_K => 144,
            Self::Q6_K => 210,
        }
    }

    /// The activation format llama.cpp pairs with this weight type
    /// (`vec_dot_type` in ggml-cpu).
    pub fn activation(self) -> ActKind {
        match self {
            Self::Q4_0 | Self::Q8_0 => ActKind::Q8_0,
            Self::Q4_1 => ActKind::Q8_1,
            Self::Q4_K | Self::Q6_K => ActKind::Q8_K,
        }
    }
}

/// Why a [`QMatrix`] cannot be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeError(pub String);

impl std::fmt::Display for ShapeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ShapeError {}

/// `rows` rows of `cols` values in `ty` blocks, row after row, as GGUF
/// stores a 2-D tensor. The bytes are shared (typically the model file's
/// own buffer), so a matrix costs no copy.
#[derive(Clone)]
pub struct QMatrix {
    ty: QType,
    rows: usize,
    cols: usize,
    data: Arc<[u8]>,
    start: usize,
}

impl std::fmt::Debug for QMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QMatrix({} × {} {})",
            self.rows,
            self.cols,
            self.ty.name()
        )
    }
}

impl QMatrix {
    /// The matrix at `data[start..]`. Checks that rows are whole blocks and
    /// that the bytes are there.
    pub fn new(
        ty: QType,
        rows: usize,
        cols: usize,
        data: Arc<[u8]>,
        start: usize,
    ) -> Result<Self, ShapeError> {
        if cols == 0 || rows == 0 || !cols.is_multiple_of(ty.block()) {
            return Err(ShapeError(format!(
                "{rows} × {cols} is not whole {} blocks of {}",
                ty.name(),
                ty.block()
            )));
        }
        let len = (cols / ty.block())
            .checked_mul(ty.block_bytes())
            .and_then(|r| r.checked_mul(rows))
            .ok_or_else(|| ShapeError(format!("{rows} × {cols} overflows")))?;
        if start.checked_add(len).is_none_or(|end| end > data.len()) {
            return Err(ShapeError(format!(
                "{rows} × {cols} {} needs {len} bytes at {start}; the buffer has {}",
                ty.name(),
                data.len()
            )));
        }
        Ok(Self {
            ty,
            rows,
            cols,
            data,
            start,
        })
    }

    /// `values` (`rows × cols`, row-major) quantized to Q8_0, for weights
    /// stored in a type the kernels do not read (f16, bf16): 8 bits per
    /// value is the nearest block format.
    pub fn quantize_q8_0(values: &[f32], rows: usize, cols: usize) -> Result<Self, ShapeError> {
        if values.len() != rows * cols || !cols.is_multiple_of(32) {
            return Err(ShapeError(format!(
                "{} values are not {rows} rows of {cols} (a multiple of 32)",
                values.len()
            )));
        }
        let mut out = Vec::with_capacity(values.len() / 32 * 34);
        for b in values.chunks_exact(32) {
            let (d, qs) = act::quantize_block_q8(b);
            out.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
            out.extend(qs.iter().map(|&q| q as u8));
        }
        Self::new(QType::Q8_0, rows, cols, out.into(), 0)
    }

    /// Rows `start..start + n` as a matrix of their own, sharing the bytes:
    /// how a fused tensor (Phi-3's `attn_qkv`, its gate-and-up `ffn_up`)
    /// becomes the projections it stacks.
    pub fn row_range(&self, start: usize, n: usize) -> Result<Self, ShapeError> {
        if start.checked_add(n).is_none_or(|end| end > self.rows) {
            return Err(ShapeError(format!(
                "rows {start}..{} of a {}-row matrix",
                start.saturating_add(n),
                self.rows
            )));
        }
        Self::new(
            self.ty,
            n,
            self.cols,
            self.data.clone(),
            self.start + start * self.row_bytes(),
        )
    }

    pub fn ty(&self) -> QType {
        self.ty
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.cols / self.ty.block() * self.ty.block_bytes()
    }

    /// The blocks, all rows.
    pub fn bytes(&self) -> &[u8] {
        &self.data[self.start..self.start + self.rows * self.row_bytes()]
    }

    fn row(&self, r: usize) -> &[u8] {
        self.rows_bytes(r, 1)
    }

    /// The bytes of rows `first..first + n`, contiguous.
    fn rows_bytes(&self, first: usize, n: usize) -> &[u8] {
        let b = self.row_bytes();
        &self.data[self.start + first * b..self.start + (first + n) * b]
    }

    /// Whether every block's f16 scale (and minimum) is finite. The
    /// quantized values are integers, so this is the whole check that a
    /// damaged file cannot feed NaN or infinity into the products.
    pub fn scales_finite(&self) -> bool {
        // The f16 fields' byte offsets per block type. Block sizes and
        // offsets are constants, so the loop has no bounds checks and no
        // early exit per block: it was 10% of loading the default model.
        let b = self.bytes();
        match self.ty {
            QType::Q4_0 => no_f16_non_finite::<18, 1>(b, [0]),
            QType::Q8_0 => no_f16_non_finite::<34, 1>(b, [0]),
            QType::Q4_1 => no_f16_non_finite::<20, 2>(b, [0, 2]),
            QType::Q4_K => no_f16_non_finite::<144, 2>(b, [0, 2]),
            QType::Q6_K => no_f16_non_finite::<210, 1>(b, [208]),
        }
    }

    /// Row `r` decoded to f32, appended to `out`: an embedding lookup.
    /// The decoder is `arny-gguf`'s, checked against the `gguf` package.
    pub fn dequantize_row(&self, r: usize, out: &mut Vec<f32>) {
        arny_gguf::dequant::dequantize_into(self.ty.ggml(), self.row(r), self.cols, out)
            .expect("a QMatrix row is whole blocks");
    }
}

/// Whether no block of `BLOCK` bytes holds a non-finite f16 (all-ones
/// exponent: infinity or NaN) at any of `fields`.
fn no_f16_non_finite<const BLOCK: usize, const N: usize>(bytes: &[u8], fields: [usize; N]) -> bool {
    // One row of blocks at a time keeps an early exit without a branch per
    // block.
    bytes.chunks(BLOCK * 64).all(|run| {
        let mut all_ones = false;
        for b in run.chunks_exact(BLOCK) {
            let b: &[u8; BLOCK] = b.try_into().expect("a whole block");
            for o in fields {
                let h = u16::from_le_bytes([b[o], b[o + 1]]);
                all_ones |= h & 0x7C00 == 0x7C00;
            }
        }
        !all_ones
    })
}

/// An implementation of the dot products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Portable Rust, the reference.
    Scalar,
    /// x86-64 with AVX2 and FMA.
    Avx2,
    /// x86-64 with AVX-512 VNNI (and VL): the AVX2 kernels with one
    /// `vpdpbusd` where AVX2 needs two instructions.
    Avx512Vnni,
    /// aarch64 NEON (every aarch64 CPU has it).
    Neon,
    /// aarch64 NEON with the `dotprod` extension (`sdot`).
    NeonDotprod,
    /// wasm32 with the simd128 proposal, compiled in with `+simd128`.
    Simd128,
}

impl Kernel {
    /// The kernel to use on this CPU. On x86-64 that is AVX2 even where
    /// AVX-512 VNNI runs: the two give the same bits, and on the AMD EPYC
    /// measured here VNNI's one-instruction dot product was the slower
    /// (decode 5%, the engine's prefill up to 20%), which a timing at
    /// start-up did not tell apart reliably. VNNI stays tested and can be
    /// named ([`matmul_with`]).
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if Self::Avx2.runs_here() {
            return Self::Avx2;
        }
        #[cfg(target_arch = "aarch64")]
        if Self::NeonDotprod.runs_here() {
            return Self::NeonDotprod;
        }
        #[cfg(target_arch = "aarch64")]
        return Self::Neon;
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        return Self::Simd128;
        #[allow(unreachable_code)]
        Self::Scalar
    }

    /// Every kernel this CPU runs, the reference first.
    pub fn available() -> Vec<Self> {
        [
            Self::Scalar,
            Self::Avx2,
            Self::Avx512Vnni,
            Self::Neon,
            Self::NeonDotprod,
            Self::Simd128,
        ]
        .into_iter()
        .filter(|k| k.runs_here())
        .collect()
    }

    /// Whether this CPU runs the kernel.
    pub fn runs_here(self) -> bool {
        match self {
            Self::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Self::Avx512Vnni => {
                Self::Avx2.runs_here()
                    && std::arch::is_x86_feature_detected!("avx512vnni")
                    && std::arch::is_x86_feature_detected!("avx512vl")
            }
            #[cfg(target_arch = "aarch64")]
            Self::Neon => true,
            #[cfg(target_arch = "aarch64")]
            Self::NeonDotprod => std::arch::is_aarch64_feature_detected!("dotprod"),
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Self::Simd128 => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Scalar => "scalar",
            Self::Avx2 => "avx2",
            Self::Avx512Vnni => "avx512-vnni",
            Self::Neon => "neon",
            Self::NeonDotprod => "neon-dotprod",
            Self::Simd128 => "simd128",
        }
    }

    /// One weight row against four activation rows, where the kernel has
    /// a four-row form for `ty`: the same sums as four [`Self::dot`]s, in
    /// the same order, so the same bits.
    fn dot4(self, ty: QType, w: &[u8], a: [&act::Row<'_>; 4]) -> [f32; 4] {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: `matmul_quantized` checked `runs_here`.
            let four = match self {
                Self::Avx2 => unsafe { x86::avx2::dot4(ty, w, a) },
                Self::Avx512Vnni => unsafe { x86::vnni::dot4(ty, w, a) },
                _ => None,
            };
            if let Some(v) = four {
                return v;
            }
        }
        a.map(|r| self.dot(ty, w, r))
    }

    /// `out.len()` consecutive weight rows from `first` against one
    /// activation row (decode): the same sums as one [`Self::dot`] each.
    fn dot_rows(self, w: &QMatrix, first: usize, a: &act::Row<'_>, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            let (n, bytes) = (w.row_bytes(), w.rows_bytes(first, out.len()));
            match self {
                // SAFETY: `matmul_quantized` checked `runs_here`.
                Self::Avx2 => return unsafe { x86::avx2::dot_rows(w.ty, bytes, n, a, out) },
                // SAFETY: as above.
                Self::Avx512Vnni => return unsafe { x86::vnni::dot_rows(w.ty, bytes, n, a, out) },
                _ => {}
            }
        }
        for (j, o) in out.iter_mut().enumerate() {
            *o = self.dot(w.ty, w.row(first + j), a);
        }
    }

    /// One weight row against one activation row.
    fn dot(self, ty: QType, w: &[u8], a: &act::Row<'_>) -> f32 {
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `matmul_quantized` checked `runs_here`.
            Self::Avx2 => unsafe { x86::avx2::dot(ty, w, a) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Self::Avx512Vnni => unsafe { x86::vnni::dot(ty, w, a) },
            #[cfg(target_arch = "aarch64")]
            Self::Neon => neon::dot(ty, w, a),
            #[cfg(target_arch = "aarch64")]
            // SAFETY: `matmul_quantized` checked `runs_here`.
            Self::NeonDotprod => unsafe { neon::dot_dotprod(ty, w, a) },
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Self::Simd128 => wasm::dot(ty, w, a),
            _ => scalar::dot(ty, w, a),
        }
    }
}

/// `out[i][r] = Σ_k x[i][k] · W[r][k]` for `m` rows of `x` (`m × cols`,
/// row-major) into `out` (`m × rows`), with the fastest kernel here.
pub fn matmul(x: &[f32], m: usize, w: &QMatrix, out: &mut [f32]) {
    matmul_with(Kernel::detect(), x, m, w, out)
}

/// [`matmul`] with a chosen kernel. Panics if the slices' lengths do not
/// match `m` and `w`'s shape (a caller bug, not an input error).
pub fn matmul_with(kernel: Kernel, x: &[f32], m: usize, w: &QMatrix, out: &mut [f32]) {
    assert_eq!(x.len(), m * w.cols, "x is not {m} × {}", w.cols);
    assert_eq!(out.len(), m * w.rows, "out is not {m} × {}", w.rows);
    let acts = Activations::quantize(w.ty.activation(), x, m, w.cols);
    matmul_quantized(kernel, &acts, w, out);
}

/// Output rows per task: enough work per task to pay rayon's hand-off,
/// and enough tasks for every thread.
const ROWS_PER_TASK: usize = 16;

/// [`matmul_with`] over activations already quantized (several matrices
/// that read the same input share one quantization).
pub fn matmul_quantized(kernel: Kernel, acts: &Activations, w: &QMatrix, out: &mut [f32]) {
    assert_eq!(
        acts.kind(),
        w.ty.activation(),
        "activations of the wrong kind"
    );
    assert_eq!(acts.cols(), w.cols, "activations of the wrong width");
    // The SIMD kernels are `unsafe` on a CPU without their instructions.
    assert!(
        kernel.runs_here(),
        "{} does not run on this CPU",
        kernel.name()
    );
    let m = acts.rows();
    assert_eq!(out.len(), m * w.rows);
    let rows: Vec<act::Row<'_>> = (0..m).map(|i| acts.row(i)).collect();
    if m == 1 {
        // Decode: one output row, split straight into `out`.
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        if kernel == Kernel::Simd128 {
            let (a, y, n) = (&rows[0], wasm::split_row(&rows[0]), w.row_bytes());
            for_each_chunk(out, ROWS_PER_TASK, |first, chunk| {
                let bytes = w.rows_bytes(first, chunk.len());
                wasm::dot_rows(w.ty, bytes, n, a, &y, chunk)
            });
            return;
        }
        for_each_chunk(out, ROWS_PER_TASK, |first, chunk| {
            kernel.dot_rows(w, first, &rows[0], chunk)
        });
        return;
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    if kernel == Kernel::Simd128 {
        return wasm::matmul(w, &rows, out);
    }
    // Prefill: each task takes a few weight rows (kept in L1) against every
    // activation row, four at a time, into a tile laid out `[weight row,
    // activation row]` (each `dot4` one 16-byte store), then copies the
    // tile into its columns of every output row. The activation rows are
    // the outer loop: each four is read once per task and meets every
    // weight row while in L1 (the other order streams all of them from L2
    // once per weight row). The copy was one transpose on the caller after
    // all the tasks, 3% of a two-thread prefill's samples with the other
    // thread idle; writing `out` directly from `dot4` cost the tasks more
    // than that.
    let all = w.rows;
    let shared = SharedOut::new(out);
    for_each_task(all.div_ceil(ROWS_PER_TASK), &|t| {
        let first = t * ROWS_PER_TASK;
        let n = ROWS_PER_TASK.min(all - first);
        let mut tile = vec![0f32; n * m];
        let quads = m / 4;
        for q in 0..quads {
            let i = 4 * q;
            let a = [&rows[i], &rows[i + 1], &rows[i + 2], &rows[i + 3]];
            for j in 0..n {
                let v = kernel.dot4(w.ty, w.row(first + j), a);
                tile[j * m + i..j * m + i + 4].copy_from_slice(&v);
            }
        }
        for i in 4 * quads..m {
            for j in 0..n {
                tile[j * m + i] = kernel.dot(w.ty, w.row(first + j), &rows[i]);
            }
        }
        for i in 0..m {
            // SAFETY: a task's columns `first..first + n` are its own in
            // every output row, and each task runs once.
            let o = unsafe { shared.slice(i * all + first, n) };
            for (j, o) in o.iter_mut().enumerate() {
                *o = tile[j * m + i];
            }
        }
    });
}

/// One matrix-vector product of a decode step: `out = W · a` for a
/// single activation row.
pub struct Matvec<'a> {
    pub acts: &'a Activations,
    pub w: &'a QMatrix,
    pub out: &'a mut [f32],
}

/// Several decode products that run back to back (Q, K and V; gate and
/// up), each piece of an output followed by `then(part, first, piece)`
/// (an epilogue over those output rows, such as a LoRA delta's columns).
/// On a page's workers they are one job: a job per matrix and one per
/// delta were ~420 a token, each ending with the caller waiting for a
/// worker's last piece. Elsewhere each part runs as [`matmul_quantized`]
/// and then `then(part, 0, out)`. Every output value is the same dot
/// product either way, so the same bits; `then` must act on each value
/// alone for that to hold of the epilogue too.
pub fn matvec_many(
    kernel: Kernel,
    parts: &mut [Matvec<'_>],
    then: &(dyn Fn(usize, usize, &mut [f32]) + Sync),
) {
    for p in parts.iter() {
        assert_eq!(p.acts.rows(), 1, "a matrix-vector product has one row");
        assert_eq!(p.out.len(), p.w.rows, "out is not {} values", p.w.rows);
    }
    #[cfg(all(
        target_family = "wasm",
        target_feature = "atomics",
        target_feature = "simd128"
    ))]
    if kernel == Kernel::Simd128 && pool::workers() > 0 {
        return matvec_on_workers(parts, then);
    }
    for (i, p) in parts.iter_mut().enumerate() {
        matmul_quantized(kernel, p.acts, p.w, p.out);
        then(i, 0, p.out);
    }
}

/// [`matvec_many`] on a page's workers: guided pieces over all the parts'
/// rows end to end, a piece that spans two parts doing its share of each.
#[cfg(all(
    target_family = "wasm",
    target_feature = "atomics",
    target_feature = "simd128"
))]
fn matvec_on_workers(parts: &mut [Matvec<'_>], then: &(dyn Fn(usize, usize, &mut [f32]) + Sync)) {
    for p in parts.iter() {
        assert_eq!(
            p.acts.kind(),
            p.w.ty.activation(),
            "activations of the wrong kind"
        );
        assert_eq!(p.acts.cols(), p.w.cols, "activations of the wrong width");
    }
    // Parts that share an input share its split (Q, K and V read one).
    let mut splits: Vec<(&Activations, Vec<[std::arch::wasm32::v128; 4]>)> = Vec::new();
    let mut split_of = Vec::with_capacity(parts.len());
    for p in parts.iter() {
        match splits.iter().position(|(a, _)| std::ptr::eq(*a, p.acts)) {
            Some(j) => split_of.push(j),
            None => {
                split_of.push(splits.len());
                splits.push((p.acts, wasm::split_row(&p.acts.row(0))));
            }
        }
    }
    let mats: Vec<(&QMatrix, act::Row<'_>)> = parts.iter().map(|p| (p.w, p.acts.row(0))).collect();
    let rows: Vec<usize> = mats.iter().map(|(w, _)| w.rows).collect();
    let outs: Vec<SharedOut> = parts.iter_mut().map(|p| SharedOut::new(p.out)).collect();
    let pieces = guided_pieces(rows.iter().sum(), ROWS_PER_TASK, pool::workers() + 1);
    pool::for_each(pieces.len(), &|i| {
        for (p, first, len) in part_spans(&rows, pieces[i]) {
            let (w, row) = &mats[p];
            // SAFETY: pieces are disjoint and each runs once, so are their
            // spans of each part's output.
            let out = unsafe { outs[p].slice(first, len) };
            let y = &splits[split_of[p]].1;
            wasm::dot_rows(w.ty, w.rows_bytes(first, len), w.row_bytes(), row, y, out);
            then(p, first, out);
        }
    });
}

/// A piece `(start, len)` of parts with `rows` rows each, laid end to end,
/// as `(part, first row, rows)` spans within the parts.
#[cfg_attr(
    not(any(test, all(target_family = "wasm", target_feature = "atomics"))),
    expect(dead_code, reason = "a page's workers only; tested everywhere")
)]
fn part_spans(rows: &[usize], (start, len): (usize, usize)) -> Vec<(usize, usize, usize)> {
    let mut spans = Vec::new();
    let (mut part_start, end) = (0, start + len);
    for (p, &n) in rows.iter().enumerate() {
        let (lo, hi) = (start.max(part_start), end.min(part_start + n));
        if lo < hi {
            spans.push((p, lo - part_start, hi - lo));
        }
        part_start += n;
    }
    spans
}

/// Runs `f(offset, piece)` over pieces of `out` that together cover it
/// once: `chunk`-sized ones on the current rayon pool, larger ones first on
/// a page's workers (see `guided_pieces`), or all of `out` in `chunk`s on
/// the caller. For other per-column work of a decode step (a LoRA delta).
pub fn for_each_chunk(out: &mut [f32], chunk: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    #[cfg(all(target_family = "wasm", target_feature = "atomics"))]
    if pool::workers() > 0 && out.len() > chunk {
        let len = out.len();
        let pieces = guided_pieces(len, chunk, pool::workers() + 1);
        let shared = SharedOut::new(out);
        pool::for_each(pieces.len(), &|i| {
            let (start, n) = pieces[i];
            // SAFETY: each task is run once, and the pieces are disjoint.
            f(start, unsafe { shared.slice(start, n) })
        });
        return;
    }
    #[cfg(not(target_family = "wasm"))]
    {
        use rayon::prelude::*;
        if rayon::current_num_threads() > 1 && out.len() > chunk {
            out.par_chunks_mut(chunk)
                .enumerate()
                .for_each(|(i, c)| f(i * chunk, c));
            return;
        }
    }
    for (i, c) in out.chunks_mut(chunk).enumerate() {
        f(i * chunk, c);
    }
}

/// `len` split into `(start, len)` pieces for `threads` threads that take
/// them in order: each piece a `2 × threads`-th of what is left, at least
/// `min` (guided self-scheduling). Taking a piece is an atomic add on a
/// line every thread writes; at `min` rows a piece (12,800 pieces a token)
/// those adds cost about what the second thread saved. Large pieces first
/// keep the adds few, small ones last keep the caller from waiting long
/// on a worker's last piece, and a worker that starts late takes fewer.
#[cfg_attr(
    not(any(test, all(target_family = "wasm", target_feature = "atomics"))),
    expect(dead_code, reason = "a page's workers only; tested everywhere")
)]
fn guided_pieces(len: usize, min: usize, threads: usize) -> Vec<(usize, usize)> {
    let mut pieces = Vec::new();
    let mut start = 0;
    while start < len {
        let n = (len - start)
            .div_ceil(2 * threads)
            .max(min)
            .min(len - start);
        pieces.push((start, n));
        start += n;
    }
    pieces
}

/// Runs `f(i)` for every `i < n`, on a page's workers where it has them.
#[cfg(target_family = "wasm")]
pub(crate) fn for_each_task(n: usize, f: &(dyn Fn(usize) + Sync)) {
    #[cfg(target_feature = "atomics")]
    pool::for_each(n, f);
    #[cfg(not(target_feature = "atomics"))]
    (0..n).for_each(f);
}

/// Runs `f(i)` for every `i < n`, on the caller's rayon pool.
#[cfg(not(target_family = "wasm"))]
pub(crate) fn for_each_task(n: usize, f: &(dyn Fn(usize) + Sync)) {
    use rayon::prelude::*;
    if rayon::current_num_threads() > 1 && n > 1 {
        (0..n).into_par_iter().for_each(f);
    } else {
        (0..n).for_each(f);
    }
}

/// An output buffer that tasks on several threads write disjoint parts of.
pub(crate) struct SharedOut {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: `slice` is `unsafe`: its callers keep the parts disjoint.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    pub(crate) fn new(out: &mut [f32]) -> Self {
        Self {
            ptr: out.as_mut_ptr(),
            len: out.len(),
        }
    }

    /// `out[start..start + len]`.
    ///
    /// # Safety
    /// No two live slices overlap, and none outlives the buffer's borrow.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice(&self, start: usize, len: usize) -> &mut [f32] {
        assert!(start + len <= self.len, "out of the buffer");
        // SAFETY: in bounds (checked); disjointness is the caller's.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}

#[cfg(test)]
mod tests {
    use super::{guided_pieces, part_spans};

    #[test]
    fn guided_pieces_cover_the_rows_once_largest_first() {
        for (len, min, threads) in [
            (576, 16, 2),
            (49152, 16, 2),
            (1536, 64, 3),
            (10, 16, 2),
            (17, 16, 4),
        ] {
            let pieces = guided_pieces(len, min, threads);
            let mut next = 0;
            for (i, &(start, n)) in pieces.iter().enumerate() {
                assert_eq!(start, next, "{len}: piece {i} leaves a gap or overlaps");
                assert!(n > 0);
                assert!(
                    n >= min || start + n == len,
                    "{len}: piece {i} of {n} rows, under {min}"
                );
                if let Some(&(_, prev)) = i.checked_sub(1).map(|j| &pieces[j]) {
                    assert!(
                        n <= prev,
                        "{len}: piece {i} ({n}) larger than the one before ({prev})"
                    );
                }
                next = start + n;
            }
            assert_eq!(next, len);
            // Few pieces (each is an atomic add both threads contend for),
            // far fewer than `len / min`.
            assert!(
                pieces.len() <= 8 * threads + 64usize.min(len.div_ceil(min)),
                "{len}: {} pieces",
                pieces.len()
            );
        }
        assert_eq!(guided_pieces(576, 16, 2)[0], (0, 144));
    }

    #[test]
    fn a_fused_steps_pieces_cover_every_parts_rows_once() {
        for rows in [
            vec![576, 192, 192],
            vec![1536, 1536],
            vec![576],
            vec![5, 40, 3],
        ] {
            let total = rows.iter().sum();
            let mut seen: Vec<Vec<u32>> = rows.iter().map(|&n| vec![0; n]).collect();
            for piece in guided_pieces(total, 16, 2) {
                let spans = part_spans(&rows, piece);
                assert_eq!(spans.iter().map(|s| s.2).sum::<usize>(), piece.1);
                for (p, first, len) in spans {
                    assert!(len > 0 && first + len <= rows[p]);
                    seen[p][first..first + len].iter_mut().for_each(|c| *c += 1);
                }
            }
            assert!(seen.iter().flatten().all(|&c| c == 1), "{rows:?}");
        }
    }
}

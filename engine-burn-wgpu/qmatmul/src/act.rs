//! Activations quantized to 8 bits per value, as llama.cpp's CPU backend
//! does before a quantized matmul (`quantize_row_q8_0/q8_1/q8_K` in
//! ggml-cpu). The rounding follows its x86 code: scale `127 / max|x|`,
//! round half to even; scales rounded through f16 where ggml stores f16.

use half::f16;

/// Which 8-bit format, chosen by the weight type (see
/// [`crate::QType::activation`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum ActKind {
    /// 32 values and an f16 scale.
    Q8_0,
    /// Q8_0 plus `scale × Σq` (f16), which Q4_1's offset multiplies.
    Q8_1,
    /// 256 values, an f32 scale and the sums of each 16.
    Q8_K,
}

impl ActKind {
    pub fn block(self) -> usize {
        match self {
            Self::Q8_K => 256,
            _ => 32,
        }
    }
}

/// `rows` rows of `cols` activations, quantized. Stored as arrays (all the
/// values, then the scales) rather than ggml's interleaved blocks, so the
/// kernels load aligned runs of 32 values.
#[derive(Debug, Clone)]
pub struct Activations {
    kind: ActKind,
    rows: usize,
    cols: usize,
    qs: Vec<i8>,
    /// One scale per block.
    d: Vec<f32>,
    /// Q8_1: `d × Σq` per block.
    s: Vec<f32>,
    /// Q8_K: the sum of each 16 values.
    bsums: Vec<i16>,
}

/// One row's view, what a dot product reads.
pub(crate) struct Row<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub s: &'a [f32],
    pub bsums: &'a [i16],
}

fn f16_round(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// One block of 32 as Q8_0: the scale (before f16 rounding) and values.
pub(crate) fn quantize_block_q8(x: &[f32]) -> (f32, [i8; 32]) {
    // A comparison rather than `f32::max`, which wasm32 calls `fmaxf` for
    // (its NaN rule differs from wasm's `f32.max`): the same result here.
    let amax = x
        .iter()
        .fold(0f32, |m, v| if v.abs() > m { v.abs() } else { m });
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut qs = [0i8; 32];
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = (v * id).round_ties_even() as i8;
    }
    (d, qs)
}

impl Activations {
    /// Quantizes `x` (`rows × cols`, row-major). `cols` must be a whole
    /// number of `kind`'s blocks, as the weights' rows are.
    pub fn quantize(kind: ActKind, x: &[f32], rows: usize, cols: usize) -> Self {
        assert_eq!(x.len(), rows * cols);
        assert!(cols.is_multiple_of(kind.block()));
        // A prompt's rows on the caller's rayon pool: each block is
        // quantized on its own, so the pieces join into the same values.
        // On the caller alone it was 3.5% of a two-thread prefill's CPU
        // samples, with the other thread waiting.
        #[cfg(not(target_family = "wasm"))]
        if rows >= 8 && rayon::current_num_threads() > 1 {
            use rayon::prelude::*;
            let per = rows.div_ceil(2 * rayon::current_num_threads());
            let parts: Vec<Self> = x
                .par_chunks(per * cols)
                .map(|c| Self::quantize_rows(kind, c, c.len() / cols, cols))
                .collect();
            let mut a = Self::quantize_rows(kind, &[], 0, cols);
            a.rows = rows;
            for p in parts {
                a.qs.extend_from_slice(&p.qs);
                a.d.extend_from_slice(&p.d);
                a.s.extend_from_slice(&p.s);
                a.bsums.extend_from_slice(&p.bsums);
            }
            return a;
        }
        Self::quantize_rows(kind, x, rows, cols)
    }

    /// [`Self::quantize`] on the calling thread.
    fn quantize_rows(kind: ActKind, x: &[f32], rows: usize, cols: usize) -> Self {
        let blocks = x.len() / kind.block();
        let mut a = Self {
            kind,
            rows,
            cols,
            qs: Vec::with_capacity(x.len()),
            d: Vec::with_capacity(blocks),
            s: Vec::new(),
            bsums: Vec::new(),
        };
        match kind {
            ActKind::Q8_0 | ActKind::Q8_1 => {
                for b in x.chunks_exact(32) {
                    let (d, qs) = quantize_block_q8(b);
                    a.d.push(f16_round(d));
                    if kind == ActKind::Q8_1 {
                        let sum: i32 = qs.iter().map(|&q| q as i32).sum();
                        a.s.push(f16_round(d * sum as f32));
                    }
                    a.qs.extend_from_slice(&qs);
                }
            }
            ActKind::Q8_K => {
                a.bsums.reserve(x.len() / 16);
                for b in x.chunks_exact(256) {
                    // ggml's quantize_row_q8_K_ref: the scale maps the value
                    // of largest magnitude to -127 (sign included).
                    let (mut amax, mut max) = (0f32, 0f32);
                    for &v in b {
                        if v.abs() > amax {
                            amax = v.abs();
                            max = v;
                        }
                    }
                    if amax == 0.0 {
                        a.d.push(0.0);
                        a.qs.extend(std::iter::repeat_n(0, 256));
                        a.bsums.extend(std::iter::repeat_n(0, 16));
                        continue;
                    }
                    let iscale = -127.0 / max;
                    let start = a.qs.len();
                    a.qs.extend(
                        b.iter()
                            .map(|&v| ((iscale * v).round_ties_even() as i32).min(127) as i8),
                    );
                    for s in a.qs[start..].chunks_exact(16) {
                        a.bsums.push(s.iter().map(|&q| q as i16).sum());
                    }
                    a.d.push(1.0 / iscale);
                }
            }
        }
        a
    }

    pub fn kind(&self) -> ActKind {
        self.kind
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Row `i` decoded back to f32: what the kernels multiply, for tests.
    pub fn dequantize_row(&self, i: usize) -> Vec<f32> {
        let r = self.row(i);
        let b = self.kind.block();
        r.qs.iter()
            .enumerate()
            .map(|(k, &q)| q as f32 * r.d[k / b])
            .collect()
    }

    pub(crate) fn row(&self, i: usize) -> Row<'_> {
        let nb = self.cols / self.kind.block();
        Row {
            qs: &self.qs[i * self.cols..(i + 1) * self.cols],
            d: &self.d[i * nb..(i + 1) * nb],
            s: if self.s.is_empty() {
                &[]
            } else {
                &self.s[i * nb..(i + 1) * nb]
            },
            bsums: if self.bsums.is_empty() {
                &[]
            } else {
                &self.bsums[i * self.cols / 16..(i + 1) * self.cols / 16]
            },
        }
    }
}

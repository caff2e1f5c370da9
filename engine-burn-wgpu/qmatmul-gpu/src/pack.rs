//! GGUF blocks rearranged for a shader. A GPU reads 32-bit words, and a
//! GGUF block's fields start at any byte (Q4_0 is 18 bytes, Q6_K 210), so
//! the blocks are split into three aligned arrays: the quantized values
//! packed into words, one f32 scale per group and, for 4-bit values, one
//! f32 offset per group. Every weight keeps its bits and decodes to the
//! value llama.cpp decodes: a 4-bit value is `scale · q + offset` (Q4_0:
//! offset `-8d`; Q4_1: `m`; Q4_K: `d·sc` and `-dmin·m` per 32, products
//! of an f16 and a 6-bit integer, exact in f32), an 8-bit value is
//! `scale · q` (Q8_0 per 32; Q6_K's `q - 32` with `d·sc` per 16).

use arny_gguf::dequant::scale_min_k4;
use arny_qmatmul::{QMatrix, QType};
use half::f16;

/// How the values of a [`Packed`] matrix are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// 4-bit unsigned values, 8 per word, with a scale and an offset per
    /// 32. In a group's 4 words, byte `j` holds value `j` in its low
    /// nibble and value `j + 16` in its high one (Q4_0's own order).
    Q4,
    /// 8-bit signed values, 4 per word in order, with a scale per `group`
    /// values (32 or 16).
    Q8 { group: usize },
}

impl Layout {
    pub fn of(ty: QType) -> Self {
        match ty {
            QType::Q4_0 | QType::Q4_1 | QType::Q4_K => Self::Q4,
            QType::Q8_0 => Self::Q8 { group: 32 },
            QType::Q6_K => Self::Q8 { group: 16 },
        }
    }

    /// Words of values per 32 weights.
    pub fn words_per_32(self) -> usize {
        match self {
            Self::Q4 => 4,
            Self::Q8 { .. } => 8,
        }
    }

    /// Values per scale.
    pub fn group(self) -> usize {
        match self {
            Self::Q4 => 32,
            Self::Q8 { group } => group,
        }
    }
}

/// A matrix of `rows × cols` weights in a [`Layout`], row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Packed {
    pub layout: Layout,
    pub rows: usize,
    pub cols: usize,
    pub quants: Vec<u32>,
    pub scales: Vec<f32>,
    /// Empty for [`Layout::Q8`].
    pub offsets: Vec<f32>,
}

fn half(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// 32 unsigned 4-bit values → 4 words in [`Layout::Q4`]'s order.
fn pack_nibbles(q: &[u8; 32], out: &mut Vec<u32>) {
    for w in 0..4 {
        let mut word = 0u32;
        for j in 0..4 {
            let i = w * 4 + j;
            word |= u32::from(q[i] | (q[i + 16] << 4)) << (8 * j);
        }
        out.push(word);
    }
}

/// Signed 8-bit values → words, 4 per word in order.
fn pack_bytes(q: &[i8], out: &mut Vec<u32>) {
    out.extend(
        q.chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0] as u8, c[1] as u8, c[2] as u8, c[3] as u8])),
    );
}

impl Packed {
    pub fn new(w: &QMatrix) -> Self {
        let layout = Layout::of(w.ty());
        let n = w.rows() * w.cols();
        let mut p = Self {
            layout,
            rows: w.rows(),
            cols: w.cols(),
            quants: Vec::with_capacity(n / 32 * layout.words_per_32()),
            scales: Vec::with_capacity(n / layout.group()),
            offsets: Vec::with_capacity(if layout == Layout::Q4 { n / 32 } else { 0 }),
        };
        for b in w.bytes().chunks_exact(w.ty().block_bytes()) {
            match w.ty() {
                QType::Q4_0 | QType::Q4_1 => {
                    let d = half(b, 0);
                    let (offset, qs) = match w.ty() {
                        QType::Q4_0 => (-8.0 * d, &b[2..18]),
                        _ => (half(b, 2), &b[4..20]),
                    };
                    // Already in Q4's order: one word per 4 bytes.
                    p.quants.extend(
                        qs.chunks_exact(4)
                            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                    );
                    p.scales.push(d);
                    p.offsets.push(offset);
                }
                QType::Q4_K => {
                    let (d, dmin) = (half(b, 0), half(b, 2));
                    let (sc, qs) = (&b[4..16], &b[16..144]);
                    // Each 32 bytes of values hold two sub-blocks: the low
                    // nibbles are the first, the high nibbles the second.
                    for (c, bytes) in qs.chunks_exact(32).enumerate() {
                        for (half_, shift) in [(0, 0), (1, 4)] {
                            let (s, m) = scale_min_k4(2 * c + half_, sc);
                            let mut q = [0u8; 32];
                            for (l, v) in q.iter_mut().enumerate() {
                                *v = (bytes[l] >> shift) & 0xF;
                            }
                            pack_nibbles(&q, &mut p.quants);
                            p.scales.push(d * f32::from(s));
                            p.offsets.push(-(dmin * f32::from(m)));
                        }
                    }
                }
                QType::Q8_0 => {
                    p.scales.push(half(b, 0));
                    let qs: Vec<i8> = b[2..34].iter().map(|&v| v as i8).collect();
                    pack_bytes(&qs, &mut p.quants);
                }
                QType::Q6_K => {
                    let (ql, qh, sc, d) = (&b[0..128], &b[128..192], &b[192..208], half(b, 208));
                    let mut q = [0i8; 256];
                    for chunk in 0..2 {
                        let (ql, qh) = (&ql[64 * chunk..], &qh[32 * chunk..]);
                        let y = &mut q[128 * chunk..];
                        for l in 0..32 {
                            let h = qh[l];
                            y[l] = ((ql[l] & 0xF) | ((h & 3) << 4)) as i8 - 32;
                            y[l + 32] = ((ql[l + 32] & 0xF) | (((h >> 2) & 3) << 4)) as i8 - 32;
                            y[l + 64] = ((ql[l] >> 4) | (((h >> 4) & 3) << 4)) as i8 - 32;
                            y[l + 96] = ((ql[l + 32] >> 4) | (((h >> 6) & 3) << 4)) as i8 - 32;
                        }
                    }
                    pack_bytes(&q, &mut p.quants);
                    p.scales.extend(sc.iter().map(|&s| d * f32::from(s as i8)));
                }
            }
        }
        p
    }

    /// Every weight as f32, row-major: what the kernels multiply by, for
    /// tests.
    pub fn dequantize(&self) -> Vec<f32> {
        let n = self.rows * self.cols;
        let mut out = Vec::with_capacity(n);
        match self.layout {
            Layout::Q4 => {
                for (g, words) in self.quants.chunks_exact(4).enumerate() {
                    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
                    let (s, o) = (self.scales[g], self.offsets[g]);
                    out.extend(bytes.iter().map(|&b| s * f32::from(b & 0xF) + o));
                    out.extend(bytes.iter().map(|&b| s * f32::from(b >> 4) + o));
                }
            }
            Layout::Q8 { group } => {
                for (i, w) in self.quants.iter().enumerate() {
                    for (j, b) in w.to_le_bytes().into_iter().enumerate() {
                        let s = self.scales[(4 * i + j) / group];
                        out.push(s * f32::from(b as i8));
                    }
                }
            }
        }
        out
    }

    /// Bytes the three arrays take on the device.
    pub fn bytes(&self) -> u64 {
        4 * (self.quants.len() + self.scales.len() + self.offsets.len()) as u64
    }
}

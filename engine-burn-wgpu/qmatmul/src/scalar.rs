//! The reference dot products: plain Rust, integer sums per block and one
//! float multiply-add per block, in the block layouts of ggml-common.h.
//! Every SIMD kernel must agree with these to float rounding.

use half::f16;

use crate::QType;
use crate::act::Row;

pub(crate) fn h(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

pub(crate) fn dot(ty: QType, w: &[u8], a: &Row<'_>) -> f32 {
    match ty {
        QType::Q4_0 => q4_0(w, a),
        QType::Q4_1 => q4_1(w, a),
        QType::Q8_0 => q8_0(w, a),
        QType::Q4_K => q4_k(w, a),
        QType::Q6_K => q6_k(w, a),
    }
}

/// `d · (q - 8)`; the low nibbles are values 0..16, the high ones 16..32.
fn q4_0(w: &[u8], a: &Row<'_>) -> f32 {
    let mut sum = 0f32;
    for (i, b) in w.chunks_exact(18).enumerate() {
        let y = &a.qs[32 * i..32 * i + 32];
        let mut s = 0i32;
        for (j, &q) in b[2..18].iter().enumerate() {
            s += ((q & 0x0F) as i32 - 8) * y[j] as i32 + ((q >> 4) as i32 - 8) * y[j + 16] as i32;
        }
        sum += h(&b[0..2]) * a.d[i] * s as f32;
    }
    sum
}

/// `d · q + m`: the offset times the activations' sum, which Q8_1 carries.
fn q4_1(w: &[u8], a: &Row<'_>) -> f32 {
    let mut sum = 0f32;
    for (i, b) in w.chunks_exact(20).enumerate() {
        let y = &a.qs[32 * i..32 * i + 32];
        let mut s = 0i32;
        for (j, &q) in b[4..20].iter().enumerate() {
            s += (q & 0x0F) as i32 * y[j] as i32 + (q >> 4) as i32 * y[j + 16] as i32;
        }
        sum += h(&b[0..2]) * a.d[i] * s as f32 + h(&b[2..4]) * a.s[i];
    }
    sum
}

fn q8_0(w: &[u8], a: &Row<'_>) -> f32 {
    let mut sum = 0f32;
    for (i, b) in w.chunks_exact(34).enumerate() {
        let y = &a.qs[32 * i..32 * i + 32];
        let s: i32 = b[2..34]
            .iter()
            .zip(y)
            .map(|(&q, &y)| q as i8 as i32 * y as i32)
            .sum();
        sum += h(&b[0..2]) * a.d[i] * s as f32;
    }
    sum
}

/// The 6-bit scale and min of sub-block `j` (0..8) from a K-quant's 12
/// packed bytes.
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (i32, i32) {
    if j < 4 {
        ((q[j] & 63) as i32, (q[j + 4] & 63) as i32)
    } else {
        (
            ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4)) as i32,
            ((q[j + 4] >> 4) | ((q[j] >> 6) << 4)) as i32,
        )
    }
}

/// 8 sub-blocks of 32, each `d·sc·q - dmin·m`; sub-blocks 2k and 2k+1 are
/// the low and high nibbles of the same 32 bytes.
fn q4_k(w: &[u8], a: &Row<'_>) -> f32 {
    let mut sum = 0f32;
    for (i, b) in w.chunks_exact(144).enumerate() {
        let (d, dmin) = (h(&b[0..2]), h(&b[2..4]));
        let (scales, qs) = (&b[4..16], &b[16..144]);
        let y = &a.qs[256 * i..256 * i + 256];
        let bsums = &a.bsums[16 * i..16 * i + 16];
        let (mut dots, mut mins) = (0i32, 0i32);
        for k in 0..4 {
            let q = &qs[32 * k..32 * k + 32];
            let (sc_lo, m_lo) = scale_min_k4(2 * k, scales);
            let (sc_hi, m_hi) = scale_min_k4(2 * k + 1, scales);
            let (mut lo, mut hi) = (0i32, 0i32);
            for l in 0..32 {
                lo += (q[l] & 0x0F) as i32 * y[64 * k + l] as i32;
                hi += (q[l] >> 4) as i32 * y[64 * k + 32 + l] as i32;
            }
            dots += sc_lo * lo + sc_hi * hi;
            let sum_lo = bsums[4 * k] as i32 + bsums[4 * k + 1] as i32;
            let sum_hi = bsums[4 * k + 2] as i32 + bsums[4 * k + 3] as i32;
            mins += m_lo * sum_lo + m_hi * sum_hi;
        }
        sum += d * a.d[i] * dots as f32 - dmin * a.d[i] * mins as f32;
    }
    sum
}

/// 16 groups of 16, each `d·sc·(q - 32)`. Values are stored in quarters
/// of 32 per half block: value `128·half + 32·k + l` has the low (k < 2)
/// or high nibble of `ql[64·half + 32·(k & 1) + l]` and bits `2k, 2k+1` of
/// `qh[32·half + l]` as its top two bits. One pass over `l` unpacks all
/// four quarters (per value, the index arithmetic cost 10× the products).
fn q6_k(w: &[u8], a: &Row<'_>) -> f32 {
    let mut sum = 0f32;
    for (i, b) in w.chunks_exact(210).enumerate() {
        let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
        let y = &a.qs[256 * i..256 * i + 256];
        let bsums = &a.bsums[16 * i..16 * i + 16];
        let mut groups = [0i32; 16];
        for half in 0..2 {
            let (ql, qh, y) = (&ql[64 * half..], &qh[32 * half..], &y[128 * half..]);
            for l in 0..32 {
                let q = [
                    ql[l] & 0x0F | (qh[l] & 3) << 4,
                    ql[32 + l] & 0x0F | (qh[l] >> 2 & 3) << 4,
                    ql[l] >> 4 | (qh[l] >> 4 & 3) << 4,
                    ql[32 + l] >> 4 | (qh[l] >> 6) << 4,
                ];
                for (k, q) in q.into_iter().enumerate() {
                    groups[8 * half + 2 * k + l / 16] += q as i32 * y[32 * k + l] as i32;
                }
            }
        }
        let mut dots = 0i32;
        for g in 0..16 {
            dots += sc[g] as i8 as i32 * (groups[g] - 32 * bsums[g] as i32);
        }
        sum += h(&b[208..210]) * a.d[i] * dots as f32;
    }
    sum
}

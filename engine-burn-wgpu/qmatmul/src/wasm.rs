//! wasm32 simd128 dot products for every block type, for the browser's
//! CPU path. A page cannot ask which instructions it has, so this
//! is compiled in with `+simd128` (every browser with WebGPU has it).
//!
//! simd128 has no byte dot product, so the bytes are taken as 16-bit lanes
//! and split into their even and odd bytes with shifts (one or two
//! instructions each, where widening a byte vector costs two or three), and
//! `i32x4_dot_i16x8` sums the products. Each block's integer sum is exact;
//! it is scaled and added to four f32 lanes, summed once per row, as the
//! x86 kernels do with eight: the horizontal sum and the scalar multiply
//! per block were most of the time (Q4_1 decode 5.4 → see the README's
//! browser figures). Results agree with the scalar kernel to float
//! rounding.

use std::arch::wasm32::*;

use crate::act::Row;
use crate::scalar::scale_min_k4;
use crate::{QMatrix, QType};

pub(crate) fn dot(ty: QType, w: &[u8], a: &Row<'_>) -> f32 {
    dot_split(ty, w, a, &split_row(a))
}

/// Consecutive weight rows (`w`, `out.len()` rows of `row_bytes`) against
/// one activation row (decode), given as [`split_row`] split it: the
/// caller splits once per matrix, not once per task (a task per 16 rows
/// was 3,072 splits and allocations per token for the output matrix, and
/// the allocator's lock is shared by a page's threads).
pub(crate) fn dot_rows(
    ty: QType,
    w: &[u8],
    row_bytes: usize,
    a: &Row<'_>,
    y: &[[v128; 4]],
    out: &mut [f32],
) {
    for (w, o) in w.chunks_exact(row_bytes).zip(out.iter_mut()) {
        *o = dot_split(ty, w, a, y);
    }
}

/// Prefill, `out` (`rows.len() × w.rows()`): every activation row split
/// once, then taken against a tile of weight rows at a time, so that both
/// stay in L1 while they meet (a page has one thread: no tasks, no
/// transpose).
pub(crate) fn matmul(w: &QMatrix, rows: &[Row<'_>], out: &mut [f32]) {
    let split: Vec<Vec<[v128; 4]>> = rows.iter().map(split_row).collect();
    let (ty, n, all) = (w.ty, w.row_bytes(), w.rows());
    assert_eq!(out.len(), rows.len() * all);
    let shared = crate::SharedOut::new(out);
    // A task per tile: its columns of every output row.
    crate::for_each_task(all.div_ceil(TILE), &|t| {
        let first = t * TILE;
        let tile = w.rows_bytes(first, TILE.min(all - first));
        for (i, (a, y)) in rows.iter().zip(&split).enumerate() {
            // SAFETY: tiles' column ranges are disjoint, each run once.
            let o = unsafe { shared.slice(i * all + first, tile.len() / n) };
            for (wr, o) in tile.chunks_exact(n).zip(o) {
                *o = dot_split(ty, wr, a, y);
            }
        }
    });
}

/// Weight rows per prefill tile (16 rows of 1536 Q4_1 values are 15 KB).
const TILE: usize = 16;

fn dot_split(ty: QType, w: &[u8], a: &Row<'_>, y: &[[v128; 4]]) -> f32 {
    match ty {
        QType::Q4_0 => q4_0(w, a, y),
        QType::Q4_1 => q4_1(w, a, y),
        QType::Q8_0 => q8_0(w, a, y),
        QType::Q4_K => q4_k(w, a, y),
        QType::Q6_K => q6_k(w, a, y),
    }
}

/// A row's activations as `dot_i16` wants them, per block of 32.
pub(crate) fn split_row(a: &Row<'_>) -> Vec<[v128; 4]> {
    a.qs.chunks_exact(32).map(acts).collect()
}

/// A little-endian f16 as f32, without branches: the magnitude's bits
/// moved into f32's exponent and mantissa, then scaled by 2^112 (which
/// also makes f16's subnormals exact). Exact for finite values, the only
/// ones a loaded matrix has (`QMatrix::scales_finite`); `half`'s portable
/// conversion branches per call and cost as much as a block's products.
#[inline]
fn hf(b: &[u8]) -> f32 {
    let h = u32::from(u16::from_le_bytes([b[0], b[1]]));
    let magnitude = f32::from_bits((h & 0x7FFF) << 13) * f32::from_bits(0x7780_0000);
    f32::from_bits(magnitude.to_bits() | ((h & 0x8000) << 16))
}

#[inline]
fn load(p: &[u8]) -> v128 {
    assert!(p.len() >= 16);
    // SAFETY: 16 bytes are there (checked); v128_load is unaligned.
    unsafe { v128_load(p.as_ptr().cast()) }
}

#[inline]
fn load_i8(p: &[i8]) -> v128 {
    assert!(p.len() >= 16);
    // SAFETY: as `load`.
    unsafe { v128_load(p.as_ptr().cast()) }
}

/// 16 signed bytes as two i16x8: the even bytes, then the odd ones.
#[inline]
fn split_i8(v: v128) -> (v128, v128) {
    (i16x8_shr(i16x8_shl(v, 8), 8), i16x8_shr(v, 8))
}

/// Σ x·y over 32 values given as four i16x8 each (the even and odd
/// bytes of the two halves, in the same order on both sides).
#[inline]
fn dot_i16(x: [v128; 4], y: [v128; 4]) -> v128 {
    i32x4_add(
        i32x4_add(i32x4_dot_i16x8(x[0], y[0]), i32x4_dot_i16x8(x[1], y[1])),
        i32x4_add(i32x4_dot_i16x8(x[2], y[2]), i32x4_dot_i16x8(x[3], y[3])),
    )
}

/// The block's 32 activations as `dot_i16` wants them.
#[inline]
fn acts(qs: &[i8]) -> [v128; 4] {
    let (e0, o0) = split_i8(load_i8(qs));
    let (e1, o1) = split_i8(load_i8(&qs[16..]));
    [e0, o0, e1, o1]
}

/// 16 bytes of nibbles as `dot_i16` wants them (values 0..16): byte k's
/// low nibble is value k, its high nibble value k + 16 (ggml's order).
#[inline]
fn nibbles(p: &[u8]) -> [v128; 4] {
    let v = load(p);
    let m = u16x8_splat(0x0F);
    [
        v128_and(v, m),
        v128_and(u16x8_shr(v, 8), m),
        v128_and(u16x8_shr(v, 4), m),
        u16x8_shr(v, 12),
    ]
}

#[inline]
fn hsum(v: v128) -> f32 {
    (f32x4_extract_lane::<0>(v) + f32x4_extract_lane::<1>(v))
        + (f32x4_extract_lane::<2>(v) + f32x4_extract_lane::<3>(v))
}

/// `acc + sum · d`, the block's integer sums in four lanes.
#[inline]
fn scaled(acc: v128, sum: v128, d: f32) -> v128 {
    f32x4_add(acc, f32x4_mul(f32x4_convert_i32x4(sum), f32x4_splat(d)))
}

#[inline(never)]
fn q4_0(w: &[u8], a: &Row<'_>, y: &[[v128; 4]]) -> f32 {
    let n = w.len() / 18;
    let (y, ds) = (&y[..n], &a.d[..n]);
    let eight = i16x8_splat(8);
    let mut acc = f32x4_splat(0.0);
    for (i, b) in w.chunks_exact(18).enumerate() {
        let x = nibbles(&b[2..18]).map(|v| i16x8_sub(v, eight));
        let sum = dot_i16(x, y[i]);
        acc = scaled(acc, sum, hf(&b[0..2]) * ds[i]);
    }
    hsum(acc)
}

#[inline(never)]
fn q4_1(w: &[u8], a: &Row<'_>, y: &[[v128; 4]]) -> f32 {
    let n = w.len() / 20;
    let (y, ds, ss) = (&y[..n], &a.d[..n], &a.s[..n]);
    let mut acc = f32x4_splat(0.0);
    let quads = w.chunks_exact(80);
    let tail = quads.remainder();
    for (q, b) in quads.enumerate() {
        let i = 4 * q;
        let block = |k: usize| dot_i16(nibbles(&b[20 * k + 4..20 * k + 20]), y[i + k]);
        let sums = sum4([block(0), block(1), block(2), block(3)]);
        // Each block's d and m, adjacent f16s, as one u32 per lane.
        let dm = u32x4(
            u32_at(&b[0..]),
            u32_at(&b[20..]),
            u32_at(&b[40..]),
            u32_at(&b[60..]),
        );
        let d = f32x4_mul(f16x4(v128_and(dm, u32x4_splat(0xFFFF))), load_f32(&ds[i..]));
        let m = f32x4_mul(f16x4(u32x4_shr(dm, 16)), load_f32(&ss[i..]));
        acc = f32x4_add(acc, f32x4_add(f32x4_mul(f32x4_convert_i32x4(sums), d), m));
    }
    let mut offsets = 0f32;
    let i = 4 * (n / 4);
    for (k, b) in tail.chunks_exact(20).enumerate() {
        let sum = dot_i16(nibbles(&b[4..20]), y[i + k]);
        acc = scaled(acc, sum, hf(&b[0..2]) * ds[i + k]);
        offsets += hf(&b[2..4]) * ss[i + k];
    }
    hsum(acc) + offsets
}

/// Four blocks' integer sums (four partial lanes each) as one lane each.
#[inline]
fn sum4(s: [v128; 4]) -> v128 {
    let a = i32x4_add(
        i32x4_shuffle::<0, 1, 4, 5>(s[0], s[1]),
        i32x4_shuffle::<2, 3, 6, 7>(s[0], s[1]),
    );
    let b = i32x4_add(
        i32x4_shuffle::<0, 1, 4, 5>(s[2], s[3]),
        i32x4_shuffle::<2, 3, 6, 7>(s[2], s[3]),
    );
    i32x4_add(
        i32x4_shuffle::<0, 2, 4, 6>(a, b),
        i32x4_shuffle::<1, 3, 5, 7>(a, b),
    )
}

/// Four f16 bit patterns (the low 16 bits of each lane) as f32, as `hf`.
#[inline]
fn f16x4(h: v128) -> v128 {
    let magnitude = f32x4_mul(
        i32x4_shl(v128_and(h, u32x4_splat(0x7FFF)), 13),
        f32x4_splat(f32::from_bits(0x7780_0000)),
    );
    v128_or(magnitude, i32x4_shl(v128_and(h, u32x4_splat(0x8000)), 16))
}

#[inline]
fn u32_at(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

#[inline]
fn load_f32(p: &[f32]) -> v128 {
    assert!(p.len() >= 4);
    // SAFETY: 16 bytes are there (checked); v128_load is unaligned.
    unsafe { v128_load(p.as_ptr().cast()) }
}

#[inline(never)]
fn q8_0(w: &[u8], a: &Row<'_>, y: &[[v128; 4]]) -> f32 {
    let n = w.len() / 34;
    let (y, ds) = (&y[..n], &a.d[..n]);
    let mut acc = f32x4_splat(0.0);
    let quads = w.chunks_exact(136);
    let tail = quads.remainder();
    let block = |b: &[u8], y: [v128; 4]| {
        let (e0, o0) = split_i8(load(&b[2..18]));
        let (e1, o1) = split_i8(load(&b[18..34]));
        dot_i16([e0, o0, e1, o1], y)
    };
    for (q, b) in quads.enumerate() {
        let i = 4 * q;
        let sums = sum4(std::array::from_fn(|k| {
            block(&b[34 * k..34 * k + 34], y[i + k])
        }));
        let h = u32x4(
            u32_at(&b[0..]),
            u32_at(&b[34..]),
            u32_at(&b[68..]),
            u32_at(&b[102..]),
        );
        let d = f32x4_mul(f16x4(h), load_f32(&ds[i..]));
        acc = f32x4_add(acc, f32x4_mul(f32x4_convert_i32x4(sums), d));
    }
    let i = 4 * (n / 4);
    for (k, b) in tail.chunks_exact(34).enumerate() {
        acc = scaled(acc, block(b, y[i + k]), hf(&b[0..2]) * ds[i + k]);
    }
    hsum(acc)
}

// The K-quants. A 256-value block's integer sums are exact however the
// lanes split them, and its float step is the scalar kernel's, so these
// equal it bit for bit (one float step per 256 values: no lanes needed).
// `y[j]` is values 32j..32j+16 as (even, odd) 16-bit lanes, then
// 32j+16..32j+32 the same way.

/// Σ x·y over 16 values, as two i16x8 each (even, odd), into 4 lanes.
#[inline]
fn dot16(x: (v128, v128), ye: v128, yo: v128) -> v128 {
    i32x4_add(i32x4_dot_i16x8(x.0, ye), i32x4_dot_i16x8(x.1, yo))
}

/// 16 bytes of nibbles as two 16-value halves in `dot16`'s form: the low
/// nibbles (even bytes, odd bytes), then the high ones.
#[inline]
fn nibble_pairs(p: &[u8]) -> ((v128, v128), (v128, v128)) {
    let [lo_e, lo_o, hi_e, hi_o] = nibbles(p);
    ((lo_e, lo_o), (hi_e, hi_o))
}

#[inline]
fn lanes_sum(v: v128) -> i32 {
    (i32x4_extract_lane::<0>(v) + i32x4_extract_lane::<1>(v))
        + (i32x4_extract_lane::<2>(v) + i32x4_extract_lane::<3>(v))
}

#[inline(never)]
fn q4_k(w: &[u8], a: &Row<'_>, y: &[[v128; 4]]) -> f32 {
    let mut sum = 0f32;
    for (i, b) in w.chunks_exact(144).enumerate() {
        let (d, dmin) = (hf(&b[0..2]), hf(&b[2..4]));
        let (scales, qs) = (&b[4..16], &b[16..144]);
        let y = &y[8 * i..8 * i + 8];
        let bsums = &a.bsums[16 * i..16 * i + 16];
        let mut acc = i32x4_splat(0);
        let mut mins = 0i32;
        for k in 0..4 {
            // Bytes l and 16 + l: low nibbles are values 64k + l (y[2k]),
            // high ones 64k + 32 + l (y[2k + 1]).
            let (lo0, hi0) = nibble_pairs(&qs[32 * k..]);
            let (lo1, hi1) = nibble_pairs(&qs[32 * k + 16..]);
            let (ylo, yhi) = (y[2 * k], y[2 * k + 1]);
            let lo = i32x4_add(dot16(lo0, ylo[0], ylo[1]), dot16(lo1, ylo[2], ylo[3]));
            let hi = i32x4_add(dot16(hi0, yhi[0], yhi[1]), dot16(hi1, yhi[2], yhi[3]));
            let (sc_lo, m_lo) = scale_min_k4(2 * k, scales);
            let (sc_hi, m_hi) = scale_min_k4(2 * k + 1, scales);
            acc = i32x4_add(acc, i32x4_mul(lo, i32x4_splat(sc_lo)));
            acc = i32x4_add(acc, i32x4_mul(hi, i32x4_splat(sc_hi)));
            let sum_lo = bsums[4 * k] as i32 + bsums[4 * k + 1] as i32;
            let sum_hi = bsums[4 * k + 2] as i32 + bsums[4 * k + 3] as i32;
            mins += m_lo * sum_lo + m_hi * sum_hi;
        }
        let dots = lanes_sum(acc);
        sum += d * a.d[i] * dots as f32 - dmin * a.d[i] * mins as f32;
    }
    sum
}

#[inline(never)]
fn q6_k(w: &[u8], a: &Row<'_>, y: &[[v128; 4]]) -> f32 {
    let mut sum = 0f32;
    let (m4, m3) = (u16x8_splat(0x0F), u16x8_splat(3));
    for (i, b) in w.chunks_exact(210).enumerate() {
        let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
        let y = &y[8 * i..8 * i + 8];
        let bsums = &a.bsums[16 * i..16 * i + 16];
        let mut acc = i32x4_splat(0);
        for half in 0..2 {
            for part in 0..2 {
                // Bytes l (0..16) of quarter k's 32 values, then 16 + l.
                let l = 16 * part;
                let (qa, qb) = (load(&ql[64 * half + l..]), load(&ql[64 * half + 32 + l..]));
                let hb = load(&qh[32 * half + l..]);
                // Each 16-bit lane holds an even byte and an odd one.
                let lo = [
                    (v128_and(qa, m4), v128_and(u16x8_shr(qa, 8), m4)),
                    (v128_and(qb, m4), v128_and(u16x8_shr(qb, 8), m4)),
                    (v128_and(u16x8_shr(qa, 4), m4), u16x8_shr(qa, 12)),
                    (v128_and(u16x8_shr(qb, 4), m4), u16x8_shr(qb, 12)),
                ];
                for (k, (lo_e, lo_o)) in lo.into_iter().enumerate() {
                    let shift = 2 * k as u32;
                    let hi_e = i16x8_shl(v128_and(u16x8_shr(hb, shift), m3), 4);
                    let hi_o = i16x8_shl(v128_and(u16x8_shr(hb, 8 + shift), m3), 4);
                    let q = (v128_or(lo_e, hi_e), v128_or(lo_o, hi_o));
                    let yk = y[4 * half + k];
                    let s = dot16(q, yk[2 * part], yk[2 * part + 1]);
                    let g = 8 * half + 2 * k + part;
                    acc = i32x4_add(acc, i32x4_mul(s, i32x4_splat(sc[g] as i8 as i32)));
                }
            }
        }
        let offset: i32 = sc
            .iter()
            .zip(bsums)
            .map(|(&s, &b)| s as i8 as i32 * b as i32)
            .sum();
        // The scalar kernel's `Σ sc·(s − 32·bsum)`, regrouped: exact in i32.
        let dots = lanes_sum(acc) - 32 * offset;
        sum += hf(&b[208..210]) * a.d[i] * dots as f32;
    }
    sum
}

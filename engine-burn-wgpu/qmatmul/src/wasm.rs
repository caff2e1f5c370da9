//! wasm32 simd128 dot products for the 32-value block types, for the
//! browser's CPU path: `i16x8_extmul_*_i8x16` widens 8 products to 16
//! bits, `i32x4_extadd_pairwise_i16x8` folds them into 32-bit lanes. A
//! page cannot ask which instructions it has, so this is compiled in with
//! `+simd128` (every browser with WebGPU has it). Integer sums are exact
//! and the float steps are the scalar kernel's: results equal it.

use std::arch::wasm32::*;

use crate::QType;
use crate::act::Row;
use crate::scalar::h;

pub(crate) fn dot(ty: QType, w: &[u8], a: &Row<'_>) -> f32 {
    match ty {
        QType::Q4_0 => q4_0(w, a),
        QType::Q4_1 => q4_1(w, a),
        QType::Q8_0 => q8_0(w, a),
        _ => crate::scalar::dot(ty, w, a),
    }
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

/// Σ x·y over 32 signed bytes, x given as two halves.
#[inline]
fn dot32(x0: v128, x1: v128, y: &[i8]) -> i32 {
    let (y0, y1) = (load_i8(y), load_i8(&y[16..]));
    let mut s = i32x4_extadd_pairwise_i16x8(i16x8_extmul_low_i8x16(x0, y0));
    s = i32x4_add(
        s,
        i32x4_extadd_pairwise_i16x8(i16x8_extmul_high_i8x16(x0, y0)),
    );
    s = i32x4_add(
        s,
        i32x4_extadd_pairwise_i16x8(i16x8_extmul_low_i8x16(x1, y1)),
    );
    s = i32x4_add(
        s,
        i32x4_extadd_pairwise_i16x8(i16x8_extmul_high_i8x16(x1, y1)),
    );
    i32x4_extract_lane::<0>(s)
        + i32x4_extract_lane::<1>(s)
        + i32x4_extract_lane::<2>(s)
        + i32x4_extract_lane::<3>(s)
}

/// The low nibbles (values 0..16) and the high ones.
#[inline]
fn nibbles(p: &[u8]) -> (v128, v128) {
    let v = load(p);
    (v128_and(v, u8x16_splat(0x0F)), u8x16_shr(v, 4))
}

fn q4_0(w: &[u8], a: &Row<'_>) -> f32 {
    let mut sum = 0f32;
    for (i, b) in w.chunks_exact(18).enumerate() {
        let (lo, hi) = nibbles(&b[2..18]);
        let eight = i8x16_splat(8);
        let s = dot32(i8x16_sub(lo, eight), i8x16_sub(hi, eight), &a.qs[32 * i..]);
        sum += h(&b[0..2]) * a.d[i] * s as f32;
    }
    sum
}

fn q4_1(w: &[u8], a: &Row<'_>) -> f32 {
    let mut sum = 0f32;
    for (i, b) in w.chunks_exact(20).enumerate() {
        let (lo, hi) = nibbles(&b[4..20]);
        let s = dot32(lo, hi, &a.qs[32 * i..]);
        sum += h(&b[0..2]) * a.d[i] * s as f32 + h(&b[2..4]) * a.s[i];
    }
    sum
}

fn q8_0(w: &[u8], a: &Row<'_>) -> f32 {
    let mut sum = 0f32;
    for (i, b) in w.chunks_exact(34).enumerate() {
        let s = dot32(load(&b[2..18]), load(&b[18..34]), &a.qs[32 * i..]);
        sum += h(&b[0..2]) * a.d[i] * s as f32;
    }
    sum
}

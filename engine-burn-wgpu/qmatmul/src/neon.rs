//! aarch64 NEON dot products for the 32-value block types, in two builds:
//! plain NEON (`vmull_s8` widens 8 products to 16 bits, `vpadalq_s16`
//! folds them into 32-bit lanes; every aarch64 CPU has it) and the
//! `dotprod` extension (ARMv8.2+, most phones since 2018), whose `sdot`
//! does 16 products into 32-bit lanes in one instruction. Its intrinsics
//! are not stable Rust yet, so `sdot` is written as inline assembly.
//! Integer sums are exact and the float steps are the scalar kernel's, so
//! results equal it bit for bit.

use std::arch::aarch64::*;

use crate::QType;
use crate::act::Row;
use crate::scalar::h;

pub(crate) fn dot(ty: QType, w: &[u8], a: &Row<'_>) -> f32 {
    match ty {
        QType::Q4_0 => q4_0::<false>(w, a),
        QType::Q4_1 => q4_1::<false>(w, a),
        QType::Q8_0 => q8_0::<false>(w, a),
        _ => crate::scalar::dot(ty, w, a),
    }
}

/// # Safety
/// The CPU must have the `dotprod` extension.
pub(crate) unsafe fn dot_dotprod(ty: QType, w: &[u8], a: &Row<'_>) -> f32 {
    match ty {
        QType::Q4_0 => q4_0::<true>(w, a),
        QType::Q4_1 => q4_1::<true>(w, a),
        QType::Q8_0 => q8_0::<true>(w, a),
        _ => crate::scalar::dot(ty, w, a),
    }
}

/// `dot32`, by `sdot` when `SDOT`.
#[inline]
fn dot32_with<const SDOT: bool>(x0: int8x16_t, x1: int8x16_t, y: &[i8]) -> i32 {
    if SDOT {
        dot32_sdot(x0, x1, y)
    } else {
        dot32(x0, x1, y)
    }
}

/// [`dot32`] with two `sdot`s. Reached only through `dot_dotprod`, whose
/// caller checked the CPU.
#[inline]
#[allow(unused_unsafe)]
fn dot32_sdot(x0: int8x16_t, x1: int8x16_t, y: &[i8]) -> i32 {
    assert!(y.len() >= 32);
    // SAFETY: 32 values are there (checked); `sdot` only reads and writes
    // the registers named.
    unsafe {
        let (y0, y1) = (vld1q_s8(y.as_ptr()), vld1q_s8(y.as_ptr().add(16)));
        let mut acc = vdupq_n_s32(0);
        std::arch::asm!(
            ".arch_extension dotprod",
            "sdot {acc:v}.4s, {x0:v}.16b, {y0:v}.16b",
            "sdot {acc:v}.4s, {x1:v}.16b, {y1:v}.16b",
            acc = inout(vreg) acc,
            x0 = in(vreg) x0,
            y0 = in(vreg) y0,
            x1 = in(vreg) x1,
            y1 = in(vreg) y1,
            options(pure, nomem, nostack),
        );
        vaddvq_s32(acc)
    }
}

/// Σ x·y over 32 signed bytes given as two halves each.
#[inline]
#[allow(unused_unsafe)]
fn dot32(x0: int8x16_t, x1: int8x16_t, y: &[i8]) -> i32 {
    assert!(y.len() >= 32);
    // SAFETY: 32 values are there (checked); NEON is part of aarch64.
    unsafe {
        let (y0, y1) = (vld1q_s8(y.as_ptr()), vld1q_s8(y.as_ptr().add(16)));
        let mut s = vpaddlq_s16(vmull_s8(vget_low_s8(x0), vget_low_s8(y0)));
        s = vpadalq_s16(s, vmull_high_s8(x0, y0));
        s = vpadalq_s16(s, vmull_s8(vget_low_s8(x1), vget_low_s8(y1)));
        s = vpadalq_s16(s, vmull_high_s8(x1, y1));
        vaddvq_s32(s)
    }
}

/// 16 bytes of nibbles: the low nibbles (values 0..16) and the high ones.
#[inline]
#[allow(unused_unsafe)]
fn nibbles(p: &[u8]) -> (int8x16_t, int8x16_t) {
    assert!(p.len() >= 16);
    // SAFETY: 16 bytes are there (checked).
    unsafe {
        let v = vld1q_u8(p.as_ptr());
        (
            vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0F))),
            vreinterpretq_s8_u8(vshrq_n_u8(v, 4)),
        )
    }
}

#[allow(unused_unsafe)]
fn q4_0<const SDOT: bool>(w: &[u8], a: &Row<'_>) -> f32 {
    let mut sum = 0f32;
    for (i, b) in w.chunks_exact(18).enumerate() {
        let (lo, hi) = nibbles(&b[2..18]);
        // SAFETY: register arithmetic only.
        let (lo, hi) = unsafe { (vsubq_s8(lo, vdupq_n_s8(8)), vsubq_s8(hi, vdupq_n_s8(8))) };
        let s = dot32_with::<SDOT>(lo, hi, &a.qs[32 * i..]);
        sum += h(&b[0..2]) * a.d[i] * s as f32;
    }
    sum
}

fn q4_1<const SDOT: bool>(w: &[u8], a: &Row<'_>) -> f32 {
    let mut sum = 0f32;
    for (i, b) in w.chunks_exact(20).enumerate() {
        let (lo, hi) = nibbles(&b[4..20]);
        let s = dot32_with::<SDOT>(lo, hi, &a.qs[32 * i..]);
        sum += h(&b[0..2]) * a.d[i] * s as f32 + h(&b[2..4]) * a.s[i];
    }
    sum
}

#[allow(unused_unsafe)]
fn q8_0<const SDOT: bool>(w: &[u8], a: &Row<'_>) -> f32 {
    let mut sum = 0f32;
    for (i, b) in w.chunks_exact(34).enumerate() {
        let q = &b[2..34];
        // SAFETY: 32 bytes are there (`chunks_exact`).
        let (x0, x1) = unsafe {
            (
                vld1q_s8(q.as_ptr().cast()),
                vld1q_s8(q.as_ptr().add(16).cast()),
            )
        };
        let s = dot32_with::<SDOT>(x0, x1, &a.qs[32 * i..]);
        sum += h(&b[0..2]) * a.d[i] * s as f32;
    }
    sum
}

//! aarch64 NEON dot products for every block type, in two builds:
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
use crate::scalar::{h, scale_min_k4};

pub(crate) fn dot(ty: QType, w: &[u8], a: &Row<'_>) -> f32 {
    match ty {
        QType::Q4_0 => q4_0::<false>(w, a),
        QType::Q4_1 => q4_1::<false>(w, a),
        QType::Q8_0 => q8_0::<false>(w, a),
        QType::Q4_K => q4_k::<false>(w, a),
        QType::Q6_K => q6_k::<false>(w, a),
    }
}

/// # Safety
/// The CPU must have the `dotprod` extension.
pub(crate) unsafe fn dot_dotprod(ty: QType, w: &[u8], a: &Row<'_>) -> f32 {
    match ty {
        QType::Q4_0 => q4_0::<true>(w, a),
        QType::Q4_1 => q4_1::<true>(w, a),
        QType::Q8_0 => q8_0::<true>(w, a),
        QType::Q4_K => q4_k::<true>(w, a),
        QType::Q6_K => q6_k::<true>(w, a),
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

/// `acc` plus Σ x·y over 16 signed bytes, in four 32-bit lanes (each lane's
/// share differs between the two builds; the lanes' total does not).
#[inline]
#[allow(unused_unsafe)]
fn dot16_acc<const SDOT: bool>(acc: int32x4_t, x: int8x16_t, y: &[i8]) -> int32x4_t {
    assert!(y.len() >= 16);
    // SAFETY: 16 values are there (checked); `sdot` is reached only through
    // `dot_dotprod`, whose caller checked the CPU, and only touches the
    // registers named.
    unsafe {
        let y = vld1q_s8(y.as_ptr());
        if SDOT {
            let mut acc = acc;
            std::arch::asm!(
                ".arch_extension dotprod",
                "sdot {acc:v}.4s, {x:v}.16b, {y:v}.16b",
                acc = inout(vreg) acc,
                x = in(vreg) x,
                y = in(vreg) y,
                options(pure, nomem, nostack),
            );
            acc
        } else {
            let s = vpadalq_s16(acc, vmull_s8(vget_low_s8(x), vget_low_s8(y)));
            vpadalq_s16(s, vmull_high_s8(x, y))
        }
    }
}

// The K-quants: each block's integer sums are exact, whatever the lanes,
// and the float steps are the scalar kernel's, so these equal it bit for
// bit too. The sub-block scales multiply lane sums (`vmlaq_n_s32`), so a
// block needs one horizontal sum.

#[allow(unused_unsafe)]
fn q4_k<const SDOT: bool>(w: &[u8], a: &Row<'_>) -> f32 {
    let mut sum = 0f32;
    for (i, b) in w.chunks_exact(144).enumerate() {
        let (d, dmin) = (h(&b[0..2]), h(&b[2..4]));
        let (scales, qs) = (&b[4..16], &b[16..144]);
        let y = &a.qs[256 * i..256 * i + 256];
        let bsums = &a.bsums[16 * i..16 * i + 16];
        // SAFETY: register arithmetic only.
        let mut acc = unsafe { vdupq_n_s32(0) };
        let mut mins = 0i32;
        for k in 0..4 {
            // Bytes l and l + 16: low nibbles are values 64k + l, high
            // ones 64k + 32 + l.
            let (lo0, hi0) = nibbles(&qs[32 * k..]);
            let (lo1, hi1) = nibbles(&qs[32 * k + 16..]);
            let (sc_lo, m_lo) = scale_min_k4(2 * k, scales);
            let (sc_hi, m_hi) = scale_min_k4(2 * k + 1, scales);
            // SAFETY: register arithmetic only.
            unsafe {
                let zero = vdupq_n_s32(0);
                let lo = dot16_acc::<SDOT>(
                    dot16_acc::<SDOT>(zero, lo0, &y[64 * k..]),
                    lo1,
                    &y[64 * k + 16..],
                );
                let hi = dot16_acc::<SDOT>(
                    dot16_acc::<SDOT>(zero, hi0, &y[64 * k + 32..]),
                    hi1,
                    &y[64 * k + 48..],
                );
                acc = vmlaq_n_s32(acc, lo, sc_lo);
                acc = vmlaq_n_s32(acc, hi, sc_hi);
            }
            let sum_lo = bsums[4 * k] as i32 + bsums[4 * k + 1] as i32;
            let sum_hi = bsums[4 * k + 2] as i32 + bsums[4 * k + 3] as i32;
            mins += m_lo * sum_lo + m_hi * sum_hi;
        }
        // SAFETY: register arithmetic only.
        let dots = unsafe { vaddvq_s32(acc) };
        sum += d * a.d[i] * dots as f32 - dmin * a.d[i] * mins as f32;
    }
    sum
}

#[allow(unused_unsafe)]
fn q6_k<const SDOT: bool>(w: &[u8], a: &Row<'_>) -> f32 {
    let mut sum = 0f32;
    for (i, b) in w.chunks_exact(210).enumerate() {
        let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
        let y = &a.qs[256 * i..256 * i + 256];
        let bsums = &a.bsums[16 * i..16 * i + 16];
        // SAFETY: register arithmetic only.
        let mut acc = unsafe { vdupq_n_s32(0) };
        let mut offset = 0i32;
        for half in 0..2 {
            for part in 0..2 {
                // Bytes l (0..16) and 16 + l of quarter k's 32 values.
                let l = 16 * part;
                // SAFETY: the slices hold 16 bytes past these offsets
                // (`chunks_exact(210)`); register arithmetic otherwise.
                unsafe {
                    let qa = vld1q_u8(ql[64 * half + l..].as_ptr());
                    let qb = vld1q_u8(ql[64 * half + 32 + l..].as_ptr());
                    let hb = vld1q_u8(qh[32 * half + l..].as_ptr());
                    let m4 = vdupq_n_u8(0x0F);
                    let m3 = vdupq_n_u8(3);
                    let quarters = [
                        vorrq_u8(vandq_u8(qa, m4), vshlq_n_u8(vandq_u8(hb, m3), 4)),
                        vorrq_u8(
                            vandq_u8(qb, m4),
                            vshlq_n_u8(vandq_u8(vshrq_n_u8(hb, 2), m3), 4),
                        ),
                        vorrq_u8(
                            vshrq_n_u8(qa, 4),
                            vshlq_n_u8(vandq_u8(vshrq_n_u8(hb, 4), m3), 4),
                        ),
                        vorrq_u8(vshrq_n_u8(qb, 4), vshlq_n_u8(vshrq_n_u8(hb, 6), 4)),
                    ];
                    for (k, q) in quarters.into_iter().enumerate() {
                        let g = 8 * half + 2 * k + part;
                        let v = 128 * half + 32 * k + l;
                        let s = dot16_acc::<SDOT>(vdupq_n_s32(0), vreinterpretq_s8_u8(q), &y[v..]);
                        acc = vmlaq_n_s32(acc, s, sc[g] as i8 as i32);
                    }
                }
            }
        }
        for (g, &s) in sc.iter().enumerate() {
            offset += s as i8 as i32 * bsums[g] as i32;
        }
        // The scalar kernel's `Σ sc·(s − 32·bsum)`, regrouped: exact in i32.
        // SAFETY: register arithmetic only.
        let dots = unsafe { vaddvq_s32(acc) } - 32 * offset;
        sum += h(&b[208..210]) * a.d[i] * dots as f32;
    }
    sum
}

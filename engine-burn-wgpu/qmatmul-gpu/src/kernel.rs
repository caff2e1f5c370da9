//! The shaders, in CubeCL (WGSL on wgpu, also SPIR-V, Metal, CUDA).
//!
//! One cube computes one output column (one weight row) for up to `rows`
//! activation rows: 32 units per activation row split the row's groups of
//! 32 weights between them, each decodes its groups once and dots them
//! with its activation row, and the 32 partial sums are added in shared
//! memory. Decode (one activation row) reads every weight once, from
//! consecutive words across the 32 units. A 4-bit group's sum is
//! `scale · Σ q·x + offset · Σ x`, so the offset costs one multiply per
//! group rather than one per weight.

use burn_cubecl::cubecl;
use cubecl::prelude::*;

/// Adds the 32 partial sums of each activation row in `partial` and writes
/// the total for this cube's (row, column).
#[cube]
fn finish(partial: &mut [f32], sum: f32, out: &mut [f32], row: u32, col: u32, m: u32, n: u32) {
    let tx = UNIT_POS_X as usize;
    let base = (UNIT_POS_Y * 32) as usize;
    partial[base + tx] = sum;
    sync_cube();
    let mut stride = 16usize;
    while stride > 0 {
        if tx < stride {
            partial[base + tx] += partial[base + tx + stride];
        }
        sync_cube();
        stride /= 2;
    }
    if tx == 0 && row < m && col < n {
        out[(row * n + col) as usize] = partial[base];
    }
}

/// `out[m, n] = x[m, k] · W[n, k]ᵀ` for [`crate::Layout::Q4`] weights.
#[cube(launch)]
pub fn matmul_q4(
    x: &[f32],
    quants: &[u32],
    scales: &[f32],
    offsets: &[f32],
    out: &mut [f32],
    m: u32,
    n: u32,
    k: u32,
    #[comptime] rows: usize,
) {
    let mut partial = Shared::<[f32]>::new_slice(32 * rows);
    let col = CUBE_POS_X + CUBE_POS_Y * CUBE_COUNT_X;
    let row = CUBE_POS_Z * CUBE_DIM_Y + UNIT_POS_Y;
    let groups = k / 32;
    let mut sum = 0.0f32;
    if col < n && row < m {
        let mut g = UNIT_POS_X;
        while g < groups {
            let at = col * groups + g;
            let xb = (row * k + g * 32) as usize;
            let qb = (at * 4) as usize;
            let mut dot = 0.0f32;
            let mut xs = 0.0f32;
            for w in 0..4usize {
                let word = quants[qb + w];
                for j in 0..4usize {
                    let byte = (word >> (j as u32 * 8)) & 0xFF;
                    let lo = x[xb + w * 4 + j];
                    let hi = x[xb + w * 4 + j + 16];
                    dot += f32::cast_from(byte & 0xF) * lo + f32::cast_from(byte >> 4) * hi;
                    xs += lo + hi;
                }
            }
            sum += scales[at as usize] * dot + offsets[at as usize] * xs;
            g += 32;
        }
    }
    finish(&mut partial, sum, out, row, col, m, n);
}

/// 16 signed 8-bit values (4 words from `qb`) dotted with `x[xb..xb + 16]`.
#[cube]
fn dot16(quants: &[u32], x: &[f32], qb: usize, xb: usize) -> f32 {
    let mut dot = 0.0f32;
    for w in 0..4usize {
        let word = quants[qb + w];
        for j in 0..4usize {
            let byte = (word >> (j as u32 * 8)) & 0xFF;
            // Sign-extend the byte.
            let q = f32::cast_from(byte) - 256.0 * f32::cast_from(byte >> 7);
            dot += q * x[xb + w * 4 + j];
        }
    }
    dot
}

/// `out[m, n] = x[m, k] · W[n, k]ᵀ` for [`crate::Layout::Q8`] weights with
/// a scale per `group` (16 or 32) values.
#[cube(launch)]
pub fn matmul_q8(
    x: &[f32],
    quants: &[u32],
    scales: &[f32],
    out: &mut [f32],
    m: u32,
    n: u32,
    k: u32,
    #[comptime] rows: usize,
    #[comptime] group: u32,
) {
    let mut partial = Shared::<[f32]>::new_slice(32 * rows);
    let col = CUBE_POS_X + CUBE_POS_Y * CUBE_COUNT_X;
    let row = CUBE_POS_Z * CUBE_DIM_Y + UNIT_POS_Y;
    let chunks = k / 32;
    let mut sum = 0.0f32;
    if col < n && row < m {
        let mut c = UNIT_POS_X;
        while c < chunks {
            let at = col * chunks + c;
            let xb = (row * k + c * 32) as usize;
            let qb = (at * 8) as usize;
            // The two halves of 32 values: one scale each when groups are
            // 16 values, one for both otherwise.
            let lo = dot16(quants, x, qb, xb);
            let hi = dot16(quants, x, qb + 4, xb + 16);
            if comptime![group == 16] {
                let s = (at * 2) as usize;
                sum += scales[s] * lo + scales[s + 1] * hi;
            } else {
                sum += scales[at as usize] * (lo + hi);
            }
            c += 32;
        }
    }
    finish(&mut partial, sum, out, row, col, m, n);
}

/// Rows `first..` of a [`crate::Layout::Q4`] matrix decoded to f32, one
/// unit per group of 32: `out[r, k]` for the `out.len() / k` rows.
#[cube(launch)]
pub fn dequantize_q4(
    quants: &[u32],
    scales: &[f32],
    offsets: &[f32],
    out: &mut [f32],
    first: u32,
    k: u32,
) {
    let groups = out.len() / 32;
    let g = ABSOLUTE_POS;
    if g < groups {
        let at = first as usize * (k as usize / 32) + g;
        let (s, o) = (scales[at], offsets[at]);
        for w in 0..4usize {
            let word = quants[at * 4 + w];
            for j in 0..4usize {
                let byte = (word >> (j as u32 * 8)) & 0xFF;
                out[g * 32 + w * 4 + j] = s * f32::cast_from(byte & 0xF) + o;
                out[g * 32 + w * 4 + j + 16] = s * f32::cast_from(byte >> 4) + o;
            }
        }
    }
}

/// Rows `first..` of a [`crate::Layout::Q8`] matrix decoded to f32, one
/// unit per 32 values.
#[cube(launch)]
pub fn dequantize_q8(
    quants: &[u32],
    scales: &[f32],
    out: &mut [f32],
    first: u32,
    k: u32,
    #[comptime] group: u32,
) {
    let chunks = out.len() / 32;
    let c = ABSOLUTE_POS;
    if c < chunks {
        let at = first as usize * (k as usize / 32) + c;
        for w in 0..8usize {
            let word = quants[at * 8 + w];
            let s = if comptime![group == 16] {
                scales[at * 2 + w / 4]
            } else {
                scales[at]
            };
            for j in 0..4usize {
                let byte = (word >> (j as u32 * 8)) & 0xFF;
                let q = f32::cast_from(byte) - 256.0 * f32::cast_from(byte >> 7);
                out[c * 32 + w * 4 + j] = s * q;
            }
        }
    }
}

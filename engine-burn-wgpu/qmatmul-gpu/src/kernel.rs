//! The shaders, in CubeCL (WGSL on wgpu, also SPIR-V, Metal, CUDA).
//!
//! One cube computes `cols` output columns (weight rows) for up to `rows`
//! activation rows: 32 units per activation row split the row's groups of
//! 32 weights between them, each holds its group's 32 activations in
//! registers and dots them with the group of every one of the cube's
//! columns, and the 32 partial sums of a column are added across lanes
//! (shuffles within a plane, shared memory across planes: one barrier a
//! cube, where a tree in shared memory took five a column; lavapipe runs
//! each barrier as a switch of every unit). Decode (one activation row)
//! reads every weight once, from consecutive words across the 32 units. A
//! 4-bit group's sum is `scale · Σ q·x + offset · Σ x`, so the offset
//! costs one multiply per group rather than one per weight.

use burn_cubecl::cubecl;
use cubecl::prelude::*;

/// Adds, for each of the cube's `cols` columns, the 32 partial sums of
/// each activation row and writes the totals for `col0..col0 + cols`.
#[cube]
fn finish(
    partial: &mut [f32],
    sums: &Array<f32>,
    out: &mut [f32],
    row: u32,
    col0: u32,
    m: u32,
    n: u32,
    #[comptime] cols: usize,
) {
    let tx = UNIT_POS_X;
    // Lanes of a row that share a plane: all 32 where planes are 32 wide or
    // wider (a row's units start at a multiple of 32), fewer on narrow ones.
    let width = min(PLANE_DIM, 32u32);
    let base = (UNIT_POS_Y * 32) as usize * cols;
    #[unroll]
    for c in 0..cols {
        let mut s = sums[c];
        let mut lane = 1u32;
        while lane < width {
            s += plane_shuffle_xor(s, lane);
            lane *= 2;
        }
        if tx & (width - 1) == 0 {
            partial[base + c * 32 + (tx / width) as usize] = s;
        }
    }
    sync_cube();
    // Lane c writes column c.
    if (tx as usize) < cols && row < m && col0 + tx < n {
        let at = base + tx as usize * 32;
        let mut total = 0.0f32;
        for i in 0..(32 / width) as usize {
            total += partial[at + i];
        }
        out[(row * n + col0 + tx) as usize] = total;
    }
}

/// The first of this cube's `cols` output columns (cubes past one launch
/// dimension's count fold into the second).
#[cube]
fn first_column(#[comptime] cols: usize) -> u32 {
    (CUBE_POS_X + CUBE_POS_Y * CUBE_COUNT_X) * cols as u32
}

/// A unit's `cols` running sums, at zero.
#[cube]
fn zeros(#[comptime] cols: usize) -> Array<f32> {
    let mut sums = Array::<f32>::new(cols);
    #[unroll]
    for c in 0..cols {
        sums[c] = 0.0f32;
    }
    sums
}

/// The 32 activations of group `g` of `row`.
#[cube]
fn activations(x: &[f32], xb: usize) -> Array<f32> {
    let mut xv = Array::<f32>::new(32usize);
    #[unroll]
    for i in 0..32usize {
        xv[i] = x[xb + i];
    }
    xv
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
    #[comptime] cols: usize,
) {
    let mut partial = Shared::<[f32]>::new_slice(32 * rows * cols);
    let col0 = first_column(cols);
    let row = CUBE_POS_Z * CUBE_DIM_Y + UNIT_POS_Y;
    let groups = k / 32;
    let mut sums = zeros(cols);
    if row < m {
        let mut g = UNIT_POS_X;
        while g < groups {
            let xv = activations(x, (row * k + g * 32) as usize);
            let mut xs = 0.0f32;
            #[unroll]
            for i in 0..32usize {
                xs += xv[i];
            }
            #[unroll]
            for c in 0..cols {
                let col = col0 + c as u32;
                if col < n {
                    let at = col * groups + g;
                    let qb = (at * 4) as usize;
                    let mut dot = 0.0f32;
                    #[unroll]
                    for w in 0..4usize {
                        let word = quants[qb + w];
                        #[unroll]
                        for j in 0..4usize {
                            let byte = (word >> (j as u32 * 8)) & 0xFF;
                            dot += f32::cast_from(byte & 0xF) * xv[w * 4 + j]
                                + f32::cast_from(byte >> 4) * xv[w * 4 + j + 16];
                        }
                    }
                    sums[c] += scales[at as usize] * dot + offsets[at as usize] * xs;
                }
            }
            g += 32;
        }
    }
    finish(&mut partial, &sums, out, row, col0, m, n, cols);
}

/// 16 signed 8-bit values (4 words from `qb`) dotted with `xv[xb..xb + 16]`.
#[cube]
fn dot16(quants: &[u32], xv: &Array<f32>, qb: usize, #[comptime] xb: usize) -> f32 {
    let mut dot = 0.0f32;
    #[unroll]
    for w in 0..4usize {
        let word = quants[qb + w];
        #[unroll]
        for j in 0..4usize {
            let byte = (word >> (j as u32 * 8)) & 0xFF;
            // Sign-extend the byte.
            let q = f32::cast_from(byte) - 256.0 * f32::cast_from(byte >> 7);
            dot += q * xv[xb + w * 4 + j];
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
    #[comptime] cols: usize,
    #[comptime] group: u32,
) {
    let mut partial = Shared::<[f32]>::new_slice(32 * rows * cols);
    let col0 = first_column(cols);
    let row = CUBE_POS_Z * CUBE_DIM_Y + UNIT_POS_Y;
    let groups = k / 32;
    let mut sums = zeros(cols);
    if row < m {
        let mut g = UNIT_POS_X;
        while g < groups {
            let xv = activations(x, (row * k + g * 32) as usize);
            #[unroll]
            for c in 0..cols {
                let col = col0 + c as u32;
                if col < n {
                    let at = col * groups + g;
                    let qb = (at * 8) as usize;
                    // The two halves of 32 values: one scale each when
                    // groups are 16 values, one for both otherwise.
                    let lo = dot16(quants, &xv, qb, 0usize);
                    let hi = dot16(quants, &xv, qb + 4, 16usize);
                    if comptime![group == 16] {
                        let s = (at * 2) as usize;
                        sums[c] += scales[s] * lo + scales[s + 1] * hi;
                    } else {
                        sums[c] += scales[at as usize] * (lo + hi);
                    }
                }
            }
            g += 32;
        }
    }
    finish(&mut partial, &sums, out, row, col0, m, n, cols);
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

//! The shaders, in CubeCL (WGSL on wgpu, also SPIR-V, Metal, CUDA).

use burn_cubecl::cubecl;
use cubecl::prelude::*;

/// The cube's index, cubes past one launch dimension's count folded into
/// the second.
#[cube]
fn cube_index() -> u32 {
    CUBE_POS_X + CUBE_POS_Y * CUBE_COUNT_X
}

/// One cube a row of `x: [rows, e]`: each unit sums the squares of every
/// 32nd value, the cube adds its units' sums (plane sums, then the planes'
/// through shared memory: one barrier), and each unit writes its values
/// as `x / sqrt(sum / e + eps) * w`.
#[cube(launch)]
pub fn rms_norm(x: &[f32], w: &[f32], out: &mut [f32], rows: u32, e: u32, eps: f32) {
    // A slot per plane: 32 covers planes of any width (Vulkan allows 1).
    let mut planes = Shared::<[f32]>::new_slice(32usize);
    let row = cube_index();
    let base = row * e;
    let mut s = 0.0f32;
    if row < rows {
        let mut i = UNIT_POS;
        while i < e {
            let v = x[(base + i) as usize];
            s += v * v;
            i += CUBE_DIM;
        }
    }
    s = plane_sum(s);
    let width = min(PLANE_DIM, CUBE_DIM);
    if UNIT_POS & (width - 1) == 0 {
        planes[(UNIT_POS / width) as usize] = s;
    }
    sync_cube();
    let mut total = 0.0f32;
    for p in 0..(CUBE_DIM / width) as usize {
        total += planes[p];
    }
    if row < rows {
        let rms = f32::sqrt(total / f32::cast_from(e) + eps);
        let mut i = UNIT_POS;
        while i < e {
            let at = (base + i) as usize;
            out[at] = x[at] / rms * w[i as usize];
            i += CUBE_DIM;
        }
    }
}

/// One unit a rotated pair of `x: [seq, heads, d]`: pair `j` of a head at
/// position `p` rotates by `cos[p, j]`, `sin[p, j]`.
#[cube(launch)]
pub fn rope(
    x: &[f32],
    cos: &[f32],
    sin: &[f32],
    out: &mut [f32],
    pairs: u32,
    heads: u32,
    d: u32,
    #[comptime] neox: bool,
) {
    let i = cube_index() * CUBE_DIM + UNIT_POS;
    if i < pairs {
        let half = d / 2;
        let j = i % half;
        let head = i / half;
        let pos = head / heads;
        let base = head * d;
        let (a, b) = if comptime![neox] {
            (base + j, base + j + half)
        } else {
            (base + 2 * j, base + 2 * j + 1)
        };
        let (x0, x1) = (x[a as usize], x[b as usize]);
        let t = (pos * half + j) as usize;
        let (c, s) = (cos[t], sin[t]);
        out[a as usize] = x0 * c - x1 * s;
        out[b as usize] = x0 * s + x1 * c;
    }
}

// A hidden key's score (the mask's -inf, or past the end) is -2e38; any
// seen key's is above -1e38, which also starts the running maximum.

/// One cube a (position, query head) of `q: [seq, heads, hd]`; `k`, `v:
/// [heads / group, capacity, hd]` with `total` positions in use; `mask: [group · seq, total]` with 0 where a
/// key is seen and -inf where hidden, row `g · seq + i` for position `i` of
/// the `g`-th query head of a KV head. The keys are taken 32 at a time:
/// each unit scores one (the whole dot product), the scores go through
/// shared memory, and every unit folds them into a running softmax
/// (flash attention's rescaling by the new maximum) over the output values
/// it owns (every 32nd of `hd`). Writes `out: [seq, heads, hd]`.
#[cube(launch)]
pub fn attend(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: &[f32],
    out: &mut [f32],
    seq: u32,
    heads: u32,
    group: u32,
    total: u32,
    capacity: u32,
    scale: f32,
    #[comptime] hd: usize,
) {
    let per = comptime![hd.div_ceil(32)];
    let mut query = Shared::<[f32]>::new_slice(hd);
    let mut scores = Shared::<[f32]>::new_slice(32usize);
    let cube = cube_index();
    let live = cube < seq * heads;
    let h = cube % heads;
    let i = cube / heads;
    let kv = h / group;
    let row = ((h % group) * seq + i) * total;
    let kb = (kv * capacity) as usize * hd;
    let u = UNIT_POS as usize;
    let mut d = u;
    while d < hd {
        if live {
            query[d] = q[cube as usize * hd + d];
        }
        d += 32;
    }
    sync_cube();
    let mut acc = Array::<f32>::new(per);
    #[unroll]
    for j in 0..per {
        acc[j] = 0.0f32;
    }
    let mut top = f32::new(-1.0e38);
    let mut sum = 0.0f32;
    let mut c = 0u32;
    while c < total {
        let t = c + UNIT_POS;
        let mut score = f32::new(-2.0e38);
        if live && t < total && mask[(row + t) as usize] >= 0.0 {
            let at = kb + t as usize * hd;
            let mut dot = 0.0f32;
            for e in 0..hd {
                dot += query[e] * k[at + e];
            }
            score = dot * scale;
        }
        scores[u] = score;
        sync_cube();
        let mut chunk = f32::new(-1.0e38);
        for j in 0..32usize {
            chunk = max(chunk, scores[j]);
        }
        let next = max(top, chunk);
        let alpha = f32::exp(top - next);
        sum *= alpha;
        #[unroll]
        for j in 0..per {
            acc[j] *= alpha;
        }
        for j in 0..32u32 {
            let s = scores[j as usize];
            if s > -1.0e38f32 {
                let p = f32::exp(s - next);
                sum += p;
                let at = kb + (c + j) as usize * hd;
                #[unroll]
                for jj in 0..per {
                    let d = u + jj * 32;
                    if d < hd {
                        acc[jj] += p * v[at + d];
                    }
                }
            }
        }
        top = next;
        sync_cube();
        c += 32;
    }
    if live {
        #[unroll]
        for j in 0..per {
            let d = u + j * 32;
            if d < hd {
                out[cube as usize * hd + d] = acc[j] / sum;
            }
        }
    }
}

/// `act(gate) · up`, one unit a value: SiLU as `g / (1 + e^-g)` (as
/// llama.cpp's CPU computes it), or with `gelu` GELU's tanh form with
/// `c = sqrt(2 / π)`.
#[cube(launch)]
pub fn gated(gate: &[f32], up: &[f32], out: &mut [f32], n: u32, c: f32, #[comptime] gelu: bool) {
    let i = cube_index() * CUBE_DIM + UNIT_POS;
    if i < n {
        let at = i as usize;
        let g = gate[at];
        let act = if comptime![gelu] {
            let inner = (g + g * g * g * 0.044715f32) * c;
            g * 0.5f32 * (f32::tanh(inner) + 1.0f32)
        } else {
            g / (f32::exp(-g) + 1.0f32)
        };
        out[at] = act * up[at];
    }
}

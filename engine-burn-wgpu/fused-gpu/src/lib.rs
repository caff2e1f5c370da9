//! RMSNorm, RoPE, a gated MLP's activation and a few positions' attention
//! as one GPU kernel each, on Burn's wgpu tensors.
//!
//! Written as tensor ops, RMSNorm is six launches (square, mean, add,
//! square root, divide, scale), RoPE about eight for Q and as many for K
//! (the halves' products, their difference and sum, the concatenation),
//! `silu(gate) · up` five to seven, and attention eight (two matmuls, the
//! scale, the mask, four for the softmax) plus the copies that lay Q and
//! the output out for them: ~62 launches a layer for a decoded token, each
//! costing tens of microseconds on WebGPU and on software Vulkan, far more
//! than its arithmetic at one token. These kernels do the same f32
//! arithmetic in one launch each, in another order only where they sum
//! (RMSNorm's squares, the dot products, the softmax's running sums).

mod kernel;

use burn::tensor::{DType, Shape, Tensor};
use burn_cubecl::CubeBackend;
use burn_cubecl::cubecl::prelude::{BufferArg, CubeCount, CubeDim};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;

/// The most cubes one launch dimension may count (WebGPU's limit).
const MAX_CUBES: usize = 65_535;

/// Units of a cube: one 32-wide row of work, as `arny-qmatmul-gpu`'s.
const UNITS: u32 = 32;

/// A tensor is not f32 on one of Burn's CubeCL devices (wgpu and the
/// like); the caller keeps its tensor-op path for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotCubeF32;

impl std::fmt::Display for NotCubeF32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the fused kernels take f32 tensors on a CubeCL device (wgpu)")
    }
}

impl std::error::Error for NotCubeF32 {}

/// `x` as a contiguous f32 CubeCL tensor (a copy only if it was a view).
fn cube_f32<const D: usize>(x: &Tensor<D>) -> Result<CubeTensor, NotCubeF32> {
    if x.dtype() != DType::F32 {
        return Err(NotCubeF32);
    }
    x.clone()
        .try_into_primitive::<CubeBackend>()
        .map(into_contiguous)
        .map_err(|_| NotCubeF32)
}

fn buffer(t: &CubeTensor) -> BufferArg {
    let len = t.meta.shape().num_elements();
    // SAFETY: the length is the tensor's own element count.
    unsafe { BufferArg::from_raw_parts(t.handle.clone(), len) }
}

fn empty(like: &CubeTensor, shape: Shape) -> CubeTensor {
    empty_device_dtype(like.client.clone(), like.device.clone(), shape, DType::F32)
}

/// `count` cubes, folded into a second launch dimension past WebGPU's limit.
fn cubes(count: usize) -> CubeCount {
    let wide = count.clamp(1, MAX_CUBES);
    CubeCount::Static(wide as u32, count.div_ceil(wide) as u32, 1)
}

/// `x / sqrt(mean(x²) + eps) * w` over each row of `x: [rows, e]`, with
/// `w: [e]`.
pub fn rms_norm(x: &Tensor<2>, w: &Tensor<1>, eps: f32) -> Result<Tensor<2>, NotCubeF32> {
    let [rows, e] = x.dims();
    assert_eq!(w.dims(), [e], "one weight per column");
    let (x, w) = (cube_f32(x)?, cube_f32(w)?);
    let out = empty(&x, Shape::new([rows, e]));
    kernel::rms_norm::launch(
        &x.client,
        cubes(rows),
        CubeDim::new_1d(UNITS),
        buffer(&x),
        buffer(&w),
        buffer(&out),
        rows as u32,
        e as u32,
        eps,
    );
    Ok(Tensor::from_primitive::<CubeBackend>(out))
}

/// RoPE on `x: [seq, heads, d]` with `cos`, `sin: [seq, d / 2]` (position
/// `i` of `x` at row `i`): adjacent pairs (x[2j], x[2j+1]) rotate by angle
/// `j`, or with `neox` the halves (x[j], x[j + d/2]).
pub fn rope(
    x: &Tensor<3>,
    cos: &Tensor<2>,
    sin: &Tensor<2>,
    neox: bool,
) -> Result<Tensor<3>, NotCubeF32> {
    let [s, h, d] = x.dims();
    assert!(d % 2 == 0, "head size {d} is odd");
    assert_eq!(cos.dims(), [s, d / 2], "cos is [seq, d / 2]");
    assert_eq!(sin.dims(), [s, d / 2], "sin is [seq, d / 2]");
    let (x, cos, sin) = (cube_f32(x)?, cube_f32(cos)?, cube_f32(sin)?);
    let out = empty(&x, Shape::new([s, h, d]));
    let pairs = s * h * d / 2;
    kernel::rope::launch(
        &x.client,
        cubes(pairs.div_ceil(UNITS as usize)),
        CubeDim::new_1d(UNITS),
        buffer(&x),
        buffer(&cos),
        buffer(&sin),
        buffer(&out),
        pairs as u32,
        h as u32,
        d as u32,
        neox,
    );
    Ok(Tensor::from_primitive::<CubeBackend>(out))
}

/// Grouped-query attention of `q: [seq, heads, hd]` (positions first, as
/// the projection lays them out) over the first `total` positions of `k`,
/// `v: [kv_heads, capacity, hd]` (a cache with room for more):
/// `softmax(q · kᵀ · scale + mask) · v` as `[seq, heads, hd]`. Query head
/// `h` reads KV head `h / (heads / kv_heads)`; `mask: [1, group · seq,
/// total]` holds 0 where a key is seen and -inf where it is hidden, row
/// `g · seq + i` for position `i` of a KV head's `g`-th query head. Every
/// position must see at least one key. Meant for a few positions (decode):
/// each (position, head) reads all its keys and values once.
pub fn attention(
    q: &Tensor<3>,
    k: &Tensor<3>,
    v: &Tensor<3>,
    total: usize,
    mask: &Tensor<3>,
    scale: f32,
) -> Result<Tensor<3>, NotCubeF32> {
    let [s, heads, hd] = q.dims();
    let [kv_heads, capacity, khd] = k.dims();
    assert_eq!(khd, hd, "keys are {khd} wide, queries {hd}");
    assert_eq!(v.dims(), k.dims(), "values shaped as keys");
    assert!(
        total <= capacity,
        "{total} positions in a cache of {capacity}"
    );
    assert!(
        kv_heads > 0 && heads % kv_heads == 0,
        "{heads} query heads over {kv_heads} KV heads"
    );
    let group = heads / kv_heads;
    assert_eq!(
        mask.dims(),
        [1, group * s, total],
        "mask is [1, group · seq, total]"
    );
    let (q, k, v, mask) = (cube_f32(q)?, cube_f32(k)?, cube_f32(v)?, cube_f32(mask)?);
    let out = empty(&q, Shape::new([s, heads, hd]));
    kernel::attend::launch(
        &q.client,
        cubes(s * heads),
        CubeDim::new_1d(UNITS),
        buffer(&q),
        buffer(&k),
        buffer(&v),
        buffer(&mask),
        buffer(&out),
        s as u32,
        heads as u32,
        group as u32,
        total as u32,
        capacity as u32,
        scale,
        hd,
    );
    Ok(Tensor::from_primitive::<CubeBackend>(out))
}

/// The activation of a gated MLP's gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// SiLU, `g / (1 + e^-g)` (SwiGLU).
    Silu,
    /// GELU in its tanh form (GeGLU).
    GeluTanh,
}

/// `act(gate) · up` element-wise for `gate`, `up: [rows, n]`: five to
/// seven launches as tensor ops (the sigmoid alone is several), one here.
pub fn gated(gate: &Tensor<2>, up: &Tensor<2>, act: Gate) -> Result<Tensor<2>, NotCubeF32> {
    let dims = gate.dims();
    assert_eq!(up.dims(), dims, "gate and up shaped alike");
    let (gate, up) = (cube_f32(gate)?, cube_f32(up)?);
    let out = empty(&gate, Shape::new(dims));
    let n = dims[0] * dims[1];
    kernel::gated::launch(
        &gate.client,
        cubes(n.div_ceil(UNITS as usize)),
        CubeDim::new_1d(UNITS),
        buffer(&gate),
        buffer(&up),
        buffer(&out),
        n as u32,
        (2.0 / std::f32::consts::PI).sqrt(),
        act == Gate::GeluTanh,
    );
    Ok(Tensor::from_primitive::<CubeBackend>(out))
}

//! `y = x · Wᵀ` on the GPU with `W` kept in GGUF blocks.
//!
//! The blocks are rearranged once at upload into word-aligned arrays
//! ([`Packed`]: the values as they are, the f16 scales widened to f32) and
//! multiplied by CubeCL shaders on Burn's wgpu tensors, so a Q4_1 weight
//! takes 6 bits on the device where f16 takes 16 and f32 32, and decode
//! reads that many. The activations and the sums stay f32: a GPU has the
//! arithmetic to spare, and the products then equal f32 arithmetic on the
//! weights llama.cpp decodes (see [`Packed`]) up to the order of the sums.

mod kernel;
mod pack;

pub use pack::{Layout, Packed};

use arny_qmatmul::QMatrix;
use burn::tensor::{DType, Device, Shape, Tensor};
use burn_cubecl::CubeBackend;
use burn_cubecl::cubecl::prelude::{BufferArg, CubeCount, CubeDim};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;

/// The device is not one of Burn's CubeCL devices (wgpu, Vulkan, Metal,
/// WebGPU, CUDA, ROCm).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotCube(pub String);

impl std::fmt::Display for NotCube {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "packed GPU weights need a CubeCL device (wgpu); got {}",
            self.0
        )
    }
}

impl std::error::Error for NotCube {}

/// A weight matrix in a [`Layout`] on a GPU, in parts of at most
/// [`PART_BYTES`] of values.
pub struct GpuQMatrix {
    layout: Layout,
    rows: usize,
    cols: usize,
    bytes: u64,
    /// Consecutive row ranges, in order.
    parts: Vec<Part>,
}

/// Rows of a matrix as three device arrays.
struct Part {
    rows: usize,
    quants: CubeTensor,
    scales: CubeTensor,
    /// Only for [`Layout::Q4`].
    offsets: Option<CubeTensor>,
}

impl std::fmt::Debug for GpuQMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GpuQMatrix({} × {} {:?}, {} parts)",
            self.rows,
            self.cols,
            self.layout,
            self.parts.len()
        )
    }
}

fn cube(x: Tensor<1>) -> Result<CubeTensor, NotCube> {
    let device = x.device();
    x.try_into_primitive::<CubeBackend>()
        .map_err(|_| NotCube(format!("{device:?}")))
}

/// The most cubes one launch dimension may count (WebGPU's limit).
const MAX_CUBES: usize = 65_535;

/// The most activation rows the block-reading shaders take; past them a
/// product goes through f32 slices of the weights.
pub const MATVEC_ROWS: usize = 8;

/// Output columns one cube of the block-reading shaders computes.
const COLS: usize = 4;

/// The most bytes of values one part of a matrix holds: WebGPU promises
/// storage bindings of 128 MiB and no more, and a large vocabulary's output
/// matrix (Gemma 3's 262144 rows) is more than that.
pub const PART_BYTES: usize = 64 << 20;

/// The largest f32 slice of a weight matrix decoded for one product
/// (a 576-wide model's 49152-row output matrix takes 8 of them).
pub const SLICE_BYTES: usize = 16 << 20;

impl GpuQMatrix {
    /// `w` rearranged and copied to `device`.
    pub fn upload(w: &QMatrix, device: &Device) -> Result<Self, NotCube> {
        let probe = cube(Tensor::<1>::zeros([1], device))?;
        let layout = Layout::of(w.ty());
        let row_bytes = w.cols() / 32 * layout.words_per_32() * 4;
        let step = (PART_BYTES / row_bytes).clamp(1, w.rows());
        let upload = |words: Vec<u8>, len: usize, dtype: DType| {
            let handle = probe.client.create_from_slice(&words);
            CubeTensor::new_contiguous(
                probe.client.clone(),
                probe.device.clone(),
                Shape::new([len]),
                handle,
                dtype,
            )
        };
        let u32s = |v: &[u32]| v.iter().flat_map(|w| w.to_le_bytes()).collect();
        let f32s = |v: &[f32]| v.iter().flat_map(|w| w.to_le_bytes()).collect();
        let mut bytes = 0;
        let mut parts = Vec::new();
        for first in (0..w.rows()).step_by(step) {
            let rows = step.min(w.rows() - first);
            let p = Packed::new(&w.row_range(first, rows).expect("rows within the matrix"));
            bytes += p.bytes();
            parts.push(Part {
                rows,
                quants: upload(u32s(&p.quants), p.quants.len(), DType::U32),
                scales: upload(f32s(&p.scales), p.scales.len(), DType::F32),
                offsets: (layout == Layout::Q4)
                    .then(|| upload(f32s(&p.offsets), p.offsets.len(), DType::F32)),
            });
        }
        Ok(Self {
            layout,
            rows: w.rows(),
            cols: w.cols(),
            bytes,
            parts,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Bytes the matrix takes on the device.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// `x · Wᵀ` for `x: [m, cols]` (f32, on this matrix's device): `[m, rows]`.
    ///
    /// Up to [`MATVEC_ROWS`] rows of `x` (decode, speculative steps) go to
    /// the shaders that read the blocks; more (prefill) are multiplied by
    /// Burn's tuned matmul on f32 slices of `W` decoded on the device, at
    /// most [`SLICE_BYTES`] at a time: a prompt's rows share every weight
    /// read, so the product is arithmetic-bound there, not memory-bound.
    pub fn matmul(&self, x: Tensor<2>) -> Tensor<2> {
        let [m, k] = x.dims();
        assert_eq!(k, self.cols, "x has {k} columns; the matrix {}", self.cols);
        let x = x.cast(burn::tensor::FloatDType::F32);
        let mut outs: Vec<Tensor<2>> = Vec::new();
        if m > MATVEC_ROWS {
            let step = (SLICE_BYTES / (4 * k)).max(1);
            for part in &self.parts {
                for r in (0..part.rows).step_by(step) {
                    let w = part.dequantize(self.layout, k, r, step.min(part.rows - r));
                    outs.push(x.clone().matmul(w.transpose()));
                }
            }
        } else {
            let x = into_contiguous(
                x.try_into_primitive::<CubeBackend>()
                    .expect("x is on the matrix's device"),
            );
            for part in &self.parts {
                outs.push(part.matvec(self.layout, &x));
            }
        }
        if outs.len() == 1 {
            outs.remove(0)
        } else {
            Tensor::cat(outs, 1)
        }
    }

    /// Rows `first..first + n` of `W` as f32 `[n, cols]` on the device.
    pub fn dequantize_rows(&self, first: usize, n: usize) -> Tensor<2> {
        assert!(
            first + n <= self.rows,
            "rows {first}..{} of {}",
            first + n,
            self.rows
        );
        let mut slices = Vec::new();
        let mut start = 0;
        for part in &self.parts {
            let (lo, hi) = (first.max(start), (first + n).min(start + part.rows));
            if lo < hi {
                slices.push(part.dequantize(self.layout, self.cols, lo - start, hi - lo));
            }
            start += part.rows;
        }
        Tensor::cat(slices, 0)
    }
}

fn buffer(t: &CubeTensor, len: usize) -> BufferArg {
    // SAFETY: every caller passes the element count the tensor was made
    // with, or fewer.
    unsafe { BufferArg::from_raw_parts(t.handle.clone(), len) }
}

fn elements(t: &CubeTensor) -> usize {
    t.meta.shape().num_elements()
}

impl Part {
    /// Rows `first..first + n` of the part as f32 `[n, k]`.
    fn dequantize(&self, layout: Layout, k: usize, first: usize, n: usize) -> Tensor<2> {
        let out = empty_device_dtype(
            self.quants.client.clone(),
            self.quants.device.clone(),
            Shape::new([n, k]),
            DType::F32,
        );
        // One unit per 32 values; a slice is at most SLICE_BYTES, so the
        // cubes fit one launch dimension.
        let units = n * k / 32;
        let dim = CubeDim::new_1d(64);
        let count = CubeCount::Static(units.div_ceil(64) as u32, 1, 1);
        let (qs, ss, os) = (
            buffer(&self.quants, elements(&self.quants)),
            buffer(&self.scales, elements(&self.scales)),
            buffer(&out, n * k),
        );
        let client = &self.quants.client;
        let (first, k32) = (first as u32, k as u32);
        match (layout, &self.offsets) {
            (Layout::Q4, Some(offsets)) => {
                let of = buffer(offsets, elements(offsets));
                kernel::dequantize_q4::launch(client, count, dim, qs, ss, of, os, first, k32)
            }
            (Layout::Q8 { group }, _) => kernel::dequantize_q8::launch(
                client,
                count,
                dim,
                qs,
                ss,
                os,
                first,
                k32,
                group as u32,
            ),
            (Layout::Q4, None) => unreachable!("Q4 parts are uploaded with offsets"),
        }
        Tensor::from_primitive::<CubeBackend>(out)
    }

    /// `x · Wᵀ` over this part's rows by the block-reading shaders.
    fn matvec(&self, layout: Layout, x: &CubeTensor) -> Tensor<2> {
        let [m, k] = [x.meta.shape()[0], x.meta.shape()[1]];
        let n = self.rows;
        let out = empty_device_dtype(
            x.client.clone(),
            x.device.clone(),
            Shape::new([m, n]),
            DType::F32,
        );
        // Up to 8 activation rows share a cube and its weight reads, and
        // COLS columns share its activation reads and its one barrier.
        let rows = m.next_power_of_two().min(8);
        let cubes = n.div_ceil(COLS);
        let wide = cubes.min(MAX_CUBES);
        let count = CubeCount::Static(
            wide as u32,
            cubes.div_ceil(wide) as u32,
            m.div_ceil(rows) as u32,
        );
        let dim = CubeDim::new_2d(32, rows as u32);
        let (xs, qs, ss, os) = (
            buffer(x, m * k),
            buffer(&self.quants, elements(&self.quants)),
            buffer(&self.scales, elements(&self.scales)),
            buffer(&out, m * n),
        );
        let client = &x.client;
        let (m32, n32, k32) = (m as u32, n as u32, k as u32);
        match (layout, &self.offsets) {
            (Layout::Q4, Some(offsets)) => {
                let of = buffer(offsets, elements(offsets));
                kernel::matmul_q4::launch(
                    client, count, dim, xs, qs, ss, of, os, m32, n32, k32, rows, COLS,
                )
            }
            (Layout::Q8 { group }, _) => kernel::matmul_q8::launch(
                client,
                count,
                dim,
                xs,
                qs,
                ss,
                os,
                m32,
                n32,
                k32,
                rows,
                COLS,
                group as u32,
            ),
            (Layout::Q4, None) => unreachable!("Q4 parts are uploaded with offsets"),
        }
        Tensor::from_primitive::<CubeBackend>(out)
    }
}

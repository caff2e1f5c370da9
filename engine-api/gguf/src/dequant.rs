//! ggml block formats → f32.
//!
//! Written from the block layouts in ggml's `ggml-common.h` and checked
//! against the `gguf` Python package's dequantizer (fixtures under
//! `tests/fixtures/dequant`, made by `tests/make_dequant_fixtures.py`).
//! Each format decodes whole blocks; the caller's byte slice must hold
//! exactly the tensor, which [`crate::GgufFile::tensor_data`] guarantees.

use half::{bf16, f16};

use crate::{GgufError, Result, ggml_type_layout};

pub const F32: u32 = 0;
pub const F16: u32 = 1;
pub const Q4_0: u32 = 2;
pub const Q4_1: u32 = 3;
pub const Q5_0: u32 = 6;
pub const Q5_1: u32 = 7;
pub const Q8_0: u32 = 8;
pub const Q4_K: u32 = 12;
pub const Q5_K: u32 = 13;
pub const Q6_K: u32 = 14;
pub const BF16: u32 = 30;

/// The types [`dequantize`] decodes.
pub const SUPPORTED: &[u32] = &[
    F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K,
];

/// A Q5_0/Q5_1 block's 32 five-bit values: the low nibbles of `qs`, then
/// the high ones, each with its fifth bit from the 32-bit `qh`.
fn q5_values(qh: &[u8], qs: &[u8]) -> [u8; 32] {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let mut v = [0u8; 32];
    for (j, &q) in qs.iter().enumerate() {
        v[j] = (q & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
        v[j + 16] = (q >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
    }
    v
}

fn h(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// Decodes `elements` values of ggml type `ty` from `data`, appending to
/// `out`. `data` must be exactly the size the layout asks for.
pub fn dequantize_into(ty: u32, data: &[u8], elements: usize, out: &mut Vec<f32>) -> Result<()> {
    let (name, block, size) = ggml_type_layout(ty)
        .ok_or_else(|| GgufError::Invalid(format!("unknown ggml type {ty}")))?;
    let (block, size) = (block as usize, size as usize);
    if !elements.is_multiple_of(block) || data.len() != elements / block * size {
        return Err(GgufError::Invalid(format!(
            "{name}: {} bytes do not hold {elements} values",
            data.len()
        )));
    }
    out.reserve(elements);
    let blocks = data.chunks_exact(size);
    match ty {
        F32 => out.extend(
            data.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        F16 => out.extend(data.chunks_exact(2).map(h)),
        BF16 => out.extend(
            data.chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        Q8_0 => {
            for b in blocks {
                let d = h(&b[0..2]);
                out.extend(b[2..34].iter().map(|&q| d * q as i8 as f32));
            }
        }
        Q4_0 => {
            for b in blocks {
                let d = h(&b[0..2]);
                let qs = &b[2..18];
                out.extend(qs.iter().map(|&q| d * ((q & 0x0F) as i32 - 8) as f32));
                out.extend(qs.iter().map(|&q| d * ((q >> 4) as i32 - 8) as f32));
            }
        }
        Q4_1 => {
            for b in blocks {
                let (d, m) = (h(&b[0..2]), h(&b[2..4]));
                let qs = &b[4..20];
                out.extend(qs.iter().map(|&q| d * (q & 0x0F) as f32 + m));
                out.extend(qs.iter().map(|&q| d * (q >> 4) as f32 + m));
            }
        }
        Q5_0 => {
            for b in blocks {
                let d = h(&b[0..2]);
                let v = q5_values(&b[2..6], &b[6..22]);
                out.extend(v.iter().map(|&q| d * (q as i32 - 16) as f32));
            }
        }
        Q5_1 => {
            for b in blocks {
                let (d, m) = (h(&b[0..2]), h(&b[2..4]));
                let v = q5_values(&b[4..8], &b[8..24]);
                out.extend(v.iter().map(|&q| d * q as f32 + m));
            }
        }
        Q5_K => {
            for b in blocks {
                let (d, dmin) = (h(&b[0..2]), h(&b[2..4]));
                let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
                for (j, q) in qs.chunks_exact(32).enumerate() {
                    let (sc1, m1) = scale_min_k4(2 * j, scales);
                    let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
                    let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
                    let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
                    // Sub-block pair j takes bits 2j and 2j+1 of each qh byte.
                    let (u1, u2) = (1u8 << (2 * j), 2u8 << (2 * j));
                    out.extend(q.iter().zip(qh).map(|(&v, &hb)| {
                        let hi = if hb & u1 != 0 { 16 } else { 0 };
                        d1 * ((v & 0x0F) + hi) as f32 - m1
                    }));
                    out.extend(q.iter().zip(qh).map(|(&v, &hb)| {
                        let hi = if hb & u2 != 0 { 16 } else { 0 };
                        d2 * ((v >> 4) + hi) as f32 - m2
                    }));
                }
            }
        }
        Q4_K => {
            for b in blocks {
                let (d, dmin) = (h(&b[0..2]), h(&b[2..4]));
                let scales = &b[4..16];
                let qs = &b[16..144];
                for (j, q) in qs.chunks_exact(32).enumerate() {
                    let (sc1, m1) = scale_min_k4(2 * j, scales);
                    let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
                    let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
                    let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
                    out.extend(q.iter().map(|&v| d1 * (v & 0x0F) as f32 - m1));
                    out.extend(q.iter().map(|&v| d2 * (v >> 4) as f32 - m2));
                }
            }
        }
        Q6_K => {
            for b in blocks {
                let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
                let d = h(&b[208..210]);
                for half in 0..2 {
                    let (ql, qh, sc) = (&ql[64 * half..], &qh[32 * half..], &sc[8 * half..]);
                    let mut y = [0f32; 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                        y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                        y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                        y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                    }
                    out.extend_from_slice(&y);
                }
            }
        }
        _ => {
            return Err(GgufError::Invalid(format!(
                "no dequantizer for {name} (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)"
            )));
        }
    }
    Ok(())
}

/// [`dequantize_into`] into a new vector.
pub fn dequantize(ty: u32, data: &[u8], elements: usize) -> Result<Vec<f32>> {
    let mut out = Vec::new();
    dequantize_into(ty, data, elements, &mut out)?;
    Ok(out)
}

/// The 6-bit scale and min of sub-block `j` in a K-quant's 12 scale bytes.
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

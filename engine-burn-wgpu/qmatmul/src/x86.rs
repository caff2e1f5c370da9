//! x86-64 dot products, in two builds of the same code: AVX2 + FMA (+ F16C
//! for the block scales), and AVX-512 VNNI (256-bit, with AVX-512VL). AVX2 multiplies 32 byte pairs
//! with `maddubs` (unsigned × signed into 16-bit pair sums) and widens
//! them with `madd`; VNNI's `vpdpbusd` does both in one instruction, the
//! rest is shared. One FMA per block applies the scales, as in ggml's x86
//! kernels. The integer sums are the same either way (no pair sum here
//! reaches `maddubs`' saturation: at most 2 · 128 · 127), so both builds
//! give identical results.

use std::arch::x86_64::*;

use crate::QType;
use crate::act::Row;
use crate::scalar::scale_min_k4;

/// The kernels, compiled for the target features `$feat`, around the
/// module's own `us8_dot` and `scaled_dot`.
macro_rules! kernels {
    ($feat:literal) => {
        /// # Safety
        /// The CPU must have the features this module is built for.
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn dot(ty: QType, w: &[u8], a: &Row<'_>) -> f32 {
            match ty {
                QType::Q4_0 => q4_0(w, a),
                QType::Q4_1 => q4_1(w, a),
                QType::Q8_0 => q8_0(w, a),
                QType::Q4_K => q4_k(w, a),
                QType::Q6_K => q6_k(w, a),
            }
        }

        /// Consecutive weight rows (`w`, `out.len()` rows of `row_bytes`)
        /// against one activation row, for decode: the type is matched
        /// once and the loop runs inside the feature-enabled code.
        ///
        /// # Safety
        /// As [`dot`].
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn dot_rows(
            ty: QType,
            w: &[u8],
            row_bytes: usize,
            a: &Row<'_>,
            out: &mut [f32],
        ) {
            let rows = w.chunks_exact(row_bytes).zip(out.iter_mut());
            match ty {
                QType::Q4_0 => rows.for_each(|(w, o)| *o = q4_0(w, a)),
                QType::Q4_1 => rows.for_each(|(w, o)| *o = q4_1(w, a)),
                QType::Q8_0 => rows.for_each(|(w, o)| *o = q8_0(w, a)),
                QType::Q4_K => rows.for_each(|(w, o)| *o = q4_k(w, a)),
                QType::Q6_K => rows.for_each(|(w, o)| *o = q6_k(w, a)),
            }
        }

        /// One weight row against four activation rows, for prefill: each
        /// block's values are unpacked once and used four times. `None`
        /// for the formats without a four-row kernel.
        ///
        /// # Safety
        /// As [`dot`].
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn dot4(ty: QType, w: &[u8], a: [&Row<'_>; 4]) -> Option<[f32; 4]> {
            match ty {
                QType::Q4_1 => Some(q4_1x4(w, a)),
                QType::Q8_0 => Some(q8_0x4(w, a)),
                QType::Q4_K => Some(q4_kx4(w, a)),
                QType::Q6_K => Some(q6_kx4(w, a)),
                QType::Q4_0 => None,
            }
        }

        // The four-row kernels: one accumulator per row, as above.

        #[target_feature(enable = $feat)]
        fn q4_1x4(w: &[u8], a: [&Row<'_>; 4]) -> [f32; 4] {
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut off = [0f32; 4];
            // Each row cut to the blocks there are, once, so the loop's
            // indexing needs no bounds checks.
            let n = w.len() / 20;
            let qs: [&[i8]; 4] = std::array::from_fn(|r| &a[r].qs[..32 * n]);
            let ds: [&[f32]; 4] = std::array::from_fn(|r| &a[r].d[..n]);
            let ss: [&[f32]; 4] = std::array::from_fn(|r| &a[r].s[..n]);
            for (i, b) in w.chunks_exact(20).enumerate() {
                let x = nibbles(&b[4..20]);
                let (dw, mw) = (hf(&b[0..2]), hf(&b[2..4]));
                for r in 0..4 {
                    let y = load_i8(&qs[r][32 * i..]);
                    let d = _mm256_set1_ps(dw * ds[r][i]);
                    acc[r] = _mm256_fmadd_ps(d, us8_dot(x, y), acc[r]);
                    off[r] += mw * ss[r][i];
                }
            }
            std::array::from_fn(|r| hsum(acc[r]) + off[r])
        }

        #[target_feature(enable = $feat)]
        fn q8_0x4(w: &[u8], a: [&Row<'_>; 4]) -> [f32; 4] {
            let mut acc = [_mm256_setzero_ps(); 4];
            let n = w.len() / 34;
            let qs: [&[i8]; 4] = std::array::from_fn(|r| &a[r].qs[..32 * n]);
            let ds: [&[f32]; 4] = std::array::from_fn(|r| &a[r].d[..n]);
            for (i, b) in w.chunks_exact(34).enumerate() {
                let x = load(&b[2..34]);
                let dw = hf(&b[0..2]);
                // `maddubs` wants x unsigned: x's sign moves onto each y.
                let ux = _mm256_sign_epi8(x, x);
                for r in 0..4 {
                    let y = _mm256_sign_epi8(load_i8(&qs[r][32 * i..]), x);
                    let d = _mm256_set1_ps(dw * ds[r][i]);
                    acc[r] = _mm256_fmadd_ps(d, us8_dot(ux, y), acc[r]);
                }
            }
            std::array::from_fn(|r| hsum(acc[r]))
        }

        #[target_feature(enable = $feat)]
        fn q4_kx4(w: &[u8], a: [&Row<'_>; 4]) -> [f32; 4] {
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut mins = [0f32; 4];
            let mask = _mm256_set1_epi8(0x0F);
            for (i, b) in w.chunks_exact(144).enumerate() {
                let (hd, hdmin) = (hf(&b[0..2]), hf(&b[2..4]));
                let (scales, qs) = (&b[4..16], &b[16..144]);
                let sm: [(i32, i32); 8] = std::array::from_fn(|j| scale_min_k4(j, scales));
                let y: [&[i8]; 4] = std::array::from_fn(|r| &a[r].qs[256 * i..256 * i + 256]);
                let mut sumi = [_mm256_setzero_si256(); 4];
                let mut m = [0i32; 4];
                for k in 0..4 {
                    let q = load(&qs[32 * k..]);
                    let ((sc_lo, m_lo), (sc_hi, m_hi)) = (sm[2 * k], sm[2 * k + 1]);
                    let lo = _mm256_and_si256(q, mask);
                    let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), mask);
                    for r in 0..4 {
                        let bsums = &a[r].bsums[16 * i..16 * i + 16];
                        sumi[r] = _mm256_add_epi32(
                            sumi[r],
                            scaled_dot(lo, load_i8(&y[r][64 * k..]), sc_lo as i16, sc_lo as i16),
                        );
                        sumi[r] = _mm256_add_epi32(
                            sumi[r],
                            scaled_dot(
                                hi,
                                load_i8(&y[r][64 * k + 32..]),
                                sc_hi as i16,
                                sc_hi as i16,
                            ),
                        );
                        m[r] += m_lo * (bsums[4 * k] as i32 + bsums[4 * k + 1] as i32)
                            + m_hi * (bsums[4 * k + 2] as i32 + bsums[4 * k + 3] as i32);
                    }
                }
                for r in 0..4 {
                    let (d, dmin) = (hd * a[r].d[i], hdmin * a[r].d[i]);
                    acc[r] =
                        _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
                    mins[r] += dmin * m[r] as f32;
                }
            }
            std::array::from_fn(|r| hsum(acc[r]) - mins[r])
        }

        #[target_feature(enable = $feat)]
        fn q6_kx4(w: &[u8], a: [&Row<'_>; 4]) -> [f32; 4] {
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut offsets = [0f32; 4];
            let mask = _mm256_set1_epi8(0x0F);
            for (i, b) in w.chunks_exact(210).enumerate() {
                let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
                let y: [&[i8]; 4] = std::array::from_fn(|r| &a[r].qs[256 * i..256 * i + 256]);
                let mut sumi = [_mm256_setzero_si256(); 4];
                let mut offset = [0i32; 4];
                for half in 0..2 {
                    let ql_a = load(&ql[64 * half..]);
                    let ql_b = load(&ql[64 * half + 32..]);
                    let qh32 = load(&qh[32 * half..]);
                    let quarters = [
                        _mm256_and_si256(ql_a, mask),
                        _mm256_and_si256(ql_b, mask),
                        _mm256_and_si256(_mm256_srli_epi16(ql_a, 4), mask),
                        _mm256_and_si256(_mm256_srli_epi16(ql_b, 4), mask),
                    ];
                    for (k, lo) in quarters.into_iter().enumerate() {
                        let q = _mm256_or_si256(lo, q6_high(qh32, k));
                        let g = 8 * half + 2 * k;
                        let (s0, s1) = (sc[g] as i8 as i16, sc[g + 1] as i8 as i16);
                        let v = 128 * half + 32 * k;
                        for r in 0..4 {
                            let bsums = &a[r].bsums[16 * i..16 * i + 16];
                            sumi[r] = _mm256_add_epi32(
                                sumi[r],
                                scaled_dot(q, load_i8(&y[r][v..]), s0, s1),
                            );
                            offset[r] +=
                                s0 as i32 * bsums[g] as i32 + s1 as i32 * bsums[g + 1] as i32;
                        }
                    }
                }
                let hd = hf(&b[208..210]);
                for r in 0..4 {
                    let d = hd * a[r].d[i];
                    acc[r] =
                        _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
                    offsets[r] += d * (32 * offset[r]) as f32;
                }
            }
            std::array::from_fn(|r| hsum(acc[r]) - offsets[r])
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn hsum(x: __m256) -> f32 {
            let r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
            let r = _mm_add_ps(r, _mm_movehl_ps(r, r));
            let r = _mm_add_ss(r, _mm_movehdup_ps(r));
            _mm_cvtss_f32(r)
        }

        /// A little-endian f16 as f32 with F16C's conversion: `half`'s
        /// portable one, per block, held the kernels back (it is exact
        /// either way, so the results do not change).
        #[inline]
        #[target_feature(enable = $feat)]
        fn hf(b: &[u8]) -> f32 {
            let bits = u16::from_le_bytes([b[0], b[1]]);
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn load(p: &[u8]) -> __m256i {
            assert!(p.len() >= 32);
            // SAFETY: 32 bytes are there (checked); loadu has no alignment needs.
            unsafe { _mm256_loadu_si256(p.as_ptr().cast()) }
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn load_i8(p: &[i8]) -> __m256i {
            assert!(p.len() >= 32);
            // SAFETY: as `load`.
            unsafe { _mm256_loadu_si256(p.as_ptr().cast()) }
        }

        /// 16 bytes of nibbles → 32 bytes: the low nibbles, then the high ones
        /// (ggml's value order).
        #[inline]
        #[target_feature(enable = $feat)]
        fn nibbles(p: &[u8]) -> __m256i {
            assert!(p.len() >= 16);
            // SAFETY: 16 bytes are there (checked).
            let t = unsafe { _mm_loadu_si128(p.as_ptr().cast()) };
            let both = _mm256_insertf128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1);
            _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
        }

        /// Signed × signed bytes: `maddubs` wants the left side unsigned, so move
        /// x's sign onto y.
        #[inline]
        #[target_feature(enable = $feat)]
        fn s8_dot(x: __m256i, y: __m256i) -> __m256 {
            us8_dot(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
        }

        // One accumulator per row, blocks in order: the four-row kernels
        // below add in the same order, so a prompt gives the same bits
        // whether its rows are multiplied one at a time or four at a time.
        // Bit-identical batches matter more than the ~13% two interleaved
        // accumulators gave decoding here: 8-bit activations turn a last-bit
        // difference into a different rounding downstream.

        #[target_feature(enable = $feat)]
        fn q4_0(w: &[u8], a: &Row<'_>) -> f32 {
            let mut acc = _mm256_setzero_ps();
            let n = w.len() / 18;
            let (qs, ds) = (&a.qs[..32 * n], &a.d[..n]);
            for (i, b) in w.chunks_exact(18).enumerate() {
                let x = _mm256_sub_epi8(nibbles(&b[2..18]), _mm256_set1_epi8(8));
                let y = load_i8(&qs[32 * i..]);
                let d = _mm256_set1_ps(hf(&b[0..2]) * ds[i]);
                acc = _mm256_fmadd_ps(d, s8_dot(x, y), acc);
            }
            hsum(acc)
        }

        #[target_feature(enable = $feat)]
        fn q4_1(w: &[u8], a: &Row<'_>) -> f32 {
            let mut acc = _mm256_setzero_ps();
            let mut offsets = 0f32;
            let n = w.len() / 20;
            let (qs, ds, ss) = (&a.qs[..32 * n], &a.d[..n], &a.s[..n]);
            for (i, b) in w.chunks_exact(20).enumerate() {
                let x = nibbles(&b[4..20]);
                let y = load_i8(&qs[32 * i..]);
                let d = _mm256_set1_ps(hf(&b[0..2]) * ds[i]);
                acc = _mm256_fmadd_ps(d, us8_dot(x, y), acc);
                offsets += hf(&b[2..4]) * ss[i];
            }
            hsum(acc) + offsets
        }

        #[target_feature(enable = $feat)]
        fn q8_0(w: &[u8], a: &Row<'_>) -> f32 {
            let mut acc = _mm256_setzero_ps();
            let n = w.len() / 34;
            let (qs, ds) = (&a.qs[..32 * n], &a.d[..n]);
            for (i, b) in w.chunks_exact(34).enumerate() {
                let x = load(&b[2..34]);
                let y = load_i8(&qs[32 * i..]);
                let d = _mm256_set1_ps(hf(&b[0..2]) * ds[i]);
                acc = _mm256_fmadd_ps(d, s8_dot(x, y), acc);
            }
            hsum(acc)
        }

        #[target_feature(enable = $feat)]
        fn q4_k(w: &[u8], a: &Row<'_>) -> f32 {
            let mut acc = _mm256_setzero_ps();
            let mut mins = 0f32;
            let mask = _mm256_set1_epi8(0x0F);
            for (i, b) in w.chunks_exact(144).enumerate() {
                let (d, dmin) = (hf(&b[0..2]) * a.d[i], hf(&b[2..4]) * a.d[i]);
                let (scales, qs) = (&b[4..16], &b[16..144]);
                let y = &a.qs[256 * i..256 * i + 256];
                let bsums = &a.bsums[16 * i..16 * i + 16];
                let mut sumi = _mm256_setzero_si256();
                let mut m = 0i32;
                for k in 0..4 {
                    let q = load(&qs[32 * k..]);
                    let (sc_lo, m_lo) = scale_min_k4(2 * k, scales);
                    let (sc_hi, m_hi) = scale_min_k4(2 * k + 1, scales);
                    let lo = _mm256_and_si256(q, mask);
                    let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), mask);
                    sumi = _mm256_add_epi32(
                        sumi,
                        scaled_dot(lo, load_i8(&y[64 * k..]), sc_lo as i16, sc_lo as i16),
                    );
                    sumi = _mm256_add_epi32(
                        sumi,
                        scaled_dot(hi, load_i8(&y[64 * k + 32..]), sc_hi as i16, sc_hi as i16),
                    );
                    m += m_lo * (bsums[4 * k] as i32 + bsums[4 * k + 1] as i32)
                        + m_hi * (bsums[4 * k + 2] as i32 + bsums[4 * k + 3] as i32);
                }
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
                mins += dmin * m as f32;
            }
            hsum(acc) - mins
        }

        /// Bits `2·k, 2·k+1` of each byte of `qh`, moved to bits 4 and 5: the
        /// high part of Q6_K quarter `k`'s values.
        #[inline]
        #[target_feature(enable = $feat)]
        fn q6_high(qh: __m256i, k: usize) -> __m256i {
            // Bytes have no shift: shift 16-bit lanes, then mask.
            let v = match k {
                0 => qh,
                1 => _mm256_srli_epi16(qh, 2),
                2 => _mm256_srli_epi16(qh, 4),
                _ => _mm256_srli_epi16(qh, 6),
            };
            _mm256_slli_epi16(_mm256_and_si256(v, _mm256_set1_epi8(3)), 4)
        }

        #[target_feature(enable = $feat)]
        fn q6_k(w: &[u8], a: &Row<'_>) -> f32 {
            let mut acc = _mm256_setzero_ps();
            let mut offsets = 0f32;
            let mask = _mm256_set1_epi8(0x0F);
            for (i, b) in w.chunks_exact(210).enumerate() {
                let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
                let y = &a.qs[256 * i..256 * i + 256];
                let bsums = &a.bsums[16 * i..16 * i + 16];
                let mut sumi = _mm256_setzero_si256();
                let mut offset = 0i32;
                for half in 0..2 {
                    let ql_a = load(&ql[64 * half..]);
                    let ql_b = load(&ql[64 * half + 32..]);
                    let qh32 = load(&qh[32 * half..]);
                    let quarters = [
                        _mm256_and_si256(ql_a, mask),
                        _mm256_and_si256(ql_b, mask),
                        _mm256_and_si256(_mm256_srli_epi16(ql_a, 4), mask),
                        _mm256_and_si256(_mm256_srli_epi16(ql_b, 4), mask),
                    ];
                    for (k, lo) in quarters.into_iter().enumerate() {
                        let q = _mm256_or_si256(lo, q6_high(qh32, k));
                        let g = 8 * half + 2 * k;
                        let (s0, s1) = (sc[g] as i8 as i16, sc[g + 1] as i8 as i16);
                        let v = 128 * half + 32 * k;
                        sumi = _mm256_add_epi32(sumi, scaled_dot(q, load_i8(&y[v..]), s0, s1));
                        offset += s0 as i32 * bsums[g] as i32 + s1 as i32 * bsums[g + 1] as i32;
                    }
                }
                // The values are stored as q + 32: take 32 · Σ scale · Σ y back.
                let d = hf(&b[208..210]) * a.d[i];
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
                offsets += d * (32 * offset) as f32;
            }
            hsum(acc) - offsets
        }
    };
}

pub(crate) mod avx2 {
    use super::*;

    kernels!("avx2,fma,f16c");

    /// Unsigned × signed bytes, summed into 8 lanes of f32.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn us8_dot(x: __m256i, y: __m256i) -> __m256 {
        let pairs = _mm256_maddubs_epi16(x, y);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }

    /// Unsigned × signed bytes into 8 lanes of i32, the first 16 values'
    /// products times `lo`, the last 16's times `hi`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn scaled_dot(x: __m256i, y: __m256i, lo: i16, hi: i16) -> __m256i {
        let scale = _mm256_setr_m128i(_mm_set1_epi16(lo), _mm_set1_epi16(hi));
        _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), scale)
    }
}

pub(crate) mod vnni {
    use super::*;

    kernels!("avx2,fma,f16c,avx512vnni,avx512vl");

    #[inline]
    #[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
    fn us8_dot(x: __m256i, y: __m256i) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), x, y))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
    fn scaled_dot(x: __m256i, y: __m256i, lo: i16, hi: i16) -> __m256i {
        let sums = _mm256_dpbusd_epi32(_mm256_setzero_si256(), x, y);
        let scale = _mm256_setr_m128i(_mm_set1_epi32(lo.into()), _mm_set1_epi32(hi.into()));
        _mm256_mullo_epi32(sums, scale)
    }
}

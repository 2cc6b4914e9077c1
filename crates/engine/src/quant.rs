//! Matrix-vector products straight from GGML quantized blocks, for decoding.
//!
//! Decoding one token multiplies every weight once: the cost is reading the weights. Kept as f32
//! they are 4 bytes each; as the file's blocks, 0.6 to 1.1 bytes. The products here read the
//! blocks and compute in f32 with the same weight values the f32 path uses (each block's scale
//! times its small integers, plus its offset), so results agree with the dequantised matmul to
//! rounding: `sum_j x_j (d q_j + m)` is computed as `d sum_j x_j q_j + m sum_j x_j`.

use crate::gguf::GgmlType;

/// Quant types with a direct matrix-vector kernel.
pub fn supported(dtype: GgmlType) -> bool {
    matches!(
        dtype,
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 | GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K
    )
}

/// Rows of one storage type.
#[derive(Debug, Clone)]
struct Part {
    rows: usize,
    dtype: GgmlType,
    row_bytes: usize,
    data: Vec<u8>,
}

/// A row-major `[rows, cols]` matrix kept as GGML blocks; row ranges may use different types
/// (a fused Q/K/V projection whose parts were quantized differently).
#[derive(Debug, Clone)]
pub struct QuantMatrix {
    cols: usize,
    parts: Vec<Part>,
}

impl QuantMatrix {
    /// `data` holds `rows` rows of `cols` values in `dtype` blocks.
    pub fn new(dtype: GgmlType, rows: usize, cols: usize, data: Vec<u8>) -> Option<Self> {
        let (block, block_bytes) = dtype.block_layout();
        if !supported(dtype) || !cols.is_multiple_of(block) || data.len() != rows * cols / block * block_bytes {
            return None;
        }
        Some(QuantMatrix {
            cols,
            parts: vec![Part {
                rows,
                dtype,
                row_bytes: cols / block * block_bytes,
                data,
            }],
        })
    }

    pub fn rows(&self) -> usize {
        self.parts.iter().map(|p| p.rows).sum()
    }

    pub fn n_bytes(&self) -> usize {
        self.parts.iter().map(|p| p.data.len()).sum()
    }

    /// Stack matrices with the same column count.
    pub fn concat_rows(parts: Vec<QuantMatrix>) -> Option<Self> {
        let cols = parts.first()?.cols;
        if parts.iter().any(|p| p.cols != cols) {
            return None;
        }
        Some(QuantMatrix {
            cols,
            parts: parts.into_iter().flat_map(|p| p.parts).collect(),
        })
    }

    /// Reorder rows: row `i` of the result is row `from[i]` (within a single-part matrix).
    pub fn permute_rows(&mut self, from: &[usize]) {
        assert_eq!(self.parts.len(), 1, "permute a matrix before concatenating it");
        let p = &mut self.parts[0];
        let src = p.data.clone();
        for (i, &f) in from.iter().enumerate() {
            p.data[i * p.row_bytes..(i + 1) * p.row_bytes].copy_from_slice(&src[f * p.row_bytes..(f + 1) * p.row_bytes]);
        }
    }

    /// `out[r] = sum_c W[r, c] x[c]`, rows split across threads.
    pub fn gemv(&self, x: &[f32], out: &mut [f32]) {
        assert!(
            x.len() >= self.cols && out.len() >= self.rows(),
            "gemv: buffers smaller than the matrix"
        );
        let sums32: Vec<f32> = x[..self.cols].chunks_exact(32).map(|c| c.iter().sum()).collect();
        let mut start = 0;
        for p in &self.parts {
            let out = &mut out[start..start + p.rows];
            start += p.rows;
            // A few tasks per thread: enough to balance, few enough to keep overhead small.
            let per_task = p.rows.div_ceil(4 * rayon::current_num_threads()).max(8);
            let chunks: Vec<std::sync::Mutex<&mut [f32]>> = out.chunks_mut(per_task).map(std::sync::Mutex::new).collect();
            crate::team::for_each(chunks.len(), |t| {
                let mut chunk = chunks[t].lock().unwrap_or_else(|e| e.into_inner());
                for (i, y) in chunk.iter_mut().enumerate() {
                    let r = t * per_task + i;
                    let row = &p.data[r * p.row_bytes..(r + 1) * p.row_bytes];
                    *y = dot_row(p.dtype, row, &x[..self.cols], &sums32);
                }
            });
        }
    }
}

#[inline]
fn f16(b: &[u8]) -> f32 {
    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// `acc += scale * x * q` over 16 lanes; `q` as small integers.
#[inline(always)]
fn fma16(acc: &mut [f32; 16], scale: f32, x: &[f32], q: &[i32; 16]) {
    for t in 0..16 {
        acc[t] += scale * (x[t] * q[t] as f32);
    }
}

#[inline(always)]
fn low_nibbles(qs: &[u8]) -> [i32; 16] {
    std::array::from_fn(|t| (qs[t] & 15) as i32)
}

#[inline(always)]
fn high_nibbles(qs: &[u8]) -> [i32; 16] {
    std::array::from_fn(|t| (qs[t] >> 4) as i32)
}

/// Bit `shift + t` of `bits`, moved to bit 4, for lane t.
#[inline(always)]
fn fifth_bits(bits: u32, shift: u32) -> [i32; 16] {
    std::array::from_fn(|t| (((bits >> (shift + t as u32)) & 1) << 4) as i32)
}

#[inline(always)]
fn add(a: [i32; 16], b: [i32; 16]) -> [i32; 16] {
    std::array::from_fn(|t| a[t] + b[t])
}

/// One row's dot product with `x`; `sums32[b]` is the sum of `x` over 32-value block `b`.
fn dot_row(dtype: GgmlType, row: &[u8], x: &[f32], sums32: &[f32]) -> f32 {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f", target_feature = "f16c"))]
    if let Some(v) = avx512::dot_row(dtype, row, x, sums32) {
        return v;
    }
    portable_dot_row(dtype, row, x, sums32)
}

/// The same products in plain Rust, for every supported type and every CPU.
fn portable_dot_row(dtype: GgmlType, row: &[u8], x: &[f32], sums32: &[f32]) -> f32 {
    // One monomorphised loop per type: the type is not tested per block.
    match dtype {
        GgmlType::Q8_0 => dot_row_of::<Q8_0>(row, x, sums32),
        GgmlType::Q4_0 => dot_row_of::<Q4_0>(row, x, sums32),
        GgmlType::Q4_1 => dot_row_of::<Q4_1>(row, x, sums32),
        GgmlType::Q5_0 => dot_row_of::<Q5_0>(row, x, sums32),
        GgmlType::Q5_1 => dot_row_of::<Q5_1>(row, x, sums32),
        GgmlType::Q4K => dot_row_of::<Q4K>(row, x, sums32),
        GgmlType::Q5K => dot_row_of::<Q5K>(row, x, sums32),
        GgmlType::Q6K => dot_row_of::<Q6K>(row, x, sums32),
        other => unreachable!("no kernel for {other:?}; `supported` gates QuantMatrix::new"),
    }
}

const Q8_0: u8 = 0;
const Q4_0: u8 = 1;
const Q4_1: u8 = 2;
const Q5_0: u8 = 3;
const Q5_1: u8 = 4;
const Q4K: u8 = 5;
const Q5K: u8 = 6;
const Q6K: u8 = 7;

/// Products accumulate in two sets of 16 lanes across the whole row (two, so consecutive
/// blocks do not wait on each other); offsets (`m sum x`) in a scalar.
#[inline(always)]
fn dot_row_of<const K: u8>(row: &[u8], x: &[f32], sums32: &[f32]) -> f32 {
    let mut acc = [[0.0f32; 16]; 2];
    let mut offset = 0.0f32;
    let bb = match K {
        Q8_0 => 34,
        Q4_0 => 18,
        Q4_1 => 20,
        Q5_0 => 22,
        Q5_1 => 24,
        Q4K => 144,
        Q5K => 176,
        _ => 210,
    };
    for (b, blk) in row.chunks_exact(bb).enumerate() {
        match K {
            Q8_0 => {
                let (d, xb) = (f16(blk), &x[b * 32..b * 32 + 32]);
                let qs = &blk[2..34];
                fma16(&mut acc[0], d, &xb[..16], &std::array::from_fn(|t| qs[t] as i8 as i32));
                fma16(&mut acc[1], d, &xb[16..], &std::array::from_fn(|t| qs[16 + t] as i8 as i32));
            }
            Q4_0 | Q4_1 => {
                let (d, xb) = (f16(blk), &x[b * 32..b * 32 + 32]);
                let qs = if K == Q4_0 { &blk[2..18] } else { &blk[4..20] };
                fma16(&mut acc[0], d, &xb[..16], &low_nibbles(qs));
                fma16(&mut acc[1], d, &xb[16..], &high_nibbles(qs));
                offset += if K == Q4_0 { -8.0 * d } else { f16(&blk[2..]) } * sums32[b];
            }
            Q5_0 | Q5_1 => {
                let (d, xb) = (f16(blk), &x[b * 32..b * 32 + 32]);
                let at = if K == Q5_0 { 2 } else { 4 };
                let qh = u32::from_le_bytes([blk[at], blk[at + 1], blk[at + 2], blk[at + 3]]);
                let qs = &blk[at + 4..at + 20];
                fma16(&mut acc[0], d, &xb[..16], &add(low_nibbles(qs), fifth_bits(qh, 0)));
                fma16(&mut acc[1], d, &xb[16..], &add(high_nibbles(qs), fifth_bits(qh, 16)));
                offset += if K == Q5_0 { -16.0 * d } else { f16(&blk[2..]) } * sums32[b];
            }
            Q4K | Q5K => {
                let (d, dmin) = (f16(blk), f16(&blk[2..]));
                let scales = &blk[4..16];
                let (qh, qs): (&[u8], &[u8]) = if K == Q5K {
                    (&blk[16..48], &blk[48..176])
                } else {
                    (&[], &blk[16..144])
                };
                for sub in 0..8 {
                    // Sub-blocks pair up on 32 bytes: low nibbles, then high nibbles.
                    let q = &qs[(sub / 2) * 32..(sub / 2) * 32 + 32];
                    let (sc, m) = scale_min_k4(sub, scales);
                    let xs = &x[b * 256 + sub * 32..b * 256 + sub * 32 + 32];
                    let scale = d * sc as f32;
                    for h in 0..2 {
                        let bytes = &q[16 * h..16 * h + 16];
                        let mut vals = if sub % 2 == 0 { low_nibbles(bytes) } else { high_nibbles(bytes) };
                        if K == Q5K {
                            let hb = &qh[16 * h..16 * h + 16];
                            vals = add(vals, std::array::from_fn(|t| (((hb[t] >> sub) & 1) as i32) << 4));
                        }
                        fma16(&mut acc[h], scale, &xs[16 * h..16 * h + 16], &vals);
                    }
                    offset -= dmin * m as f32 * sums32[b * 8 + sub];
                }
            }
            _ => {
                let (ql, qh, sc) = (&blk[..128], &blk[128..192], &blk[192..208]);
                let d = f16(&blk[208..]);
                for n in 0..2 {
                    let (ql, qh, sc) = (&ql[64 * n..], &qh[32 * n..], &sc[8 * n..]);
                    let base = b * 256 + 128 * n;
                    // Four runs of 32 values, each in two halves of 16 with their own scale.
                    for run in 0..4 {
                        for half in 0..2 {
                            let l0 = 16 * half;
                            let vals: [i32; 16] = std::array::from_fn(|t| {
                                let l = l0 + t;
                                let low = match run {
                                    0 => ql[l] & 15,
                                    1 => ql[l + 32] & 15,
                                    2 => ql[l] >> 4,
                                    _ => ql[l + 32] >> 4,
                                };
                                ((low | (((qh[l] >> (2 * run)) & 3) << 4)) as i32) - 32
                            });
                            let x0 = base + 32 * run + l0;
                            fma16(&mut acc[half], d * sc[half + 2 * run] as i8 as f32, &x[x0..x0 + 16], &vals);
                        }
                    }
                }
            }
        }
    }
    acc[0].iter().zip(&acc[1]).map(|(a, b)| a + b).sum::<f32>() + offset
}

/// AVX-512 kernels for the types of the models headhunt runs most (Q4_1, Q8_0, Q5_0, Q4_K,
/// Q6_K): the same arithmetic as the portable loops, lane for lane.
#[cfg(all(target_arch = "x86_64", target_feature = "avx512f", target_feature = "f16c"))]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{f16, scale_min_k4};
    use crate::gguf::GgmlType;

    pub fn dot_row(dtype: GgmlType, row: &[u8], x: &[f32], sums32: &[f32]) -> Option<f32> {
        let n = x.len();
        let (block, bb) = dtype.block_layout();
        // The loops below index exactly `row` and `x`; check their sizes once.
        if row.len() != n / block * bb || sums32.len() != n / 32 {
            return None;
        }
        // SAFETY: avx512f and f16c are enabled for this build (the cfg above); every load
        // stays within `row` (n / block blocks of bb bytes) and `x` (n values), as checked.
        unsafe {
            Some(match dtype {
                GgmlType::Q4_1 => q4_1(row, x, sums32),
                GgmlType::Q8_0 => q8_0(row, x),
                GgmlType::Q5_0 => q5_0(row, x, sums32),
                GgmlType::Q4K => q4k(row, x, sums32),
                GgmlType::Q6K => q6k(row, x),
                _ => return None,
            })
        }
    }

    #[inline(always)]
    unsafe fn widen(bytes: __m128i) -> __m512 {
        _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes))
    }

    /// acc += d * (q * x)
    #[inline(always)]
    unsafe fn fma(acc: __m512, d: f32, q: __m512, x: *const f32) -> __m512 {
        _mm512_fmadd_ps(_mm512_mul_ps(_mm512_loadu_ps(x), q), _mm512_set1_ps(d), acc)
    }

    unsafe fn q4_1(row: &[u8], x: &[f32], sums: &[f32]) -> f32 {
        let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let nib = _mm_set1_epi8(15);
        let mut off = 0.0f32;
        for (b, blk) in row.chunks_exact(20).enumerate() {
            let qs = _mm_loadu_si128(blk.as_ptr().add(4) as *const __m128i);
            let d = f16(blk);
            let xp = x.as_ptr().add(b * 32);
            a0 = fma(a0, d, widen(_mm_and_si128(qs, nib)), xp);
            a1 = fma(a1, d, widen(_mm_and_si128(_mm_srli_epi16(qs, 4), nib)), xp.add(16));
            off += f16(&blk[2..]) * sums[b];
        }
        _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) + off
    }

    unsafe fn q8_0(row: &[u8], x: &[f32]) -> f32 {
        let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        for (b, blk) in row.chunks_exact(34).enumerate() {
            let d = f16(blk);
            let xp = x.as_ptr().add(b * 32);
            let lo = _mm_loadu_si128(blk.as_ptr().add(2) as *const __m128i);
            let hi = _mm_loadu_si128(blk.as_ptr().add(18) as *const __m128i);
            a0 = fma(a0, d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo)), xp);
            a1 = fma(a1, d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi)), xp.add(16));
        }
        _mm512_reduce_add_ps(_mm512_add_ps(a0, a1))
    }

    unsafe fn q5_0(row: &[u8], x: &[f32], sums: &[f32]) -> f32 {
        let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let nib = _mm_set1_epi8(15);
        let sixteen = _mm512_set1_epi32(16);
        let mut off = 0.0f32;
        for (b, blk) in row.chunks_exact(22).enumerate() {
            let d = f16(blk);
            let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
            let qs = _mm_loadu_si128(blk.as_ptr().add(6) as *const __m128i);
            let lo = _mm512_cvtepu8_epi32(_mm_and_si128(qs, nib));
            let hi = _mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(qs, 4), nib));
            // Bit j of qh is the fifth bit of value j.
            let lo = _mm512_mask_add_epi32(lo, qh as u16, lo, sixteen);
            let hi = _mm512_mask_add_epi32(hi, (qh >> 16) as u16, hi, sixteen);
            let xp = x.as_ptr().add(b * 32);
            a0 = fma(a0, d, _mm512_cvtepi32_ps(lo), xp);
            a1 = fma(a1, d, _mm512_cvtepi32_ps(hi), xp.add(16));
            off += -16.0 * d * sums[b];
        }
        _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) + off
    }

    unsafe fn q4k(row: &[u8], x: &[f32], sums: &[f32]) -> f32 {
        let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let nib = _mm_set1_epi8(15);
        let mut off = 0.0f32;
        for (b, blk) in row.chunks_exact(144).enumerate() {
            let (d, dmin) = (f16(blk), f16(&blk[2..]));
            let scales = &blk[4..16];
            for sub in 0..8 {
                let (sc, m) = scale_min_k4(sub, scales);
                let q = blk.as_ptr().add(16 + (sub / 2) * 32);
                let xp = x.as_ptr().add(b * 256 + sub * 32);
                let scale = d * sc as f32;
                let (q0, q1) = (_mm_loadu_si128(q as *const __m128i), _mm_loadu_si128(q.add(16) as *const __m128i));
                let (v0, v1) = if sub % 2 == 0 {
                    (_mm_and_si128(q0, nib), _mm_and_si128(q1, nib))
                } else {
                    (_mm_and_si128(_mm_srli_epi16(q0, 4), nib), _mm_and_si128(_mm_srli_epi16(q1, 4), nib))
                };
                a0 = fma(a0, scale, widen(v0), xp);
                a1 = fma(a1, scale, widen(v1), xp.add(16));
                off -= dmin * m as f32 * sums[b * 8 + sub];
            }
        }
        _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) + off
    }

    unsafe fn q6k(row: &[u8], x: &[f32]) -> f32 {
        let mut acc = [_mm512_setzero_ps(), _mm512_setzero_ps()];
        let nib = _mm_set1_epi8(15);
        let three = _mm_set1_epi8(3);
        let bias = _mm512_set1_epi32(32);
        for (b, blk) in row.chunks_exact(210).enumerate() {
            let d = f16(&blk[208..]);
            for n in 0..2 {
                let ql = blk.as_ptr().add(64 * n);
                let qh = blk.as_ptr().add(128 + 32 * n);
                let sc = &blk[192 + 8 * n..];
                for run in 0..4 {
                    for half in 0..2 {
                        let l0 = 16 * half;
                        let low_src = _mm_loadu_si128(ql.add(l0 + if run % 2 == 1 { 32 } else { 0 }) as *const __m128i);
                        let low = if run < 2 {
                            _mm_and_si128(low_src, nib)
                        } else {
                            _mm_and_si128(_mm_srli_epi16(low_src, 4), nib)
                        };
                        let hsrc = _mm_loadu_si128(qh.add(l0) as *const __m128i);
                        let high = _mm_and_si128(_mm_srl_epi16(hsrc, _mm_cvtsi32_si128(2 * run as i32)), three);
                        let q = _mm_or_si128(low, _mm_slli_epi16(high, 4));
                        let q = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_cvtepu8_epi32(q), bias));
                        let xp = x.as_ptr().add(b * 256 + 128 * n + 32 * run + l0);
                        acc[half] = fma(acc[half], d * sc[half + 2 * run] as i8 as f32, q, xp);
                    }
                }
            }
        }
        _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]))
    }
}

/// The 6-bit scale and min of sub-block `j` in a K-quant's packed scales.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::dequantize;

    /// Random bytes make valid blocks once the f16 scales are tamed.
    fn random_blocks(dtype: GgmlType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
        let (block, bb) = dtype.block_layout();
        let mut state = seed;
        let mut data: Vec<u8> = (0..rows * cols / block * bb)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (state >> 33) as u8
            })
            .collect();
        let scale = half::f16::from_f32(0.01).to_le_bytes();
        let scale_at: &[usize] = match dtype {
            GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
            GgmlType::Q6K => &[208],
            _ => &[0],
        };
        for blk in data.chunks_exact_mut(bb) {
            for &at in scale_at {
                blk[at..at + 2].copy_from_slice(&scale);
            }
        }
        data
    }

    #[test]
    fn fast_and_portable_kernels_agree() {
        let (rows, cols) = (5, 512);
        let x: Vec<f32> = (0..cols).map(|i| ((i * 53 % 97) as f32 - 48.0) / 30.0).collect();
        let sums: Vec<f32> = x.chunks_exact(32).map(|c| c.iter().sum()).collect();
        for dtype in [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q5_0, GgmlType::Q4K, GgmlType::Q6K] {
            let data = random_blocks(dtype, rows, cols, 11);
            let row_bytes = data.len() / rows;
            for r in 0..rows {
                let row = &data[r * row_bytes..(r + 1) * row_bytes];
                let (a, b) = (dot_row(dtype, row, &x, &sums), portable_dot_row(dtype, row, &x, &sums));
                assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{dtype:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn gemv_matches_dequantised_matmul() {
        let (rows, cols) = (37, 512);
        let x: Vec<f32> = (0..cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
        for dtype in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
            GgmlType::Q4K,
            GgmlType::Q5K,
            GgmlType::Q6K,
        ] {
            let data = random_blocks(dtype, rows, cols, 7);
            let w = dequantize(dtype, &data, &[rows, cols]).unwrap();
            let m = QuantMatrix::new(dtype, rows, cols, data).unwrap();
            let mut out = vec![0.0; rows];
            m.gemv(&x, &mut out);
            for r in 0..rows {
                let want: f64 = (0..cols).map(|c| w[r * cols + c] as f64 * x[c] as f64).sum();
                let scale: f64 = (0..cols)
                    .map(|c| (w[r * cols + c] as f64 * x[c] as f64).abs())
                    .sum::<f64>()
                    .max(1e-6);
                assert!(
                    ((out[r] as f64 - want) / scale).abs() < 1e-5,
                    "{dtype:?} row {r}: {} vs {want}",
                    out[r]
                );
            }
        }
    }
}

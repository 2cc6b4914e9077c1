//! The row kernels with AVX2 and AVX-512.
//!
//! Each quant type unpacks its blocks with AVX2 integer instructions into registers of 32 small
//! integers, in the common form of [`super::Format`] (a scale and an offset per 16 values; one
//! per 32 for the small blocks). Generic loops per instruction set then do the arithmetic:
//!
//! * dequantisation (prefill's tiles) turns 8 or 16 integers at a time into f32 weights,
//!   `scale * q + offset` in one FMA;
//! * the dot product (decoding) multiplies those weights into accumulators for the small blocks
//!   and the dense types, and reads super-blocks (Q2_K-Q6_K) as `scale * sum(q x) + offset *
//!   sum(x)` against a reordered `x` (see `run_dot8`), measured faster for each kind.
//!
//! The AVX-512 loops reuse the AVX2 unpacking: it is not the bottleneck, and one unpacking per
//! type is half the code to get wrong.

use std::arch::x86_64::*;

use super::{q3k_scales, DotQ8, QVector, RowKernels, Tile, TileProduct, Tokens, Vector, TILE_ROWS};
use crate::cpu::Isa;
use crate::gguf::GgmlType;

/// The kernels for `dtype` with AVX-512 loops (`wide`) or AVX2 loops. Only called when the CPU
/// runs the chosen level (see `row_kernels`), which is what makes the wrappers below sound.
pub(super) fn kernels(dtype: GgmlType, wide: bool) -> RowKernels {
    fn of<U: Unpack>(wide: bool) -> RowKernels {
        let dot_q8 = (U::KIND != Kind::Dense).then(|| int8_dot_for::<U>(wide));
        if wide {
            RowKernels {
                // SAFETY (all wrappers in this function): the CPU runs AVX-512 F/BW/VL, AVX2, FMA
                // and F16C, checked by the caller.
                dot: |row, x| unsafe { dot512::<U>(row, x) },
                dequantize: |row, out| unsafe { dequantize512::<U>(row, out) },
                dot_q8,
                tiles: None,
                tile_product: None,
            }
        } else {
            RowKernels {
                dot: |row, x| unsafe { dot256::<U>(row, x) },
                dequantize: |row, out| unsafe { dequantize256::<U>(row, out) },
                dot_q8,
                tiles: None,
                tile_product: None,
            }
        }
    }
    match dtype {
        GgmlType::F32 => of::<F32>(wide),
        GgmlType::F16 => of::<F16>(wide),
        GgmlType::BF16 => of::<Bf16>(wide),
        GgmlType::Q4_0 => of::<super::Q4_0>(wide),
        GgmlType::Q4_1 => of::<super::Q4_1>(wide),
        GgmlType::Q5_0 => of::<super::Q5_0>(wide),
        GgmlType::Q5_1 => of::<super::Q5_1>(wide),
        GgmlType::Q8_0 => of::<super::Q8_0>(wide),
        GgmlType::Q2K => of::<super::Q2K>(wide),
        GgmlType::Q3K => of::<super::Q3K>(wide),
        GgmlType::Q4K => of::<super::Q4K>(wide),
        GgmlType::Q5K => of::<super::Q5K>(wide),
        GgmlType::Q6K => of::<super::Q6K>(wide),
        GgmlType::Mxfp4 => of::<super::Mxfp4>(wide),
        other => unreachable!("{other:?} is not in SUPPORTED"),
    }
}

/// How a storage type's values come out of its bytes.
#[derive(PartialEq, Eq)]
enum Kind {
    /// F32, F16, BF16: converted in the loop (`dense8`, `dense16`, `dense1`).
    Dense,
    /// 32 values with one scale and offset: unpacked into registers (`unpack32`).
    Small,
    /// 256 values with a scale and offset per 16: unpacked into a buffer (`unpack`).
    Super,
}

/// How a storage type yields its weights. Each type implements the methods of its [`Kind`];
/// the loops call only those.
trait Unpack {
    const KIND: Kind;
    /// Values per block, bytes per block.
    const BLOCK: usize;
    const BYTES: usize;
    /// Small blocks start with their scale (an f16, or MXFP4's E8M0 byte: `scale8`/`scale16`);
    /// some have an f16 offset at this byte.
    const MIN_AT: Option<usize> = None;
    /// Whether the unpacked integers can be negative (those of the types without offsets).
    const SIGNED: bool = false;
    /// A small block at `b`: its 32 values as bytes, in two halves of 16.
    ///
    /// # Safety
    /// AVX2, FMA and F16C; `b` points at `BYTES` readable bytes.
    #[inline(always)]
    unsafe fn unpack32(_b: *const u8) -> [__m128i; 2] {
        unreachable!("not a small-block type")
    }
    /// A small block's scale in every lane of 8 (the f16 it starts with).
    ///
    /// # Safety
    /// AVX2 and F16C; `b` points at `BYTES` readable bytes.
    #[inline(always)]
    unsafe fn scale8(b: *const u8) -> __m256 {
        splat8(b)
    }
    /// The same in every lane of 16.
    ///
    /// # Safety
    /// AVX-512 F and the above.
    #[inline(always)]
    unsafe fn scale16(b: *const u8) -> __m512 {
        splat16(b)
    }
    /// Whether a super-block has offsets (`min`); those without skip them.
    const HAS_MIN: bool = true;
    /// A super-block's scales and offsets, one per 16 values, in registers.
    ///
    /// # Safety
    /// AVX2, FMA and F16C; `b` points at `BYTES` readable bytes.
    #[inline(always)]
    unsafe fn scales(_b: *const u8) -> Scales {
        unreachable!("not a super-block type")
    }
    /// A super-block's values in eight runs of 32 bytes, in order, each handed to `run` as it is
    /// unpacked (in registers: no buffer to store to and load back).
    ///
    /// # Safety
    /// As `scales`.
    #[inline(always)]
    unsafe fn runs(_b: *const u8, _run: impl FnMut(usize, __m256i)) {
        unreachable!("not a super-block type")
    }
    /// Dense types: 8 weights at `b`, value index `i`, as f32.
    ///
    /// # Safety
    /// AVX2, FMA and F16C; 8 values readable at `b` + `i` values.
    #[inline(always)]
    unsafe fn dense8(_b: *const u8, _i: usize) -> __m256 {
        unreachable!("not a dense type")
    }
    /// Dense types: one weight as f32 (for a row's last values when it is not a multiple of 16).
    ///
    /// # Safety
    /// The value is readable.
    #[inline(always)]
    unsafe fn dense1(_b: *const u8, _i: usize) -> f32 {
        unreachable!("not a dense type")
    }
    /// Dense types: 16 weights as f32.
    ///
    /// # Safety
    /// AVX-512 F and the above; 16 values readable.
    #[inline(always)]
    unsafe fn dense16(_b: *const u8, _i: usize) -> __m512 {
        unreachable!("not a dense type")
    }
}

struct F32;
struct F16;
struct Bf16;

impl Unpack for F32 {
    const BLOCK: usize = 16;
    const BYTES: usize = 64;
    const KIND: Kind = Kind::Dense;
    #[inline(always)]
    unsafe fn dense8(b: *const u8, i: usize) -> __m256 {
        _mm256_loadu_ps(b.cast::<f32>().add(i))
    }
    #[inline(always)]
    unsafe fn dense1(b: *const u8, i: usize) -> f32 {
        b.cast::<f32>().add(i).read_unaligned()
    }
    #[inline(always)]
    unsafe fn dense16(b: *const u8, i: usize) -> __m512 {
        _mm512_loadu_ps(b.cast::<f32>().add(i))
    }
}

impl Unpack for F16 {
    const BLOCK: usize = 16;
    const BYTES: usize = 32;
    const KIND: Kind = Kind::Dense;
    #[inline(always)]
    unsafe fn dense8(b: *const u8, i: usize) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(b.add(2 * i).cast()))
    }
    #[inline(always)]
    unsafe fn dense1(b: *const u8, i: usize) -> f32 {
        half(b.add(2 * i))
    }
    #[inline(always)]
    unsafe fn dense16(b: *const u8, i: usize) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(b.add(2 * i).cast()))
    }
}

impl Unpack for Bf16 {
    const BLOCK: usize = 16;
    const BYTES: usize = 32;
    const KIND: Kind = Kind::Dense;
    #[inline(always)]
    unsafe fn dense8(b: *const u8, i: usize) -> __m256 {
        let wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(b.add(2 * i).cast()));
        _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16))
    }
    #[inline(always)]
    unsafe fn dense1(b: *const u8, i: usize) -> f32 {
        f32::from_bits((b.add(2 * i).cast::<u16>().read_unaligned() as u32) << 16)
    }
    #[inline(always)]
    unsafe fn dense16(b: *const u8, i: usize) -> __m512 {
        let wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(b.add(2 * i).cast()));
        _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16))
    }
}

#[inline(always)]
unsafe fn half(b: *const u8) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(b.cast::<u16>().read_unaligned() as i32)))
}

/// 16 bytes of nibbles as 32 values: low nibbles first, then high nibbles.
#[inline(always)]
unsafe fn nibbles16(b: *const u8) -> [__m128i; 2] {
    let v = _mm_loadu_si128(b.cast());
    let m = _mm_set1_epi8(15);
    [_mm_and_si128(v, m), _mm_and_si128(_mm_srli_epi16(v, 4), m)]
}

/// Q5's fifth bits (32 of them, little-endian at `qh`) added to its nibbles as 16.
#[inline(always)]
unsafe fn with_fifth_bits([lo, hi]: [__m128i; 2], qh: *const u8) -> [__m128i; 2] {
    let high = fifth_bits(qh.cast::<u32>().read_unaligned());
    [
        _mm_or_si128(lo, _mm256_castsi256_si128(high)),
        _mm_or_si128(hi, _mm256_extracti128_si256::<1>(high)),
    ]
}

/// 0x10 in byte j where bit j of the 32-bit `bits` is set.
#[inline(always)]
unsafe fn fifth_bits(bits: u32) -> __m256i {
    // Byte j takes byte j / 8 of `bits`, then tests bit j % 8.
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_setr_epi64x(0, 0x0101_0101_0101_0101, 0x0202_0202_0202_0202, 0x0303_0303_0303_0303),
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// `(v >> shift) & mask` in each byte.
#[inline(always)]
unsafe fn bits(v: __m256i, shift: i32, mask: i8) -> __m256i {
    _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(shift)), _mm256_set1_epi8(mask))
}

impl Unpack for super::Q4_0 {
    const KIND: Kind = Kind::Small;
    const SIGNED: bool = true;
    const BLOCK: usize = 32;
    const BYTES: usize = 18;
    const MIN_AT: Option<usize> = None;
    #[inline(always)]
    unsafe fn unpack32(b: *const u8) -> [__m128i; 2] {
        let [lo, hi] = nibbles16(b.add(2));
        let eight = _mm_set1_epi8(8);
        [_mm_sub_epi8(lo, eight), _mm_sub_epi8(hi, eight)]
    }
}

/// MXFP4: 32 E2M1 values (low nibbles first) doubled to integers by a byte shuffle, under an
/// E8M0 scale halved to match.
impl Unpack for super::Mxfp4 {
    const KIND: Kind = Kind::Small;
    const SIGNED: bool = true;
    const BLOCK: usize = 32;
    const BYTES: usize = 17;
    const MIN_AT: Option<usize> = None;
    #[inline(always)]
    unsafe fn unpack32(b: *const u8) -> [__m128i; 2] {
        let table = _mm_loadu_si128(super::E2M1_DOUBLED.as_ptr().cast());
        nibbles16(b.add(1)).map(|n| _mm_shuffle_epi8(table, n))
    }
    #[inline(always)]
    unsafe fn scale8(b: *const u8) -> __m256 {
        _mm256_set1_ps(super::e8m0_half(*b))
    }
    #[inline(always)]
    unsafe fn scale16(b: *const u8) -> __m512 {
        _mm512_set1_ps(super::e8m0_half(*b))
    }
}

impl Unpack for super::Q4_1 {
    const KIND: Kind = Kind::Small;
    const BLOCK: usize = 32;
    const BYTES: usize = 20;
    const MIN_AT: Option<usize> = Some(2);
    #[inline(always)]
    unsafe fn unpack32(b: *const u8) -> [__m128i; 2] {
        nibbles16(b.add(4))
    }
}

impl Unpack for super::Q5_0 {
    const KIND: Kind = Kind::Small;
    const SIGNED: bool = true;
    const BLOCK: usize = 32;
    const BYTES: usize = 22;
    const MIN_AT: Option<usize> = None;
    #[inline(always)]
    unsafe fn unpack32(b: *const u8) -> [__m128i; 2] {
        let [lo, hi] = with_fifth_bits(nibbles16(b.add(6)), b.add(2));
        let sixteen = _mm_set1_epi8(16);
        [_mm_sub_epi8(lo, sixteen), _mm_sub_epi8(hi, sixteen)]
    }
}

impl Unpack for super::Q5_1 {
    const KIND: Kind = Kind::Small;
    const BLOCK: usize = 32;
    const BYTES: usize = 24;
    const MIN_AT: Option<usize> = Some(2);
    #[inline(always)]
    unsafe fn unpack32(b: *const u8) -> [__m128i; 2] {
        with_fifth_bits(nibbles16(b.add(8)), b.add(4))
    }
}

impl Unpack for super::Q8_0 {
    const KIND: Kind = Kind::Small;
    const SIGNED: bool = true;
    const BLOCK: usize = 32;
    const BYTES: usize = 34;
    const MIN_AT: Option<usize> = None;
    #[inline(always)]
    unsafe fn unpack32(b: *const u8) -> [__m128i; 2] {
        [_mm_loadu_si128(b.add(2).cast()), _mm_loadu_si128(b.add(18).cast())]
    }
}

impl Unpack for super::Q2K {
    const KIND: Kind = Kind::Super;
    const BLOCK: usize = 256;
    const BYTES: usize = 84;
    #[inline(always)]
    unsafe fn scales(b: *const u8) -> Scales {
        let packed = _mm_loadu_si128(b.cast());
        let low = _mm_set1_epi8(15);
        Scales {
            scale: times(_mm_and_si128(packed, low), half(b.add(80))),
            min: times(_mm_and_si128(_mm_srli_epi16(packed, 4), low), -half(b.add(82))),
        }
    }
    #[inline(always)]
    unsafe fn runs(b: *const u8, mut run: impl FnMut(usize, __m256i)) {
        for n in 0..2 {
            let qs = _mm256_loadu_si256(b.add(16 + 32 * n).cast());
            for plane in 0..4 {
                run(4 * n + plane, bits(qs, 2 * plane as i32, 3));
            }
        }
    }
}

impl Unpack for super::Q3K {
    const KIND: Kind = Kind::Super;
    const HAS_MIN: bool = false;
    const SIGNED: bool = true;
    const BLOCK: usize = 256;
    const BYTES: usize = 110;
    #[inline(always)]
    unsafe fn scales(b: *const u8) -> Scales {
        let s = q3k_scales(std::slice::from_raw_parts(b.add(96), 12));
        Scales::without_min(times(_mm_loadu_si128(s.as_ptr().cast()), half(b.add(108))))
    }
    #[inline(always)]
    unsafe fn runs(b: *const u8, mut run: impl FnMut(usize, __m256i)) {
        let hmask = _mm256_loadu_si256(b.cast());
        let four = _mm256_set1_epi8(4);
        for n in 0..2 {
            let qs = _mm256_loadu_si256(b.add(32 + 32 * n).cast());
            for plane in 0..4 {
                let low = bits(qs, 2 * plane as i32, 3);
                let high = bits(hmask, (4 * n + plane) as i32, 1);
                // low + 4 * high - 4
                run(
                    4 * n + plane,
                    _mm256_sub_epi8(_mm256_add_epi8(low, _mm256_slli_epi16(high, 2)), four),
                );
            }
        }
    }
}

/// A super-block's scales and offsets, one per 16 values: values 0-7 in the first register.
#[derive(Clone, Copy)]
struct Scales {
    scale: [__m256; 2],
    min: [__m256; 2],
}

impl Scales {
    #[inline(always)]
    unsafe fn without_min(scale: [__m256; 2]) -> Self {
        Scales {
            scale,
            min: [_mm256_setzero_ps(); 2],
        }
    }
}

/// 16 signed bytes times `d`, as f32.
#[inline(always)]
unsafe fn times(bytes: __m128i, d: f32) -> [__m256; 2] {
    let d = _mm256_set1_ps(d);
    let lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
    let hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128::<8>(bytes)));
    [_mm256_mul_ps(lo, d), _mm256_mul_ps(hi, d)]
}

/// Q4_K and Q5_K's scales and offsets from the block at `b` (`d`, `dmin`, then 12 bytes packing
/// eight 6-bit scales and eight 6-bit mins, each for 32 values), unpacked four at a time in u32
/// arithmetic (the layout `super::scale_min_k4` reads one at a time).
#[inline(always)]
unsafe fn k4_scales(b: *const u8) -> Scales {
    let word = |i: usize| b.add(4 + 4 * i).cast::<u32>().read_unaligned();
    let (w0, w1, w2) = (word(0), word(1), word(2));
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    // Sub-blocks 0-3 keep their 6 bits in bytes 0-3 (scales) and 4-7 (mins); sub-blocks 4-7 take
    // a nibble from bytes 8-11 and their top two bits from bits 6-7 of bytes 0-3 (scales) or 4-7
    // (mins).
    let scales = _mm_set_epi32(0, 0, ((w2 & LOW4) | (((w0 >> 6) & LOW2) << 4)) as i32, (w0 & LOW6) as i32);
    let mins = _mm_set_epi32(0, 0, (((w2 >> 4) & LOW4) | (((w1 >> 6) & LOW2) << 4)) as i32, (w1 & LOW6) as i32);
    // Each covers two groups of 16.
    Scales {
        scale: times(_mm_unpacklo_epi8(scales, scales), half(b)),
        min: times(_mm_unpacklo_epi8(mins, mins), -half(b.add(2))),
    }
}

/// Q4_K and Q5_K's four runs of 32 nibble bytes, as eight runs of 32 values: low nibbles, then
/// high nibbles.
#[inline(always)]
unsafe fn k_nibbles(qs: *const u8, mut run: impl FnMut(usize, __m256i)) {
    for r in 0..4 {
        let v = _mm256_loadu_si256(qs.add(32 * r).cast());
        run(2 * r, bits(v, 0, 15));
        run(2 * r + 1, bits(v, 4, 15));
    }
}

impl Unpack for super::Q4K {
    const KIND: Kind = Kind::Super;
    const BLOCK: usize = 256;
    const BYTES: usize = 144;
    #[inline(always)]
    unsafe fn scales(b: *const u8) -> Scales {
        k4_scales(b)
    }
    #[inline(always)]
    unsafe fn runs(b: *const u8, run: impl FnMut(usize, __m256i)) {
        k_nibbles(b.add(16), run);
    }
}

impl Unpack for super::Q5K {
    const KIND: Kind = Kind::Super;
    const BLOCK: usize = 256;
    const BYTES: usize = 176;
    #[inline(always)]
    unsafe fn scales(b: *const u8) -> Scales {
        k4_scales(b)
    }
    #[inline(always)]
    unsafe fn runs(b: *const u8, mut run: impl FnMut(usize, __m256i)) {
        let qh = _mm256_loadu_si256(b.add(16).cast());
        // Run j (32 values) takes bit j of qh as its fifth bit.
        k_nibbles(b.add(48), |j, v| {
            run(j, _mm256_or_si256(v, _mm256_slli_epi16(bits(qh, j as i32, 1), 4)))
        });
    }
}

impl Unpack for super::Q6K {
    const KIND: Kind = Kind::Super;
    const HAS_MIN: bool = false;
    const SIGNED: bool = true;
    const BLOCK: usize = 256;
    const BYTES: usize = 210;
    #[inline(always)]
    unsafe fn scales(b: *const u8) -> Scales {
        Scales::without_min(times(_mm_loadu_si128(b.add(192).cast()), half(b.add(208))))
    }
    #[inline(always)]
    unsafe fn runs(b: *const u8, mut run: impl FnMut(usize, __m256i)) {
        let bias = _mm256_set1_epi8(32);
        for n in 0..2 {
            let l0 = _mm256_loadu_si256(b.add(64 * n).cast());
            let l1 = _mm256_loadu_si256(b.add(64 * n + 32).cast());
            let h = _mm256_loadu_si256(b.add(128 + 32 * n).cast());
            let runs = [bits(l0, 0, 15), bits(l1, 0, 15), bits(l0, 4, 15), bits(l1, 4, 15)];
            for (i, low) in runs.into_iter().enumerate() {
                let high = _mm256_slli_epi16(bits(h, 2 * i as i32, 3), 4);
                run(4 * n + i, _mm256_sub_epi8(_mm256_or_si256(low, high), bias));
            }
        }
    }
}

#[inline(always)]
unsafe fn hsum256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// The f16 at `b`, in every lane.
#[inline(always)]
unsafe fn splat8(b: *const u8) -> __m256 {
    _mm256_cvtph_ps(_mm_set1_epi16(b.cast::<i16>().read_unaligned()))
}

#[inline(always)]
unsafe fn splat16(b: *const u8) -> __m512 {
    _mm512_cvtph_ps(_mm256_set1_epi16(b.cast::<i16>().read_unaligned()))
}

/// The small block at `b`'s 32 weights as four vectors of 8: `scale * q + offset`.
#[inline(always)]
unsafe fn small8<U: Unpack>(b: *const u8) -> [__m256; 4] {
    let [lo, hi] = U::unpack32(b);
    let d = U::scale8(b);
    let m = U::MIN_AT.map_or(_mm256_setzero_ps(), |at| splat8(b.add(at)));
    [lo, _mm_srli_si128::<8>(lo), hi, _mm_srli_si128::<8>(hi)].map(|q| _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d, m))
}

/// The small block at `b`'s 32 weights as two vectors of 16.
#[inline(always)]
unsafe fn small16<U: Unpack>(b: *const u8) -> [__m512; 2] {
    let d = U::scale16(b);
    let m = U::MIN_AT.map_or(_mm512_setzero_ps(), |at| splat16(b.add(at)));
    U::unpack32(b).map(|q| _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), d, m))
}

/// Lane `g` of a pair of 8-lane registers, in every lane.
#[inline(always)]
unsafe fn lane8(v: &[__m256; 2], g: usize) -> __m256 {
    _mm256_permutevar8x32_ps(v[g / 8], _mm256_set1_epi32((g % 8) as i32))
}

/// 32 values of a super-block run (groups `2 j`, `2 j + 1`) as f32 weights: four vectors of 8.
#[inline(always)]
unsafe fn run8<U: Unpack>(v: __m256i, s: &Scales, j: usize) -> [__m256; 4] {
    let (lo, hi) = (_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let quarters = [lo, _mm_srli_si128::<8>(lo), hi, _mm_srli_si128::<8>(hi)];
    let (s0, s1) = (lane8(&s.scale, 2 * j), lane8(&s.scale, 2 * j + 1));
    let (m0, m1) = if U::HAS_MIN {
        (lane8(&s.min, 2 * j), lane8(&s.min, 2 * j + 1))
    } else {
        (_mm256_setzero_ps(), _mm256_setzero_ps())
    };
    std::array::from_fn(|i| {
        let (s, m) = if i < 2 { (s0, m0) } else { (s1, m1) };
        _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(quarters[i])), s, m)
    })
}

/// A super-block's scales and offsets as one 16-lane register each.
#[inline(always)]
unsafe fn wide(v: [__m256; 2]) -> __m512 {
    let lo = _mm512_castpd256_pd512(_mm256_castps_pd(v[0]));
    _mm512_castpd_ps(_mm512_insertf64x4::<1>(lo, _mm256_castps_pd(v[1])))
}

/// The same as two vectors of 16; `scale` and `min` as [`wide`] makes them.
#[inline(always)]
unsafe fn run16<U: Unpack>(v: __m256i, scale: __m512, min: __m512, j: usize) -> [__m512; 2] {
    let halves = [_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v)];
    std::array::from_fn(|h| {
        let g = _mm512_set1_epi32((2 * j + h) as i32);
        let q = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(halves[h]));
        let s = _mm512_permutexvar_ps(g, scale);
        if U::HAS_MIN {
            _mm512_fmadd_ps(q, s, _mm512_permutexvar_ps(g, min))
        } else {
            _mm512_mul_ps(q, s)
        }
    })
}

/// Calls `f(i, w)` for the row's weights `8 i .. 8 i + 8`, in order (AVX2).
#[inline(always)]
unsafe fn for_each8<U: Unpack>(row: &[u8], n: usize, mut f: impl FnMut(usize, __m256)) {
    let r = row.as_ptr();
    match U::KIND {
        Kind::Dense => (0..n / 8).for_each(|i| f(i, U::dense8(r, 8 * i))),
        Kind::Small => {
            // Blocks in pairs, so that `i % 8` is known to the compiler and the caller's
            // accumulators stay in registers.
            let blocks = n / 32;
            for b in (0..blocks).step_by(2) {
                for (j, w) in small8::<U>(r.add(b * U::BYTES)).into_iter().enumerate() {
                    f(4 * b + j, w);
                }
                if b + 1 < blocks {
                    for (j, w) in small8::<U>(r.add((b + 1) * U::BYTES)).into_iter().enumerate() {
                        f(4 * b + 4 + j, w);
                    }
                }
            }
        }
        Kind::Super => {
            for b in 0..n / 256 {
                let s = U::scales(r.add(b * U::BYTES));
                U::runs(r.add(b * U::BYTES), |j, v| {
                    for (k, w) in run8::<U>(v, &s, j).into_iter().enumerate() {
                        f(32 * b + 4 * j + k, w);
                    }
                });
            }
        }
    }
}

/// Calls `f(i, w)` for the row's weights `16 i .. 16 i + 16`, in order (AVX-512).
#[inline(always)]
unsafe fn for_each16<U: Unpack>(row: &[u8], n: usize, mut f: impl FnMut(usize, __m512)) {
    let r = row.as_ptr();
    match U::KIND {
        Kind::Dense => (0..n / 16).for_each(|i| f(i, U::dense16(r, 16 * i))),
        Kind::Small => {
            // Blocks in pairs, as in `for_each8`.
            let blocks = n / 32;
            for b in (0..blocks).step_by(2) {
                let [w0, w1] = small16::<U>(r.add(b * U::BYTES));
                f(2 * b, w0);
                f(2 * b + 1, w1);
                if b + 1 < blocks {
                    let [w2, w3] = small16::<U>(r.add((b + 1) * U::BYTES));
                    f(2 * b + 2, w2);
                    f(2 * b + 3, w3);
                }
            }
        }
        Kind::Super => {
            for b in 0..n / 256 {
                let s = U::scales(r.add(b * U::BYTES));
                let (scale, min) = (wide(s.scale), wide(s.min));
                U::runs(r.add(b * U::BYTES), |j, v| {
                    let [w0, w1] = run16::<U>(v, scale, min, j);
                    f(16 * b + 2 * j, w0);
                    f(16 * b + 2 * j + 1, w1);
                });
            }
        }
    }
}

/// Values past the last whole 8 or 16 (dense rows of other lengths only).
#[inline(always)]
unsafe fn tail<U: Unpack>(row: &[u8], from: usize, n: usize) -> impl Iterator<Item = (usize, f32)> + '_ {
    (from..n).map(move |i| (i, U::dense1(row.as_ptr(), i)))
}

/// A row's dot product as its weights times `x`: for the dense types, and the small blocks
/// (whose one scale and offset per 32 values cost less folded into the weights than factored out).
#[inline(always)]
unsafe fn weight_dot256<U: Unpack>(row: &[u8], x: &[f32]) -> f32 {
    debug_assert_eq!(row.len() * U::BLOCK, x.len() * U::BYTES);
    // Independent accumulators, enough to keep the FMA units busy through their latency.
    let mut acc = [_mm256_setzero_ps(); 4];
    for_each8::<U>(row, x.len(), |i, w| {
        acc[i % 4] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x.as_ptr().add(8 * i)), acc[i % 4]);
    });
    let rest: f32 = tail::<U>(row, x.len() / 8 * 8, x.len()).map(|(i, w)| w * x[i]).sum();
    let sum = acc.iter().fold(_mm256_setzero_ps(), |s, &a| _mm256_add_ps(s, a));
    hsum256(sum) + rest
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dequantize256<U: Unpack>(row: &[u8], out: &mut [f32]) {
    debug_assert_eq!(row.len() * U::BLOCK, out.len() * U::BYTES);
    let (n, o) = (out.len(), out.as_mut_ptr());
    for_each8::<U>(row, n, |i, w| _mm256_storeu_ps(o.add(8 * i), w));
    tail::<U>(row, n / 8 * 8, n).for_each(|(i, w)| *o.add(i) = w);
}

#[inline(always)]
unsafe fn weight_dot512<U: Unpack>(row: &[u8], x: &[f32]) -> f32 {
    debug_assert_eq!(row.len() * U::BLOCK, x.len() * U::BYTES);
    let mut acc = [_mm512_setzero_ps(); 4];
    for_each16::<U>(row, x.len(), |i, w| {
        acc[i % 4] = _mm512_fmadd_ps(w, _mm512_loadu_ps(x.as_ptr().add(16 * i)), acc[i % 4]);
    });
    let rest: f32 = tail::<U>(row, x.len() / 16 * 16, x.len()).map(|(i, w)| w * x[i]).sum();
    let sum = acc.iter().fold(_mm512_setzero_ps(), |s, &a| _mm512_add_ps(s, a));
    _mm512_reduce_add_ps(sum) + rest
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn dequantize512<U: Unpack>(row: &[u8], out: &mut [f32]) {
    debug_assert_eq!(row.len() * U::BLOCK, out.len() * U::BYTES);
    let (n, o) = (out.len(), out.as_mut_ptr());
    for_each16::<U>(row, n, |i, w| _mm512_storeu_ps(o.add(16 * i), w));
    tail::<U>(row, n / 16 * 16, n).for_each(|(i, w)| *o.add(i) = w);
}

/// Byte `k` of each 32-bit lane of a 32-byte run, sign-extended, as 8 f32 (the run's values
/// `k, k + 4, ..., k + 28`: the order `Vector::strided` keeps `x` in). Shifts, not shuffles:
/// AVX2's byte widening (`vpmovsxbd`) competes for the one shuffle port on many cores, and was
/// the bottleneck of these loops.
#[inline(always)]
unsafe fn lane_bytes8(v: __m256i) -> [__m256; 4] {
    [
        _mm256_srai_epi32::<24>(_mm256_slli_epi32::<24>(v)),
        _mm256_srai_epi32::<24>(_mm256_slli_epi32::<16>(v)),
        _mm256_srai_epi32::<24>(_mm256_slli_epi32::<8>(v)),
        _mm256_srai_epi32::<24>(v),
    ]
    .map(|q| _mm256_cvtepi32_ps(q))
}

/// `sum q x` over a run of 32 values, as 8 lane sums (lanes 0-3 hold the run's first 16 values,
/// lanes 4-7 the next 16); `xs` is the run's part of `Vector::strided`.
#[inline(always)]
unsafe fn run_dot8(v: __m256i, xs: *const f32) -> __m256 {
    let [q0, q1, q2, q3] = lane_bytes8(v);
    let a = _mm256_fmadd_ps(q1, _mm256_loadu_ps(xs.add(8)), _mm256_mul_ps(q0, _mm256_loadu_ps(xs)));
    let b = _mm256_fmadd_ps(q3, _mm256_loadu_ps(xs.add(24)), _mm256_mul_ps(q2, _mm256_loadu_ps(xs.add(16))));
    _mm256_add_ps(a, b)
}

/// The same in 16 lanes: the run in both halves of a register, bytes 0 and 1 (then 2 and 3) of
/// each lane; lanes 0-3 and 8-11 hold the first 16 values, 4-7 and 12-15 the next 16.
#[inline(always)]
unsafe fn run_dot16(v: __m256i, xs: *const f32) -> __m512 {
    let both = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(v), v);
    let shifts = |lo: i32, hi: i32| _mm512_inserti64x4::<1>(_mm512_set1_epi32(lo), _mm256_set1_epi32(hi));
    let q01 = _mm512_srai_epi32::<24>(_mm512_sllv_epi32(both, shifts(24, 16)));
    let q23 = _mm512_srai_epi32::<24>(_mm512_sllv_epi32(both, shifts(8, 0)));
    let a = _mm512_mul_ps(_mm512_cvtepi32_ps(q01), _mm512_loadu_ps(xs));
    _mm512_fmadd_ps(_mm512_cvtepi32_ps(q23), _mm512_loadu_ps(xs.add(16)), a)
}

/// Scales for [`run_dot8`]'s lanes: groups `2 j` (lanes 0-3) and `2 j + 1` (lanes 4-7).
#[inline(always)]
unsafe fn run_scales8(v: &[__m256; 2], j: usize) -> __m256 {
    let g = (2 * j % 8) as i32;
    _mm256_permutevar8x32_ps(v[j / 4], _mm256_setr_epi32(g, g, g, g, g + 1, g + 1, g + 1, g + 1))
}

/// Scales for [`run_dot16`]'s lanes, from the block's 16 scales in one register.
#[inline(always)]
unsafe fn run_scales16(v: __m512, j: usize) -> __m512 {
    let (a, b) = (2 * j as i32, 2 * j as i32 + 1);
    _mm512_permutexvar_ps(_mm512_setr_epi32(a, a, a, a, b, b, b, b, a, a, a, a, b, b, b, b), v)
}

/// `sum_c w[c] x[c]`. Super-blocks are read as `sum_groups scale * (sum q x) + sum_groups
/// offset * (sum x)`: per 16 weights one conversion and one multiply-add, the offsets from `x`'s
/// group sums; the other types as their weights times `x`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot256<U: Unpack>(row: &[u8], x: &Vector) -> f32 {
    if U::KIND != Kind::Super {
        return weight_dot256::<U>(row, &x.x);
    }
    let (r, xs, blocks) = (row.as_ptr(), x.strided.as_ptr(), row.len() / U::BYTES);
    debug_assert_eq!(blocks * U::BLOCK, x.strided.len());
    let mut acc = [_mm256_setzero_ps(); 2];
    let mut offsets = _mm256_setzero_ps();
    for b in 0..blocks {
        let blk = r.add(b * U::BYTES);
        let s = U::scales(blk);
        U::runs(blk, |j, v| {
            let t = run_dot8(v, xs.add(256 * b + 32 * j));
            acc[j % 2] = _mm256_fmadd_ps(t, run_scales8(&s.scale, j), acc[j % 2]);
        });
        if U::HAS_MIN {
            let sums = x.sums16.as_ptr().add(16 * b);
            offsets = _mm256_fmadd_ps(s.min[0], _mm256_loadu_ps(sums), offsets);
            offsets = _mm256_fmadd_ps(s.min[1], _mm256_loadu_ps(sums.add(8)), offsets);
        }
    }
    hsum256(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), offsets))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn dot512<U: Unpack>(row: &[u8], x: &Vector) -> f32 {
    if U::KIND != Kind::Super {
        return weight_dot512::<U>(row, &x.x);
    }
    let (r, xs, blocks) = (row.as_ptr(), x.strided.as_ptr(), row.len() / U::BYTES);
    debug_assert_eq!(blocks * U::BLOCK, x.strided.len());
    let mut acc = [_mm512_setzero_ps(); 2];
    let mut offsets = _mm512_setzero_ps();
    for b in 0..blocks {
        let blk = r.add(b * U::BYTES);
        let s = U::scales(blk);
        let scale = wide(s.scale);
        U::runs(blk, |j, v| {
            let t = run_dot16(v, xs.add(256 * b + 32 * j));
            acc[j % 2] = _mm512_fmadd_ps(t, run_scales16(scale, j), acc[j % 2]);
        });
        if U::HAS_MIN {
            offsets = _mm512_fmadd_ps(wide(s.min), _mm512_loadu_ps(x.sums16.as_ptr().add(16 * b)), offsets);
        }
    }
    _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), offsets))
}

/// Every fast dot product of `dtype` that this CPU runs at level `wide` (for the tests).
#[cfg(test)]
pub(super) fn int8_variants(dtype: GgmlType, wide: bool) -> Vec<(&'static str, DotQ8)> {
    match dtype {
        GgmlType::Q4_0 => int8_dots::<super::Q4_0>(wide),
        GgmlType::Q4_1 => int8_dots::<super::Q4_1>(wide),
        GgmlType::Q5_0 => int8_dots::<super::Q5_0>(wide),
        GgmlType::Q5_1 => int8_dots::<super::Q5_1>(wide),
        GgmlType::Q8_0 => int8_dots::<super::Q8_0>(wide),
        GgmlType::Q2K => int8_dots::<super::Q2K>(wide),
        GgmlType::Q3K => int8_dots::<super::Q3K>(wide),
        GgmlType::Q4K => int8_dots::<super::Q4K>(wide),
        GgmlType::Q5K => int8_dots::<super::Q5K>(wide),
        GgmlType::Q6K => int8_dots::<super::Q6K>(wide),
        _ => Vec::new(),
    }
}

/// The fast dot products of a quant type that this CPU runs at a level, by name: integer
/// products with AVX2 (`vpmaddubsw`), and with VNNI (`vpdpbusd`) where the CPU has it (AVX-512
/// VNNI at the AVX-512 level, AVX-VNNI at the AVX2 level).
fn int8_dots<U: Unpack>(wide: bool) -> Vec<(&'static str, DotQ8)> {
    // SAFETY (all wrappers): the caller runs at a level whose features the CPU has (AVX2, FMA,
    // F16C at least); the VNNI variants are listed only when the CPU reports VNNI.
    let mut dots: Vec<(&'static str, DotQ8)> = vec![("avx2", |row, x| unsafe { int8_dot_avx2::<U>(row, x) })];
    if wide && is_x86_feature_detected!("avx512vnni") {
        dots.push(("avx512vnni", |row, x| unsafe { int8_dot_vnni512::<U>(row, x) }));
    } else if !wide && is_x86_feature_detected!("avxvnni") {
        dots.push(("avxvnni", |row, x| unsafe { int8_dot_avxvnni::<U>(row, x) }));
    }
    dots
}

/// The fast dot product a model uses: VNNI where the level has it, except that AVX-VNNI serves
/// only CPUs whose best level is AVX2 (Intel laptops since Alder Lake): a cap to AVX2 on an
/// AVX-512 CPU (`HEADHUNT_SIMD=avx2`) runs plain AVX2, as the many AVX2 CPUs without VNNI do.
fn int8_dot_for<U: Unpack>(wide: bool) -> DotQ8 {
    let dots = int8_dots::<U>(wide);
    let native = wide || crate::cpu::Isa::detected() == crate::cpu::Isa::Avx2;
    if native {
        dots[dots.len() - 1].1
    } else {
        dots[0].1
    }
}

/// The integer part of the fast products: 32 unsigned weight bytes times 32 signed vector bytes,
/// summed four products at a time into 8 int32 lanes (lane `k`: bytes `4 k .. 4 k + 4`).
trait Madd {
    /// # Safety
    /// The implementation's instruction set.
    unsafe fn madd(w: __m256i, x: __m256i) -> __m256i;
    /// `acc + madd(w, x)`.
    ///
    /// # Safety
    /// As `madd`.
    #[inline(always)]
    unsafe fn madd_add(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
        _mm256_add_epi32(acc, Self::madd(w, x))
    }
    /// `acc + madd(w0, x0) + madd(w1, x1)`, for weights of at most six bits.
    ///
    /// # Safety
    /// As `madd`.
    #[inline(always)]
    unsafe fn madd2_add(acc: __m256i, w0: __m256i, x0: __m256i, w1: __m256i, x1: __m256i) -> __m256i {
        Self::madd_add(Self::madd_add(acc, w0, x0), w1, x1)
    }
}

/// AVX2: byte pairs into saturating i16 (at most 2 x 128 x 127, so never saturated), then pairs
/// of those into i32.
struct Maddubs;
/// `vpdpbusd`, the same sums in one instruction (AVX-512 VNNI with VL, or AVX-VNNI).
struct Vnni512;
struct AvxVnni;

impl Madd for Maddubs {
    #[inline(always)]
    unsafe fn madd(w: __m256i, x: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1))
    }
    /// Both byte-pair sums added in i16 before widening: with six-bit weights each is at most
    /// 2 x 63 x 127 = 16002, so two stay below 32767.
    #[inline(always)]
    unsafe fn madd2_add(acc: __m256i, w0: __m256i, x0: __m256i, w1: __m256i, x1: __m256i) -> __m256i {
        let pairs = _mm256_add_epi16(_mm256_maddubs_epi16(w0, x0), _mm256_maddubs_epi16(w1, x1));
        _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }
}

impl Madd for Vnni512 {
    #[inline(always)]
    unsafe fn madd(w: __m256i, x: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, x)
    }
}

impl Madd for AvxVnni {
    #[inline(always)]
    unsafe fn madd(w: __m256i, x: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), w, x)
    }
    #[inline(always)]
    unsafe fn madd_add(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(acc, w, x)
    }
}

/// `sum w x` per 4 bytes for weights of either sign: the sign moves onto `x` (`|w| * sign(w) x`).
#[inline(always)]
unsafe fn int_sums<U: Unpack, M: Madd>(w: __m256i, x: __m256i) -> __m256i {
    if U::SIGNED {
        M::madd(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w))
    } else {
        M::madd(w, x)
    }
}

/// The fast dot product of a quantised row with a [`QVector`]: per run of 32 values one integer
/// product into 8 lanes, converted once and scaled by the groups' scales times the vector
/// block's; offsets times the vector's exact group sums, as in [`dot256`].
#[inline(always)]
unsafe fn int8_dot<U: Unpack, M: Madd>(row: &[u8], x: &QVector) -> f32 {
    let (r, xq, xd, blocks) = (row.as_ptr(), x.q.as_ptr(), x.d.as_ptr(), row.len() / U::BYTES);
    debug_assert_eq!(blocks * U::BLOCK, x.q.len());
    // Four accumulators: the loops issue a multiply-add every few cycles, faster than its latency.
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut offsets = [_mm_setzero_ps(); 2];
    match U::KIND {
        Kind::Super => {
            for b in 0..blocks {
                let blk = r.add(b * U::BYTES);
                let s = U::scales(blk);
                // The vector's scales for the block's 8 runs, one per pair of groups.
                let d = _mm256_loadu_ps(xd.add(8 * b));
                let pairs = |a: i32| _mm256_setr_epi32(a, a, a + 1, a + 1, a + 2, a + 2, a + 3, a + 3);
                let sd = [
                    _mm256_mul_ps(s.scale[0], _mm256_permutevar8x32_ps(d, pairs(0))),
                    _mm256_mul_ps(s.scale[1], _mm256_permutevar8x32_ps(d, pairs(4))),
                ];
                U::runs(blk, |j, v| {
                    let t = int_sums::<U, M>(v, _mm256_loadu_si256(xq.add(256 * b + 32 * j).cast()));
                    acc[j % 4] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), run_scales8(&sd, j), acc[j % 4]);
                });
                if U::HAS_MIN {
                    let sums = x.sums16.as_ptr().add(16 * b);
                    acc[0] = _mm256_fmadd_ps(s.min[0], _mm256_loadu_ps(sums), acc[0]);
                    acc[1] = _mm256_fmadd_ps(s.min[1], _mm256_loadu_ps(sums.add(8)), acc[1]);
                }
            }
        }
        Kind::Small => {
            // Blocks in pairs, so that the accumulators are known registers.
            let block = |b: usize, acc: &mut __m256, offset: &mut __m128| {
                let blk = r.add(b * U::BYTES);
                let [lo, hi] = U::unpack32(blk);
                let t = int_sums::<U, M>(_mm256_set_m128i(hi, lo), _mm256_loadu_si256(xq.add(32 * b).cast()));
                let scale = _mm256_mul_ps(U::scale8(blk), _mm256_broadcast_ss(&*xd.add(b)));
                *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), scale, *acc);
                if let Some(at) = U::MIN_AT {
                    let m = _mm_cvtph_ps(_mm_cvtsi32_si128(blk.add(at).cast::<u16>().read_unaligned() as i32));
                    let sum = _mm_set_ss(*x.sums16.get_unchecked(2 * b) + *x.sums16.get_unchecked(2 * b + 1));
                    *offset = _mm_fmadd_ss(m, sum, *offset);
                }
            };
            let [a0, a1, ..] = &mut acc;
            let [o0, o1] = &mut offsets;
            for b in (0..blocks).step_by(2) {
                block(b, a0, o0);
                if b + 1 < blocks {
                    block(b + 1, a1, o1);
                }
            }
        }
        Kind::Dense => unreachable!("dense types have no fast product"),
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    hsum256(sum) + _mm_cvtss_f32(_mm_add_ss(offsets[0], offsets[1]))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn int8_dot_avx2<U: Unpack>(row: &[u8], x: &QVector) -> f32 {
    int8_dot::<U, Maddubs>(row, x)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn int8_dot_vnni512<U: Unpack>(row: &[u8], x: &QVector) -> f32 {
    if U::KIND == Kind::Super {
        super_dot_vnni512::<U>(row, x)
    } else {
        int8_dot::<U, Vnni512>(row, x)
    }
}

/// [`int8_dot`] for super-blocks in 16 lanes: two runs per `vpdpbusd` on 512-bit registers.
#[inline(always)]
unsafe fn super_dot_vnni512<U: Unpack>(row: &[u8], x: &QVector) -> f32 {
    let (r, xq, xd, blocks) = (row.as_ptr(), x.q.as_ptr(), x.d.as_ptr(), row.len() / U::BYTES);
    debug_assert_eq!(blocks * U::BLOCK, x.q.len());
    let mut acc = [_mm512_setzero_ps(); 2];
    let mut offsets = _mm512_setzero_ps();
    for b in 0..blocks {
        let blk = r.add(b * U::BYTES);
        let s = U::scales(blk);
        // Group g's scale times the vector's scale for its run, g / 2.
        let d = _mm512_castps256_ps512(_mm256_loadu_ps(xd.add(8 * b)));
        let pairs = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
        let sd = _mm512_mul_ps(wide(s.scale), _mm512_permutexvar_ps(pairs, d));
        let mut pending = _mm256_setzero_si256();
        U::runs(blk, |j, v| {
            if j % 2 == 0 {
                pending = v;
                return;
            }
            // Runs j - 1 and j: lanes 0-7 and 8-15, groups 2 j - 2 .. 2 j + 2, four lanes each.
            let w = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(pending), v);
            let xv = _mm512_loadu_si512(xq.add(256 * b + 32 * (j - 1)).cast());
            let t = if U::SIGNED {
                let neg = _mm512_movepi8_mask(w);
                let xs = _mm512_mask_sub_epi8(xv, neg, _mm512_setzero_si512(), xv);
                _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(w), xs)
            } else {
                _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, xv)
            };
            let g = 2 * (j as i32 - 1);
            let idx = _mm512_setr_epi32(
                g,
                g,
                g,
                g,
                g + 1,
                g + 1,
                g + 1,
                g + 1,
                g + 2,
                g + 2,
                g + 2,
                g + 2,
                g + 3,
                g + 3,
                g + 3,
                g + 3,
            );
            acc[j / 2 % 2] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_permutexvar_ps(idx, sd), acc[j / 2 % 2]);
        });
        if U::HAS_MIN {
            offsets = _mm512_fmadd_ps(wide(s.min), _mm512_loadu_ps(x.sums16.as_ptr().add(16 * b)), offsets);
        }
    }
    _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), offsets))
}

#[target_feature(enable = "avxvnni,avx2,fma,f16c")]
unsafe fn int8_dot_avxvnni<U: Unpack>(row: &[u8], x: &QVector) -> f32 {
    int8_dot::<U, AvxVnni>(row, x)
}

/// The integer products of a run, through every `Madd` this CPU has, as `int_sums` computes them
/// for signed (`signed`) and unsigned weights: the tests compare them with plain integer sums.
#[cfg(test)]
pub(super) fn run_sums(w: &[i8; 32], x: &[i8; 32], signed: bool) -> Vec<(&'static str, [i32; 8])> {
    struct Signed;
    struct Unsigned;
    impl Unpack for Signed {
        const KIND: Kind = Kind::Small;
        const BLOCK: usize = 32;
        const BYTES: usize = 32;
        const SIGNED: bool = true;
    }
    impl Unpack for Unsigned {
        const KIND: Kind = Kind::Small;
        const BLOCK: usize = 32;
        const BYTES: usize = 32;
    }
    #[inline(always)]
    unsafe fn sums<M: Madd>(w: &[i8; 32], x: &[i8; 32], signed: bool) -> [i32; 8] {
        let (w, x) = (_mm256_loadu_si256(w.as_ptr().cast()), _mm256_loadu_si256(x.as_ptr().cast()));
        let t = if signed {
            int_sums::<Signed, M>(w, x)
        } else {
            int_sums::<Unsigned, M>(w, x)
        };
        std::mem::transmute::<__m256i, [i32; 8]>(t)
    }
    #[target_feature(enable = "avx2")]
    unsafe fn avx2(w: &[i8; 32], x: &[i8; 32], signed: bool) -> [i32; 8] {
        sums::<Maddubs>(w, x, signed)
    }
    #[target_feature(enable = "avx512f,avx512vl,avx512vnni,avx2")]
    unsafe fn vnni512(w: &[i8; 32], x: &[i8; 32], signed: bool) -> [i32; 8] {
        sums::<Vnni512>(w, x, signed)
    }
    #[target_feature(enable = "avxvnni,avx2")]
    unsafe fn avxvnni(w: &[i8; 32], x: &[i8; 32], signed: bool) -> [i32; 8] {
        sums::<AvxVnni>(w, x, signed)
    }
    // SAFETY: each runs only where the CPU reports its features.
    let mut out = Vec::new();
    if is_x86_feature_detected!("avx2") {
        out.push(("avx2", unsafe { avx2(w, x, signed) }));
    }
    if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl") {
        out.push(("avx512vnni", unsafe { vnni512(w, x, signed) }));
    }
    if is_x86_feature_detected!("avxvnni") {
        out.push(("avxvnni", unsafe { avxvnni(w, x, signed) }));
    }
    out
}

/// Every tile product this CPU runs at `level`, by name (for the tests), for a type whose tile
/// bytes use all eight bits (`full_bytes`: Q8_0's) or at most six: `vpmaddubsw` (AVX2) sums
/// pairs of byte products in saturating i16, which six-bit weights never reach (2 x 63 x 127)
/// and eight-bit ones can, so those have no AVX2 product.
pub(super) fn tile_products(level: Isa, full_bytes: bool) -> Vec<(&'static str, TileProduct)> {
    // SAFETY (all wrappers): the CPU runs the level (checked by the caller: AVX2 and FMA at
    // least, AVX-512 F/BW/VL for the 512-bit one) and the VNNI extension each checks here.
    let mut products: Vec<(&'static str, TileProduct)> = Vec::new();
    if level < Isa::Avx2 {
        return products;
    }
    if !full_bytes {
        products.push(("avx2", |tile, x, out| unsafe { tiles_avx2(tile, x, out) }));
    }
    if is_x86_feature_detected!("avxvnni") {
        products.push(("avxvnni", |tile, x, out| unsafe { tiles_avxvnni(tile, x, out) }));
    }
    if level == Isa::Avx512 && is_x86_feature_detected!("avx512vnni") {
        products.push(("avx512vnni", |tile, x, out| unsafe { tiles_vnni512(tile, x, out) }));
    }
    products
}

/// The tile product a model uses at `level`: `vpdpbusd` on 512-bit registers with AVX-512 VNNI,
/// on 256-bit ones with AVX-VNNI on CPUs whose best level is AVX2 (as for the dot products:
/// `HEADHUNT_SIMD=avx2` on an AVX-512 CPU runs plain AVX2), else `vpmaddubsw`; none for Q8_0
/// without VNNI (prompts then run exact).
pub(super) fn tile_product(level: Isa, full_bytes: bool) -> Option<TileProduct> {
    let products = tile_products(level, full_bytes);
    let pick = |name: &str| products.iter().find(|p| p.0 == name).map(|p| p.1);
    match level {
        Isa::Avx512 => pick("avx512vnni").or_else(|| pick("avx2")),
        Isa::Avx2 if Isa::detected() == Isa::Avx2 => pick("avxvnni").or_else(|| pick("avx2")),
        _ => pick("avx2"),
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
unsafe fn tiles_vnni512(tile: &Tile, x: &Tokens, out: &mut [f32]) {
    check_tile_shapes(tile, x, out);
    match (tile.width, tile.has_min) {
        (32, true) => tokens512::<32, true>(tile, x, out),
        (32, false) => tokens512::<32, false>(tile, x, out),
        (16, true) => tokens512::<16, true>(tile, x, out),
        _ => tokens512::<16, false>(tile, x, out),
    }
}

fn check_tile_shapes(tile: &Tile, x: &Tokens, out: &[f32]) {
    assert!(
        out.len() >= x.m * TILE_ROWS && tile.groups * tile.width == x.k && x.width == tile.width,
        "tile product: shapes disagree"
    );
}

/// Eight tokens at a time (their sums in eight registers), then one at a time.
#[inline(always)]
unsafe fn tokens512<const W: usize, const MIN: bool>(tile: &Tile, x: &Tokens, out: &mut [f32]) {
    let mut t = 0;
    while t + 8 <= x.m {
        block512::<8, W, MIN>(tile, x, t, out);
        t += 8;
    }
    while t < x.m {
        block512::<1, W, MIN>(tile, x, t, out);
        t += 1;
    }
}

/// Tokens `t0 .. t0 + T` times a tile: per group, its `W / 4` weight vectors loaded once and
/// multiplied with each token's bytes, four at a time broadcast, into int32 row sums; then
/// scaled into f32 accumulators (see `tiles::product_portable`, the same steps one at a time).
#[inline(always)]
unsafe fn block512<const T: usize, const W: usize, const MIN: bool>(tile: &Tile, x: &Tokens, t0: usize, out: &mut [f32]) {
    let (k, steps) = (x.k, W / 4);
    let (qs, ds, ss) = (x.q.as_ptr(), x.d.as_ptr(), x.sums.as_ptr());
    let (wq, sc, mn) = (tile.q.as_ptr(), tile.scale.as_ptr(), tile.min.as_ptr());
    let mut acc = [_mm512_setzero_ps(); T];
    for g in 0..tile.groups {
        let mut w = [_mm512_setzero_si512(); 8];
        for (j, v) in w.iter_mut().enumerate().take(steps) {
            *v = _mm512_loadu_si512(wq.add((g * steps + j) * 64).cast());
        }
        let scale = _mm512_loadu_ps(sc.add(TILE_ROWS * g));
        for (i, a) in acc.iter_mut().enumerate() {
            let t = t0 + i;
            let xq = qs.add(t * k + g * W);
            let mut s = _mm512_setzero_si512();
            for (j, &v) in w.iter().enumerate().take(steps) {
                s = _mm512_dpbusd_epi32(s, v, _mm512_set1_epi32(xq.add(4 * j).cast::<i32>().read_unaligned()));
            }
            let d = _mm512_set1_ps(*ds.add(t * (k / 32) + g * W / 32));
            *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(scale, d), *a);
            if MIN {
                let m = _mm512_loadu_ps(mn.add(TILE_ROWS * g));
                *a = _mm512_fmadd_ps(m, _mm512_set1_ps(*ss.add(t * (k / W) + g)), *a);
            }
        }
    }
    for (i, a) in acc.iter().enumerate() {
        _mm512_storeu_ps(out.as_mut_ptr().add((t0 + i) * TILE_ROWS), *a);
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn tiles_avx2(tile: &Tile, x: &Tokens, out: &mut [f32]) {
    tiles256::<Maddubs>(tile, x, out)
}

#[target_feature(enable = "avxvnni,avx2,fma")]
unsafe fn tiles_avxvnni(tile: &Tile, x: &Tokens, out: &mut [f32]) {
    tiles256::<AvxVnni>(tile, x, out)
}

#[inline(always)]
unsafe fn tiles256<M: Madd>(tile: &Tile, x: &Tokens, out: &mut [f32]) {
    check_tile_shapes(tile, x, out);
    match (tile.width, tile.has_min) {
        (32, true) => tokens256::<M, 32, true>(tile, x, out),
        (32, false) => tokens256::<M, 32, false>(tile, x, out),
        (16, true) => tokens256::<M, 16, true>(tile, x, out),
        _ => tokens256::<M, 16, false>(tile, x, out),
    }
}

/// Four tokens at a time, then one at a time.
#[inline(always)]
unsafe fn tokens256<M: Madd, const W: usize, const MIN: bool>(tile: &Tile, x: &Tokens, out: &mut [f32]) {
    let mut t = 0;
    while t + 4 <= x.m {
        block256::<M, 4, W, MIN>(tile, x, t, out);
        t += 4;
    }
    while t < x.m {
        block256::<M, 1, W, MIN>(tile, x, t, out);
        t += 1;
    }
}

/// [`block512`] on 256-bit registers: each step's sixteen rows are two vectors of eight, read
/// from the tile (sixteen registers hold too few to keep a group's weights in them).
#[inline(always)]
unsafe fn block256<M: Madd, const T: usize, const W: usize, const MIN: bool>(tile: &Tile, x: &Tokens, t0: usize, out: &mut [f32]) {
    let (k, steps) = (x.k, W / 4);
    let (qs, ds, ss) = (x.q.as_ptr(), x.d.as_ptr(), x.sums.as_ptr());
    let (wq, sc, mn) = (tile.q.as_ptr(), tile.scale.as_ptr(), tile.min.as_ptr());
    let mut acc = [[_mm256_setzero_ps(); 2]; T];
    for g in 0..tile.groups {
        let wg = wq.add(g * steps * 64);
        let scale = [_mm256_loadu_ps(sc.add(TILE_ROWS * g)), _mm256_loadu_ps(sc.add(TILE_ROWS * g + 8))];
        for (i, a) in acc.iter_mut().enumerate() {
            let t = t0 + i;
            let xq = qs.add(t * k + g * W);
            let mut s = [_mm256_setzero_si256(); 2];
            for j in (0..steps).step_by(2) {
                let x0 = _mm256_set1_epi32(xq.add(4 * j).cast::<i32>().read_unaligned());
                let x1 = _mm256_set1_epi32(xq.add(4 * j + 4).cast::<i32>().read_unaligned());
                for (h, s) in s.iter_mut().enumerate() {
                    let w = |j: usize| _mm256_loadu_si256(wg.add(64 * j + 32 * h).cast());
                    *s = M::madd2_add(*s, w(j), x0, w(j + 1), x1);
                }
            }
            let d = _mm256_set1_ps(*ds.add(t * (k / 32) + g * W / 32));
            for h in 0..2 {
                a[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[h]), _mm256_mul_ps(scale[h], d), a[h]);
                if MIN {
                    let m = _mm256_loadu_ps(mn.add(TILE_ROWS * g + 8 * h));
                    a[h] = _mm256_fmadd_ps(m, _mm256_set1_ps(*ss.add(t * (k / W) + g)), a[h]);
                }
            }
        }
    }
    for (i, a) in acc.iter().enumerate() {
        let o = out.as_mut_ptr().add((t0 + i) * TILE_ROWS);
        _mm256_storeu_ps(o, a[0]);
        _mm256_storeu_ps(o.add(8), a[1]);
    }
}

/// `super::quantize_row` with AVX-512: the same numbers (the maximum and the sums of small
/// integers do not depend on the order of their operations; the rounding is to the nearest, ties
/// to even, in both).
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn quantize_row512(x: &[f32], q: &mut [i8], d: &mut [f32], sums: &mut [f32], width: usize) {
    let blocks = x.len() / 32;
    assert!(q.len() >= 32 * blocks && d.len() >= blocks && sums.len() >= blocks * 32 / width);
    let abs = |v: __m512| _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(i32::MAX)));
    for b in 0..blocks {
        let (lo, hi) = (
            _mm512_loadu_ps(x.as_ptr().add(32 * b)),
            _mm512_loadu_ps(x.as_ptr().add(32 * b + 16)),
        );
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(abs(lo), abs(hi)));
        let scale = amax / 127.0;
        let inv = _mm512_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
        const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
        let (rl, rh) = (
            _mm512_roundscale_ps::<NEAREST>(_mm512_mul_ps(lo, inv)),
            _mm512_roundscale_ps::<NEAREST>(_mm512_mul_ps(hi, inv)),
        );
        let out = q.as_mut_ptr().add(32 * b).cast::<__m128i>();
        _mm_storeu_si128(out, _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(rl)));
        _mm_storeu_si128(out.add(1), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(rh)));
        d[b] = scale;
        let (sl, sh) = (_mm512_reduce_add_ps(rl), _mm512_reduce_add_ps(rh));
        if width == 32 {
            sums[b] = scale * (sl + sh);
        } else {
            sums[2 * b] = scale * sl;
            sums[2 * b + 1] = scale * sh;
        }
    }
}

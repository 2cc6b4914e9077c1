//! Row kernels for every weight storage type: one row's dot product with an f32 vector, and one
//! row's values as f32.
//!
//! Weights stay in the checkpoint's storage (GGML quant blocks, F16, BF16 or F32); these kernels
//! read that storage directly. Every quant type is described once, by how a block unpacks into
//! small integers `q` with a scale and an offset per 16 values:
//!
//! ```text
//! w[j] = scale[j / 16] * q[j] + min[j / 16]
//! ```
//!
//! The dot product and the dequantisation are then one generic loop per instruction set over
//! that form, computing each weight in f32 exactly as the dequantised matrix holds it, so a
//! product read from the blocks matches the f32 product on the dequantised weights to rounding.
//! The unpacking is written twice per type: in plain Rust here (`Format`, the reference and the
//! portable path) and with AVX2 integer instructions in `x86` (shared by the AVX2 and AVX-512
//! loops).
//!
//! [`Precision::Fast`] adds a third product per quant type, in integers: the vector is quantised
//! to int8 ([`QVector`]) and each run of 32 small integers is multiplied with it in int32
//! (`vpmaddubsw` with AVX2, `vpdpbusd` with VNNI), then scaled in f32 per 16 weights; and for
//! many tokens at once, the same arithmetic on rows repacked into int8 tiles (`tiles`).

use crate::cpu::Isa;
use crate::gguf::GgmlType;

mod tiles;
#[cfg(target_arch = "x86_64")]
mod x86;

pub(crate) use tiles::{Tile, TileForm, TileProduct, TILE_ROWS};

/// The vector a row is multiplied with, in the forms the kernels read, made once per product:
/// its values, its values reordered within each run of 32 (`x[32 b + 4 i + k]` at
/// `32 b + 8 k + i`: the order in which the SIMD kernels pull bytes out of 32-bit lanes), and
/// its sums over each 16 values (for the blocks' offsets: `sum (d q + m) x = d sum q x +
/// m sum x`).
pub struct Vector {
    pub x: Vec<f32>,
    pub strided: Vec<f32>,
    pub sums16: Vec<f32>,
}

impl Vector {
    pub fn new(x: &[f32]) -> Self {
        let whole = x.len() / 32 * 32;
        let mut strided = vec![0.0f32; whole];
        for (out, run) in strided.chunks_exact_mut(32).zip(x.chunks_exact(32)) {
            for k in 0..4 {
                for i in 0..8 {
                    out[8 * k + i] = run[4 * i + k];
                }
            }
        }
        Vector {
            x: x.to_vec(),
            strided,
            sums16: x.chunks_exact(16).map(|c| c.iter().sum()).collect(),
        }
    }
}

/// How the products with the weights are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Precision {
    /// In f32 on the stored weights' exact values: the numbers of the reference implementation.
    #[default]
    Exact,
    /// Products in integers, as llama.cpp computes them: the activations quantised to int8 in
    /// blocks of 32 with an f32 scale each ([`QVector`]), multiplied with the stored blocks' small
    /// integers in int32 and scaled in f32 per 16 or 32 weights. Decoding reads the blocks
    /// directly; prompts repack rows into int8 tiles (`tiles`). Dense (F32/F16/BF16) weights stay
    /// exact, and so do prompts on a CPU without the tiles' instructions. A model with fast
    /// products also keeps its runs' keys and values in f16 ([`crate::KvStore`]).
    Fast,
}

impl Precision {
    pub const ALL: [Precision; 2] = [Precision::Exact, Precision::Fast];

    pub fn name(self) -> &'static str {
        match self {
            Precision::Exact => "exact",
            Precision::Fast => "fast",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("unknown precision `{s}` (use exact or fast)"))
    }
}

/// A vector quantised for the fast products: per 32 values a scale `d = max |x| / 127` and the
/// values as signed bytes `q = round(x / d)` (so `x ~ d q`, never -128), and its sums per 16
/// values, `d sum q`, for the blocks' offsets (`sum (s w + m) x = s sum w x + m sum x`).
///
/// The sums are of the quantised values, not of `x`: the product is then exactly the stored
/// weights times the quantised vector, whose error `sum w (d q - x)` is centred on the weights.
/// With `x`'s exact sums the error would be `sum (w - m) (d q - x)`, several times larger where
/// the offsets are large (measured: mean KL against exact 1.7e-2 instead of ~2e-3 on SmolLM2's
/// Q4_1).
pub struct QVector {
    pub q: Vec<i8>,
    pub d: Vec<f32>,
    pub sums16: Vec<f32>,
}

impl QVector {
    /// `x.len()` must be a multiple of 32 (every quantised row is).
    pub fn new(x: &[f32]) -> Self {
        assert!(x.len().is_multiple_of(32), "QVector: {} values are not blocks of 32", x.len());
        let mut v = QVector {
            q: vec![0i8; x.len()],
            d: vec![0.0; x.len() / 32],
            sums16: vec![0.0; x.len() / 16],
        };
        quantize_row(x, &mut v.q, &mut v.d, &mut v.sums16, 16);
        v
    }
}

/// `x` (blocks of 32) into `q`, its scales into `d` and the sums of `d q` per `width` (16 or 32)
/// into `sums`: with AVX-512 where the CPU has it, the same numbers either way.
fn quantize_row(x: &[f32], q: &mut [i8], d: &mut [f32], sums: &mut [f32], width: usize) {
    #[cfg(target_arch = "x86_64")]
    if Isa::detected() == Isa::Avx512 {
        // SAFETY: the CPU runs AVX-512 F/BW/VL.
        return unsafe { x86::quantize_row512(x, q, d, sums, width) };
    }
    for (b, (qb, xb)) in q.chunks_exact_mut(32).zip(x.chunks_exact(32)).enumerate() {
        let (scale, [lo, hi]) = quantize_block(xb, qb);
        d[b] = scale;
        if width == 32 {
            sums[b] = scale * (lo + hi);
        } else {
            sums[2 * b] = scale * lo;
            sums[2 * b + 1] = scale * hi;
        }
    }
}

/// 32 values as signed bytes, `x ~ d q` with `d = max |x| / 127`, rounded to the nearest (ties
/// to even, as `vroundps` and llama.cpp's SIMD quantisation do); returns `d` and the sums of `q`
/// over each 16.
#[inline]
fn quantize_block(xb: &[f32], qb: &mut [i8]) -> (f32, [f32; 2]) {
    let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = amax / 127.0;
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    let r: [f32; 32] = std::array::from_fn(|i| (xb[i] * inv).round_ties_even());
    for (o, &v) in qb.iter_mut().zip(&r) {
        *o = v as i8;
    }
    // Sums of small integers: exact in f32.
    (scale, [r[..16].iter().sum(), r[16..].iter().sum()])
}

/// Tokens quantised for the tile products: each as its [`QVector`], with the sums of its
/// quantised values per `width` (the tiles' group of values sharing a scale).
#[derive(Default)]
pub(crate) struct Tokens {
    pub m: usize,
    pub k: usize,
    pub width: usize,
    pub q: Vec<i8>,
    pub d: Vec<f32>,
    pub sums: Vec<f32>,
}

impl Tokens {
    #[cfg(test)]
    pub(crate) fn new(x: &[f32], m: usize, k: usize, width: usize) -> Tokens {
        let mut t = Tokens::default();
        t.quantise(x, m, k, width);
        t
    }

    /// Hold `x`'s `m` tokens of `k` values (a multiple of 32), quantised on all threads, in the
    /// buffers of the previous tokens (fresh ones cost page faults at every product).
    pub(crate) fn quantise(&mut self, x: &[f32], m: usize, k: usize, width: usize) {
        assert!(k.is_multiple_of(32) && x.len() >= m * k, "Tokens: {m} x {k} values");
        (self.m, self.k, self.width) = (m, k, width);
        self.q.resize(m * k, 0);
        self.d.resize(m * k / 32, 0.0);
        self.sums.resize(m * k / width, 0.0);
        use crate::team::Disjoint;
        let (q, d, sums) = (
            Disjoint::new(&mut self.q),
            Disjoint::new(&mut self.d),
            Disjoint::new(&mut self.sums),
        );
        crate::team::for_each(m, |t| {
            // SAFETY: token t's runs of the three buffers, taken by this task only.
            let (q, d, sums) = unsafe { (q.part(t * k, k), d.part(t * k / 32, k / 32), sums.part(t * k / width, k / width)) };
            quantize_row(&x[t * k..(t + 1) * k], q, d, sums, width);
        });
    }

    /// Token `t`'s bytes, scales per 32 values and sums per `width`.
    #[cfg(test)]
    pub(crate) fn token(&self, t: usize) -> (&[i8], &[f32], &[f32]) {
        let (k, w) = (self.k, self.width);
        (
            &self.q[t * k..(t + 1) * k],
            &self.d[t * k / 32..(t + 1) * k / 32],
            &self.sums[t * k / w..(t + 1) * k / w],
        )
    }
}

/// A fast (int8) dot product of a stored row with a quantised vector.
pub(crate) type DotQ8 = fn(row: &[u8], x: &QVector) -> f32;

/// One row's kernels for one storage type at one instruction-set level.
#[derive(Clone, Copy)]
pub(crate) struct RowKernels {
    /// `sum_c w[c] x[c]` over a row; `x` holds exactly the row's values.
    pub dot: fn(row: &[u8], x: &Vector) -> f32,
    /// The row's values; `out` holds exactly the row's values.
    pub dequantize: fn(row: &[u8], out: &mut [f32]),
    /// The same dot product in integers against the quantised vector ([`Precision::Fast`]);
    /// none for the dense types.
    pub dot_q8: Option<DotQ8>,
    /// How rows become int8 tiles for the fast products of many tokens; none for the dense types.
    pub tiles: Option<TileForm>,
    /// The tile product this CPU runs at the level; none where it has no integer dot product
    /// instructions for it (prompts then run exact).
    pub tile_product: Option<TileProduct>,
}

/// The storage types the kernels read.
pub const SUPPORTED: [GgmlType; 14] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::Mxfp4,
];

pub fn supported(dtype: GgmlType) -> bool {
    SUPPORTED.contains(&dtype)
}

/// The kernels for `dtype` at `isa` (or the best level below it that this CPU runs).
pub(crate) fn row_kernels(dtype: GgmlType, isa: Isa) -> Option<RowKernels> {
    if !supported(dtype) {
        return None;
    }
    // `supported()` caps the level at what the CPU runs: that is what makes the SIMD kernels'
    // safe wrappers sound.
    let mut kernels = match isa.supported() {
        Isa::Portable => portable(dtype),
        #[cfg(target_arch = "x86_64")]
        level => x86::kernels(dtype, level == Isa::Avx512),
        #[cfg(not(target_arch = "x86_64"))]
        _ => portable(dtype),
    };
    kernels.tiles = tile_form(dtype);
    #[cfg(target_arch = "x86_64")]
    if let Some(form) = kernels.tiles {
        kernels.tile_product = x86::tile_product(isa.supported(), form.full_bytes);
    }
    Some(kernels)
}

fn tile_form(dtype: GgmlType) -> Option<TileForm> {
    Some(match dtype {
        GgmlType::Q4_0 => TileForm::of::<Q4_0>(),
        GgmlType::Q4_1 => TileForm::of::<Q4_1>(),
        GgmlType::Q5_0 => TileForm::of::<Q5_0>(),
        GgmlType::Q5_1 => TileForm::of::<Q5_1>(),
        GgmlType::Q8_0 => TileForm::of::<Q8_0>(),
        GgmlType::Q2K => TileForm::of::<Q2K>(),
        GgmlType::Q3K => TileForm::of::<Q3K>(),
        GgmlType::Q4K => TileForm::of::<Q4K>(),
        GgmlType::Q5K => TileForm::of::<Q5K>(),
        GgmlType::Q6K => TileForm::of::<Q6K>(),
        GgmlType::Mxfp4 => TileForm::of::<Mxfp4>(),
        _ => return None,
    })
}

fn portable(dtype: GgmlType) -> RowKernels {
    fn of<F: Format>() -> RowKernels {
        RowKernels {
            dot: |row, x| dot::<F>(row, &x.x),
            dequantize: dequantize::<F>,
            dot_q8: Some(dot_q8::<F>),
            tiles: None,
            tile_product: None,
        }
    }
    match dtype {
        GgmlType::F32 => RowKernels {
            dot: |row, x| dense_dot(row, &x.x, 4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            dequantize: |row, out| dense_values(row, out, 4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            dot_q8: None,
            tiles: None,
            tile_product: None,
        },
        GgmlType::F16 => RowKernels {
            dot: |row, x| dense_dot(row, &x.x, 2, f16),
            dequantize: |row, out| dense_values(row, out, 2, f16),
            dot_q8: None,
            tiles: None,
            tile_product: None,
        },
        GgmlType::BF16 => RowKernels {
            dot: |row, x| dense_dot(row, &x.x, 2, bf16),
            dequantize: |row, out| dense_values(row, out, 2, bf16),
            dot_q8: None,
            tiles: None,
            tile_product: None,
        },
        GgmlType::Q4_0 => of::<Q4_0>(),
        GgmlType::Q4_1 => of::<Q4_1>(),
        GgmlType::Q5_0 => of::<Q5_0>(),
        GgmlType::Q5_1 => of::<Q5_1>(),
        GgmlType::Q8_0 => of::<Q8_0>(),
        GgmlType::Q2K => of::<Q2K>(),
        GgmlType::Q3K => of::<Q3K>(),
        GgmlType::Q4K => of::<Q4K>(),
        GgmlType::Q5K => of::<Q5K>(),
        GgmlType::Q6K => of::<Q6K>(),
        GgmlType::Mxfp4 => of::<Mxfp4>(),
        other => unreachable!("{other:?} is not in SUPPORTED"),
    }
}

#[inline]
pub(crate) fn f16(b: &[u8]) -> f32 {
    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
}

#[inline]
fn bf16(b: &[u8]) -> f32 {
    half::bf16::from_le_bytes([b[0], b[1]]).to_f32()
}

fn dense_dot(row: &[u8], x: &[f32], width: usize, value: impl Fn(&[u8]) -> f32) -> f32 {
    // Sixteen partial sums, so that the compiler keeps them in vector lanes.
    let mut acc = [0.0f32; 16];
    for (bytes, xs) in row.chunks(16 * width).zip(x.chunks(16)) {
        for (t, (b, &x)) in bytes.chunks_exact(width).zip(xs).enumerate() {
            acc[t] += value(b) * x;
        }
    }
    acc.iter().sum()
}

fn dense_values(row: &[u8], out: &mut [f32], width: usize, value: impl Fn(&[u8]) -> f32) {
    for (o, b) in out.iter_mut().zip(row.chunks_exact(width)) {
        *o = value(b);
    }
}

/// A GGML block type, as the small integers, scales and offsets it unpacks into.
pub(crate) trait Format {
    /// Values per block.
    const BLOCK: usize;
    /// Bytes per block.
    const BYTES: usize;
    /// What makes the unpacked integers non-negative (for the tiles: `vpdpbusd` multiplies
    /// unsigned bytes with signed ones).
    const BIAS: i32 = 0;
    /// Whether both groups of 16 in each run of 32 share scale and offset.
    const PAIRED: bool = true;
    /// Whether the unpacked integers plus `BIAS` use all eight bits (else at most six).
    const FULL_BYTES: bool = false;
    /// Unpack one block: `q[..BLOCK]`, and `scale`, `min` for each 16 values.
    fn unpack(block: &[u8], q: &mut [i8; 256], scale: &mut [f32; 16], min: &mut [f32; 16]);
}

fn dot<F: Format>(row: &[u8], x: &[f32]) -> f32 {
    let (mut q, mut scale, mut min) = ([0i8; 256], [0f32; 16], [0f32; 16]);
    let mut acc = [0.0f32; 16];
    for (block, xb) in row.chunks_exact(F::BYTES).zip(x.chunks_exact(F::BLOCK)) {
        F::unpack(block, &mut q, &mut scale, &mut min);
        for (g, (qg, xg)) in q[..F::BLOCK].chunks_exact(16).zip(xb.chunks_exact(16)).enumerate() {
            for t in 0..16 {
                acc[t] += (scale[g] * qg[t] as f32 + min[g]) * xg[t];
            }
        }
    }
    acc.iter().sum()
}

/// The fast dot product: per 16 weights, the exact integer sum `sum q qx`, times the group's
/// scale and the vector block's; plus the offsets times the vector's exact sums.
fn dot_q8<F: Format>(row: &[u8], x: &QVector) -> f32 {
    let (mut q, mut scale, mut min) = ([0i8; 256], [0f32; 16], [0f32; 16]);
    let mut acc = 0.0f32;
    for (n, block) in row.chunks_exact(F::BYTES).enumerate() {
        F::unpack(block, &mut q, &mut scale, &mut min);
        let groups = F::BLOCK / 16;
        let xq = &x.q[n * F::BLOCK..(n + 1) * F::BLOCK];
        // The integer sums first, then the scaling; byte products fit i16 (at most 128 x 127),
        // which compilers vectorise as multiply-adds of 16-bit pairs.
        let mut isum = [0i32; 16];
        for (s, (qg, xg)) in isum.iter_mut().zip(q[..F::BLOCK].chunks_exact(16).zip(xq.chunks_exact(16))) {
            *s = qg.iter().zip(xg).map(|(&w, &v)| (w as i16 * v as i16) as i32).sum();
        }
        let (xd, sums) = (&x.d[n * F::BLOCK / 32..], &x.sums16[n * groups..]);
        for g in 0..groups {
            acc += scale[g] * xd[g / 2] * isum[g] as f32 + min[g] * sums[g];
        }
    }
    acc
}

fn dequantize<F: Format>(row: &[u8], out: &mut [f32]) {
    let (mut q, mut scale, mut min) = ([0i8; 256], [0f32; 16], [0f32; 16]);
    for (block, ob) in row.chunks_exact(F::BYTES).zip(out.chunks_exact_mut(F::BLOCK)) {
        F::unpack(block, &mut q, &mut scale, &mut min);
        for (g, (qg, og)) in q[..F::BLOCK].chunks_exact(16).zip(ob.chunks_exact_mut(16)).enumerate() {
            for t in 0..16 {
                og[t] = scale[g] * qg[t] as f32 + min[g];
            }
        }
    }
}

/// The 6-bit scale and min of sub-block `j` in the 12 packed bytes of a Q4_K or Q5_K block.
#[inline]
pub(crate) fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

/// Q4_K and Q5_K: eight sub-blocks of 32 with 6-bit scales and mins; each scale covers two
/// groups of 16.
#[inline]
pub(crate) fn k4_scales(d: f32, dmin: f32, packed: &[u8], scale: &mut [f32; 16], min: &mut [f32; 16]) {
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, packed);
        let (s, m) = (d * sc as f32, -dmin * m as f32);
        scale[2 * j..2 * j + 2].fill(s);
        min[2 * j..2 * j + 2].fill(m);
    }
}

/// Q3_K's sixteen 6-bit scales (12 packed bytes), as signed values.
#[inline]
pub(crate) fn q3k_scales(packed: &[u8]) -> [i8; 16] {
    let w = |i: usize| u32::from_le_bytes([packed[4 * i], packed[4 * i + 1], packed[4 * i + 2], packed[4 * i + 3]]);
    let (a0, a1, tmp) = (w(0), w(1), w(2));
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let aux = [
        (a0 & LOW4) | ((tmp & LOW2) << 4),
        (a1 & LOW4) | (((tmp >> 2) & LOW2) << 4),
        ((a0 >> 4) & LOW4) | (((tmp >> 4) & LOW2) << 4),
        ((a1 >> 4) & LOW4) | (((tmp >> 6) & LOW2) << 4),
    ];
    std::array::from_fn(|i| (aux[i / 4].to_le_bytes()[i % 4] as i8) - 32)
}

/// Block types. The byte layouts are GGML's (`ggml-common.h`).
pub(crate) struct Q4_0;
pub(crate) struct Q4_1;
pub(crate) struct Q5_0;
pub(crate) struct Q5_1;
pub(crate) struct Q8_0;
pub(crate) struct Q2K;
pub(crate) struct Q3K;
pub(crate) struct Q4K;
pub(crate) struct Q5K;
pub(crate) struct Q6K;
pub(crate) struct Mxfp4;

/// Low nibbles of 16 bytes are values 0..16, high nibbles values 16..32.
fn nibbles(qs: &[u8], q: &mut [i8; 256], bias: i8) {
    for j in 0..16 {
        q[j] = (qs[j] & 15) as i8 - bias;
        q[j + 16] = (qs[j] >> 4) as i8 - bias;
    }
}

/// Bit j of `qh` is the fifth bit of value j.
fn fifth_bits(qh: &[u8], q: &mut [i8; 256]) {
    let bits = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    for (j, v) in q[..32].iter_mut().enumerate() {
        *v |= (((bits >> j) & 1) << 4) as i8;
    }
}

/// E2M1 (sign, 2-bit exponent, 1-bit mantissa) values doubled, so that they are integers: 0,
/// 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives, times 2.
pub(crate) const E2M1_DOUBLED: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// An E8M0 scale (a bare exponent, bias 127) halved, for the doubled E2M1 values: `2^(e - 128)`,
/// built from its bits (subnormal for e < 2).
#[inline]
pub(crate) fn e8m0_half(e: u8) -> f32 {
    f32::from_bits(if e < 2 { 0x0020_0000 << e } else { ((e as u32) - 1) << 23 })
}

impl Format for Mxfp4 {
    /// The doubled values span -12..12: plus 16 (a power of two) they fit six bits.
    const BIAS: i32 = 16;
    const BLOCK: usize = 32;
    const BYTES: usize = 17;
    fn unpack(b: &[u8], q: &mut [i8; 256], scale: &mut [f32; 16], min: &mut [f32; 16]) {
        for (j, &byte) in b[1..17].iter().enumerate() {
            q[j] = E2M1_DOUBLED[(byte & 15) as usize];
            q[j + 16] = E2M1_DOUBLED[(byte >> 4) as usize];
        }
        scale[..2].fill(e8m0_half(b[0]));
        min[..2].fill(0.0);
    }
}

impl Format for Q4_0 {
    const BIAS: i32 = 8;
    const BLOCK: usize = 32;
    const BYTES: usize = 18;
    fn unpack(b: &[u8], q: &mut [i8; 256], scale: &mut [f32; 16], min: &mut [f32; 16]) {
        nibbles(&b[2..18], q, 8);
        scale[..2].fill(f16(b));
        min[..2].fill(0.0);
    }
}

impl Format for Q4_1 {
    const BLOCK: usize = 32;
    const BYTES: usize = 20;
    fn unpack(b: &[u8], q: &mut [i8; 256], scale: &mut [f32; 16], min: &mut [f32; 16]) {
        nibbles(&b[4..20], q, 0);
        scale[..2].fill(f16(b));
        min[..2].fill(f16(&b[2..]));
    }
}

impl Format for Q5_0 {
    const BIAS: i32 = 16;
    const BLOCK: usize = 32;
    const BYTES: usize = 22;
    fn unpack(b: &[u8], q: &mut [i8; 256], scale: &mut [f32; 16], min: &mut [f32; 16]) {
        nibbles(&b[6..22], q, 0);
        fifth_bits(&b[2..6], q);
        q[..32].iter_mut().for_each(|v| *v -= 16);
        scale[..2].fill(f16(b));
        min[..2].fill(0.0);
    }
}

impl Format for Q5_1 {
    const BLOCK: usize = 32;
    const BYTES: usize = 24;
    fn unpack(b: &[u8], q: &mut [i8; 256], scale: &mut [f32; 16], min: &mut [f32; 16]) {
        nibbles(&b[8..24], q, 0);
        fifth_bits(&b[4..8], q);
        scale[..2].fill(f16(b));
        min[..2].fill(f16(&b[2..]));
    }
}

impl Format for Q8_0 {
    const BIAS: i32 = 128;
    const FULL_BYTES: bool = true;
    const BLOCK: usize = 32;
    const BYTES: usize = 34;
    fn unpack(b: &[u8], q: &mut [i8; 256], scale: &mut [f32; 16], min: &mut [f32; 16]) {
        for (v, &x) in q[..32].iter_mut().zip(&b[2..34]) {
            *v = x as i8;
        }
        scale[..2].fill(f16(b));
        min[..2].fill(0.0);
    }
}

impl Format for Q2K {
    const PAIRED: bool = false;
    const BLOCK: usize = 256;
    const BYTES: usize = 84;
    fn unpack(b: &[u8], q: &mut [i8; 256], scale: &mut [f32; 16], min: &mut [f32; 16]) {
        let (scales, qs, d, dmin) = (&b[..16], &b[16..80], f16(&b[80..]), f16(&b[82..]));
        // Two halves of 128; in each, four 2-bit planes of the same 32 bytes.
        for n in 0..2 {
            for plane in 0..4 {
                for l in 0..32 {
                    q[128 * n + 32 * plane + l] = ((qs[32 * n + l] >> (2 * plane)) & 3) as i8;
                }
            }
        }
        for g in 0..16 {
            scale[g] = d * (scales[g] & 15) as f32;
            min[g] = -dmin * (scales[g] >> 4) as f32;
        }
    }
}

impl Format for Q3K {
    const BIAS: i32 = 4;
    const PAIRED: bool = false;
    const BLOCK: usize = 256;
    const BYTES: usize = 110;
    fn unpack(b: &[u8], q: &mut [i8; 256], scale: &mut [f32; 16], min: &mut [f32; 16]) {
        let (hmask, qs, d) = (&b[..32], &b[32..96], f16(&b[108..]));
        // As Q2_K, plus a high bit per value from `hmask` (plane 4n + j); a clear bit means -4.
        for n in 0..2 {
            for plane in 0..4 {
                let bit = 4 * n + plane;
                for l in 0..32 {
                    let low = ((qs[32 * n + l] >> (2 * plane)) & 3) as i8;
                    let high = ((hmask[l] >> bit) & 1) as i8;
                    q[128 * n + 32 * plane + l] = low + 4 * high - 4;
                }
            }
        }
        let s = q3k_scales(&b[96..108]);
        for g in 0..16 {
            scale[g] = d * s[g] as f32;
            min[g] = 0.0;
        }
    }
}

/// Q4_K and Q5_K: four runs of 32 bytes, low nibbles then high nibbles, each 32 values.
fn k_nibbles(qs: &[u8], q: &mut [i8; 256]) {
    for run in 0..4 {
        for l in 0..32 {
            let byte = qs[32 * run + l];
            q[64 * run + l] = (byte & 15) as i8;
            q[64 * run + 32 + l] = (byte >> 4) as i8;
        }
    }
}

impl Format for Q4K {
    const BLOCK: usize = 256;
    const BYTES: usize = 144;
    fn unpack(b: &[u8], q: &mut [i8; 256], scale: &mut [f32; 16], min: &mut [f32; 16]) {
        k_nibbles(&b[16..144], q);
        k4_scales(f16(b), f16(&b[2..]), &b[4..16], scale, min);
    }
}

impl Format for Q5K {
    const BLOCK: usize = 256;
    const BYTES: usize = 176;
    fn unpack(b: &[u8], q: &mut [i8; 256], scale: &mut [f32; 16], min: &mut [f32; 16]) {
        k_nibbles(&b[48..176], q);
        let qh = &b[16..48];
        // Sub-block j (32 values) takes bit j of qh[l] as its fifth bit.
        for j in 0..8 {
            for l in 0..32 {
                q[32 * j + l] |= (((qh[l] >> j) & 1) << 4) as i8;
            }
        }
        k4_scales(f16(b), f16(&b[2..]), &b[4..16], scale, min);
    }
}

impl Format for Q6K {
    const BIAS: i32 = 32;
    const PAIRED: bool = false;
    const BLOCK: usize = 256;
    const BYTES: usize = 210;
    fn unpack(b: &[u8], q: &mut [i8; 256], scale: &mut [f32; 16], min: &mut [f32; 16]) {
        let (ql, qh, sc, d) = (&b[..128], &b[128..192], &b[192..208], f16(&b[208..]));
        // Two halves of 128: four runs of 32, low 4 bits from `ql`, high 2 bits from `qh`.
        for n in 0..2 {
            let (ql, qh) = (&ql[64 * n..], &qh[32 * n..]);
            for l in 0..32 {
                let low = [ql[l] & 15, ql[l + 32] & 15, ql[l] >> 4, ql[l + 32] >> 4];
                for (run, low) in low.into_iter().enumerate() {
                    let high = (qh[l] >> (2 * run)) & 3;
                    q[128 * n + 32 * run + l] = (low | (high << 4)) as i8 - 32;
                }
            }
        }
        for g in 0..16 {
            scale[g] = d * (sc[g] as i8) as f32;
            min[g] = 0.0;
        }
    }
}

#[cfg(test)]
mod tests;

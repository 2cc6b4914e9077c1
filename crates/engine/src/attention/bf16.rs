//! Attention's two products for a prompt's query rows at `--precision fast`, in bf16 with
//! AVX512_BF16.
//!
//! At `fast` the cache holds keys and values in f16, and attention converted each tile to f32 and
//! multiplied with f32 FMA: three-quarters of a 32K prefill (bench/RESULTS.md). `vdpbf16ps`
//! multiplies 16 pairs of bf16 and adds each pair's two products into one of 16 f32 sums: twice
//! an FMA's products per instruction. Queries, keys, probabilities and values are rounded to bf16
//! (8 significant bits, to nearest even); every sum is f32. Decoding's few rows stay f32 (their
//! time is reading the cache, not arithmetic), and so does `exact`.
//!
//! A word is two bf16 in a u32, the lower first; `P = d_head / 2` words per row of dimensions.
//! * queries: `q[r * P + p]`, dimensions `2p, 2p + 1` of row `r`;
//! * keys: 16 keys side by side, `k[(b * P + p) * 16 + j]`, dimensions `2p, 2p + 1` of key
//!   `16 b + j`: a query's word broadcast against one such vector gives 16 scores' next two terms;
//! * probabilities: `p[r * W + w]`, keys `2w, 2w + 1` of row `r` (`W` words per row);
//! * values: `v[w * d_head + c]`, dimension `c` of keys `2w, 2w + 1`: a probability word
//!   broadcast against one such vector adds to 16 dimensions of a row's output.
//!
//! Keys are padded with zeros to a multiple of 32, and the probabilities past the tile are zero.

use half::f16;

/// Keys per padded block: two vectors of 16 scores per row in the score kernel.
const KEY_BLOCK: usize = 32;

/// Whether the bf16 products serve heads of `dh` dimensions on this CPU: AVX512_BF16 at the
/// AVX-512 level (not capped by `HEADHUNT_SIMD`), and `dh` a multiple of 64.
pub(super) fn available(dh: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        dh.is_multiple_of(64) && crate::cpu::Isa::from_env() == crate::cpu::Isa::Avx512 && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = dh;
        false
    }
}

/// One task's queries and one tile's keys, probabilities and values in their bf16 layouts
/// (reused from tile to tile).
#[derive(Default)]
pub(super) struct Bf16Products {
    q: Vec<u32>,
    rows: usize,
    /// A tile's key words, row-major, before they are set side by side.
    key_words: Vec<u32>,
    k: Vec<u32>,
    p: Vec<u32>,
    v: Vec<u32>,
}

impl Bf16Products {
    /// Hold the task's queries `q[rows, dh]` (scaled) as words. Only where [`available`].
    pub fn new(q: &[f32], rows: usize, dh: usize) -> Self {
        assert!(available(dh) && q.len() >= rows * dh);
        let mut out = Bf16Products {
            q: vec![0; rows * dh / 2],
            rows,
            ..Default::default()
        };
        // SAFETY: `available` checked the CPU; the lengths are those of the loops.
        unsafe { x86::words_of_f32(&q[..rows * dh], &mut out.q) };
        out
    }

    /// `s[rows, bk] = q · k^T`, for the tile's keys `k[bk, dh]`.
    pub fn scores(&mut self, s: &mut [f32], k: &[f16], bk: usize, dh: usize) {
        let (rows, words) = (self.rows, dh / 2);
        assert!(s.len() >= rows * bk && k.len() >= bk * dh && self.q.len() == rows * words);
        let keys = bk.next_multiple_of(KEY_BLOCK);
        self.key_words.resize(keys * words, 0);
        self.k.resize(keys * words, 0);
        // SAFETY: as in `new`; every pointer below stays within the lengths set here.
        unsafe {
            x86::words_of_f16(&k[..bk * dh], &mut self.key_words[..bk * words]);
            self.key_words[bk * words..].fill(0);
            x86::side_by_side(&self.key_words, &mut self.k, keys, words);
            x86::scores(s, &self.q, &self.k, rows, bk, keys, words);
        }
    }

    /// `acc[rows, dh] += p[rows, bk] · v[bk, dh]`.
    pub fn weighted_values(&mut self, acc: &mut [f32], p: &[f32], v: &[f16], bk: usize, dh: usize) {
        let rows = self.rows;
        assert!(acc.len() >= rows * dh && p.len() >= rows * bk && v.len() >= bk * dh);
        let words = bk.next_multiple_of(KEY_BLOCK) / 2;
        self.p.resize(rows * words, 0);
        self.v.resize(words * dh, 0);
        // SAFETY: as in `new`; every pointer below stays within the lengths set here.
        unsafe {
            x86::probability_words(p, &mut self.p, rows, bk, words);
            x86::value_pairs(&v[..bk * dh], &mut self.v, bk, words, dh);
            x86::weighted_values(acc, &self.p, &self.v, rows, words, dh);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use half::f16;
    use std::arch::x86_64::*;
    use std::mem::transmute;

    /// 32 f32 as 16 words.
    #[inline(always)]
    unsafe fn pack(lo: __m512, hi: __m512) -> __m512i {
        transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo))
    }

    /// `out[i]` = values `2i, 2i + 1` of `x` (a multiple of 32 values) in bf16.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn words_of_f32(x: &[f32], out: &mut [u32]) {
        assert!(x.len().is_multiple_of(32) && out.len() == x.len() / 2);
        let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
        for c in (0..x.len()).step_by(32) {
            let w = pack(_mm512_loadu_ps(xp.add(c)), _mm512_loadu_ps(xp.add(c + 16)));
            _mm512_storeu_si512(op.add(c / 2).cast(), w);
        }
    }

    /// The same from f16.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn words_of_f16(x: &[f16], out: &mut [u32]) {
        assert!(x.len().is_multiple_of(32) && out.len() == x.len() / 2);
        let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
        for c in (0..x.len()).step_by(32) {
            let lo = _mm512_cvtph_ps(_mm256_loadu_si256(xp.add(c).cast()));
            let hi = _mm512_cvtph_ps(_mm256_loadu_si256(xp.add(c + 16).cast()));
            _mm512_storeu_si512(op.add(c / 2).cast(), pack(lo, hi));
        }
    }

    /// Keys' words set 16 keys side by side: `k[(b * words + p) * 16 + j] = rows[(16 b + j) *
    /// words + p]`, by gathering each vector's 16 words (`keys` a multiple of 16).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn side_by_side(rows: &[u32], k: &mut [u32], keys: usize, words: usize) {
        assert!(keys.is_multiple_of(16) && rows.len() >= keys * words && k.len() >= keys * words);
        let stride = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(words as i32),
        );
        let (rp, kp) = (rows.as_ptr(), k.as_mut_ptr());
        for b in 0..keys / 16 {
            let base = rp.add(16 * b * words);
            for p in 0..words {
                let v = _mm512_i32gather_epi32::<4>(stride, base.add(p).cast());
                _mm512_storeu_si512(kp.add((b * words + p) * 16).cast(), v);
            }
        }
    }

    /// `s[r * bk + j]` for `j < bk`: rows eight at a time against 32 keys (16 sums in registers).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn scores(s: &mut [f32], q: &[u32], k: &[u32], rows: usize, bk: usize, keys: usize, words: usize) {
        assert!(s.len() >= rows * bk && q.len() >= rows * words && k.len() >= keys * words && keys.is_multiple_of(32));
        let mut r = 0;
        while r + 8 <= rows {
            score_rows::<8>(s, q, k, r, bk, keys, words);
            r += 8;
        }
        while r < rows {
            score_rows::<1>(s, q, k, r, bk, keys, words);
            r += 1;
        }
    }

    #[inline(always)]
    unsafe fn score_rows<const R: usize>(s: &mut [f32], q: &[u32], k: &[u32], r0: usize, bk: usize, keys: usize, words: usize) {
        let (sp, qp, kp) = (s.as_mut_ptr(), q.as_ptr(), k.as_ptr());
        for b in (0..keys / 16).step_by(2) {
            let (k0, k1) = (kp.add(b * words * 16), kp.add((b + 1) * words * 16));
            let mut acc = [[_mm512_setzero_ps(); 2]; R];
            for p in 0..words {
                let x0 = transmute::<__m512i, __m512bh>(_mm512_loadu_si512(k0.add(p * 16).cast()));
                let x1 = transmute::<__m512i, __m512bh>(_mm512_loadu_si512(k1.add(p * 16).cast()));
                for (i, a) in acc.iter_mut().enumerate() {
                    let w = transmute::<__m512i, __m512bh>(_mm512_set1_epi32(*qp.add((r0 + i) * words + p) as i32));
                    a[0] = _mm512_dpbf16_ps(a[0], x0, w);
                    a[1] = _mm512_dpbf16_ps(a[1], x1, w);
                }
            }
            for (i, a) in acc.iter().enumerate() {
                for (h, &v) in a.iter().enumerate() {
                    let col = (b + h) * 16;
                    if col < bk {
                        let mask: __mmask16 = if bk - col >= 16 { 0xffff } else { (1u16 << (bk - col)) - 1 };
                        _mm512_mask_storeu_ps(sp.add((r0 + i) * bk + col), mask, v);
                    }
                }
            }
        }
    }

    /// Each row's probabilities `p[r * bk + j]` as words, zero past `bk` (to `2 * words` keys).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn probability_words(p: &[f32], out: &mut [u32], rows: usize, bk: usize, words: usize) {
        assert!(p.len() >= rows * bk && out.len() >= rows * words && words.is_multiple_of(16) && 2 * words >= bk);
        let (pp, op) = (p.as_ptr(), out.as_mut_ptr());
        for r in 0..rows {
            let row = pp.add(r * bk);
            for c in (0..2 * words).step_by(32) {
                let (lo, hi) = (first16(row, c, bk), first16(row, c + 16, bk));
                _mm512_storeu_si512(op.add(r * words + c / 2).cast(), pack(lo, hi));
            }
        }
    }

    /// `row[c .. c + 16]`, zero from `bk` on.
    #[inline(always)]
    unsafe fn first16(row: *const f32, c: usize, bk: usize) -> __m512 {
        let n = bk.saturating_sub(c).min(16);
        let mask: __mmask16 = if n == 16 { 0xffff } else { (1u16 << n) - 1 };
        _mm512_maskz_loadu_ps(mask, row.add(c))
    }

    /// Values in pairs of keys: `v[w * dh + c]` holds dimension `c` of keys `2w` (lower) and
    /// `2w + 1`; zero for keys past `bk`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn value_pairs(values: &[f16], v: &mut [u32], bk: usize, words: usize, dh: usize) {
        assert!(values.len() >= bk * dh && v.len() >= words * dh && dh.is_multiple_of(16));
        // Word i of the result: bf16 i of the lower key, then bf16 i of the upper key.
        let interleave = _mm512_setr_epi32(
            0x0010_0000,
            0x0011_0001,
            0x0012_0002,
            0x0013_0003,
            0x0014_0004,
            0x0015_0005,
            0x0016_0006,
            0x0017_0007,
            0x0018_0008,
            0x0019_0009,
            0x001a_000a,
            0x001b_000b,
            0x001c_000c,
            0x001d_000d,
            0x001e_000e,
            0x001f_000f,
        );
        let (xp, vp) = (values.as_ptr(), v.as_mut_ptr());
        for w in 0..words {
            for c in (0..dh).step_by(16) {
                // 16 of the lower key's, then 16 of the upper key's, as bf16; then paired.
                let both = pack(value16(xp, 2 * w, c, bk, dh), value16(xp, 2 * w + 1, c, bk, dh));
                _mm512_storeu_si512(vp.add(w * dh + c).cast(), _mm512_permutexvar_epi16(interleave, both));
            }
        }
    }

    /// Key `j`'s values `c .. c + 16` in f32, zero from `bk` on.
    #[inline(always)]
    unsafe fn value16(values: *const f16, j: usize, c: usize, bk: usize, dh: usize) -> __m512 {
        if j < bk {
            _mm512_cvtph_ps(_mm256_loadu_si256(values.add(j * dh + c).cast()))
        } else {
            _mm512_setzero_ps()
        }
    }

    /// `acc[r * dh + c] += sum_w p[r * words + w] · v[w * dh + c]`: rows four at a time against
    /// 64 dimensions (16 sums in registers).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn weighted_values(acc: &mut [f32], p: &[u32], v: &[u32], rows: usize, words: usize, dh: usize) {
        assert!(acc.len() >= rows * dh && p.len() >= rows * words && v.len() >= words * dh && dh.is_multiple_of(64));
        let mut r = 0;
        while r + 4 <= rows {
            value_rows::<4, 4>(acc, p, v, r, words, dh);
            r += 4;
        }
        while r < rows {
            value_rows::<1, 4>(acc, p, v, r, words, dh);
            r += 1;
        }
    }

    #[inline(always)]
    unsafe fn value_rows<const R: usize, const DV: usize>(acc: &mut [f32], p: &[u32], v: &[u32], r0: usize, words: usize, dh: usize) {
        let (ap, pp, vp) = (acc.as_mut_ptr(), p.as_ptr(), v.as_ptr());
        for c0 in (0..dh).step_by(16 * DV) {
            let mut a = [[_mm512_setzero_ps(); DV]; R];
            for (i, row) in a.iter_mut().enumerate() {
                for (d, x) in row.iter_mut().enumerate() {
                    *x = _mm512_loadu_ps(ap.add((r0 + i) * dh + c0 + 16 * d));
                }
            }
            for w in 0..words {
                let mut x = [transmute::<__m512i, __m512bh>(_mm512_setzero_si512()); DV];
                for (d, x) in x.iter_mut().enumerate() {
                    *x = transmute::<__m512i, __m512bh>(_mm512_loadu_si512(vp.add(w * dh + c0 + 16 * d).cast()));
                }
                for (i, row) in a.iter_mut().enumerate() {
                    let pw = transmute::<__m512i, __m512bh>(_mm512_set1_epi32(*pp.add((r0 + i) * words + w) as i32));
                    for (d, y) in row.iter_mut().enumerate() {
                        *y = _mm512_dpbf16_ps(*y, x[d], pw);
                    }
                }
            }
            for (i, row) in a.iter().enumerate() {
                for (d, &x) in row.iter().enumerate() {
                    _mm512_storeu_ps(ap.add((r0 + i) * dh + c0 + 16 * d), x);
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    // `available` is false off x86-64: nothing calls these.
    use half::f16;
    pub(super) unsafe fn words_of_f32(_: &[f32], _: &mut [u32]) {
        unreachable!()
    }
    pub(super) unsafe fn words_of_f16(_: &[f16], _: &mut [u32]) {
        unreachable!()
    }
    pub(super) unsafe fn side_by_side(_: &[u32], _: &mut [u32], _: usize, _: usize) {
        unreachable!()
    }
    pub(super) unsafe fn scores(_: &mut [f32], _: &[u32], _: &[u32], _: usize, _: usize, _: usize, _: usize) {
        unreachable!()
    }
    pub(super) unsafe fn probability_words(_: &[f32], _: &mut [u32], _: usize, _: usize, _: usize) {
        unreachable!()
    }
    pub(super) unsafe fn value_pairs(_: &[f16], _: &mut [u32], _: usize, _: usize, _: usize) {
        unreachable!()
    }
    pub(super) unsafe fn weighted_values(_: &mut [f32], _: &[u32], _: &[u32], _: usize, _: usize, _: usize) {
        unreachable!()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    fn round(x: f32) -> f64 {
        bf16::from_f32(x).to_f64()
    }

    /// Both products against f64 sums of the same bf16-rounded numbers, at head sizes 64, 128
    /// and 256, with whole and partial key tiles and row counts that leave remainders.
    #[test]
    fn products_are_the_sums_of_the_rounded_numbers() {
        if !available(64) {
            eprintln!("skipped: this CPU has no AVX512_BF16");
            return;
        }
        let value = |i: usize| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 3.0;
        for (rows, bk, dh) in [(19, 128, 128), (192, 128, 128), (13, 37, 64), (9, 100, 256), (30, 1, 128)] {
            let q: Vec<f32> = (0..rows * dh).map(value).collect();
            let k: Vec<f16> = (0..bk * dh).map(|i| f16::from_f32(value(i + 17))).collect();
            let v: Vec<f16> = (0..bk * dh).map(|i| f16::from_f32(value(i + 31))).collect();
            let mut products = Bf16Products::new(&q, rows, dh);
            let mut s = vec![f32::NAN; rows * bk];
            products.scores(&mut s, &k, bk, dh);
            for i in 0..rows {
                for j in 0..bk {
                    let terms = (0..dh).map(|d| round(q[i * dh + d]) * round(k[j * dh + d].to_f32()));
                    let (want, size) = terms.fold((0.0, 0.0), |(s, a), t| (s + t, a + t.abs()));
                    let got = s[i * bk + j] as f64;
                    // f32 sums of exact products: within a few f32 roundings of the terms' size.
                    assert!(
                        (got - want).abs() <= 4e-6 * size,
                        "{rows}x{bk}x{dh}: s[{i}, {j}] {got} against {want}"
                    );
                }
            }
            // Probabilities in [0, 1], added to an accumulator that already holds something.
            let p: Vec<f32> = (0..rows * bk).map(|i| value(i + 5).abs() / 1.5).collect();
            let start: Vec<f32> = (0..rows * dh).map(|i| value(i + 3)).collect();
            let mut acc = start.clone();
            products.weighted_values(&mut acc, &p, &v, bk, dh);
            for i in 0..rows {
                for c in 0..dh {
                    let terms = (0..bk).map(|j| round(p[i * bk + j]) * round(v[j * dh + c].to_f32()));
                    let (sum, size) = terms.fold((0.0, 0.0), |(s, a), t| (s + t, a + t.abs()));
                    let (want, got) = (start[i * dh + c] as f64 + sum, acc[i * dh + c] as f64);
                    let size = size + (start[i * dh + c] as f64).abs();
                    assert!(
                        (got - want).abs() <= 4e-6 * size,
                        "{rows}x{bk}x{dh}: acc[{i}, {c}] {got} against {want}"
                    );
                }
            }
        }
    }
}

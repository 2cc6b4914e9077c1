//! The dense kernels of the forward pass: f32 matrix multiply (through `gemm`, for attention's
//! tiles), linear layers (through [`crate::Matrix`]), norms, activations. Activations are f32,
//! row-major, on contiguous slices.

use crate::config::{Activation, NormKind};
use crate::weights::{Linear, NormWeights};

/// `out[m, n] = a[m, k] · w[n, k]^T`, or `+=` when `accumulate`. `w` is row-major `[n, k]`, the
/// layout of a linear layer's weight. Threads: all of rayon's pool when `parallel`.
#[allow(clippy::too_many_arguments)] // a GEMM's shape and flags, kept flat as BLAS keeps them
pub fn matmul_t(out: &mut [f32], a: &[f32], w: &[f32], m: usize, k: usize, n: usize, accumulate: bool, parallel: bool) {
    matmul_t_strided(out, n, a, w, m, k, n, accumulate, parallel);
}

/// [`matmul_t`] into the first `n` columns of an output whose rows are `out_stride` apart.
#[allow(clippy::too_many_arguments)]
pub fn matmul_t_strided(
    out: &mut [f32],
    out_stride: usize,
    a: &[f32],
    w: &[f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        n <= out_stride && out.len() >= (m - 1) * out_stride + n && a.len() >= m * k && w.len() >= n * k,
        "matmul_t: buffers smaller than their shapes"
    );
    let par = if parallel {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the assertion above bounds every index gemm touches: dst[i, j] = out[i * out_stride
    // + j] for i < m, j < n; lhs [m, k] with row stride k; rhs[i, j] = w[j * k + i] for i < k,
    // j < n.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            out_stride as isize,
            accumulate,
            a.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// `out[m, n] = a[m, k] · b[k, n]` with `b` row-major `[k, n]`, single-threaded (for the small
/// tiles of attention).
pub fn matmul_nn(out: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize, accumulate: bool) {
    assert!(
        out.len() >= m * n && a.len() >= m * k && b.len() >= k * n,
        "matmul_nn: buffers smaller than their shapes"
    );
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: bounds asserted above; b[i, j] = b[i * n + j].
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

impl Linear {
    /// `x[m, n_in] -> [m, n_out]`
    pub fn forward(&self, x: &[f32], m: usize) -> Vec<f32> {
        let mut out = vec![0.0; m * self.n_out()];
        self.forward_into(&mut out, x, m);
        out
    }

    pub fn forward_into(&self, out: &mut [f32], x: &[f32], m: usize) {
        self.w.matmul(out, x, m);
        if let Some(b) = &self.b {
            for row in out.chunks_exact_mut(self.n_out()).take(m) {
                row.iter_mut().zip(b).for_each(|(y, b)| *y += b);
            }
        }
    }
}

/// Normalise each `dim`-wide row of `x` into `out`.
pub fn norm_rows(out: &mut [f32], x: &[f32], dim: usize, kind: NormKind, eps: f32, w: &NormWeights) {
    out[..x.len()].copy_from_slice(x);
    norm_rows_in_place(&mut out[..x.len()], dim, kind, eps, w);
}

/// Normalise each `dim`-wide row of `x` in place.
pub fn norm_rows_in_place(x: &mut [f32], dim: usize, kind: NormKind, eps: f32, w: &NormWeights) {
    for row in x.chunks_exact_mut(dim) {
        match kind {
            NormKind::RmsNorm => {
                let scale = rms_scale(row, eps);
                for (x, &w) in row.iter_mut().zip(&w.w) {
                    *x = w * (*x * scale);
                }
            }
            NormKind::LayerNorm => {
                let n = dim as f64;
                let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n;
                let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
                let inv = (1.0 / (var + eps as f64).sqrt()) as f32;
                let mean = mean as f32;
                for (j, x) in row.iter_mut().enumerate() {
                    *x = (*x - mean) * inv * w.w[j] + w.b.as_ref().map_or(0.0, |b| b[j]);
                }
            }
        }
    }
}

/// What a norm divides a row by (TransformerLens's `hook_scale`): `sqrt(mean(x^2) + eps)` for
/// RMSNorm, `sqrt(var(x) + eps)` for LayerNorm, accumulated in f64.
pub fn norm_scale(row: &[f32], kind: NormKind, eps: f32) -> f32 {
    let n = row.len() as f64;
    let centre = match kind {
        NormKind::RmsNorm => 0.0,
        NormKind::LayerNorm => row.iter().map(|&v| v as f64).sum::<f64>() / n,
    };
    let ms = row.iter().map(|&v| (v as f64 - centre).powi(2)).sum::<f64>() / n;
    (ms + eps as f64).sqrt() as f32
}

/// `1 / sqrt(mean(x^2) + eps)`, accumulated in f64.
pub fn rms_scale(row: &[f32], eps: f32) -> f32 {
    let ms = row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / row.len() as f64;
    (1.0 / (ms + eps as f64).sqrt()) as f32
}

#[inline(always)]
pub fn activate(x: f32, act: Activation) -> f32 {
    match act {
        Activation::Silu => x / (1.0 + fast_exp(-x)),
        Activation::GeluTanh => {
            const C: f32 = 0.797_884_6; // sqrt(2 / pi)
                                        // tanh(y) = 1 - 2 / (e^2y + 1), in arithmetic that vectorises.
            let y = C * (x + 0.044715 * x * x * x);
            let tanh = 1.0 - 2.0 / (fast_exp(2.0 * y) + 1.0);
            0.5 * x * (1.0 + tanh)
        }
        Activation::Gelu => 0.5 * x * (1.0 + libm::erff(x / std::f32::consts::SQRT_2)),
        Activation::Relu => x.max(0.0),
        // The gate's half of gpt-oss's unit (the up projection's clamp and + 1 are applied
        // where the two meet, in `mlp_activation`).
        Activation::SwigluOai { alpha, limit } => swiglu_oai_gate(x, alpha, limit),
    }
}

/// gpt-oss's gate: `g * sigmoid(alpha * g)` of the gate clamped above at `limit`.
#[inline(always)]
fn swiglu_oai_gate(x: f32, alpha: f32, limit: f32) -> f32 {
    let g = x.min(limit);
    g / (1.0 + fast_exp(-alpha * g))
}

/// `e^x` to within 2 ulp, in straight-line arithmetic the compiler vectorises (Cody-Waite range
/// reduction, Cephes polynomial). Arguments below the f32 range give 0.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let underflow = x < -87.336_55;
    // Below 88 the exponent 2^n stays finite (n <= 127).
    let x = x.clamp(-87.336_55, 88.0);
    let n = (x * LOG2E).round_ties_even();
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // SAFETY: x is clamped, so n is a finite integer in [-126, 127]; an unchecked conversion
    // (unlike `as`) vectorises.
    let n = unsafe { n.to_int_unchecked::<i32>() };
    let scale = f32::from_bits(((n + 127) as u32) << 23);
    if underflow {
        0.0
    } else {
        y * scale
    }
}

/// The MLP's hidden activation, computed in place: gated MLPs' rows `[gate | up]` (2 x `d_mlp`
/// wide) become `act(gate) * up` (`d_mlp` wide), packed at the front of `h`, which is then
/// truncated to `rows * d_mlp` (row r's result lands at `r * d_mlp`, over inputs already read),
/// so the MLP's widest activation is never held twice.
pub fn mlp_activation(h: Vec<f32>, rows: usize, d_mlp: usize, gated: bool, act: Activation) -> Vec<f32> {
    // One loop per function, so that each is vectorised with its function inlined.
    let up = |u: f32| u;
    match act {
        Activation::Silu => activate_rows(h, rows, d_mlp, gated, |x| activate(x, Activation::Silu), up),
        Activation::GeluTanh => activate_rows(h, rows, d_mlp, gated, |x| activate(x, Activation::GeluTanh), up),
        Activation::Gelu => activate_rows(h, rows, d_mlp, gated, |x| activate(x, Activation::Gelu), up),
        Activation::Relu => activate_rows(h, rows, d_mlp, gated, |x| activate(x, Activation::Relu), up),
        Activation::SwigluOai { alpha, limit } => activate_rows(
            h,
            rows,
            d_mlp,
            gated,
            |x| swiglu_oai_gate(x, alpha, limit),
            |u: f32| u.clamp(-limit, limit) + 1.0,
        ),
    }
}

/// `f(gate) * up(u)` per gated pair, or `f(x)` per value.
#[inline(always)]
fn activate_rows(mut h: Vec<f32>, rows: usize, d_mlp: usize, gated: bool, f: impl Fn(f32) -> f32, up_of: impl Fn(f32) -> f32) -> Vec<f32> {
    if gated {
        // Row r's result goes to `r * d_mlp`, below its inputs at `2 r * d_mlp` (disjoint
        // slices from row 1 on; row 0's gate, which it overwrites, is copied first): 1.1-1.5x
        // as fast as passing every row through a buffer on a Zen 4 (the `activation` example,
        // bench/RESULTS.md).
        if rows > 0 {
            let gate0 = h[..d_mlp].to_vec();
            let (dst, rest) = h.split_at_mut(d_mlp);
            gated_row(dst, &gate0, &rest[..d_mlp], &f, &up_of);
        }
        for r in 1..rows {
            let (dst, src) = h.split_at_mut(2 * r * d_mlp);
            let (gate, up) = src[..2 * d_mlp].split_at(d_mlp);
            gated_row(&mut dst[r * d_mlp..(r + 1) * d_mlp], gate, up, &f, &up_of);
        }
    } else {
        h.iter_mut().for_each(|x| *x = f(*x));
    }
    h.truncate(rows * d_mlp);
    h
}

/// `out = f(gate) * up_of(up)`, element by element. Kept out of line so that `f` has one call
/// site, where it is inlined and the loop vectorised.
#[inline(never)]
fn gated_row(out: &mut [f32], gate: &[f32], up: &[f32], f: &impl Fn(f32) -> f32, up_of: &impl Fn(f32) -> f32) {
    out.iter_mut().zip(gate).zip(up).for_each(|((o, &g), &u)| *o = f(g) * up_of(u));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_matches_naive() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut out = vec![0.0; m * n];
        matmul_t(&mut out, &a, &w, m, k, n, false, true);
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|t| a[i * k + t] * w[j * k + t]).sum();
                assert!((out[i * n + j] - want).abs() < 1e-5);
            }
        }
        let mut acc = out.clone();
        matmul_t(&mut acc, &a, &w, m, k, n, true, false);
        acc.iter().zip(&out).for_each(|(x, y)| assert!((x - 2.0 * y).abs() < 1e-5));

        let b: Vec<f32> = (0..k * n).map(|i| i as f32 * 0.01).collect();
        let mut nn = vec![0.0; m * n];
        matmul_nn(&mut nn, &a, &b, m, k, n, false);
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|t| a[i * k + t] * b[t * n + j]).sum();
                assert!((nn[i * n + j] - want).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn gated_activation_in_place() {
        let (rows, d) = (3, 4);
        let h: Vec<f32> = (0..rows * 2 * d).map(|i| i as f32 * 0.1 - 1.0).collect();
        let got = mlp_activation(h.clone(), rows, d, true, Activation::Silu);
        for r in 0..rows {
            for j in 0..d {
                let want = activate(h[2 * r * d + j], Activation::Silu) * h[(2 * r + 1) * d + j];
                assert_eq!(got[r * d + j], want);
            }
        }
    }

    #[test]
    fn activations() {
        assert!((activate(1.0, Activation::Silu) - 0.731_058_6).abs() < 1e-6);
        assert!((activate(1.0, Activation::GeluTanh) - 0.841_192).abs() < 1e-5);
        assert!((activate(1.0, Activation::Gelu) - 0.841_344_7).abs() < 1e-6);
        assert_eq!(activate(-2.0, Activation::Relu), 0.0);
    }
}

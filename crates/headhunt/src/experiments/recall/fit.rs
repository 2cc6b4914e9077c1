//! Least squares for the MLP decomposition `y_p ≈ Σ_i β_i c_{i,p} + b`: one scalar per
//! component, one vector shared by every prompt.
//!
//! The intercept is unconstrained per dimension, so it absorbs the means: with centred data
//! `ỹ_p = Σ_i β_i c̃_{i,p}`, the normal equations are `A β = r`, `A_ij = Σ_p ⟨c̃_i, c̃_j⟩`,
//! `r_i = Σ_p ⟨c̃_i, ỹ⟩`, and `b = ȳ - Σ_i β_i c̄_i`. `A` is solved through its
//! eigendecomposition, so collinear components get the minimum-norm β.

use anyhow::{bail, Result};

#[derive(Debug, Clone)]
pub struct Fit {
    pub betas: Vec<f64>,
    pub intercept: Vec<f64>,
    /// Share of the targets' variance (around their mean) the fit explains.
    pub r2: f64,
}

/// Fit `targets[p] ≈ Σ_i betas[i] * components[p][i] + intercept`.
pub fn fit(components: &[Vec<Vec<f32>>], targets: &[Vec<f32>]) -> Result<Fit> {
    let n = targets.len();
    if n < 2 || components.len() != n {
        bail!("the decomposition needs components and targets for at least two prompts");
    }
    let (k, d) = (components[0].len(), targets[0].len());
    if components.iter().any(|c| c.len() != k || c.iter().any(|v| v.len() != d)) || targets.iter().any(|t| t.len() != d) {
        bail!("every prompt must have the same components of the same width");
    }
    let mean = |rows: &mut dyn Iterator<Item = &Vec<f32>>| -> Vec<f64> {
        let mut m = vec![0.0f64; d];
        for r in rows {
            m.iter_mut().zip(r).for_each(|(a, &b)| *a += b as f64);
        }
        m.iter_mut().for_each(|a| *a /= n as f64);
        m
    };
    let y_mean = mean(&mut targets.iter());
    let c_mean: Vec<Vec<f64>> = (0..k).map(|i| mean(&mut components.iter().map(|c| &c[i]))).collect();
    let mut a = vec![0.0f64; k * k];
    let mut r = vec![0.0f64; k];
    let mut centred = vec![vec![0.0f64; d]; k];
    for p in 0..n {
        for i in 0..k {
            for (x, (&v, &m)) in centred[i].iter_mut().zip(components[p][i].iter().zip(&c_mean[i])) {
                *x = v as f64 - m;
            }
        }
        let y: Vec<f64> = targets[p].iter().zip(&y_mean).map(|(&v, &m)| v as f64 - m).collect();
        for i in 0..k {
            r[i] += dot(&centred[i], &y);
            for j in i..k {
                let v = dot(&centred[i], &centred[j]);
                a[i * k + j] += v;
                if i != j {
                    a[j * k + i] += v;
                }
            }
        }
    }
    let betas = solve_symmetric(&a, &r, k);
    let intercept: Vec<f64> = (0..d)
        .map(|x| y_mean[x] - (0..k).map(|i| betas[i] * c_mean[i][x]).sum::<f64>())
        .collect();
    let (mut ss_res, mut ss_tot) = (0.0, 0.0);
    for p in 0..n {
        for x in 0..d {
            let pred = intercept[x] + (0..k).map(|i| betas[i] * components[p][i][x] as f64).sum::<f64>();
            ss_res += (targets[p][x] as f64 - pred).powi(2);
            ss_tot += (targets[p][x] as f64 - y_mean[x]).powi(2);
        }
    }
    Ok(Fit {
        betas,
        intercept,
        r2: if ss_tot > 0.0 { 1.0 - ss_res / ss_tot } else { 1.0 },
    })
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Minimum-norm solution of `A x = r` for symmetric positive semi-definite `A` (`k x k`), by
/// Jacobi eigendecomposition: eigenvalues below `1e-12` of the largest are treated as zero.
fn solve_symmetric(a: &[f64], r: &[f64], k: usize) -> Vec<f64> {
    let mut m = a.to_vec();
    let mut v = vec![0.0f64; k * k];
    for i in 0..k {
        v[i * k + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..k)
            .flat_map(|i| (0..k).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| m[i * k + j].powi(2))
            .sum();
        let diag: f64 = (0..k).map(|i| m[i * k + i].powi(2)).sum();
        if off <= 1e-30 * diag.max(1e-300) {
            break;
        }
        for p in 0..k {
            for q in p + 1..k {
                let apq = m[p * k + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (m[q * k + q] - m[p * k + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for i in 0..k {
                    let (mip, miq) = (m[i * k + p], m[i * k + q]);
                    m[i * k + p] = c * mip - s * miq;
                    m[i * k + q] = s * mip + c * miq;
                }
                for j in 0..k {
                    let (mpj, mqj) = (m[p * k + j], m[q * k + j]);
                    m[p * k + j] = c * mpj - s * mqj;
                    m[q * k + j] = s * mpj + c * mqj;
                }
                for i in 0..k {
                    let (vip, viq) = (v[i * k + p], v[i * k + q]);
                    v[i * k + p] = c * vip - s * viq;
                    v[i * k + q] = s * vip + c * viq;
                }
            }
        }
    }
    let eig: Vec<f64> = (0..k).map(|i| m[i * k + i]).collect();
    let top = eig.iter().copied().fold(0.0f64, f64::max);
    let mut x = vec![0.0f64; k];
    for e in 0..k {
        if eig[e] <= 1e-12 * top {
            continue;
        }
        // x += v_e (v_e . r) / lambda_e
        let proj: f64 = (0..k).map(|i| v[i * k + e] * r[i]).sum::<f64>() / eig[e];
        for i in 0..k {
            x[i] += v[i * k + e] * proj;
        }
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_planted_coefficients_and_intercept() {
        let (n, k, d) = (40, 3, 5);
        let mut seed = 1u64;
        let mut rnd = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as f64 / (1u64 << 31) as f64 - 0.5) as f32
        };
        let comps: Vec<Vec<Vec<f32>>> = (0..n).map(|_| (0..k).map(|_| (0..d).map(|_| rnd()).collect()).collect()).collect();
        let (beta, b) = ([0.5, -1.25, 2.0], [0.3f32, -0.1, 0.0, 1.0, 2.5]);
        let targets: Vec<Vec<f32>> = comps
            .iter()
            .map(|c| {
                (0..d)
                    .map(|x| b[x] + (0..k).map(|i| beta[i] as f32 * c[i][x]).sum::<f32>())
                    .collect()
            })
            .collect();
        let f = fit(&comps, &targets).unwrap();
        for (got, want) in f.betas.iter().zip(beta) {
            assert!((got - want).abs() < 1e-5, "{:?}", f.betas);
        }
        for (got, &want) in f.intercept.iter().zip(&b) {
            assert!((got - want as f64).abs() < 1e-5);
        }
        assert!(f.r2 > 0.999_999);
    }

    #[test]
    fn collinear_components_get_the_minimum_norm_solution() {
        // Two identical components: any split of the coefficient fits; the minimum norm splits
        // it evenly.
        let comps: Vec<Vec<Vec<f32>>> = (0..10).map(|p| vec![vec![p as f32, 1.0], vec![p as f32, 1.0]]).collect();
        let targets: Vec<Vec<f32>> = (0..10).map(|p| vec![2.0 * p as f32, 2.0]).collect();
        let f = fit(&comps, &targets).unwrap();
        assert!((f.betas[0] - 1.0).abs() < 1e-9 && (f.betas[1] - 1.0).abs() < 1e-9, "{:?}", f.betas);
    }
}

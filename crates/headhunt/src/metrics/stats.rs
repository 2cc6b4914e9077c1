//! Statistics for the experiments: bootstrap intervals, the area under the ROC curve, and an
//! L2-regularised logistic regression (the classifier Lookback Lens trains).

use anyhow::{bail, Result};

use crate::experiments::retrieval::niah::haystack::Rng;

/// A `level` (e.g. 0.95) percentile bootstrap interval of the mean of `values`.
pub fn bootstrap_mean(values: &[f64], level: f64, resamples: usize, seed: u64) -> (f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = values.len();
    bootstrap(n, level, resamples, seed, |idx| {
        idx.iter().map(|&i| values[i]).sum::<f64>() / n as f64
    })
}

/// A `level` percentile bootstrap interval of `statistic` over resamples (with replacement) of
/// the indices `0..n`; resamples where it is undefined (NaN) are drawn again.
pub fn bootstrap(n: usize, level: f64, resamples: usize, seed: u64, statistic: impl Fn(&[usize]) -> f64) -> (f64, f64) {
    if n == 0 || resamples == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mut rng = Rng(seed ^ 0x2545_F491_4F6C_DD1D);
    let mut values = Vec::with_capacity(resamples);
    let mut idx = vec![0; n];
    let mut tries = 0;
    while values.len() < resamples && tries < 20 * resamples {
        tries += 1;
        idx.iter_mut().for_each(|i| *i = rng.below(n));
        let v = statistic(&idx);
        if !v.is_nan() {
            values.push(v);
        }
    }
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    values.sort_by(f64::total_cmp);
    let last = values.len() - 1;
    let at = |q: f64| values[((q * last as f64).round() as usize).min(last)];
    let tail = (1.0 - level) / 2.0;
    (at(tail), at(1.0 - tail))
}

/// Area under the ROC curve of `scores` (higher: more likely positive) against `labels`
/// (true: positive): the Mann-Whitney statistic with ties counted half. NaN without both classes.
pub fn auroc(scores: &[f64], labels: &[bool]) -> f64 {
    let ranks = crate::experiments::retrieval::ranks(scores);
    let pos = labels.iter().filter(|&&l| l).count();
    let neg = labels.len() - pos;
    if pos == 0 || neg == 0 {
        return f64::NAN;
    }
    let sum: f64 = ranks.iter().zip(labels).filter(|(_, &l)| l).map(|(r, _)| r).sum();
    (sum - (pos * (pos + 1)) as f64 / 2.0) / (pos * neg) as f64
}

/// The ROC curve's points (false positive rate, true positive rate), from (0, 0) to (1, 1), one
/// per distinct score.
pub fn roc_curve(scores: &[f64], labels: &[bool]) -> Vec<(f64, f64)> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let pos = labels.iter().filter(|&&l| l).count().max(1) as f64;
    let neg = labels.iter().filter(|&&l| !l).count().max(1) as f64;
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut out = vec![(0.0, 0.0)];
    for (k, &i) in idx.iter().enumerate() {
        if labels[i] {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        if idx.get(k + 1).is_none_or(|&j| scores[j] != scores[i]) {
            out.push((fp / neg, tp / pos));
        }
    }
    out
}

/// A logistic regression `p = σ(w·x + b)` minimising the summed log-loss plus `‖w‖² / (2C)`
/// (the intercept not penalised): scikit-learn's `LogisticRegression(C=C)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Logistic {
    pub weights: Vec<f64>,
    pub intercept: f64,
    /// Feature means and scales applied before the weights (identity unless standardised).
    pub shift: Vec<f64>,
    pub scale: Vec<f64>,
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

impl Logistic {
    /// Fit by Newton's method (exact for this smooth, strictly convex objective).
    pub fn fit(x: &[Vec<f64>], y: &[bool], c: f64) -> Result<Self> {
        let d = x.first().map_or(0, Vec::len);
        if x.len() != y.len() || x.iter().any(|r| r.len() != d) {
            bail!("a logistic regression needs one label per row and rows of one length");
        }
        if !y.iter().any(|&l| l) || y.iter().all(|&l| l) {
            bail!("a logistic regression needs both classes in its training set");
        }
        let n1 = d + 1;
        let mut theta = vec![0.0; n1];
        for _ in 0..100 {
            let mut grad = vec![0.0; n1];
            let mut hess = vec![0.0; n1 * n1];
            for (row, &label) in x.iter().zip(y) {
                let z = theta[d] + row.iter().zip(&theta).map(|(a, b)| a * b).sum::<f64>();
                let p = sigmoid(z);
                let (r, w) = (p - if label { 1.0 } else { 0.0 }, p * (1.0 - p));
                let feat = |i: usize| if i == d { 1.0 } else { row[i] };
                for i in 0..n1 {
                    grad[i] += r * feat(i);
                    let wi = w * feat(i);
                    for j in 0..=i {
                        hess[i * n1 + j] += wi * feat(j);
                    }
                }
            }
            for i in 0..d {
                grad[i] += theta[i] / c;
                hess[i * n1 + i] += 1.0 / c;
            }
            for i in 0..n1 {
                for j in 0..i {
                    hess[j * n1 + i] = hess[i * n1 + j];
                }
            }
            let step = cholesky_solve(&mut hess, &grad, n1)?;
            theta.iter_mut().zip(&step).for_each(|(t, s)| *t -= s);
            if step.iter().map(|s| s * s).sum::<f64>().sqrt() < 1e-12 * (1.0 + theta.iter().map(|t| t * t).sum::<f64>().sqrt()) {
                break;
            }
        }
        let intercept = theta.pop().expect("the intercept");
        Ok(Logistic {
            weights: theta,
            intercept,
            shift: vec![0.0; d],
            scale: vec![1.0; d],
        })
    }

    /// [`Logistic::fit`] on features standardised by the training set's means and standard
    /// deviations (a constant feature is left unscaled).
    pub fn fit_standardised(x: &[Vec<f64>], y: &[bool], c: f64) -> Result<Self> {
        let d = x.first().map_or(0, Vec::len);
        let n = x.len().max(1) as f64;
        let shift: Vec<f64> = (0..d).map(|j| x.iter().map(|r| r[j]).sum::<f64>() / n).collect();
        let scale: Vec<f64> = (0..d)
            .map(|j| {
                let sd = (x.iter().map(|r| (r[j] - shift[j]).powi(2)).sum::<f64>() / n).sqrt();
                if sd > 1e-12 {
                    sd
                } else {
                    1.0
                }
            })
            .collect();
        let z: Vec<Vec<f64>> = x.iter().map(|r| (0..d).map(|j| (r[j] - shift[j]) / scale[j]).collect()).collect();
        let mut m = Self::fit(&z, y, c)?;
        m.shift = shift;
        m.scale = scale;
        Ok(m)
    }

    /// Probability of the positive class.
    pub fn predict(&self, row: &[f64]) -> f64 {
        let z: f64 = row
            .iter()
            .enumerate()
            .map(|(j, v)| self.weights[j] * (v - self.shift[j]) / self.scale[j])
            .sum();
        sigmoid(z + self.intercept)
    }
}

/// Solve `a x = b` for a symmetric positive definite `a` (`n x n`, overwritten by its factor).
fn cholesky_solve(a: &mut [f64], b: &[f64], n: usize) -> Result<Vec<f64>> {
    for j in 0..n {
        let mut s = a[j * n + j];
        for k in 0..j {
            s -= a[j * n + k] * a[j * n + k];
        }
        if s <= 0.0 {
            bail!("the logistic regression's Hessian is not positive definite");
        }
        let d = s.sqrt();
        a[j * n + j] = d;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / d;
        }
    }
    let mut y = b.to_vec();
    for i in 0..n {
        for k in 0..i {
            y[i] -= a[i * n + k] * y[k];
        }
        y[i] /= a[i * n + i];
    }
    for i in (0..n).rev() {
        for k in i + 1..n {
            y[i] -= a[k * n + i] * y[k];
        }
        y[i] /= a[i * n + i];
    }
    Ok(y)
}

/// Out-of-fold predictions of a standardised logistic regression over `k` folds, stratified by
/// label (each class shuffled with `seed`, then dealt round-robin).
pub fn cross_validated(x: &[Vec<f64>], y: &[bool], k: usize, c: f64, seed: u64) -> Result<Vec<f64>> {
    let mut rng = Rng(seed ^ 0x5EED_CF01D);
    let mut fold = vec![0; x.len()];
    for class in [true, false] {
        let mut members: Vec<usize> = (0..y.len()).filter(|&i| y[i] == class).collect();
        for i in (1..members.len()).rev() {
            let j = rng.below(i + 1);
            members.swap(i, j);
        }
        for (r, &i) in members.iter().enumerate() {
            fold[i] = r % k;
        }
    }
    let mut out = vec![f64::NAN; x.len()];
    for f in 0..k {
        let train: Vec<usize> = (0..x.len()).filter(|&i| fold[i] != f).collect();
        let xs: Vec<Vec<f64>> = train.iter().map(|&i| x[i].clone()).collect();
        let ys: Vec<bool> = train.iter().map(|&i| y[i]).collect();
        let model = Logistic::fit_standardised(&xs, &ys, c)?;
        for i in (0..x.len()).filter(|&i| fold[i] == f) {
            out[i] = model.predict(&x[i]);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_counts_pairs() {
        // Positives 0.9 and 0.4, negatives 0.5 and 0.1: 3 of 4 pairs ordered.
        assert_eq!(auroc(&[0.9, 0.4, 0.5, 0.1], &[true, true, false, false]), 0.75);
        // A tie between a positive and a negative counts half.
        assert_eq!(auroc(&[0.5, 0.5], &[true, false]), 0.5);
        assert!(auroc(&[0.1, 0.2], &[true, true]).is_nan());
        let roc = roc_curve(&[0.9, 0.4, 0.5, 0.1], &[true, true, false, false]);
        assert_eq!(roc, vec![(0.0, 0.0), (0.0, 0.5), (0.5, 0.5), (0.5, 1.0), (1.0, 1.0)]);
    }

    #[test]
    fn logistic_regression_separates_and_stays_finite() {
        // Separable data: the penalty keeps the weights finite.
        let x: Vec<Vec<f64>> = (0..20).map(|i| vec![i as f64, (i % 3) as f64]).collect();
        let y: Vec<bool> = (0..20).map(|i| i >= 10).collect();
        let m = Logistic::fit(&x, &y, 1.0).unwrap();
        assert!(m.weights.iter().all(|w| w.is_finite()) && m.weights[0] > 0.0);
        assert!(m.predict(&[19.0, 0.0]) > 0.9 && m.predict(&[0.0, 0.0]) < 0.1);
        let oof = cross_validated(&x, &y, 5, 1.0, 3).unwrap();
        assert!(oof.iter().all(|p| p.is_finite()));
        assert!(auroc(&oof, &y) > 0.9);
        assert!(Logistic::fit(&x, &[true; 20], 1.0).is_err());
    }

    #[test]
    fn bootstrap_brackets_the_mean() {
        let v: Vec<f64> = (0..22).map(|i| if i % 3 == 0 { 0.0 } else { 100.0 }).collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let (lo, hi) = bootstrap_mean(&v, 0.95, 2000, 1);
        assert!(lo < mean && mean < hi && hi - lo > 10.0 && hi - lo < 60.0, "{lo} {mean} {hi}");
        assert_eq!(bootstrap_mean(&[50.0; 5], 0.95, 100, 1), (50.0, 50.0));
    }
}

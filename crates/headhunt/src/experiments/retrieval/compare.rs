//! How alike two sets of retrieval scores are: correlations of the per-head means and the
//! overlap of the top-k heads (two runs, two models' files, or a run against the paper's).

use anyhow::{bail, Result};

use super::{pearson, spearman, HeadScores};

/// Correlations and top-k overlaps of two score sets of the same shape.
pub struct Comparison {
    pub pearson: f64,
    pub spearman: f64,
    /// (k, heads in both top-k lists)
    pub overlap: Vec<(usize, usize)>,
}

pub fn compare(a: &HeadScores, b: &HeadScores, top: usize) -> Result<Comparison> {
    if (a.n_layers, a.n_heads) != (b.n_layers, b.n_heads) {
        bail!(
            "the score files describe different models ({} x {} heads against {} x {})",
            a.n_layers,
            a.n_heads,
            b.n_layers,
            b.n_heads
        );
    }
    let (ma, mb) = (a.means(), b.means());
    let (ra, rb) = (a.ranked(), b.ranked());
    let mut ks: Vec<usize> = [5, 10, 20, 50, top].into_iter().filter(|&k| k <= top && k <= ma.len()).collect();
    ks.sort_unstable();
    ks.dedup();
    let overlap = ks
        .into_iter()
        .map(|k| {
            let ta: Vec<usize> = ra[..k].iter().map(|r| r.0).collect();
            (k, rb[..k].iter().filter(|r| ta.contains(&r.0)).count())
        })
        .collect();
    Ok(Comparison {
        pearson: pearson(&ma, &mb),
        spearman: spearman(&ma, &mb),
        overlap,
    })
}

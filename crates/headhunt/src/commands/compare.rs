//! `headhunt compare`: how alike two sets of retrieval scores are.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::experiments::retrieval::compare::compare;
use crate::experiments::retrieval::HeadScores;
use crate::output::plot::{Figure, Heatmap, Heatmaps};

/// Compare two score files: headhunt's head_scores.json (or a run folder holding one) or the
/// retrieval-head paper's published JSON files, which load as they are. Prints the Pearson and
/// Spearman correlation of per-head mean scores and the overlap of the top-k heads, and draws
/// both heatmaps side by side.
#[derive(clap::Args, Debug)]
pub struct Args {
    pub a: PathBuf,
    pub b: PathBuf,
    /// Largest k for the top-k overlap table.
    #[arg(long, default_value_t = 20)]
    pub top: usize,
    /// Where to write compare.png/.svg. [default: the current folder]
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
}

/// The precisions a headhunt run folder (or the folder of a score file) was computed at, from
/// its provenance; none for files from elsewhere (the paper's scores).
fn precisions(p: &Path) -> Vec<String> {
    let dir = if p.is_dir() { p } else { p.parent().unwrap_or(p) };
    let Ok(text) = std::fs::read_to_string(dir.join("provenance.json")) else {
        return Vec::new();
    };
    let list: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap_or_default();
    let mut out: Vec<String> = list
        .iter()
        // Runs recorded before precisions were chosen were all exact.
        .map(|e| e["precision"].as_str().unwrap_or("exact").to_owned())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// A warning when the two runs' arithmetic differs, so their differences are not all the model's.
fn precision_warning(a: &Path, b: &Path) -> Option<String> {
    let (pa, pb) = (precisions(a), precisions(b));
    (!pa.is_empty() && !pb.is_empty() && pa != pb).then(|| {
        format!(
            "warning: A was computed at precision {} and B at {}: part of their difference is the arithmetic (--precision)",
            pa.join("+"),
            pb.join("+")
        )
    })
}

pub fn run(args: Args) -> Result<()> {
    let (a, b) = (HeadScores::load(&args.a)?, HeadScores::load(&args.b)?);
    let cmp = compare(&a, &b, args.top)?;
    if let Some(w) = precision_warning(&args.a, &args.b) {
        eprintln!("{w}");
    }
    println!("A: {} ({} trials)", args.a.display(), a.trials());
    println!("B: {} ({} trials)", args.b.display(), b.trials());
    println!(
        "per-head mean scores: Pearson r = {:.3}, Spearman rho = {:.3}",
        cmp.pearson, cmp.spearman
    );
    for (k, n) in &cmp.overlap {
        println!("top-{k:<3} overlap: {n}/{k}");
    }
    let name = |p: &Path| p.file_stem().and_then(|s| s.to_str()).unwrap_or("scores").to_owned();
    let panel = |s: &HeadScores, p: &Path| {
        let mut h = Heatmap::heads(
            &format!("{} (A vs B)", name(p)),
            s.n_layers,
            s.n_heads,
            s.means(),
            "mean retrieval score",
        );
        h.title = name(if p.is_dir() {
            p
        } else {
            p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(p)
        });
        h
    };
    let (mut pa, mut pb) = (panel(&a, &args.a), panel(&b, &args.b));
    pa.title = format!("A: {}", pa.title);
    pb.title = format!("B: {}", pb.title);
    let hi = pa.range.1.max(pb.range.1);
    pa.range.1 = hi;
    pb.range.1 = hi;
    let stem = args.out.unwrap_or_default().join("compare");
    let [png, _] = Heatmaps(vec![pa, pb]).save(&stem)?;
    println!("wrote {} and .svg", png.display());
    Ok(())
}

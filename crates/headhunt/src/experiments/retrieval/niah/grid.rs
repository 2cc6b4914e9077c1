//! The grid of trials (context lengths x depths x needles), shared by every command that runs
//! needle-in-a-haystack trials (its arguments: `commands::args::GridArgs`).

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::haystack::Haystack;
use super::needle::Needle;
use super::trial::TrialSpec;
use crate::runner::shard::Shard;

/// Default grid: sized so that `headhunt detect` on SmolLM2 finishes in minutes on 2 cores.
pub const DEFAULT_LENGTHS: &str = "600:3300:6";
pub const DEFAULT_DEPTHS: &str = "0:100:11";
pub const QUICK_LENGTHS: &str = "600:2400:3";
pub const QUICK_DEPTHS: &str = "0:100:3";

/// Parse `a,b,c` or `min:max:count` (evenly spaced, rounded like numpy's linspace).
pub fn parse_values(spec: &str, what: &str) -> Result<Vec<f64>> {
    let values = if let Some((range, count)) = spec.rsplit_once(':').filter(|_| spec.matches(':').count() == 2) {
        let (lo, hi) = range.split_once(':').expect("two colons");
        let lo: f64 = lo.trim().parse().with_context(|| format!("{what}: bad start `{lo}`"))?;
        let hi: f64 = hi.trim().parse().with_context(|| format!("{what}: bad end `{hi}`"))?;
        let n: usize = count.trim().parse().with_context(|| format!("{what}: bad count `{count}`"))?;
        if n == 0 || n > 1000 {
            bail!("{what}: count must be between 1 and 1000");
        }
        if n == 1 {
            vec![lo]
        } else {
            (0..n).map(|i| (lo + (hi - lo) * i as f64 / (n - 1) as f64).round()).collect()
        }
    } else {
        spec.split(',')
            .map(|v| v.trim().parse::<f64>().with_context(|| format!("{what}: `{v}` is not a number")))
            .collect::<Result<Vec<_>>>()?
    };
    if values.is_empty() || values.iter().any(|v| !v.is_finite() || *v < 0.0) {
        bail!("{what}: expected non-negative numbers, got `{spec}`");
    }
    Ok(values)
}

/// The trials of a grid, in its order: lengths, then depths, then `per_cell` needles taken in
/// turn from `needles`.
fn trials_in(lengths: &[usize], depths: &[f64], per_cell: usize, needles: usize) -> Vec<TrialSpec> {
    let mut out = Vec::new();
    let mut next_needle = 0;
    for &length in lengths {
        for &depth in depths {
            for _ in 0..per_cell {
                out.push(TrialSpec {
                    needle: next_needle % needles,
                    length,
                    depth,
                });
                next_needle += 1;
            }
        }
    }
    out
}

/// The shape of the grid a run folder's settings (`run.json`) describe.
pub struct GridShape {
    pub lengths: Vec<usize>,
    pub depths: Vec<f64>,
    pub per_cell: usize,
    pub needles: usize,
}

impl GridShape {
    pub fn of_settings(settings: &serde_json::Value) -> Result<GridShape> {
        let field = |k: &str| settings.get(k).cloned().with_context(|| format!("run.json lacks {k}"));
        let needles = field("needles")?.as_array().map_or(0, Vec::len);
        if needles == 0 {
            bail!("run.json names no needles");
        }
        Ok(GridShape {
            lengths: serde_json::from_value(field("lengths")?)?,
            depths: serde_json::from_value(field("depths")?)?,
            per_cell: serde_json::from_value(field("per_cell")?)?,
            needles,
        })
    }

    /// Its trials, in the grid's order.
    pub fn trials(&self) -> Vec<TrialSpec> {
        trials_in(&self.lengths, &self.depths, self.per_cell, self.needles)
    }
}

/// The grid a command runs, resolved from its arguments.
#[derive(Debug, Clone)]
pub struct Grid {
    pub lengths: Vec<usize>,
    pub depths: Vec<f64>,
    pub per_cell: usize,
    pub needles: Vec<Needle>,
    pub haystack: Haystack,
    pub chat: bool,
    /// The share of the trials this process runs (not part of the settings: every shard of a
    /// run has the same).
    pub shard: Option<Shard>,
    /// Whether trials continue from the prefix the previous one shared (not part of the
    /// settings: it changes how long a run takes, not what it records).
    pub prefix_cache: bool,
}

impl Grid {
    /// Every trial, in a fixed order: lengths, then depths, then needles taken in turn.
    pub fn trials(&self) -> Vec<TrialSpec> {
        trials_in(&self.lengths, &self.depths, self.per_cell, self.needles.len())
    }

    /// This process's trials: its shard's, or all.
    pub fn shard_trials(&self) -> Vec<TrialSpec> {
        self.trials()
            .into_iter()
            .enumerate()
            .filter(|(k, _)| self.shard.is_none_or(|s| s.takes(*k)))
            .map(|(_, t)| t)
            .collect()
    }

    pub fn max_length(&self) -> usize {
        self.lengths.iter().copied().max().unwrap_or(0)
    }

    /// The grid a run folder's settings describe, the reverse of [`Grid::settings`]: what
    /// rebuilds its trials' prompts.
    pub fn of_settings(settings: &serde_json::Value) -> Result<Grid> {
        let shape = GridShape::of_settings(settings)?;
        let haystack = settings["haystack"].as_str().context("run.json lacks haystack")?;
        Ok(Grid {
            lengths: shape.lengths,
            depths: shape.depths,
            per_cell: shape.per_cell,
            needles: serde_json::from_value(settings["needles"].clone()).context("run.json's needles")?,
            haystack: Haystack::from_description(haystack)?,
            chat: settings["chat"].as_bool().context("run.json lacks chat")?,
            shard: None,
            prefix_cache: true,
        })
    }

    /// What must match for two runs to share an output folder.
    pub fn settings(&self) -> serde_json::Value {
        json!({
            "lengths": self.lengths,
            "depths": self.depths,
            "per_cell": self.per_cell,
            "needles": self.needles,
            "haystack": self.haystack.describe(),
            "chat": self.chat,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_as_lists_or_ranges() {
        assert_eq!(
            parse_values("0:100:11", "d").unwrap(),
            (0..=10).map(|i| i as f64 * 10.0).collect::<Vec<_>>()
        );
        assert_eq!(
            parse_values("600:3300:6", "l").unwrap(),
            vec![600.0, 1140.0, 1680.0, 2220.0, 2760.0, 3300.0]
        );
        assert_eq!(parse_values("5, 7", "l").unwrap(), vec![5.0, 7.0]);
        assert!(parse_values("a,b", "l").is_err());
        assert!(parse_values("0:10:0", "l").is_err());
        assert!(parse_values("-5", "l").is_err());
    }
}

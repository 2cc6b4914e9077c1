//! The argument groups several commands share, each turned into the experiments' own settings:
//! the NIAH grid (`--lengths`, `--depths`, ...), the shard (`--shard`), which heads to mask
//! (`--mask-*`) and how (`--mask-mode`, `--mask-phase`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use headhunt_engine::Model;

use crate::experiments::retrieval::masking::{
    check_scores_fit, load_versus, parse_heads, random_heads, top_heads, Head, MaskHow, MaskModeArg, PhaseArg,
};
use crate::experiments::retrieval::niah::grid::{parse_values, Grid, DEFAULT_DEPTHS, DEFAULT_LENGTHS, QUICK_DEPTHS, QUICK_LENGTHS};
use crate::experiments::retrieval::niah::haystack::Haystack;
use crate::experiments::retrieval::niah::needle;
use crate::experiments::retrieval::HeadScores;
use crate::runner::shard::{resolve_shard, Shard, ShardSpec};

/// The needle-in-a-haystack grid's arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct GridArgs {
    /// Context lengths in tokens: a list (600,1200,2400) or MIN:MAX:COUNT, evenly spaced.
    /// [default: 600:3300:6]
    #[arg(long)]
    pub lengths: Option<String>,
    /// Needle depths in percent of the context: a list or MIN:MAX:COUNT. [default: 0:100:11]
    #[arg(long)]
    pub depths: Option<String>,
    /// Needles per (length, depth) cell, taken in turn from the needle set.
    #[arg(long, default_value_t = 1)]
    pub per_cell: usize,
    /// A small grid (3 lengths up to 2400 x 3 depths) for a first look.
    #[arg(long)]
    pub quick: bool,
    /// Needles as JSONL, one {"needle", "question", "real_needle"} per line (default: built in).
    #[arg(long)]
    pub needles: Option<PathBuf>,
    /// Haystack text: a file or a folder of .txt files, repeated to length (default: generated
    /// prose).
    #[arg(long)]
    pub haystack: Option<PathBuf>,
    /// Seed of the generated haystack.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Send prompts as plain text even when the model has a chat template.
    #[arg(long)]
    pub no_chat: bool,
    #[command(flatten)]
    pub shard: ShardArgs,
    /// Run every trial from an empty cache. By default the trials run in the order of their
    /// prompts, and each continues from the cached part of its prompt that the previous trial
    /// shared (the chat preamble and the haystack before the earlier needle): the same records,
    /// a fraction of the prefill.
    #[arg(long)]
    pub no_prefix_cache: bool,
}

impl GridArgs {
    pub fn resolve(&self) -> Result<Grid> {
        self.resolve_with(DEFAULT_LENGTHS, DEFAULT_DEPTHS)
    }

    /// Resolve with a command's own default lengths and depths.
    pub fn resolve_with(&self, default_lengths: &str, default_depths: &str) -> Result<Grid> {
        let (l, d) = match (self.quick, &self.lengths, &self.depths) {
            (true, None, None) => (QUICK_LENGTHS.to_owned(), QUICK_DEPTHS.to_owned()),
            _ => (
                self.lengths.clone().unwrap_or_else(|| default_lengths.into()),
                self.depths.clone().unwrap_or_else(|| default_depths.into()),
            ),
        };
        let lengths: Vec<usize> = parse_values(&l, "--lengths")?.into_iter().map(|v| v as usize).collect();
        let depths = parse_values(&d, "--depths")?;
        if let Some(bad) = depths.iter().find(|&&d| d > 100.0) {
            bail!("--depths: {bad} is beyond 100%");
        }
        if lengths.iter().any(|&l| l < 32) {
            bail!("--lengths: contexts shorter than 32 tokens cannot hide a needle");
        }
        let needles = match &self.needles {
            Some(p) => needle::load_jsonl(p)?,
            None => needle::builtin(),
        };
        if self.per_cell == 0 || self.per_cell > needles.len() {
            bail!("--per-cell must be between 1 and the number of needles ({})", needles.len());
        }
        let haystack = match &self.haystack {
            Some(p) => Haystack::from_path(p)?,
            None => Haystack::Generated { seed: self.seed },
        };
        Ok(Grid {
            lengths,
            depths,
            per_cell: self.per_cell,
            needles,
            haystack,
            chat: !self.no_chat,
            shard: self.shard.resolve()?,
            prefix_cache: !self.no_prefix_cache,
        })
    }
}

/// `--shard` and `--shards`, for every command whose trials can be split.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ShardArgs {
    /// Run only shard I of N of the trials (I/N), or `auto`: the shard a scheduler gives this
    /// process (a Slurm job array's task: SLURM_ARRAY_TASK_ID, _COUNT and _MIN; a Kubernetes
    /// Indexed Job's JOB_COMPLETION_INDEX, with --shards). A shard writes only OUT/shards/I-of-N
    /// and resumes there when restarted; join the shards with `headhunt merge OUT --expect N`
    /// and follow them with `headhunt status OUT`.
    #[arg(long, value_name = "I/N|auto")]
    pub shard: Option<ShardSpec>,
    /// The number of shards, for `--shard auto` under Kubernetes (the Job's `completions`,
    /// which it does not export). Under Slurm it must equal the array's size.
    #[arg(long, value_name = "N", requires = "shard")]
    pub shards: Option<usize>,
}

impl ShardArgs {
    /// The shard this process runs, if any, reading the scheduler's variables for `auto`.
    pub fn resolve(&self) -> Result<Option<Shard>> {
        resolve_shard(self.shard, self.shards, |name| std::env::var(name).ok())
    }
}

/// `--mask-mode`, `--mask-phase`: how masked heads are silenced and when, shared by every
/// command that masks heads.
#[derive(clap::Args, Debug, Clone, Copy, Default)]
pub struct MaskHowArgs {
    /// How a masked head is silenced.
    #[arg(long = "mask-mode", value_enum, default_value_t)]
    pub mode: MaskModeArg,
    /// When the mask applies.
    #[arg(long = "mask-phase", value_enum, default_value_t)]
    pub phase: PhaseArg,
}

impl MaskHowArgs {
    pub fn get(self) -> MaskHow {
        MaskHow {
            mode: self.mode,
            phase: self.phase,
        }
    }
}

/// `--mask-*` arguments, shared by the commands that mask heads.
#[derive(clap::Args, Debug, Clone)]
pub struct MaskArgs {
    /// Retrieval scores: headhunt's head_scores.json (or its run folder) or a published score
    /// file of the retrieval-head paper.
    #[arg(long)]
    pub scores: Option<PathBuf>,
    /// Mask the K highest-scoring heads of --scores.
    #[arg(long, value_name = "K")]
    pub mask_top: Option<usize>,
    /// Mask K random heads scoring at or below 0.1 in --scores (drawn with --seed).
    #[arg(long, value_name = "K")]
    pub mask_random: Option<usize>,
    /// Seed of the random draw.
    #[arg(long, default_value_t = 0)]
    pub mask_seed: u64,
    /// Mask these heads: LAYER-HEAD,LAYER-HEAD,...
    #[arg(long, value_name = "HEADS")]
    pub mask_heads: Option<String>,
    #[command(flatten)]
    pub how: MaskHowArgs,
}

impl MaskArgs {
    pub fn load_scores(&self) -> Result<Option<HeadScores>> {
        self.scores.as_ref().map(|p| HeadScores::load(p)).transpose()
    }

    /// The heads these arguments select (empty: no mask).
    pub fn heads(&self, scores: Option<&HeadScores>) -> Result<Vec<Head>> {
        let chosen = [self.mask_top.is_some(), self.mask_random.is_some(), self.mask_heads.is_some()];
        if chosen.iter().filter(|&&c| c).count() > 1 {
            bail!("give one of --mask-top, --mask-random and --mask-heads");
        }
        let need = |what: &str| scores.with_context(|| format!("{what} needs --scores"));
        Ok(match (self.mask_top, self.mask_random, &self.mask_heads) {
            (Some(k), _, _) => top_heads(need("--mask-top")?, k),
            (_, Some(k), _) => random_heads(need("--mask-random")?, k, self.mask_seed)?,
            (_, _, Some(list)) => parse_heads(list)?,
            _ => Vec::new(),
        })
    }
}

/// `--scores`, `--mask-top K`, `--mask-random K --seeds N`: the conditions of a task run once
/// unmasked, once with the top-K retrieval heads masked and once per seed with K random
/// non-retrieval heads masked; shared by the commands that compare tasks under masks (qa,
/// recall eval, cot).
#[derive(clap::Args, Debug, Clone)]
pub struct MaskSweepArgs {
    /// Retrieval scores (head_scores.json, its run folder, or a published score file), for
    /// --mask-top and --mask-random.
    #[arg(long)]
    pub scores: Option<PathBuf>,
    /// Also run with the K best heads of --scores masked.
    #[arg(long, value_name = "K")]
    pub mask_top: Option<usize>,
    /// Also run with K random heads scoring at or below 0.1 masked, once per seed.
    #[arg(long, value_name = "K")]
    pub mask_random: Option<usize>,
    /// Random draws for --mask-random.
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    /// A second score file (QRHead's from `detect --detector qrhead`, say): also run with its
    /// top-K heads masked, K that of --mask-top (condition `versus-top-K`), to test two
    /// detectors' heads at the same K.
    #[arg(long, value_name = "SCORES", requires = "mask_top")]
    pub versus: Option<PathBuf>,
    #[command(flatten)]
    pub how: MaskHowArgs,
}

impl MaskSweepArgs {
    /// The scores, checked against the model, if given.
    pub fn load_scores(&self, model: &Model) -> Result<Option<HeadScores>> {
        let scores = self.scores.as_ref().map(|p| HeadScores::load(p)).transpose()?;
        if let Some(s) = &scores {
            check_scores_fit(s, model)?;
        }
        Ok(scores)
    }

    /// `(label, heads)` per condition: `none`, `top-K`, `versus-top-K`, `random-K-seedS`.
    pub fn conditions(&self, scores: Option<&HeadScores>) -> Result<Vec<(String, Vec<Head>)>> {
        let need = || scores.context("--mask-top and --mask-random need --scores");
        let mut out = vec![("none".to_owned(), Vec::new())];
        if let Some(k) = self.mask_top {
            out.push((format!("top-{k}"), top_heads(need()?, k)));
            if let Some(path) = &self.versus {
                out.push((format!("versus-top-{k}"), top_heads(&load_versus(path, need()?)?, k)));
            }
        }
        if let Some(k) = self.mask_random {
            for seed in 0..self.seeds {
                out.push((format!("random-{k}-seed{seed}"), random_heads(need()?, k, seed)?));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_give_back_their_grid() {
        let args = GridArgs {
            lengths: Some("100,200".into()),
            depths: Some("0:100:3".into()),
            per_cell: 2,
            quick: false,
            needles: None,
            haystack: None,
            seed: 7,
            no_chat: true,
            shard: ShardArgs::default(),
            no_prefix_cache: false,
        };
        let grid = args.resolve().unwrap();
        let again = Grid::of_settings(&grid.settings()).unwrap();
        assert_eq!(again.settings(), grid.settings());
        assert_eq!(again.haystack, Haystack::Generated { seed: 7 });
        assert_eq!(again.trials(), grid.trials());
    }
}

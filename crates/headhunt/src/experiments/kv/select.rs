//! KV compression by token selection: after a prompt is prefilled, every key/value head keeps a
//! few sink positions, the last `window` positions (the observation window, which holds the
//! question), and the earlier positions that window attended to most (SnapKV: softmax rows summed
//! over the window, combined over the head's query heads, max-pooled); the rest is freed. How many
//! rows each head keeps comes from a budget: the same for every head (SnapKV), or a floor plus a
//! share of the rest in proportion to the head's retrieval score (HeadKV), or to a shuffled
//! score (the control). StreamingLLM (sink + most recent positions) and the DuoAttention-style
//! split (the best heads whole, the rest sink + recent) spend the same rows.

use std::ops::Range;

use anyhow::{bail, Result};
use headhunt_engine::{Capture, HookPoint, Hooks, Model, ModelConfig, Positions, Recording, Run, RunOptions};

use crate::experiments::retrieval::niah::haystack::Rng;
use crate::experiments::retrieval::niah::trial::{decode_from, Answer, MAX_NEW_TOKENS};
use serde::{Deserialize, Serialize};

/// How a head's query heads' votes are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum GroupPool {
    Max,
    Mean,
}

/// SnapKV's settings.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Snap {
    /// Observation window: the prompt's last positions, always kept.
    pub window: usize,
    /// First positions always kept.
    pub sink: usize,
    /// Width of the 1-D max-pooling of the votes.
    pub kernel: usize,
    pub pool: GroupPool,
}

impl Default for Snap {
    fn default() -> Self {
        Snap {
            window: 32,
            sink: 4,
            kernel: 7,
            pool: GroupPool::Max,
        }
    }
}

/// How each head's budget is set (see `headhunt kv-select --help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyName {
    /// The same for every head (SnapKV).
    Snapkv,
    /// A floor plus a share in proportion to the head's retrieval score (HeadKV).
    Headkv,
    /// The same with the scores shuffled among the heads.
    Random,
    /// SnapKV's budgets spent on the most recent positions (StreamingLLM).
    Streaming,
    /// The best-scoring heads whole, the rest sink + window (DuoAttention-style).
    Duo,
}

/// Rows per head (flattened, layer-major) and how they are chosen, for `policy` at `total` kept
/// rows; `seed` shuffles the prior for [`PolicyName::Random`].
pub fn policy_rows(policy: PolicyName, seed: u64, total: usize, snap: &Snap, caps: &[usize], prior: &[f64]) -> (Vec<usize>, Choice) {
    let floor = snap.sink + snap.window;
    let uniform = vec![1.0; caps.len()];
    match policy {
        PolicyName::Snapkv => (allocate(total, floor, caps, &uniform), Choice::Votes),
        PolicyName::Headkv => (allocate(total, floor, caps, prior), Choice::Votes),
        PolicyName::Random => (allocate(total, floor, caps, &shuffled(prior, seed)), Choice::Votes),
        PolicyName::Streaming => (allocate(total, floor, caps, &uniform), Choice::Recent),
        PolicyName::Duo => (allocate_whole_heads(total, floor, caps, prior), Choice::Recent),
    }
}

/// Each key/value head's retrieval score (layer-major): the best mean among its query heads.
pub fn kv_prior(c: &ModelConfig, means: &[f64]) -> Vec<f64> {
    let group = c.heads_per_kv_head();
    (0..c.n_layers * c.n_kv_heads)
        .map(|i| {
            let (l, g) = (i / c.n_kv_heads, i % c.n_kv_heads);
            (0..group).map(|q| means[l * c.n_heads + g * group + q]).fold(0.0, f64::max)
        })
        .collect()
}

/// Bytes one cached position takes in one key/value head of `model`'s cache: its key and value
/// (f32, or f16 at `--precision fast`), its position (u32).
pub fn row_bytes(model: &Model) -> usize {
    2 * model.config.d_head * model.kv_store().element_bytes() + 4
}

/// Hooks that record every layer's pattern rows at `positions`.
pub fn window_hooks(c: &ModelConfig, positions: Vec<usize>) -> Hooks {
    let mut hooks = Hooks::default();
    for l in 0..c.n_layers {
        hooks = hooks.capture(Capture::new(HookPoint::Pattern(l), Positions::At(positions.clone())));
    }
    hooks
}

/// One prompt answered from a cache compressed after its prefill (question-aware): `policy`'s
/// rows per head at `budget` of the full cache's bytes (the prompt and room for the answer).
pub fn compressed_answer(
    model: &Model,
    prompt: &[u32],
    (policy, seed, budget): (PolicyName, u64, f64),
    prior: &[f64],
    snap: &Snap,
) -> Result<Answer> {
    let c = &model.config;
    let n = prompt.len();
    let obs = n - snap.window.min(n)..n;
    let options = RunOptions {
        capacity: n + MAX_NEW_TOKENS,
        ..Default::default()
    };
    let mut run = model.run(window_hooks(c, obs.clone().collect()), options)?;
    let logits = run.prefill(prompt)?;
    let votes = votes(&[&run.recording], c, &obs, snap)?;
    let held = held_visible(&run, n);
    let caps: Vec<usize> = held.iter().flatten().map(Vec::len).collect();
    let heads = caps.len();
    // The full cache's rows as it would allocate them alone, decoding.
    let full_rows = run.kv_bytes_alone(n, n + MAX_NEW_TOKENS, 1) / row_bytes(model);
    let total = ((budget * full_rows as f64) as usize).saturating_sub(heads * MAX_NEW_TOKENS);
    let (rows, choice) = policy_rows(policy, seed, total, snap, &caps, prior);
    let rows: Vec<Vec<usize>> = rows.chunks(c.n_kv_heads).map(<[usize]>::to_vec).collect();
    let keep = select(&held, n, &rows, choice, &votes, snap);
    let mut compressed = run.fork_retaining(&keep, MAX_NEW_TOKENS)?;
    compressed.set_hooks(Hooks::default())?;
    decode_from(&mut compressed, prompt, logits)
}

/// How rows are chosen within a head's budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Choice {
    /// Sink, observation window, and the top-voted earlier positions.
    Votes,
    /// Sink and the most recent positions (StreamingLLM).
    Recent,
}

/// Per layer and key/value head, the votes of the observation window `obs` for every position
/// before it: each query head's attention summed over the window's rows, combined over the query
/// heads that share the key/value head, then max-pooled over `kernel` positions.
/// The window's rows may come from several recordings (a prompt prefilled in parts).
pub fn votes(recs: &[&Recording], c: &ModelConfig, obs: &Range<usize>, snap: &Snap) -> Result<Vec<Vec<Vec<f32>>>> {
    let group = c.heads_per_kv_head();
    let before = obs.start;
    let mut out = Vec::with_capacity(c.n_layers);
    for l in 0..c.n_layers {
        let mut rows: Vec<_> = recs
            .iter()
            .filter_map(|rec| rec.patterns.get(&l))
            .flatten()
            .filter(|r| obs.contains(&r.position))
            .collect();
        rows.sort_by_key(|r| r.position);
        rows.dedup_by_key(|r| r.position);
        if rows.len() != obs.len() {
            bail!(
                "layer {l}: {} of the observation window's {} pattern rows were recorded",
                rows.len(),
                obs.len()
            );
        }
        let mut per_query = vec![vec![0.0f32; before]; c.n_heads];
        for r in &rows {
            for (h, acc) in per_query.iter_mut().enumerate() {
                let probs = &r.values[h * r.n_keys..h * r.n_keys + before];
                acc.iter_mut().zip(probs).for_each(|(a, &p)| *a += p);
            }
        }
        let heads = (0..c.n_kv_heads)
            .map(|g| {
                let members = &per_query[g * group..(g + 1) * group];
                let combined: Vec<f32> = (0..before)
                    .map(|k| match snap.pool {
                        GroupPool::Max => members.iter().map(|m| m[k]).fold(f32::NEG_INFINITY, f32::max),
                        GroupPool::Mean => members.iter().map(|m| m[k]).sum::<f32>() / group as f32,
                    })
                    .collect();
                max_pool(&combined, snap.kernel)
            })
            .collect();
        out.push(heads);
    }
    Ok(out)
}

/// Centred 1-D max-pooling, the window clipped at the ends (same length out).
pub fn max_pool(v: &[f32], kernel: usize) -> Vec<f32> {
    let half = kernel / 2;
    (0..v.len())
        .map(|i| {
            v[i.saturating_sub(half)..(i + half + 1).min(v.len())]
                .iter()
                .copied()
                .fold(f32::NEG_INFINITY, f32::max)
        })
        .collect()
}

/// The positions one head keeps: `rows` of them, among those it holds (`held`, ascending), given
/// the prompt's `len` tokens. Sinks and the last `snap.window` positions first; then by `choice`.
/// `votes` covers the positions before the window.
pub fn keep(held: &[u32], len: usize, rows: usize, choice: Choice, votes: &[f32], snap: &Snap) -> Vec<u32> {
    let window_start = len.saturating_sub(snap.window);
    let is_fixed = |p: usize| p < snap.sink || p >= window_start;
    let mut kept: Vec<u32> = held.iter().copied().filter(|&p| is_fixed(p as usize)).collect();
    let mut rest: Vec<u32> = held.iter().copied().filter(|&p| !is_fixed(p as usize)).collect();
    let free = rows.saturating_sub(kept.len()).min(rest.len());
    match choice {
        Choice::Recent => kept.extend_from_slice(&rest[rest.len() - free..]),
        Choice::Votes => {
            // Highest votes first; the earlier position on ties.
            rest.sort_by(|&a, &b| votes[b as usize].total_cmp(&votes[a as usize]).then(a.cmp(&b)));
            kept.extend_from_slice(&rest[..free]);
        }
    }
    kept.sort_unstable();
    kept
}

/// Per layer and key/value head, the positions a run's cache holds that a query at `len` (the
/// next position) can still see: what compression chooses from.
pub fn held_visible(run: &Run<'_>, len: usize) -> Vec<Vec<Vec<u32>>> {
    let policies = run.cache().policies();
    run.cache()
        .positions()
        .into_iter()
        .zip(&policies)
        .map(|(layer, ps)| {
            layer
                .into_iter()
                .zip(ps)
                .map(|(pos, p)| pos.into_iter().filter(|&k| p.visible(len, k as usize)).collect())
                .collect()
        })
        .collect()
}

/// [`keep`] for every head: `rows[layer][kv_head]` of the `held` positions.
pub fn select(
    held: &[Vec<Vec<u32>>],
    len: usize,
    rows: &[Vec<usize>],
    choice: Choice,
    votes: &[Vec<Vec<f32>>],
    snap: &Snap,
) -> Vec<Vec<Vec<u32>>> {
    held.iter()
        .enumerate()
        .map(|(l, heads)| {
            heads
                .iter()
                .enumerate()
                .map(|(g, h)| keep(h, len, rows[l][g], choice, &votes[l][g], snap))
                .collect()
        })
        .collect()
}

/// Rows per head for a total of `total` rows: each head first gets `floor` (at most its `caps`),
/// then the rest in proportion to `weights` (all equal: a uniform split), no head beyond its cap,
/// what a capped head cannot take going to the others. The sum is `total` whenever the caps
/// allow it (and `floor * heads <= total`).
pub fn allocate(total: usize, floor: usize, caps: &[usize], weights: &[f64]) -> Vec<usize> {
    let n = caps.len();
    let mut rows: Vec<usize> = caps.iter().map(|&c| c.min(floor)).collect();
    let mut left = total.saturating_sub(rows.iter().sum());
    // Share what is left among the heads with room, in proportion to their weights; repeat while
    // capped heads give some back.
    loop {
        let open: Vec<usize> = (0..n).filter(|&i| rows[i] < caps[i]).collect();
        if left == 0 || open.is_empty() {
            break;
        }
        let w: Vec<f64> = open.iter().map(|&i| weights[i].max(0.0)).collect();
        let sum: f64 = w.iter().sum();
        let shares: Vec<f64> = if sum > 0.0 {
            w.iter().map(|x| x / sum * left as f64).collect()
        } else {
            vec![left as f64 / open.len() as f64; open.len()]
        };
        let mut given = 0;
        for (&i, &s) in open.iter().zip(&shares) {
            let add = (s.floor() as usize).min(caps[i] - rows[i]);
            rows[i] += add;
            given += add;
        }
        if given == 0 {
            // Fractions only: one row each to the largest remainders.
            let mut order: Vec<(usize, f64)> = open.iter().zip(&shares).map(|(&i, &s)| (i, s - s.floor())).collect();
            order.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            for (i, _) in order {
                if left == given {
                    break;
                }
                if rows[i] < caps[i] {
                    rows[i] += 1;
                    given += 1;
                }
            }
            if given == 0 {
                break;
            }
        }
        left -= given;
    }
    rows
}

/// The DuoAttention-style split at `total` rows: heads in order of `weights` keep everything
/// (their cap) while the others' `floor` rows still fit; returns the rows per head.
pub fn allocate_whole_heads(total: usize, floor: usize, caps: &[usize], weights: &[f64]) -> Vec<usize> {
    let mut rows: Vec<usize> = caps.iter().map(|&c| c.min(floor)).collect();
    let mut order: Vec<usize> = (0..caps.len()).collect();
    order.sort_by(|&a, &b| weights[b].total_cmp(&weights[a]).then(a.cmp(&b)));
    let mut used: usize = rows.iter().sum();
    for i in order {
        let extra = caps[i] - rows[i];
        if used + extra <= total {
            rows[i] = caps[i];
            used += extra;
        }
    }
    rows
}

/// `weights` shuffled among the heads (SplitMix64 Fisher-Yates: the same for a seed everywhere).
pub fn shuffled(weights: &[f64], seed: u64) -> Vec<f64> {
    let mut out = weights.to_vec();
    let mut rng = Rng(seed ^ 0xD1B5_4A32_D192_ED03);
    for i in (1..out.len()).rev() {
        out.swap(i, rng.below(i + 1));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_add_up_and_respect_caps() {
        let caps = [100, 100, 10, 100];
        let uniform = allocate(200, 8, &caps, &[1.0; 4]);
        assert_eq!(uniform.iter().sum::<usize>(), 200);
        assert_eq!(uniform[2], 10, "a capped head gives its share back");
        assert!(uniform.iter().zip(&caps).all(|(r, c)| r <= c));
        let prior = allocate(200, 8, &caps, &[0.0, 3.0, 1.0, 1.0]);
        assert_eq!(prior.iter().sum::<usize>(), 200);
        assert_eq!(prior[0], 8, "no score: the floor only");
        assert!(prior[1] > prior[3]);
        // More than the caps hold: every head whole.
        assert_eq!(allocate(1000, 8, &caps, &[1.0; 4]), caps.to_vec());
        // Whole heads: the best first, while the others' floors still fit.
        assert_eq!(allocate_whole_heads(130, 8, &caps, &[0.0, 3.0, 1.0, 2.0]), vec![8, 100, 10, 8]);
        let s = shuffled(&[1.0, 2.0, 3.0, 4.0, 5.0], 7);
        let mut sorted = s.clone();
        sorted.sort_by(f64::total_cmp);
        assert_eq!(sorted, vec![1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_ne!(s, shuffled(&[1.0, 2.0, 3.0, 4.0, 5.0], 8));
    }

    #[test]
    fn keep_takes_sinks_window_then_votes_or_recency() {
        let snap = Snap {
            window: 3,
            sink: 2,
            kernel: 1,
            pool: GroupPool::Max,
        };
        let held: Vec<u32> = (0..12).collect();
        let mut votes = vec![0.0f32; 9];
        votes[5] = 0.9;
        votes[3] = 0.5;
        votes[7] = 0.5;
        // 2 sinks + 3 window + 3 chosen: 5 (0.9), then 3 and 7 tie at 0.5 (both fit).
        assert_eq!(keep(&held, 12, 8, Choice::Votes, &votes, &snap), vec![0, 1, 3, 5, 7, 9, 10, 11]);
        assert_eq!(
            keep(&held, 12, 7, Choice::Votes, &votes, &snap),
            vec![0, 1, 3, 5, 9, 10, 11],
            "ties to the earlier"
        );
        assert_eq!(keep(&held, 12, 7, Choice::Recent, &votes, &snap), vec![0, 1, 7, 8, 9, 10, 11]);
        // A budget below the fixed rows keeps the fixed rows.
        assert_eq!(keep(&held, 12, 2, Choice::Votes, &votes, &snap), vec![0, 1, 9, 10, 11]);
        assert_eq!(max_pool(&[0.0, 1.0, 0.0, 0.0, 2.0], 3), vec![1.0, 1.0, 1.0, 2.0, 2.0]);
    }
}

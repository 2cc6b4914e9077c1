//! A prompt's activations at chosen hooks, as dense arrays in TransformerLens's shapes without
//! the batch dimension: what `headhunt cache` writes to .npz and what the Python package's
//! `run_with_cache` returns, from one implementation.
//!
//! Shapes: residual-stream hooks `[pos, d_model]`; `hook_z` `[pos, head, d_head]`;
//! `hook_result` `[pos, head, d_model]`; `mlp.hook_post` `[pos, d_mlp]`; `hook_pattern` and
//! `hook_attn_scores` `[head, pos, key]` (keys padded to the longest row with 0 and -inf);
//! `logits` `[pos, vocab]`. `pos`
//! runs over the recorded positions, listed beside each array.

use anyhow::{bail, Context, Result};
use headhunt_engine::{Capture, HookPoint, Hooks, Intervention, KeyRow, Model, ModelConfig, Positions, Recording, RunOptions};

/// Hook names, `*` standing for every layer (`blocks.*.hook_resid_post`), as sorted, distinct
/// points.
pub fn expand_hooks(names: &[String], n_layers: usize) -> Result<Vec<HookPoint>> {
    let mut points = Vec::new();
    for name in names {
        if name.contains('*') {
            for l in 0..n_layers {
                points.push(name.replace('*', &l.to_string()).parse()?);
            }
        } else {
            points.push(name.parse()?);
        }
    }
    points.sort();
    points.dedup();
    Ok(points)
}

/// `all`, `last`, or a comma list of positions (negative ones count from the end).
pub fn parse_positions(spec: &str, len: usize) -> Result<Positions> {
    match spec {
        "all" => Ok(Positions::All),
        "last" => Ok(Positions::Last),
        _ => {
            let list = spec
                .split(',')
                .map(|part| {
                    part.trim()
                        .parse::<i64>()
                        .with_context(|| format!("bad position `{part}` (all, last, or integers)"))
                })
                .collect::<Result<Vec<_>>>()?;
            positions_at(&list, len)
        }
    }
}

/// Positions given as integers, negative ones counting from the end of a `len`-token prompt.
pub fn positions_at(list: &[i64], len: usize) -> Result<Positions> {
    let mut out = Vec::with_capacity(list.len());
    for &v in list {
        let p = if v < 0 { len as i64 + v } else { v };
        if p < 0 || p >= len as i64 {
            bail!("position {v} is outside the prompt ({len} tokens)");
        }
        out.push(p as usize);
    }
    out.sort_unstable();
    out.dedup();
    Ok(Positions::At(out))
}

/// Run `prompt` through the model once, recording `points` at `positions`, with
/// `interventions` applied.
pub fn record(
    model: &Model,
    prompt: &[u32],
    points: &[HookPoint],
    positions: &Positions,
    interventions: Vec<Intervention>,
) -> Result<Recording> {
    let mut hooks = Hooks::default();
    for &p in points {
        hooks = hooks.capture(Capture::new(p, positions.clone()));
    }
    for i in interventions {
        hooks = hooks.intervene(i);
    }
    let mut run = model.run(
        hooks,
        RunOptions {
            capacity: prompt.len(),
            ..Default::default()
        },
    )?;
    run.prefill(prompt)?;
    Ok(std::mem::take(&mut run.recording))
}

/// One recorded hook as a dense array: its shape and the positions its `pos` axis runs over.
pub struct Dense {
    pub shape: Vec<usize>,
    pub positions: Vec<u32>,
}

impl Dense {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The rows over the keys `point` holds (`hook_pattern`, `hook_attn_scores`) and what pads a
/// row shorter than the longest (a key nothing attended to: 0 probability, -inf score).
fn key_rows(rec: &Recording, point: HookPoint) -> Option<(&[KeyRow], f32)> {
    match point {
        HookPoint::Pattern(l) => Some((rec.patterns.get(&l).map(Vec::as_slice).unwrap_or_default(), 0.0)),
        HookPoint::AttnScores(l) => Some((rec.scores.get(&l).map(Vec::as_slice).unwrap_or_default(), f32::NEG_INFINITY)),
        _ => None,
    }
}

/// The dense shape of `point` in `rec`, if it was recorded.
pub fn dense(rec: &Recording, point: HookPoint, c: &ModelConfig) -> Option<Dense> {
    if let Some((rows, _)) = key_rows(rec, point) {
        if rows.is_empty() {
            return None;
        }
        let keys = rows.iter().map(|r| r.n_keys).max().unwrap_or(0);
        return Some(Dense {
            shape: vec![c.n_heads, rows.len(), keys],
            positions: rows.iter().map(|r| r.position as u32).collect(),
        });
    }
    let rows = rec.get(point)?;
    let mut shape = vec![rows.positions.len()];
    shape.extend(point.row_shape(c));
    Some(Dense {
        shape,
        positions: rows.positions.iter().map(|&p| p as u32).collect(),
    })
}

/// Write `point`'s dense array (of the shape [`dense`] gives) into `out`.
pub fn fill(rec: &Recording, point: HookPoint, c: &ModelConfig, out: &mut [f32]) {
    if let Some((rows, pad)) = key_rows(rec, point) {
        let keys = rows.iter().map(|r| r.n_keys).max().unwrap_or(0);
        out.fill(pad);
        for (i, r) in rows.iter().enumerate() {
            for h in 0..c.n_heads {
                let dst = (h * rows.len() + i) * keys;
                out[dst..dst + r.n_keys].copy_from_slice(r.head(h));
            }
        }
    } else if let Some(rows) = rec.get(point) {
        out.copy_from_slice(&rows.data);
    }
}

//! What one prompt's forward pass says at its last position: the final residual stream split
//! into the components that wrote it (embeddings, every head, every MLP, biases), each one's
//! direct logit attribution, and every head's attention to the subject.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use headhunt_engine::config::PositionEncoding;
use headhunt_engine::{Capture, HookPoint, Hooks, Intervention, Model, Positions, RunOptions};

/// Something that writes into the residual stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    Embed,
    PosEmbed,
    Head(usize, usize),
    /// An attention layer's output bias (models that have one).
    AttnBias(usize),
    Mlp(usize),
}

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Component::Embed => write!(f, "embed"),
            Component::PosEmbed => write!(f, "pos_embed"),
            Component::Head(l, h) => write!(f, "{l}-{h}"),
            Component::AttnBias(l) => write!(f, "attn_bias.{l}"),
            Component::Mlp(l) => write!(f, "mlp.{l}"),
        }
    }
}

/// One prompt's last position, decomposed.
pub struct LastPosition {
    pub logits: Vec<f32>,
    /// The final residual stream (`hook_resid_post` of the last layer).
    pub final_resid: Vec<f32>,
    /// Every component's vector, in layer order.
    pub components: Vec<(Component, Vec<f32>)>,
    /// Per head (`layer * n_heads + head`): attention from the last position to the subject.
    pub attention_to_subject: Vec<f64>,
    /// Per layer: `hook_z` at the last position, `[head * d_head]`.
    pub z: Vec<Vec<f32>>,
}

impl LastPosition {
    pub fn component(&self, c: Component) -> Option<&[f32]> {
        self.components.iter().find(|(k, _)| *k == c).map(|(_, v)| v.as_slice())
    }
}

/// Run `prompt` with the captures the decomposition needs, under extra interventions.
pub fn analyse(model: &Model, prompt: &[u32], subject: std::ops::Range<usize>, interventions: &[Intervention]) -> Result<LastPosition> {
    let c = &model.config;
    let last = Positions::Last;
    let mut hooks = Hooks {
        interventions: interventions.to_vec(),
        ..Default::default()
    };
    hooks = hooks.capture(Capture::new(HookPoint::Embed, last.clone()));
    if matches!(c.positions, PositionEncoding::Learned { .. }) {
        hooks = hooks.capture(Capture::new(HookPoint::PosEmbed, last.clone()));
    }
    for l in 0..c.n_layers {
        hooks = hooks
            .capture(Capture::new(HookPoint::Result(l), last.clone()))
            .capture(Capture::new(HookPoint::Z(l), last.clone()))
            .capture(Capture::new(HookPoint::MlpOut(l), last.clone()))
            .capture(Capture::new(HookPoint::Pattern(l), last.clone()));
    }
    hooks = hooks.capture(Capture::new(HookPoint::ResidPost(c.n_layers - 1), last.clone()));
    let mut run = model.run(hooks, RunOptions::default())?;
    let logits = run.prefill(prompt)?;
    let rec = &run.recording;
    let row = |p: HookPoint| -> Result<Vec<f32>> { Ok(rec.get(p).with_context(|| format!("{p} was captured"))?.row(0).to_vec()) };

    let mut components = vec![(Component::Embed, row(HookPoint::Embed)?)];
    if matches!(c.positions, PositionEncoding::Learned { .. }) {
        components.push((Component::PosEmbed, row(HookPoint::PosEmbed)?));
    }
    let mut attention = vec![0.0f64; c.n_layers * c.n_heads];
    let mut z = Vec::with_capacity(c.n_layers);
    for l in 0..c.n_layers {
        let result = row(HookPoint::Result(l))?;
        for h in 0..c.n_heads {
            components.push((Component::Head(l, h), result[h * c.d_model..(h + 1) * c.d_model].to_vec()));
        }
        if let Some(b) = &model.weights.blocks[l].o.b {
            components.push((Component::AttnBias(l), b.clone()));
        }
        components.push((Component::Mlp(l), row(HookPoint::MlpOut(l))?));
        let pattern = rec
            .patterns
            .get(&l)
            .and_then(|rows| rows.last())
            .context("the last position's pattern was captured")?;
        for h in 0..c.n_heads {
            let probs = &pattern.values[h * pattern.n_keys..(h + 1) * pattern.n_keys];
            attention[l * c.n_heads + h] = subject.clone().map(|k| probs[k] as f64).sum();
        }
        z.push(row(HookPoint::Z(l))?);
    }
    Ok(LastPosition {
        logits,
        final_resid: row(HookPoint::ResidPost(c.n_layers - 1))?,
        components,
        attention_to_subject: attention,
        z,
    })
}

/// Every component's direct logit attribution to the given tokens.
pub fn dla(model: &Model, pos: &LastPosition, tokens: &[u32]) -> BTreeMap<Component, Vec<f32>> {
    pos.components
        .iter()
        .map(|(c, v)| (*c, model.direct_logit_attribution_to(v, &pos.final_resid, tokens)))
        .collect()
}

/// Softmax probability of one token.
pub fn probability(logits: &[f32], token: u32) -> f64 {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let z: f64 = logits.iter().map(|&x| (x as f64 - m).exp()).sum();
    (logits[token as usize] as f64 - m).exp() / z
}

//! Hooks: what a forward pass records and how it is changed.
//!
//! Three types carry the story, with TransformerLens's vocabulary:
//!
//! * [`HookPoint`] names a place in the network and prints as (and parses from) the
//!   TransformerLens string, e.g. `blocks.3.attn.hook_pattern`;
//! * [`Hooks`] declares, for one run, the [`Capture`]s (which points, at which positions, reduced
//!   how) and the [`Intervention`]s (head masks, key restrictions, added vectors, patches);
//! * [`Recording`] holds what was captured.
//!
//! Long contexts cannot afford whole `[seq, seq]` patterns, so captures select query positions
//! and can reduce a pattern row to its argmax. A run with empty hooks does no hook work at all.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::config::ModelConfig;
use crate::error::{Error, Result};

/// A place in the network, named as TransformerLens names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookPoint {
    /// `hook_embed`: the (scaled) token embedding, `[pos, d_model]`.
    Embed,
    /// `hook_pos_embed`: the learned position embedding, `[pos, d_model]`.
    PosEmbed,
    /// `blocks.{l}.hook_resid_pre`, `[pos, d_model]`.
    ResidPre(usize),
    /// `blocks.{l}.ln1.hook_scale`: what the attention's input norm divides each row by,
    /// `[pos, 1]`.
    Ln1Scale(usize),
    /// `blocks.{l}.attn.hook_q`: each head's query, after the Q norm (where the family has one)
    /// and RoPE, `[pos, head, d_head]`.
    Q(usize),
    /// `blocks.{l}.attn.hook_k`: each key/value head's key, after the K norm and RoPE,
    /// `[pos, kv_head, d_head]` (what the KV cache holds).
    K(usize),
    /// `blocks.{l}.attn.hook_v`: each key/value head's value, `[pos, kv_head, d_head]`.
    V(usize),
    /// `blocks.{l}.attn.hook_z`: each head's attention-weighted values, `[pos, head, d_head]`.
    Z(usize),
    /// `blocks.{l}.attn.hook_result`: each head's contribution to the residual stream,
    /// `[pos, head, d_model]` (for sandwich-norm models, after the post-attention norm's scale,
    /// so that the heads sum to `hook_attn_out`).
    Result(usize),
    /// `blocks.{l}.attn.hook_attn_scores`: scores before the softmax (scaled, soft-capped where
    /// the family caps them, -inf where a key is masked), `[pos, head, key]`.
    AttnScores(usize),
    /// `blocks.{l}.attn.hook_pattern`: attention probabilities, `[pos, head, key]`.
    Pattern(usize),
    /// `blocks.{l}.hook_attn_out`, `[pos, d_model]`.
    AttnOut(usize),
    /// `blocks.{l}.hook_resid_mid`, `[pos, d_model]`.
    ResidMid(usize),
    /// `blocks.{l}.ln2.hook_scale`: what the MLP's input norm divides each row by, `[pos, 1]`.
    Ln2Scale(usize),
    /// `blocks.{l}.mlp.hook_router`: a Mixture-of-Experts MLP's router logits, `[pos, expert]`.
    Router(usize),
    /// `blocks.{l}.mlp.hook_expert_weights`: each expert's weight in a Mixture-of-Experts MLP's
    /// output (0 for experts not chosen), `[pos, expert]`.
    ExpertWeights(usize),
    /// `blocks.{l}.mlp.hook_expert_out`: each expert's output before its weight, `[pos, expert,
    /// d_model]` (0 for experts not chosen; the MLP's output is these weighted by
    /// `hook_expert_weights`, so patching one changes it).
    ExpertOut(usize),
    /// `blocks.{l}.mlp.hook_pre`: the MLP's pre-activation (a gated MLP's gate projection),
    /// `[pos, d_mlp]`.
    MlpPre(usize),
    /// `blocks.{l}.mlp.hook_post`: the MLP's hidden activation, `[pos, d_mlp]`.
    MlpPost(usize),
    /// `blocks.{l}.hook_mlp_out`, `[pos, d_model]`.
    MlpOut(usize),
    /// `blocks.{l}.hook_resid_post`, `[pos, d_model]`.
    ResidPost(usize),
    /// `ln_final.hook_scale`: what the final norm divides each row by, `[pos, 1]`.
    FinalScale,
    /// `ln_final.hook_normalized`: the final norm's output, `[pos, d_model]`.
    FinalNormalized,
    /// `logits`, `[pos, vocab]`.
    Logits,
}

/// One kind of hook point, defined once: its TransformerLens name, the shape of one position's
/// row, and whether interventions may write it. [`HookPoint`]'s names, parsing, shapes and
/// checks, the list of every point of a model, and the docs' table are all read from
/// [`HOOK_KINDS`].
pub struct HookKind {
    /// TransformerLens's name, `{l}` standing for the layer in per-layer points.
    pub name: &'static str,
    /// One position's row, in TransformerLens's axis names (the position axis comes first).
    pub dims: &'static str,
    point: fn(usize) -> HookPoint,
    shape: fn(&ModelConfig) -> Vec<usize>,
    /// Whether a vector may be added here and an activation patched in.
    pub writable: bool,
    /// What the point holds, for docs and `--help`.
    pub doc: &'static str,
}

impl HookKind {
    pub fn per_layer(&self) -> bool {
        self.name.contains("{l}")
    }

    /// This kind's point at layer `l` (ignored by model-wide points).
    pub fn at(&self, l: usize) -> HookPoint {
        (self.point)(l)
    }

    /// The shape of one position's row (patterns: keys vary, reported as 0).
    pub fn row_shape(&self, c: &ModelConfig) -> Vec<usize> {
        (self.shape)(c)
    }

    /// Whether a model has this kind of point (rotary models have no position table).
    pub fn exists_in(&self, c: &ModelConfig) -> bool {
        match self.at(0) {
            HookPoint::PosEmbed => c.positions != crate::config::PositionEncoding::Rotary,
            // A Mixture-of-Experts MLP has no single hidden activation, a dense one no router.
            HookPoint::MlpPre(_) | HookPoint::MlpPost(_) => c.moe.is_none(),
            HookPoint::Router(_) | HookPoint::ExpertWeights(_) | HookPoint::ExpertOut(_) => c.moe.is_some(),
            // Only where the family normalises a sub-layer's input (not OLMo 2).
            HookPoint::Ln1Scale(_) | HookPoint::Ln2Scale(_) => c.norms.has_pre(),
            _ => true,
        }
    }
}

fn d_model(c: &ModelConfig) -> Vec<usize> {
    vec![c.d_model]
}

fn experts(c: &ModelConfig) -> Vec<usize> {
    vec![c.moe.map_or(0, |m| m.experts)]
}

/// Every kind of hook point, in the order the forward pass reaches them.
pub const HOOK_KINDS: &[HookKind] = &[
    HookKind {
        name: "hook_embed",
        dims: "[d_model]",
        point: |_| HookPoint::Embed,
        shape: d_model,
        writable: true,
        doc: "the (scaled) token embedding",
    },
    HookKind {
        name: "hook_pos_embed",
        dims: "[d_model]",
        point: |_| HookPoint::PosEmbed,
        shape: d_model,
        writable: true,
        doc: "the learned position embedding (models with a position table)",
    },
    HookKind {
        name: "blocks.{l}.hook_resid_pre",
        dims: "[d_model]",
        point: HookPoint::ResidPre,
        shape: d_model,
        writable: true,
        doc: "the residual stream into block l",
    },
    HookKind {
        name: "blocks.{l}.ln1.hook_scale",
        dims: "[1]",
        point: HookPoint::Ln1Scale,
        shape: |_| vec![1],
        writable: false,
        doc: "what the attention's input norm divides each row by (sqrt of mean square, or of variance, plus eps)",
    },
    HookKind {
        name: "blocks.{l}.attn.hook_q",
        dims: "[head, d_head]",
        point: HookPoint::Q,
        shape: |c| vec![c.n_heads, c.d_head],
        writable: false,
        doc: "each head's query, after the Q norm where the family has one and after RoPE",
    },
    HookKind {
        name: "blocks.{l}.attn.hook_k",
        dims: "[kv_head, d_head]",
        point: HookPoint::K,
        shape: |c| vec![c.n_kv_heads, c.d_head],
        writable: false,
        doc: "each key/value head's key, after the K norm and RoPE (what the KV cache holds)",
    },
    HookKind {
        name: "blocks.{l}.attn.hook_v",
        dims: "[kv_head, d_head]",
        point: HookPoint::V,
        shape: |c| vec![c.n_kv_heads, c.d_head],
        writable: false,
        doc: "each key/value head's value",
    },
    HookKind {
        name: "blocks.{l}.attn.hook_z",
        dims: "[head, d_head]",
        point: HookPoint::Z,
        shape: |c| vec![c.n_heads, c.d_head],
        writable: true,
        doc: "each head's attention-weighted values",
    },
    HookKind {
        name: "blocks.{l}.attn.hook_attn_scores",
        dims: "[head, key]",
        point: HookPoint::AttnScores,
        shape: |c| vec![c.n_heads, 0],
        writable: false,
        doc: "scores before the softmax, per head over the keys (scaled, soft-capped where the family caps, -inf where masked; whole rows of the query positions asked for)",
    },
    HookKind {
        name: "blocks.{l}.attn.hook_pattern",
        dims: "[head, key]",
        point: HookPoint::Pattern,
        shape: |c| vec![c.n_heads, 0],
        writable: false,
        doc: "attention probabilities, per head over the keys (rows, argmax or mass per query)",
    },
    HookKind {
        name: "blocks.{l}.attn.hook_result",
        dims: "[head, d_model]",
        point: HookPoint::Result,
        shape: |c| vec![c.n_heads, c.d_model],
        writable: false,
        doc:
            "each head's contribution to the residual stream (after a post-attention norm's scale, so that the heads sum to hook_attn_out)",
    },
    HookKind {
        name: "blocks.{l}.hook_attn_out",
        dims: "[d_model]",
        point: HookPoint::AttnOut,
        shape: d_model,
        writable: true,
        doc: "what attention adds to the residual stream",
    },
    HookKind {
        name: "blocks.{l}.hook_resid_mid",
        dims: "[d_model]",
        point: HookPoint::ResidMid,
        shape: d_model,
        writable: true,
        doc: "the residual stream between attention and the MLP",
    },
    HookKind {
        name: "blocks.{l}.ln2.hook_scale",
        dims: "[1]",
        point: HookPoint::Ln2Scale,
        shape: |_| vec![1],
        writable: false,
        doc: "what the MLP's input norm divides each row by",
    },
    HookKind {
        name: "blocks.{l}.mlp.hook_router",
        dims: "[expert]",
        point: HookPoint::Router,
        shape: experts,
        writable: true,
        doc: "a Mixture-of-Experts MLP's router logits (adding or patching here changes which experts are chosen)",
    },
    HookKind {
        name: "blocks.{l}.mlp.hook_expert_weights",
        dims: "[expert]",
        point: HookPoint::ExpertWeights,
        shape: experts,
        writable: false,
        doc: "each expert's weight in a Mixture-of-Experts MLP's output: its router probability where chosen (renormalised over the chosen where the family does), else 0",
    },
    HookKind {
        name: "blocks.{l}.mlp.hook_expert_out",
        dims: "[expert, d_model]",
        point: HookPoint::ExpertOut,
        shape: |c| vec![c.moe.map_or(0, |m| m.experts), c.d_model],
        writable: true,
        doc: "each chosen expert's output before its weight (0 for the others); the MLP's output is their sum weighted by hook_expert_weights (patching an expert's row here changes it)",
    },
    HookKind {
        name: "blocks.{l}.mlp.hook_pre",
        dims: "[d_mlp]",
        point: HookPoint::MlpPre,
        shape: |c| vec![c.d_mlp],
        writable: false,
        doc: "the MLP's pre-activation (in a gated MLP, the gate projection)",
    },
    HookKind {
        name: "blocks.{l}.mlp.hook_post",
        dims: "[d_mlp]",
        point: HookPoint::MlpPost,
        shape: |c| vec![c.d_mlp],
        writable: true,
        doc: "the MLP's hidden activation",
    },
    HookKind {
        name: "blocks.{l}.hook_mlp_out",
        dims: "[d_model]",
        point: HookPoint::MlpOut,
        shape: d_model,
        writable: true,
        doc: "what the MLP adds to the residual stream",
    },
    HookKind {
        name: "blocks.{l}.hook_resid_post",
        dims: "[d_model]",
        point: HookPoint::ResidPost,
        shape: d_model,
        writable: true,
        doc: "the residual stream out of block l",
    },
    HookKind {
        name: "ln_final.hook_scale",
        dims: "[1]",
        point: |_| HookPoint::FinalScale,
        shape: |_| vec![1],
        writable: false,
        doc: "what the final norm divides each row by",
    },
    HookKind {
        name: "ln_final.hook_normalized",
        dims: "[d_model]",
        point: |_| HookPoint::FinalNormalized,
        shape: d_model,
        writable: false,
        doc: "the final norm's output",
    },
    HookKind {
        name: "logits",
        dims: "[vocab]",
        point: |_| HookPoint::Logits,
        shape: |c| vec![c.vocab_size],
        writable: false,
        doc: "the logits",
    },
];

impl HookPoint {
    /// The point's kind in [`HOOK_KINDS`]: the row whose constructor makes this variant.
    pub fn kind(&self) -> &'static HookKind {
        let variant = std::mem::discriminant(self);
        HOOK_KINDS
            .iter()
            .find(|k| std::mem::discriminant(&k.at(0)) == variant)
            .expect("every point has a kind")
    }

    pub fn layer(&self) -> Option<usize> {
        use HookPoint::*;
        match *self {
            ResidPre(l) | Ln1Scale(l) | Q(l) | K(l) | V(l) | Z(l) | Result(l) | AttnScores(l) | Pattern(l) | AttnOut(l) | ResidMid(l)
            | Ln2Scale(l) | Router(l) | ExpertWeights(l) | ExpertOut(l) | MlpPre(l) | MlpPost(l) | MlpOut(l) | ResidPost(l) => Some(l),
            Embed | PosEmbed | FinalScale | FinalNormalized | Logits => None,
        }
    }

    /// Every hook point of a model, in the order the forward pass reaches them (the table's
    /// order, its per-layer kinds repeated for each layer where they stand).
    pub fn all(c: &ModelConfig) -> Vec<HookPoint> {
        let kinds: Vec<&HookKind> = HOOK_KINDS.iter().filter(|k| k.exists_in(c)).collect();
        let layered: Vec<&HookKind> = kinds.iter().copied().filter(|k| k.per_layer()).collect();
        let mut points = Vec::new();
        for (i, k) in kinds.iter().enumerate() {
            if !k.per_layer() {
                points.push(k.at(0));
            } else if i == 0 || !kinds[i - 1].per_layer() {
                points.extend((0..c.n_layers).flat_map(|l| layered.iter().map(move |k| k.at(l))));
            }
        }
        points
    }

    /// The shape of one position's row (patterns: keys vary, reported as 0).
    pub fn row_shape(&self, c: &ModelConfig) -> Vec<usize> {
        self.kind().row_shape(c)
    }

    pub fn row_len(&self, c: &ModelConfig) -> usize {
        self.row_shape(c).iter().product()
    }

    fn check(&self, c: &ModelConfig) -> Result<()> {
        if let Some(l) = self.layer() {
            if l >= c.n_layers {
                return Err(Error::Hook(format!("{self}: the model has {} layers", c.n_layers)));
            }
        }
        if !self.kind().exists_in(c) {
            let why = match self {
                HookPoint::PosEmbed => "this model has rotary positions, no position table",
                HookPoint::MlpPre(_) | HookPoint::MlpPost(_) => "a Mixture-of-Experts MLP has no single hidden activation",
                HookPoint::Router(_) | HookPoint::ExpertWeights(_) | HookPoint::ExpertOut(_) => "a dense MLP has no experts",
                _ => "this model's blocks have no such norm",
            };
            return Err(Error::Hook(format!("{self}: {why}")));
        }
        Ok(())
    }
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.kind().name;
        match self.layer() {
            Some(l) => f.write_str(&name.replace("{l}", &l.to_string())),
            None => f.write_str(name),
        }
    }
}

impl FromStr for HookPoint {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            let examples: Vec<String> = HOOK_KINDS.iter().map(|k| k.name.replace("{l}", "3")).collect();
            Error::Hook(format!("unknown hook point `{s}` (the points: {})", examples.join(", ")))
        };
        if let Some(k) = HOOK_KINDS.iter().find(|k| !k.per_layer() && k.name == s) {
            return Ok(k.at(0));
        }
        let rest = s.strip_prefix("blocks.").ok_or_else(bad)?;
        let (layer, name) = rest.split_once('.').ok_or_else(bad)?;
        let l: usize = layer.parse().map_err(|_| bad())?;
        HOOK_KINDS
            .iter()
            .find(|k| k.name.strip_prefix("blocks.{l}.") == Some(name))
            .map(|k| k.at(l))
            .ok_or_else(bad)
    }
}

/// Which token positions a capture or intervention applies to (absolute positions in the
/// sequence, prompt and generated tokens alike).
#[derive(Debug, Clone, PartialEq)]
pub enum Positions {
    All,
    /// The last position of the prompt and every generated position: what decides the next token.
    Last,
    At(Vec<usize>),
}

impl Positions {
    fn matches(&self, pos: usize, last: Option<usize>) -> bool {
        match self {
            Positions::All => true,
            Positions::Last => last == Some(pos),
            Positions::At(v) => v.contains(&pos),
        }
    }
}

/// How a pattern capture is reduced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reduce {
    /// Whole rows.
    None,
    /// The key position of each head's largest attention probability (first on ties).
    Argmax,
    /// Each head's attention probability summed over the keys at positions before the given
    /// one (e.g. the prompt's share of a generated token's attention).
    MassBefore(usize),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Capture {
    pub point: HookPoint,
    pub positions: Positions,
    pub reduce: Reduce,
}

impl Capture {
    pub fn new(point: HookPoint, positions: Positions) -> Self {
        Capture {
            point,
            positions,
            reduce: Reduce::None,
        }
    }

    /// Each query head's attention argmax at the given query positions.
    pub fn pattern_argmax(layer: usize, positions: Positions) -> Self {
        Capture {
            point: HookPoint::Pattern(layer),
            positions,
            reduce: Reduce::Argmax,
        }
    }

    /// Each query head's attention probability on the keys at positions before `split`, at
    /// the given query positions: a number per head instead of a row.
    pub fn pattern_mass_before(layer: usize, positions: Positions, split: usize) -> Self {
        Capture {
            point: HookPoint::Pattern(layer),
            positions,
            reduce: Reduce::MassBefore(split),
        }
    }
}

/// When an intervention is active: while the prompt is processed, while tokens are generated,
/// or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Prefill,
    Decode,
    Both,
}

impl Phase {
    pub fn includes(self, now: Phase) -> bool {
        self == Phase::Both || self == now
    }
}

impl FromStr for Phase {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "prefill" => Ok(Phase::Prefill),
            "decode" => Ok(Phase::Decode),
            "all" | "both" => Ok(Phase::Both),
            _ => Err(Error::Hook(format!("unknown phase `{s}` (prefill, decode, all)"))),
        }
    }
}

/// How a masked head is silenced.
#[derive(Debug, Clone, PartialEq)]
pub enum MaskMode {
    /// Zero the head's query: its attention becomes uniform over the keys it can see (what the
    /// retrieval-head paper's code does).
    Uniform,
    /// Zero the head's output (`hook_z`, hence `hook_result`).
    Zero,
    /// Replace the head's output by a fixed `d_head` vector (its mean over reference runs).
    Mean(Vec<f32>),
}

/// Which keys a head may attend to, on top of causality.
#[derive(Debug, Clone, PartialEq)]
pub enum KeySet {
    /// Only these absolute positions.
    Only(Vec<usize>),
    /// Only the query's own position.
    SelfOnly,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Intervention {
    MaskHead {
        layer: usize,
        head: usize,
        mode: MaskMode,
        phase: Phase,
    },
    RestrictKeys {
        layer: usize,
        head: usize,
        keys: KeySet,
        phase: Phase,
    },
    /// Add a vector to every selected row of a point (residual, attention/MLP output, MLP hidden).
    Add {
        point: HookPoint,
        positions: Positions,
        vector: Vec<f32>,
    },
    /// Overwrite rows of a point with given values (activation patching). With `head`, only that
    /// head's slice of a per-head point (`hook_z`).
    Set {
        point: HookPoint,
        head: Option<usize>,
        rows: BTreeMap<usize, Vec<f32>>,
    },
    /// Never choose these experts of a Mixture-of-Experts layer: their router logits are -inf
    /// before the choice, so each token's top experts come from the others (as masking a head
    /// silences it).
    DisableExperts { layer: usize, experts: Vec<usize>, phase: Phase },
}

impl Intervention {
    /// Whether it can change what a prompt's prefill computes (masks limited to decoding
    /// cannot; additions and patches are taken as able to).
    pub fn acts_in_prefill(&self) -> bool {
        match self {
            Intervention::MaskHead { phase, .. }
            | Intervention::RestrictKeys { phase, .. }
            | Intervention::DisableExperts { phase, .. } => phase.includes(Phase::Prefill),
            Intervention::Add { .. } | Intervention::Set { .. } => true,
        }
    }
}

/// Everything one run records and changes.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    pub captures: Vec<Capture>,
    pub interventions: Vec<Intervention>,
}

impl Hooks {
    pub fn is_empty(&self) -> bool {
        self.captures.is_empty() && self.interventions.is_empty()
    }

    pub fn capture(mut self, c: Capture) -> Self {
        self.captures.push(c);
        self
    }

    pub fn intervene(mut self, i: Intervention) -> Self {
        self.interventions.push(i);
        self
    }

    /// Check every point, layer, head and vector length against the model.
    pub fn validate(&self, c: &ModelConfig) -> Result<()> {
        let head_ok = |layer: usize, head: usize| {
            if layer >= c.n_layers || head >= c.n_heads {
                Err(Error::Hook(format!(
                    "head {layer}.{head} does not exist ({} layers x {} heads)",
                    c.n_layers, c.n_heads
                )))
            } else {
                Ok(())
            }
        };
        for cap in &self.captures {
            cap.point.check(c)?;
            if cap.reduce != Reduce::None && !matches!(cap.point, HookPoint::Pattern(_)) {
                return Err(Error::Hook(format!(
                    "argmax and mass apply to attention patterns, not {}",
                    cap.point
                )));
            }
            if let Reduce::MassBefore(split) = cap.reduce {
                let other = self.captures.iter().find_map(|o| match o.reduce {
                    Reduce::MassBefore(s) if o.point == cap.point && s != split => Some(s),
                    _ => None,
                });
                if let Some(s) = other {
                    return Err(Error::Hook(format!(
                        "{} asks for attention mass before two positions ({split} and {s}); one per layer",
                        cap.point
                    )));
                }
            }
        }
        for i in &self.interventions {
            match i {
                Intervention::MaskHead { layer, head, mode, .. } => {
                    head_ok(*layer, *head)?;
                    if let MaskMode::Mean(v) = mode {
                        if v.len() != c.d_head {
                            return Err(Error::Hook(format!(
                                "mean for head {layer}.{head} has {} values, expected d_head = {}",
                                v.len(),
                                c.d_head
                            )));
                        }
                    }
                }
                Intervention::RestrictKeys { layer, head, .. } => head_ok(*layer, *head)?,
                Intervention::DisableExperts { layer, experts, .. } => {
                    HookPoint::Router(*layer).check(c)?;
                    let moe = c.moe.expect("checked: a Mixture-of-Experts layer");
                    let mut distinct = experts.clone();
                    distinct.sort_unstable();
                    distinct.dedup();
                    if let Some(e) = distinct.iter().find(|&&e| e >= moe.experts) {
                        return Err(Error::Hook(format!(
                            "expert {e} of layer {layer} does not exist ({} experts)",
                            moe.experts
                        )));
                    }
                    if moe.experts - distinct.len() < moe.per_token {
                        return Err(Error::Hook(format!(
                            "disabling {} of layer {layer}'s {} experts leaves fewer than the {} each token uses",
                            distinct.len(),
                            moe.experts,
                            moe.per_token
                        )));
                    }
                }
                Intervention::Add { point, vector, .. } => {
                    point.check(c)?;
                    if !point.kind().writable {
                        return Err(Error::Hook(format!("cannot add to {point}")));
                    }
                    if vector.len() != point.row_len(c) {
                        return Err(Error::Hook(format!(
                            "vector for {point} has {} values, expected {}",
                            vector.len(),
                            point.row_len(c)
                        )));
                    }
                }
                Intervention::Set { point, head, rows } => {
                    point.check(c)?;
                    if !point.kind().writable {
                        return Err(Error::Hook(format!("cannot patch {point}")));
                    }
                    let want = match head {
                        Some(h) if matches!(point, HookPoint::Z(_)) => {
                            head_ok(point.layer().unwrap_or(0), *h)?;
                            c.d_head
                        }
                        Some(_) => return Err(Error::Hook(format!("a per-head patch needs a per-head point, not {point}"))),
                        None => point.row_len(c),
                    };
                    if let Some((p, r)) = rows.iter().find(|(_, r)| r.len() != want) {
                        return Err(Error::Hook(format!(
                            "patch of {point} at position {p} has {} values, expected {want}",
                            r.len()
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

/// One query position's row over the keys `0..n_keys`, for every head: its attention
/// probabilities (`hook_pattern`: keys a head could not see, or that its cache no longer holds,
/// are 0) or its scores before the softmax (`hook_attn_scores`: those keys are -inf).
#[derive(Debug, Clone)]
pub struct KeyRow {
    pub position: usize,
    pub n_keys: usize,
    /// `[head, n_keys]`
    pub values: Vec<f32>,
}

impl KeyRow {
    /// Head `h`'s values over the keys.
    pub fn head(&self, h: usize) -> &[f32] {
        &self.values[h * self.n_keys..(h + 1) * self.n_keys]
    }
}

/// Rows of one captured point, in the order they were computed.
#[derive(Debug, Clone, Default)]
pub struct Rows {
    pub positions: Vec<usize>,
    pub row_len: usize,
    pub data: Vec<f32>,
}

impl Rows {
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.row_len..(i + 1) * self.row_len]
    }

    /// The row captured at an absolute position (the latest, if captured twice).
    pub fn at(&self, pos: usize) -> Option<&[f32]> {
        self.positions.iter().rposition(|&p| p == pos).map(|i| self.row(i))
    }
}

/// The pattern captures of one layer in one step (see `CompiledHooks::pattern_requests`).
#[derive(Debug, Clone, Default)]
pub struct PatternRequests {
    pub full: Vec<usize>,
    /// Positions whose scores before the softmax are recorded (`hook_attn_scores`).
    pub scores: Vec<usize>,
    pub argmax: Vec<usize>,
    pub mass: Vec<usize>,
    /// Keys at positions below this count toward the mass.
    pub split: usize,
}

/// What a run captured.
#[derive(Debug, Clone, Default)]
pub struct Recording {
    pub rows: BTreeMap<HookPoint, Rows>,
    pub patterns: BTreeMap<usize, Vec<KeyRow>>,
    /// Per layer: rows of scores before the softmax (`hook_attn_scores`).
    pub scores: BTreeMap<usize, Vec<KeyRow>>,
    /// Per layer: (query position, key position of each query head's argmax).
    pub argmax: BTreeMap<usize, Vec<(usize, Vec<u32>)>>,
    /// Per layer: (query position, each query head's attention mass before the split).
    pub mass: BTreeMap<usize, Vec<(usize, Vec<f32>)>>,
}

impl Recording {
    pub fn get(&self, point: HookPoint) -> Option<&Rows> {
        self.rows.get(&point)
    }

    pub(crate) fn push_row(&mut self, point: HookPoint, pos: usize, row: &[f32]) {
        let r = self.rows.entry(point).or_default();
        r.row_len = row.len();
        r.positions.push(pos);
        r.data.extend_from_slice(row);
    }

    pub fn clear(&mut self) {
        *self = Recording::default();
    }
}

/// One forward call: rows for positions `p0..p0 + n`, which of them (if any) decides the next
/// token, and whether the prompt or a generated token is being processed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Step {
    pub p0: usize,
    pub n: usize,
    pub last: Option<usize>,
    pub phase: Phase,
}

impl Step {
    pub fn positions(&self) -> std::ops::Range<usize> {
        self.p0..self.p0 + self.n
    }

    /// The same call narrowed to one position.
    pub fn at(&self, pos: usize) -> Step {
        Step { p0: pos, n: 1, ..*self }
    }
}

/// Hooks compiled for fast lookup during a forward pass.
#[derive(Debug, Clone, Default)]
pub(crate) struct CompiledHooks {
    pub hooks: Hooks,
    /// Points touched by any capture or intervention: a forward pass skips all others at once.
    touched: std::collections::BTreeSet<HookPoint>,
    layers_with_attention_hooks: Vec<bool>,
    d_head: usize,
}

/// What the attention kernel of one layer must do for one query head.
#[derive(Debug, Clone, Default)]
pub(crate) struct HeadHooks {
    pub zero_query: bool,
    pub keys: Option<KeySet>,
}

impl CompiledHooks {
    pub fn new(hooks: Hooks, config: &ModelConfig) -> Result<Self> {
        hooks.validate(config)?;
        let mut touched = std::collections::BTreeSet::new();
        let mut attn = vec![false; config.n_layers];
        for c in &hooks.captures {
            touched.insert(c.point);
            if let HookPoint::Pattern(l) | HookPoint::AttnScores(l) = c.point {
                attn[l] = true;
            }
        }
        for i in &hooks.interventions {
            match i {
                Intervention::MaskHead { layer, .. } | Intervention::RestrictKeys { layer, .. } => {
                    touched.insert(HookPoint::Z(*layer));
                    attn[*layer] = true;
                }
                Intervention::Add { point, .. } | Intervention::Set { point, .. } => {
                    touched.insert(*point);
                }
                Intervention::DisableExperts { layer, .. } => {
                    touched.insert(HookPoint::Router(*layer));
                }
            }
        }
        Ok(CompiledHooks {
            hooks,
            touched,
            layers_with_attention_hooks: attn,
            d_head: config.d_head,
        })
    }

    #[inline]
    pub fn touches(&self, p: HookPoint) -> bool {
        !self.touched.is_empty() && self.touched.contains(&p)
    }

    pub fn attention_hooked(&self, layer: usize) -> bool {
        self.layers_with_attention_hooks.get(layer).copied().unwrap_or(false)
    }

    /// Per-head query masks and key restrictions active in this layer and phase.
    pub fn head_hooks(&self, layer: usize, n_heads: usize, phase: Phase) -> Vec<HeadHooks> {
        let mut out = vec![HeadHooks::default(); n_heads];
        for i in &self.hooks.interventions {
            match i {
                Intervention::MaskHead {
                    layer: l,
                    head,
                    mode: MaskMode::Uniform,
                    phase: ph,
                } if *l == layer && ph.includes(phase) => out[*head].zero_query = true,
                Intervention::RestrictKeys {
                    layer: l,
                    head,
                    keys,
                    phase: ph,
                } if *l == layer && ph.includes(phase) => out[*head].keys = Some(keys.clone()),
                _ => {}
            }
        }
        out
    }

    /// What is captured of a layer's attention patterns in a step: the query positions (within
    /// the step's) whose whole rows, argmax and mass are recorded, and the mass's split.
    pub fn pattern_requests(&self, layer: usize, step: &Step) -> PatternRequests {
        let mut req = PatternRequests::default();
        for c in &self.hooks.captures {
            if c.point == HookPoint::AttnScores(layer) {
                req.scores.extend(step.positions().filter(|&p| c.positions.matches(p, step.last)));
                continue;
            }
            if c.point != HookPoint::Pattern(layer) {
                continue;
            }
            let target = match c.reduce {
                Reduce::None => &mut req.full,
                Reduce::Argmax => &mut req.argmax,
                Reduce::MassBefore(split) => {
                    req.split = split;
                    &mut req.mass
                }
            };
            target.extend(step.positions().filter(|&p| c.positions.matches(p, step.last)));
        }
        for v in [&mut req.full, &mut req.scores, &mut req.argmax, &mut req.mass] {
            v.sort_unstable();
            v.dedup();
        }
        req
    }

    /// Apply interventions at `point` to `buf` (one row of `row_len` values per position of the
    /// step), then record captures.
    pub fn apply(&self, point: HookPoint, buf: &mut [f32], row_len: usize, step: &Step, rec: &mut Recording) {
        if !self.touches(point) {
            return;
        }
        let (n, p0, last, d_head) = (buf.len() / row_len, step.p0, step.last, self.d_head);
        for i in &self.hooks.interventions {
            match i {
                Intervention::MaskHead {
                    layer,
                    head,
                    mode,
                    phase: ph,
                } if point == HookPoint::Z(*layer) && ph.includes(step.phase) => {
                    let fill: &[f32] = match mode {
                        MaskMode::Uniform => continue,
                        MaskMode::Zero => &[],
                        MaskMode::Mean(v) => v,
                    };
                    for r in 0..n {
                        let slot = &mut buf[r * row_len + head * d_head..r * row_len + (head + 1) * d_head];
                        if fill.is_empty() {
                            slot.fill(0.0);
                        } else {
                            slot.copy_from_slice(fill);
                        }
                    }
                }
                Intervention::Add {
                    point: p,
                    positions,
                    vector,
                } if *p == point => {
                    for r in 0..n {
                        if positions.matches(p0 + r, last) {
                            buf[r * row_len..(r + 1) * row_len]
                                .iter_mut()
                                .zip(vector)
                                .for_each(|(x, v)| *x += v);
                        }
                    }
                }
                Intervention::DisableExperts { layer, experts, phase: ph }
                    if point == HookPoint::Router(*layer) && ph.includes(step.phase) =>
                {
                    for row in buf.chunks_exact_mut(row_len) {
                        experts.iter().for_each(|&e| row[e] = f32::NEG_INFINITY);
                    }
                }
                Intervention::Set { point: p, head, rows } if *p == point => {
                    for (&pos, values) in rows.range(p0..p0 + n) {
                        let r = pos - p0;
                        let row = &mut buf[r * row_len..(r + 1) * row_len];
                        match head {
                            Some(h) => row[h * d_head..(h + 1) * d_head].copy_from_slice(values),
                            None => row.copy_from_slice(values),
                        }
                    }
                }
                _ => {}
            }
        }
        for c in &self.hooks.captures {
            if c.point == point {
                for r in 0..n {
                    if c.positions.matches(p0 + r, last) {
                        rec.push_row(point, p0 + r, &buf[r * row_len..(r + 1) * row_len]);
                    }
                }
            }
        }
    }

    /// Positions (within this call) at which a point is captured.
    pub fn capture_positions(&self, point: HookPoint, step: &Step) -> Vec<usize> {
        if !self.touches(point) {
            return Vec::new();
        }
        step.positions()
            .filter(|&p| {
                self.hooks
                    .captures
                    .iter()
                    .any(|c| c.point == point && c.positions.matches(p, step.last))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_names_round_trip() {
        for p in [
            HookPoint::Embed,
            HookPoint::ResidPre(3),
            HookPoint::Z(0),
            HookPoint::Result(11),
            HookPoint::Pattern(2),
            HookPoint::AttnOut(1),
            HookPoint::ResidMid(4),
            HookPoint::MlpPost(5),
            HookPoint::MlpOut(6),
            HookPoint::ResidPost(29),
            HookPoint::FinalNormalized,
            HookPoint::Logits,
        ] {
            assert_eq!(p.to_string().parse::<HookPoint>().unwrap(), p);
        }
        for k in HOOK_KINDS {
            let p = k.at(5);
            assert_eq!(p.kind().name, k.name, "kind() and the table agree");
            assert_eq!(p.to_string().parse::<HookPoint>().unwrap(), p);
        }
        assert_eq!("blocks.7.attn.hook_pattern".parse::<HookPoint>().unwrap(), HookPoint::Pattern(7));
        assert!("blocks.x.hook_resid_pre".parse::<HookPoint>().is_err());
        assert!("blocks.1.attn.hook_nothing".parse::<HookPoint>().is_err());
        assert!("blocks.1.hook_nothing".parse::<HookPoint>().is_err());
    }

    /// The README's table of hook points is this table.
    #[test]
    fn the_readme_lists_every_hook_point() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
        for k in HOOK_KINDS {
            let row = format!(
                "| `{}` | `{}` | {} | {} |",
                k.name,
                k.dims,
                if k.writable { "yes" } else { "no" },
                k.doc
            );
            assert!(readme.contains(&row), "README.md lacks the row\n{row}");
            assert_eq!(
                k.dims.split(',').count(),
                (k.shape)(&tiny_config()).len(),
                "{}: dims and shape",
                k.name
            );
        }
    }

    fn tiny_config() -> ModelConfig {
        let json = serde_json::json!({"model_type": "gpt2", "n_embd": 8, "n_head": 2, "n_layer": 1, "n_positions": 16, "vocab_size": 32});
        ModelConfig::from_hf_json(&json).unwrap()
    }
}

//! A loaded model and the forward pass: one code path for every family, with hooks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::attention::AttentionLayer;
use crate::config::{ModelConfig, PositionEncoding, RopeScaling};
use crate::cpu::Isa;
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::hooks::{CompiledHooks, HookPoint, Hooks, Phase, Recording, Step};
use crate::kernels::Precision;
use crate::kv_cache::{HeadCache, KvCache, KvPolicy};
use crate::linalg::{mlp_activation, norm_rows, norm_scale, rms_scale};
use crate::profile::{self, Stage};
use crate::rope::{RopeAngles, RopeTable};
use crate::tokenizer::Tokenizer;
use crate::weights::{self, Expert, Linear, Mlp, SafetensorsDir, Weights};

/// Where a model came from, for its card.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SourceInfo {
    pub path: PathBuf,
    /// `gguf` or `safetensors`.
    pub format: String,
    pub name: Option<String>,
    /// Tensor storage types and how many tensors use each (`Q4_1: 210`, ...).
    pub tensor_types: BTreeMap<String, usize>,
}

pub struct Model {
    pub config: ModelConfig,
    pub weights: Weights,
    /// `None` for a checkpoint directory without `tokenizer.json`.
    pub tokenizer: Option<Tokenizer>,
    pub source: SourceInfo,
    isa: Isa,
    /// One table per distinct (base, scaling); `rope_of_layer[l]` indexes it.
    rope_tables: Vec<RopeTable>,
    rope_of_layer: Vec<usize>,
}

/// How a run's KV cache is laid out and how prompts are fed.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Rows to reserve in each full KV head (prompt plus generated tokens); 0 lets caches grow.
    pub capacity: usize,
    /// Policy per layer and KV head for layers without their own sliding window; `None` keeps
    /// everything.
    pub kv_policy: Option<Vec<Vec<KvPolicy>>>,
    /// Prompt tokens processed per forward call: bounds activation memory on long prompts.
    /// 1024 by default: against 512, the larger matrix products run 7-15% faster prefill at
    /// 2048 and 4096 tokens on both models for ~20 MiB more (bench/RESULTS.md).
    pub prefill_chunk: usize,
    /// Hold every position in windowed heads too (their attention still sees only the window),
    /// so that [`Run::truncate`] can go back to any position; costs those heads a full cache.
    pub keep_windows: bool,
    /// Run only the layers below this one (TransformerLens's `stop_at_layer`): what reads one
    /// layer's activations needs none above it. Such a run computes no logits: `prefill` and
    /// `decode` return an empty vector.
    pub stop_at_layer: Option<usize>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            capacity: 0,
            kv_policy: None,
            prefill_chunk: 1024,
            keep_windows: false,
            stop_at_layer: None,
        }
    }
}

impl Model {
    /// Load a `.gguf` file or a Hugging Face directory (`config.json`, `*.safetensors`, and
    /// `tokenizer.json` for anything that reads or writes text), with the best kernels the CPU
    /// runs (capped by `HEADHUNT_SIMD`).
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_with(path, Isa::from_env())
    }

    /// [`Model::load`] with the kernels of `isa` (or the best level below it the CPU runs).
    pub fn load_with(path: &Path, isa: Isa) -> Result<Self> {
        if path.is_dir() {
            Self::from_hf_dir(path, isa)
        } else {
            Self::from_gguf(path, isa)
        }
    }

    fn from_gguf(path: &Path, isa: Isa) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let config = ModelConfig::from_gguf(&file.header)?;
        let tokenizer = Tokenizer::from_gguf(&file.header)?;
        let weights = weights::load_gguf(&file, &config, isa)?;
        let mut tensor_types = BTreeMap::new();
        for t in file.header.tensors.values() {
            *tensor_types.entry(format!("{:?}", t.dtype)).or_insert(0) += 1;
        }
        let source = SourceInfo {
            path: path.to_owned(),
            format: "gguf".into(),
            name: file.meta("general.name").and_then(|v| v.as_str()).map(str::to_owned),
            tensor_types,
        };
        // The parsed header (a large vocabulary's strings) and what building the tokenizer
        // freed lie in small holes that later, larger allocations cannot reuse.
        drop(file);
        release_free_heap();
        Ok(Self::assemble(config, weights, Some(tokenizer), source, isa))
    }

    fn from_hf_dir(dir: &Path, isa: Isa) -> Result<Self> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::Checkpoint {
                path: dir.to_owned(),
                reason: "missing config.json (a Hugging Face directory needs config.json, model*.safetensors and tokenizer.json)".into(),
            },
            _ => Error::io(&config_path, e),
        })?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Checkpoint {
            path: config_path.clone(),
            reason: format!("not valid JSON: {e}"),
        })?;
        let config = ModelConfig::from_hf_json(&json)?;
        let files = SafetensorsDir::open(dir)?;
        let weights = weights::load_safetensors(&files, &config, isa)?;
        let tokenizer = if dir.join("tokenizer.json").exists() {
            Some(Tokenizer::from_hf_dir(dir)?)
        } else {
            None
        };
        let source = SourceInfo {
            path: dir.to_owned(),
            format: "safetensors".into(),
            name: json.get("_name_or_path").and_then(|v| v.as_str()).map(str::to_owned),
            tensor_types: BTreeMap::new(),
        };
        Ok(Self::assemble(config, weights, tokenizer, source, isa))
    }

    fn assemble(config: ModelConfig, weights: Weights, tokenizer: Option<Tokenizer>, source: SourceInfo, isa: Isa) -> Self {
        let mut rope_tables: Vec<RopeTable> = Vec::new();
        let mut keys: Vec<(u32, Option<String>)> = Vec::new();
        let mut rope_of_layer = Vec::new();
        if config.positions == PositionEncoding::Rotary {
            for spec in &config.layers {
                let key = (spec.rope_base.to_bits(), spec.rope_scaling.map(|s| format!("{s:?}")));
                let idx = match keys.iter().position(|k| *k == key) {
                    Some(i) => i,
                    None => {
                        keys.push(key);
                        let mut table = RopeTable::new(config.d_head, spec.rope_base, spec.rope_scaling);
                        if spec.rope_scaling == Some(RopeScaling::FreqFactors) {
                            let factors = weights.rope_freq_factors.as_deref();
                            table = table.with_freq_factors(factors.expect("the loader requires rope_freqs.weight"));
                        }
                        rope_tables.push(table);
                        rope_tables.len() - 1
                    }
                };
                rope_of_layer.push(idx);
            }
        }
        Model {
            config,
            weights,
            tokenizer,
            source,
            isa: isa.supported(),
            rope_tables,
            rope_of_layer,
        }
    }

    /// The instruction-set level of the weight kernels.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Compute the products with the weights at `precision` from now on ([`Precision::Fast`]:
    /// decoding's matrix-vector products in int8; dense weights stay exact).
    pub fn set_precision(&mut self, precision: Precision) {
        self.weights.set_precision(precision);
    }

    /// `Fast` when some weight product runs in integers, else `Exact`.
    pub fn precision(&self) -> Precision {
        if self.weights.matrices().any(|m| m.precision() == Precision::Fast) {
            Precision::Fast
        } else {
            Precision::Exact
        }
    }

    /// The tokenizer, or an error saying why there is none.
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| Error::Checkpoint {
            path: self.source.path.clone(),
            reason: "missing tokenizer.json: this command needs the model's tokenizer".into(),
        })
    }

    /// Start a run: an empty KV cache, hooks compiled against this model.
    pub fn run(&self, hooks: Hooks, options: RunOptions) -> Result<Run<'_>> {
        let plan = CompiledHooks::new(hooks, &self.config)?;
        let policies = self.kv_policies(options.kv_policy.as_deref())?;
        let chunk = options.prefill_chunk.max(1);
        Ok(Run {
            model: self,
            plan,
            cache: if options.keep_windows {
                KvCache::keeping_windows(&policies, self.config.d_head, options.capacity)
            } else {
                KvCache::new(&policies, self.config.d_head, options.capacity, chunk)
            },
            recording: Recording::default(),
            tokens: Vec::new(),
            chunk,
            layers: options.stop_at_layer.map_or(self.config.n_layers, |l| l.min(self.config.n_layers)),
        })
    }

    /// The effective KV policy per layer and KV head: a layer's own sliding window wins,
    /// elsewhere the requested policy (or full).
    pub fn kv_policies(&self, requested: Option<&[Vec<KvPolicy>]>) -> Result<Vec<Vec<KvPolicy>>> {
        let c = &self.config;
        if let Some(r) = requested {
            if r.len() != c.n_layers || r.iter().any(|l| l.len() != c.n_kv_heads) {
                return Err(Error::Run(format!(
                    "a KV policy needs {} layers x {} KV heads",
                    c.n_layers, c.n_kv_heads
                )));
            }
        }
        Ok((0..c.n_layers)
            .map(|l| match c.layers[l].window {
                Some(window) => vec![KvPolicy::SinkWindow { sink: 0, window }; c.n_kv_heads],
                None => requested.map_or_else(|| vec![KvPolicy::Full; c.n_kv_heads], |r| r[l].clone()),
            })
            .collect())
    }

    pub fn is_eos(&self, token: u32) -> bool {
        self.tokenizer.as_ref().is_some_and(|t| t.eos_ids.contains(&token))
    }

    /// Run `tokens` (at the step's positions) through the network, appending to `cache`.
    /// Returns the logits at the step's last position when it has one.
    fn forward(
        &self,
        tokens: &[u32],
        step: Step,
        cache: &mut KvCache,
        plan: &CompiledHooks,
        rec: &mut Recording,
        stop_at_layer: usize,
    ) -> Result<Option<Vec<f32>>> {
        let mut pass = Pass { step, plan, rec };
        let d = self.config.d_model;
        let mut resid = self.embed(tokens, &mut pass)?;
        let rope: Vec<_> = self.rope_tables.iter().map(|t| t.at_positions(step.p0, step.n)).collect();
        for (l, layer_cache) in cache.layers.iter_mut().enumerate().take(stop_at_layer) {
            pass.hook(HookPoint::ResidPre(l), &mut resid, d);
            let attn_out = self.attention(l, &resid, &rope, layer_cache, &mut pass);
            add_into(&mut resid, &attn_out);
            pass.hook(HookPoint::ResidMid(l), &mut resid, d);
            let mlp_out = self.mlp(l, &resid, &mut pass);
            add_into(&mut resid, &mlp_out);
            pass.hook(HookPoint::ResidPost(l), &mut resid, d);
        }
        if stop_at_layer < self.config.n_layers {
            return Ok(step.last.map(|_| Vec::new()));
        }
        Ok(self.logits(&resid, &mut pass))
    }

    /// Token (and learned position) embeddings.
    fn embed(&self, tokens: &[u32], pass: &mut Pass<'_>) -> Result<Vec<f32>> {
        let _t = profile::span(Stage::Embed);
        let (c, w) = (&self.config, &self.weights);
        let (n, d) = (tokens.len(), c.d_model);
        let mut resid = vec![0.0f32; n * d];
        for (r, &t) in tokens.iter().enumerate() {
            if t as usize >= c.vocab_size {
                return Err(Error::TokenOutOfRange {
                    id: t,
                    vocab: c.vocab_size,
                });
            }
            let row = &mut resid[r * d..(r + 1) * d];
            w.embed.dequantize_row(t as usize, row);
            row.iter_mut().for_each(|x| *x *= c.embed_scale);
        }
        pass.hook(HookPoint::Embed, &mut resid, d);
        if let (PositionEncoding::Learned { offset }, Some(table)) = (c.positions, &w.pos_embed) {
            let mut pos = vec![0.0f32; n * d];
            for (r, out) in pos.chunks_exact_mut(d).enumerate() {
                table.dequantize_row(pass.step.p0 + r + offset, out);
            }
            pass.hook(HookPoint::PosEmbed, &mut pos, d);
            add_into(&mut resid, &pos);
        }
        Ok(resid)
    }

    /// One attention sub-layer: what it adds to the residual stream.
    fn attention(&self, l: usize, resid: &[f32], rope: &[RopeAngles], cache: &mut [HeadCache], pass: &mut Pass<'_>) -> Vec<f32> {
        let q = self.project_qkv(l, resid, rope, cache, pass);
        let z = self.attend(l, &q, cache, pass);
        self.project_out(l, z, pass)
    }

    /// The queries of layer `l` (normed and roped, `[n, n_heads * d_head]`); the keys and values
    /// go into the cache.
    fn project_qkv(&self, l: usize, resid: &[f32], rope: &[RopeAngles], cache: &mut [HeadCache], pass: &mut Pass<'_>) -> Vec<f32> {
        let c = &self.config;
        let b = &self.weights.blocks[l];
        let (n, d, nh, nkv, dh) = (pass.step.n, c.d_model, c.n_heads, c.n_kv_heads, c.d_head);
        let mut x = vec![0.0f32; n * d];
        profile::timed(Stage::Norms, || pre_norm(&mut x, resid, c, b.attn_norm.as_ref()));
        pass.norm_scale(HookPoint::Ln1Scale(l), resid, c);
        let width = (nh + 2 * nkv) * dh;
        let (qkv, mut q, mut k) = profile::timed(Stage::QkvProjection, || {
            let qkv = b.qkv.forward(&x, n);
            let q: Vec<f32> = qkv.chunks_exact(width).flat_map(|row| &row[..nh * dh]).copied().collect();
            let k: Vec<f32> = qkv
                .chunks_exact(width)
                .flat_map(|row| &row[nh * dh..(nh + nkv) * dh])
                .copied()
                .collect();
            (qkv, q, k)
        });
        profile::timed(Stage::Norms, || {
            // Per head or over the whole projection: the weight's length is the normed width.
            if let Some(qn) = &b.q_norm {
                norm_rows_in_place(&mut q, qn.w.len(), c, qn);
            }
            if let Some(kn) = &b.k_norm {
                norm_rows_in_place(&mut k, kn.w.len(), c, kn);
            }
        });
        if let Some(&t) = self.rope_of_layer.get(l) {
            let _t = profile::span(Stage::Rope);
            for (r, (qr, kr)) in q.chunks_exact_mut(nh * dh).zip(k.chunks_exact_mut(nkv * dh)).enumerate() {
                qr.chunks_exact_mut(dh)
                    .chain(kr.chunks_exact_mut(dh))
                    .for_each(|head| rope[t].apply(head, r));
            }
        }
        pass.hook(HookPoint::Q(l), &mut q, nh * dh);
        pass.hook(HookPoint::K(l), &mut k, nkv * dh);
        if pass.plan.touches(HookPoint::V(l)) {
            let mut v: Vec<f32> = qkv.chunks_exact(width).flat_map(|row| &row[(nh + nkv) * dh..]).copied().collect();
            pass.hook(HookPoint::V(l), &mut v, nkv * dh);
        }
        profile::timed(Stage::KvCache, || {
            for (r, (row, kr)) in qkv.chunks_exact(width).zip(k.chunks_exact(nkv * dh)).enumerate() {
                for (g, head_cache) in cache.iter_mut().enumerate() {
                    let vr = &row[(nh + nkv + g) * dh..(nh + nkv + g + 1) * dh];
                    head_cache.push(pass.step.p0 + r, &kr[g * dh..(g + 1) * dh], vr);
                }
            }
        });
        q
    }

    /// Every head's attention-weighted values (`hook_z`) from the queries and the cache,
    /// recording the patterns, scores, argmaxes and masses the hooks ask for.
    fn attend(&self, l: usize, q: &[f32], cache: &[HeadCache], pass: &mut Pass<'_>) -> Vec<f32> {
        let c = &self.config;
        let plan = pass.plan;
        let hooked = plan.attention_hooked(l);
        let head_hooks = hooked.then(|| plan.head_hooks(l, c.n_heads, pass.step.phase));
        let requests = if hooked {
            plan.pattern_requests(l, &pass.step)
        } else {
            Default::default()
        };
        let out = profile::timed(Stage::Attention, || {
            AttentionLayer {
                q,
                n: pass.step.n,
                p0: pass.step.p0,
                n_heads: c.n_heads,
                d_head: c.d_head,
                scale: c.attn_scale,
                softcap: c.attn_logit_softcap,
                caches: cache,
                head_hooks: head_hooks.as_deref(),
                pattern_positions: &requests.full,
                score_positions: &requests.scores,
                argmax_positions: &requests.argmax,
                mass_positions: &requests.mass,
                mass_split: requests.split,
            }
            .run()
        });
        let rec = &mut pass.rec;
        for (rows, got) in [(&mut rec.patterns, out.patterns), (&mut rec.scores, out.scores)] {
            if !got.is_empty() {
                rows.entry(l).or_default().extend(got);
            }
        }
        if !out.argmax.is_empty() {
            rec.argmax.entry(l).or_default().extend(out.argmax);
        }
        if !out.mass.is_empty() {
            rec.mass.entry(l).or_default().extend(out.mass);
        }
        let mut z = out.z;
        pass.hook(HookPoint::Z(l), &mut z, c.n_heads * c.d_head);
        z
    }

    /// The output projection of the heads' values, through the post-attention norm where the
    /// family has one (sandwich norms), recording each head's share (`hook_result`).
    fn project_out(&self, l: usize, z: Vec<f32>, pass: &mut Pass<'_>) -> Vec<f32> {
        let c = &self.config;
        let b = &self.weights.blocks[l];
        let (n, d, p0) = (pass.step.n, c.d_model, pass.step.p0);
        let mut attn_out = profile::timed(Stage::OutProjection, || b.o.forward(&z, n));
        let positions = pass.plan.capture_positions(HookPoint::Result(l), &pass.step);
        if !positions.is_empty() {
            // A post-norm's per-row scale, shared by every head, so that the heads sum to its output.
            let post_scale: Option<Vec<f32>> = b
                .post_attn_norm
                .as_ref()
                .map(|_| attn_out.chunks_exact(d).map(|r| rms_scale(r, c.norm_eps)).collect());
            let rows: Vec<usize> = positions.iter().map(|&p| p - p0).collect();
            let results = self.head_results(l, &z, &rows, post_scale.as_deref());
            for (pos, row) in positions.into_iter().zip(results) {
                pass.rec.push_row(HookPoint::Result(l), pos, &row);
            }
        }
        if let Some(norm) = &b.post_attn_norm {
            profile::timed(Stage::Norms, || norm_rows_in_place(&mut attn_out, d, c, norm));
        }
        pass.hook(HookPoint::AttnOut(l), &mut attn_out, d);
        attn_out
    }

    /// One MLP sub-layer: what it adds to the residual stream.
    fn mlp(&self, l: usize, resid: &[f32], pass: &mut Pass<'_>) -> Vec<f32> {
        let c = &self.config;
        let b = &self.weights.blocks[l];
        let (n, d) = (pass.step.n, c.d_model);
        let mut x = vec![0.0f32; n * d];
        profile::timed(Stage::Norms, || pre_norm(&mut x, resid, c, b.mlp_norm.as_ref()));
        pass.norm_scale(HookPoint::Ln2Scale(l), resid, c);
        let mut out = match &b.mlp {
            Mlp::Dense(mlp) => {
                let h = profile::timed(Stage::MlpUp, || mlp.up.forward(&x, n));
                if pass.plan.touches(HookPoint::MlpPre(l)) {
                    let width = if c.gated_mlp { 2 * c.d_mlp } else { c.d_mlp };
                    let mut pre: Vec<f32> = h.chunks_exact(width).flat_map(|row| row[..c.d_mlp].to_vec()).collect();
                    pass.hook(HookPoint::MlpPre(l), &mut pre, c.d_mlp);
                }
                let mut act = profile::timed(Stage::MlpActivation, || mlp_activation(h, n, c.d_mlp, c.gated_mlp, c.activation));
                pass.hook(HookPoint::MlpPost(l), &mut act, c.d_mlp);
                profile::timed(Stage::MlpDown, || mlp.down.forward(&act, n))
            }
            Mlp::Experts { router, experts } => profile::timed(Stage::MlpUp, || self.experts(router, experts, &x, n)),
        };
        if let Some(norm) = &b.post_mlp_norm {
            profile::timed(Stage::Norms, || norm_rows_in_place(&mut out, d, c, norm));
        }
        pass.hook(HookPoint::MlpOut(l), &mut out, d);
        out
    }

    /// A Mixture-of-Experts MLP on the rows `x` (`n` of them): each row's `per_token` experts of
    /// highest router probability, their outputs summed with those probabilities as weights
    /// (renormalised over the chosen where the family does), expert by expert in index order as
    /// transformers adds them. Each expert multiplies only the rows routed to it.
    fn experts(&self, router: &Linear, experts: &[Expert], x: &[f32], n: usize) -> Vec<f32> {
        let c = &self.config;
        let (d, moe) = (c.d_model, c.moe.expect("an experts MLP has its config"));
        let logits = router.forward(x, n);
        let mut routed: Vec<(Vec<usize>, Vec<f32>)> = vec![(Vec::new(), Vec::new()); moe.experts];
        for (r, row) in logits.chunks_exact(moe.experts).enumerate() {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exp: Vec<f32> = row.iter().map(|&z| (z - max).exp()).collect();
            let sum: f32 = exp.iter().sum();
            let mut order: Vec<usize> = (0..moe.experts).collect();
            order.sort_by(|&a, &b| exp[b].total_cmp(&exp[a]).then(a.cmp(&b)));
            let chosen = &order[..moe.per_token];
            let kept: f32 = chosen.iter().map(|&e| exp[e] / sum).sum();
            for &e in chosen {
                let p = exp[e] / sum;
                routed[e].0.push(r);
                routed[e].1.push(if moe.normalize { p / kept } else { p });
            }
        }
        let mut out = vec![0.0f32; n * d];
        for (expert, (rows, weights)) in experts.iter().zip(&routed) {
            if rows.is_empty() {
                continue;
            }
            let m = rows.len();
            let xe: Vec<f32> = rows.iter().flat_map(|&r| x[r * d..(r + 1) * d].iter().copied()).collect();
            let h = expert.up.forward(&xe, m);
            let act = mlp_activation(h, m, c.d_mlp, c.gated_mlp, c.activation);
            let y = expert.down.forward(&act, m);
            for ((&r, &w), yr) in rows.iter().zip(weights).zip(y.chunks_exact(d)) {
                out[r * d..(r + 1) * d].iter_mut().zip(yr).for_each(|(o, &v)| *o += w * v);
            }
        }
        out
    }

    /// Final norm and unembedding, only at the positions someone needs; the logits at the
    /// step's last position.
    fn logits(&self, resid: &[f32], pass: &mut Pass<'_>) -> Option<Vec<f32>> {
        let _t = profile::span(Stage::Unembed);
        let c = &self.config;
        let d = c.d_model;
        let step = pass.step;
        let mut wanted = pass.plan.capture_positions(HookPoint::Logits, &step);
        wanted.extend(pass.plan.capture_positions(HookPoint::FinalNormalized, &step));
        wanted.extend(step.last);
        wanted.sort_unstable();
        wanted.dedup();
        for pos in pass.plan.capture_positions(HookPoint::FinalScale, &step) {
            let r = pos - step.p0;
            let scale = norm_scale(&resid[r * d..(r + 1) * d], c.norm, c.norm_eps);
            pass.rec.push_row(HookPoint::FinalScale, pos, &[scale]);
        }
        let mut last_logits = None;
        for pos in wanted {
            let r = pos - step.p0;
            let mut normed = vec![0.0f32; d];
            norm_rows(
                &mut normed,
                &resid[r * d..(r + 1) * d],
                d,
                c.norm,
                c.norm_eps,
                &self.weights.final_norm,
            );
            let at = step.at(pos);
            pass.plan.apply(HookPoint::FinalNormalized, &mut normed, d, &at, pass.rec);
            let logits = self.unembed(&normed);
            if !pass.plan.capture_positions(HookPoint::Logits, &at).is_empty() {
                pass.rec.push_row(HookPoint::Logits, pos, &logits);
            }
            if Some(pos) == step.last {
                last_logits = Some(logits);
            }
        }
        last_logits
    }

    /// Each head's output at the given rows of `z` (`[n, n_heads * d_head]`):
    /// `z_h · W_O[:, h]^T`, times the post-attention norm's weight and the row's shared scale
    /// where the model has one. Returns one `[n_heads, d_model]` block per row. `W_O` is read one
    /// row at a time, in its stored type.
    fn head_results(&self, layer: usize, z: &[f32], rows: &[usize], post_scale: Option<&[f32]>) -> Vec<Vec<f32>> {
        let c = &self.config;
        let b = &self.weights.blocks[layer];
        let (d, dh, nh) = (c.d_model, c.d_head, c.n_heads);
        let mut out = vec![vec![0.0f32; nh * d]; rows.len()];
        let mut w_row = vec![0.0f32; nh * dh];
        for o in 0..d {
            b.o.w.dequantize_row(o, &mut w_row);
            for (res, &r) in out.iter_mut().zip(rows) {
                let zr = &z[r * nh * dh..(r + 1) * nh * dh];
                for h in 0..nh {
                    res[h * d + o] = crate::attention::dot(&zr[h * dh..(h + 1) * dh], &w_row[h * dh..(h + 1) * dh]);
                }
            }
        }
        if let (Some(norm), Some(scales)) = (&b.post_attn_norm, post_scale) {
            for (res, &r) in out.iter_mut().zip(rows) {
                for head in res.chunks_exact_mut(d) {
                    head.iter_mut().zip(&norm.w).for_each(|(x, &w)| *x = w * (*x * scales[r]));
                }
            }
        }
        out
    }

    /// Direct logit attribution: what one additive component of the final residual stream
    /// contributes to every logit, with the final norm's scale frozen at the statistics of the
    /// whole residual `final_resid` (the norm is linear once its scale is fixed; LayerNorm also
    /// removes the component's mean). The components of a residual stream, plus
    /// [`Model::logit_constant`], sum to the logits exactly (up to rounding; a final soft-cap,
    /// which no supported family uses, would make the sum the pre-cap logits).
    pub fn direct_logit_attribution(&self, component: &[f32], final_resid: &[f32]) -> Vec<f32> {
        let scaled = self.through_final_norm(component, final_resid);
        let mut logits = vec![0.0f32; self.config.vocab_size];
        self.weights.unembed_matrix().gemv(&scaled, &mut logits);
        logits
    }

    /// [`Model::direct_logit_attribution`] to a few tokens only: one unembedding row each instead
    /// of the whole vocabulary (the same values up to the order of the dot product's sum).
    pub fn direct_logit_attribution_to(&self, component: &[f32], final_resid: &[f32], tokens: &[u32]) -> Vec<f32> {
        let scaled = self.through_final_norm(component, final_resid);
        let rows: Vec<usize> = tokens.iter().map(|&t| t as usize).collect();
        self.weights.unembed_matrix().dot_rows(&rows, &scaled)
    }

    /// A residual-stream component through the final norm with its scale frozen at
    /// `final_resid`'s statistics.
    fn through_final_norm(&self, component: &[f32], final_resid: &[f32]) -> Vec<f32> {
        let c = &self.config;
        let norm = &self.weights.final_norm;
        match c.norm {
            crate::config::NormKind::RmsNorm => {
                let s = rms_scale(final_resid, c.norm_eps);
                component.iter().zip(&norm.w).map(|(x, w)| w * (x * s)).collect()
            }
            crate::config::NormKind::LayerNorm => {
                let n = final_resid.len() as f64;
                let mean = final_resid.iter().map(|&v| v as f64).sum::<f64>() / n;
                let var = final_resid.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
                let inv = (1.0 / (var + c.norm_eps as f64).sqrt()) as f32;
                let cm = (component.iter().map(|&v| v as f64).sum::<f64>() / n) as f32;
                component.iter().zip(&norm.w).map(|(x, w)| (x - cm) * inv * w).collect()
            }
        }
    }

    /// The part of the logits no residual component explains: the final norm's bias and the
    /// unembedding's bias.
    pub fn logit_constant(&self) -> Vec<f32> {
        let c = &self.config;
        let mut logits = match &self.weights.final_norm.b {
            Some(b) => {
                let mut l = vec![0.0f32; c.vocab_size];
                self.weights.unembed_matrix().gemv(b, &mut l);
                l
            }
            None => vec![0.0f32; c.vocab_size],
        };
        if let Some(b) = self.weights.unembed_bias() {
            logits.iter_mut().zip(b).for_each(|(x, b)| *x += b);
        }
        logits
    }

    /// Logits of one final-normed residual row.
    pub fn unembed(&self, normed: &[f32]) -> Vec<f32> {
        let c = &self.config;
        let mut logits = vec![0.0f32; c.vocab_size];
        self.weights.unembed_matrix().gemv(normed, &mut logits);
        if let Some(b) = self.weights.unembed_bias() {
            logits.iter_mut().zip(b).for_each(|(x, b)| *x += b);
        }
        if let Some(cap) = c.final_logit_softcap {
            logits.iter_mut().for_each(|x| *x = cap * (*x / cap).tanh());
        }
        logits
    }
}

/// Give the pages of freed heap memory back to the system (Gemma's 262k-piece vocabulary leaves
/// ~100 MB of freed strings after a load, which would otherwise stay resident).
fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// One forward call's hook context.
struct Pass<'a> {
    step: Step,
    plan: &'a CompiledHooks,
    rec: &'a mut Recording,
}

impl Pass<'_> {
    #[inline]
    /// Capture what a norm divides each row of `resid` by, where someone asked.
    fn norm_scale(&mut self, point: HookPoint, resid: &[f32], c: &ModelConfig) {
        if self.plan.touches(point) {
            let mut scales: Vec<f32> = resid.chunks_exact(c.d_model).map(|r| norm_scale(r, c.norm, c.norm_eps)).collect();
            self.hook(point, &mut scales, 1);
        }
    }

    fn hook(&mut self, point: HookPoint, buf: &mut [f32], row_len: usize) {
        if self.plan.touches(point) {
            let _t = profile::span(Stage::Hooks);
            self.plan.apply(point, buf, row_len, &self.step, self.rec);
        }
    }
}

fn add_into(acc: &mut [f32], x: &[f32]) {
    let _t = profile::span(Stage::Residual);
    acc.iter_mut().zip(x).for_each(|(a, b)| *a += b);
}

fn norm_rows_in_place(x: &mut [f32], dim: usize, c: &ModelConfig, w: &crate::weights::NormWeights) {
    crate::linalg::norm_rows_in_place(x, dim, c.norm, c.norm_eps, w);
}

/// A sub-layer's input: the residual stream through its pre-norm, or as it is where the family
/// has none (post-norm blocks).
fn pre_norm(x: &mut [f32], resid: &[f32], c: &ModelConfig, norm: Option<&crate::weights::NormWeights>) {
    match norm {
        Some(w) => norm_rows(x, resid, c.d_model, c.norm, c.norm_eps, w),
        None => x.copy_from_slice(resid),
    }
}

/// One sequence going through the model: its KV cache, hooks and recording.
pub struct Run<'m> {
    model: &'m Model,
    plan: CompiledHooks,
    cache: KvCache,
    pub recording: Recording,
    tokens: Vec<u32>,
    chunk: usize,
    /// Layers run: all, or those below `RunOptions::stop_at_layer`.
    layers: usize,
}

impl<'m> Run<'m> {
    pub fn model(&self) -> &'m Model {
        self.model
    }

    /// Tokens fed so far.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    pub fn position(&self) -> usize {
        self.tokens.len()
    }

    pub fn cache(&self) -> &KvCache {
        &self.cache
    }

    fn check_room(&self, n: usize) -> Result<()> {
        let needed = self.tokens.len() + n;
        if needed > self.model.config.context_length {
            return Err(Error::ContextOverflow {
                needed,
                context: self.model.config.context_length,
            });
        }
        Ok(())
    }

    /// Go back to the first `len` tokens, as if only they had been fed: the cache forgets every
    /// later position and a prefill or decode continues from `len`, giving what one forward
    /// over the whole sequence gives (up to the order of floating-point sums). What the
    /// recording holds stays. Fails, changing nothing, when a windowed layer's ring has already
    /// overwritten keys that position `len` would see (unless the run keeps its windows,
    /// [`RunOptions::keep_windows`]; else see [`Run::fork`]).
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len > self.tokens.len() {
            return Err(Error::Run(format!(
                "cannot truncate a run of {} tokens to {len}",
                self.tokens.len()
            )));
        }
        if !self.cache.truncate(len) {
            return Err(Error::Run(format!(
                "a sliding-window layer no longer holds the keys position {len} sees; fork the run there, or keep its windows"
            )));
        }
        self.tokens.truncate(len);
        Ok(())
    }

    /// Keep, in each layer's each key/value head, only the positions `keep[layer][kv_head]`
    /// (ascending), with room for `extra` more positions: a compressed cache that decoding
    /// continues from, each kept key at its original position (see [`KvCache::retain`]).
    pub fn retain_kv(&mut self, keep: &[Vec<Vec<u32>>], extra: usize) -> Result<()> {
        self.check_keep(keep)?;
        self.cache.retain(keep, extra);
        Ok(())
    }

    /// [`Run::fork`] and [`Run::retain_kv`] in one, copying only the kept rows: one prefilled
    /// run serves many compressions without a whole copy each.
    pub fn fork_retaining(&self, keep: &[Vec<Vec<u32>>], extra: usize) -> Result<Run<'m>> {
        self.check_keep(keep)?;
        Ok(Run {
            model: self.model,
            plan: self.plan.clone(),
            cache: self.cache.retained(keep, extra),
            recording: Recording::default(),
            tokens: self.tokens.clone(),
            chunk: self.chunk,
            layers: self.layers,
        })
    }

    fn check_keep(&self, keep: &[Vec<Vec<u32>>]) -> Result<()> {
        let c = &self.model.config;
        if keep.len() != c.n_layers || keep.iter().any(|l| l.len() != c.n_kv_heads) {
            return Err(Error::Run(format!(
                "retain_kv needs positions for {} layers of {} key/value heads",
                c.n_layers, c.n_kv_heads
            )));
        }
        if keep.iter().flatten().any(|k| k.windows(2).any(|w| w[0] >= w[1])) {
            return Err(Error::Run("retain_kv: positions must be ascending and distinct".into()));
        }
        Ok(())
    }

    /// Hooks for what the run does from now on (the cache is kept: a condition can decode from a
    /// prefix another prefilled).
    pub fn set_hooks(&mut self, hooks: Hooks) -> Result<()> {
        self.plan = CompiledHooks::new(hooks, &self.model.config)?;
        Ok(())
    }

    /// An independent copy of this run at its current position (its cache and tokens; an
    /// empty recording): continue one and the other stays where it was.
    pub fn fork(&self) -> Run<'m> {
        Run {
            model: self.model,
            plan: self.plan.clone(),
            cache: self.cache.clone(),
            recording: Recording::default(),
            tokens: self.tokens.clone(),
            chunk: self.chunk,
            layers: self.layers,
        }
    }

    /// The KV bytes a run of its own would hold (as [`KvCache::bytes`] counts them) after a
    /// prompt of `prompt` tokens with room for `capacity` positions and `decoded` generated
    /// tokens fed back: what a run continued from a shared prefix reports for its sequence alone.
    pub fn kv_bytes_alone(&self, prompt: usize, capacity: usize, decoded: usize) -> usize {
        // Untouched reservations cost address space only.
        let mut cache = KvCache::new(&self.cache.policies(), self.model.config.d_head, capacity, self.chunk);
        cache.fit_rings((prompt.max(1) - 1) % self.chunk + 1);
        if decoded > 0 {
            cache.fit_rings(1);
        }
        cache.bytes()
    }

    /// Feed prompt tokens (in chunks); returns the logits at the last one.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(Error::Run("prefill needs at least one token".into()));
        }
        self.check_room(tokens.len())?;
        let end = self.tokens.len() + tokens.len();
        let mut logits = None;
        for chunk in tokens.chunks(self.chunk) {
            let p0 = self.tokens.len();
            let last = (p0 + chunk.len() == end).then_some(end - 1);
            let step = Step {
                p0,
                n: chunk.len(),
                last,
                phase: Phase::Prefill,
            };
            self.cache.fit_rings(chunk.len());
            logits = self
                .model
                .forward(chunk, step, &mut self.cache, &self.plan, &mut self.recording, self.layers)?;
            self.tokens.extend_from_slice(chunk);
        }
        Ok(logits.expect("the last chunk yields logits"))
    }

    /// Feed one generated token; returns the logits for the next.
    pub fn decode(&mut self, token: u32) -> Result<Vec<f32>> {
        self.check_room(1)?;
        let p = self.tokens.len();
        let step = Step {
            p0: p,
            n: 1,
            last: Some(p),
            phase: Phase::Decode,
        };
        self.cache.fit_rings(1);
        let logits = self
            .model
            .forward(&[token], step, &mut self.cache, &self.plan, &mut self.recording, self.layers)?;
        self.tokens.push(token);
        Ok(logits.expect("decode yields logits"))
    }
}

/// Index of the largest logit (the first, on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Greedy decoding: prefill `prompt`, then emit the argmax token until EOS, `max_new` tokens,
/// or `stop(generated so far)` says so. The last token is emitted but not fed back.
pub fn greedy(run: &mut Run<'_>, prompt: &[u32], max_new: usize, stop: impl FnMut(&[u32]) -> bool) -> Result<Vec<u32>> {
    if max_new == 0 {
        return Ok(Vec::new());
    }
    let logits = run.prefill(prompt)?;
    greedy_from(run, logits, max_new, stop)
}

/// [`greedy`] from the logits of the run's last position (a prompt already fed).
pub fn greedy_from(run: &mut Run<'_>, logits: Vec<f32>, max_new: usize, stop: impl FnMut(&[u32]) -> bool) -> Result<Vec<u32>> {
    generate_from(run, logits, max_new, argmax, stop)
}

/// Decode from the logits of the run's last position: `choose` picks each token from its
/// logits (argmax: greedy; a draw: sampling), until EOS, `max_new` tokens or `stop(generated so
/// far)`. The last token is emitted but not fed back.
pub fn generate_from(
    run: &mut Run<'_>,
    mut logits: Vec<f32>,
    max_new: usize,
    mut choose: impl FnMut(&[f32]) -> u32,
    mut stop: impl FnMut(&[u32]) -> bool,
) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    if max_new == 0 {
        return Ok(out);
    }
    loop {
        let next = choose(&logits);
        out.push(next);
        if run.model.is_eos(next) || out.len() >= max_new || stop(&out) {
            return Ok(out);
        }
        logits = run.decode(next)?;
    }
}

//! The forward pass: embeddings, each block's attention (projections, attention over the cache,
//! output) and MLP (dense, gated or experts), the final norm and logits, with the hooks applied
//! where each activation is computed.

use super::Model;
use crate::attention::AttentionLayer;
use crate::config::{ModelConfig, PositionEncoding};
use crate::error::{Error, Result};
use crate::hooks::{CompiledHooks, HookPoint, Recording, Step};
use crate::kv_cache::{HeadCache, KvCache};
use crate::linalg::{mlp_activation, norm_rows, norm_scale, rms_scale};
use crate::profile::{self, Stage};
use crate::rope::RopeAngles;
use crate::weights::{Expert, Linear, Mlp, SharedExpert};

impl Model {
    /// Run `tokens` (at the step's positions) through the network, appending to `cache`.
    /// Returns the logits at the step's last position when it has one.
    pub(super) fn forward(
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
                sinks: self.weights.blocks[l].sinks.as_deref(),
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
            Mlp::Experts { router, experts, shared } => {
                let mut out = self.experts(l, router, experts, &x, pass);
                if let Some(shared) = shared {
                    self.add_shared_expert(shared, &x, n, &mut out);
                }
                out
            }
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
    fn experts(&self, l: usize, router: &Linear, experts: &[Expert], x: &[f32], pass: &mut Pass<'_>) -> Vec<f32> {
        let _t = profile::span(Stage::MlpUp);
        let c = &self.config;
        let (n, d, moe) = (pass.step.n, c.d_model, c.moe.expect("an experts MLP has its config"));
        let mut logits = router.forward(x, n);
        pass.hook(HookPoint::Router(l), &mut logits, moe.experts);
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
        if pass.plan.touches(HookPoint::ExpertWeights(l)) {
            let mut dense = vec![0.0f32; n * moe.experts];
            for (e, (rows, weights)) in routed.iter().enumerate() {
                rows.iter().zip(weights).for_each(|(&r, &w)| dense[r * moe.experts + e] = w);
            }
            pass.hook(HookPoint::ExpertWeights(l), &mut dense, moe.experts);
        }
        // Each expert's outputs, weighted into `out` as they come, or, where hooked, gathered
        // `[pos, expert, d_model]` first and weighted after the hook (in the same order).
        let hooked = pass.plan.touches(HookPoint::ExpertOut(l));
        let mut gathered = if hooked { vec![0.0f32; n * moe.experts * d] } else { Vec::new() };
        let mut out = vec![0.0f32; n * d];
        let add = |out: &mut [f32], r: usize, w: f32, y: &[f32]| out[r * d..(r + 1) * d].iter_mut().zip(y).for_each(|(o, &v)| *o += w * v);
        for (e, (expert, (rows, weights))) in experts.iter().zip(&routed).enumerate() {
            if rows.is_empty() {
                continue;
            }
            let m = rows.len();
            let xe: Vec<f32> = rows.iter().flat_map(|&r| x[r * d..(r + 1) * d].iter().copied()).collect();
            let h = expert.up.forward(&xe, m);
            let act = mlp_activation(h, m, c.d_mlp, c.gated_mlp, c.activation);
            let y = expert.down.forward(&act, m);
            for ((&r, &w), yr) in rows.iter().zip(weights).zip(y.chunks_exact(d)) {
                if hooked {
                    gathered[(r * moe.experts + e) * d..(r * moe.experts + e + 1) * d].copy_from_slice(yr);
                } else {
                    add(&mut out, r, w, yr);
                }
            }
        }
        if hooked {
            pass.hook(HookPoint::ExpertOut(l), &mut gathered, moe.experts * d);
            for (e, (rows, weights)) in routed.iter().enumerate() {
                for (&r, &w) in rows.iter().zip(weights) {
                    add(&mut out, r, w, &gathered[(r * moe.experts + e) * d..(r * moe.experts + e + 1) * d]);
                }
            }
        }
        out
    }

    /// Qwen2-MoE's shared expert: its MLP's output on every row, times `sigmoid(gate x)`, added
    /// to the routed experts' `out`.
    fn add_shared_expert(&self, shared: &SharedExpert, x: &[f32], n: usize, out: &mut [f32]) {
        let c = &self.config;
        let (d, width) = (c.d_model, shared.mlp.down.n_in());
        let h = shared.mlp.up.forward(x, n);
        let y = shared.mlp.down.forward(&mlp_activation(h, n, width, c.gated_mlp, c.activation), n);
        let gates = shared.gate.forward(x, n);
        for ((o, yr), &g) in out.chunks_exact_mut(d).zip(y.chunks_exact(d)).zip(&gates) {
            let w = 1.0 / (1.0 + (-g).exp());
            o.iter_mut().zip(yr).for_each(|(o, &v)| *o += w * v);
        }
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

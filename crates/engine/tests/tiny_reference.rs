//! Tiny random models of every family, saved by transformers as safetensors directories (and the
//! llama-family ones also as GGUF files written the way llama.cpp's converter writes them), must
//! give the reference's logits and attention probabilities to 1e-4.

mod common;

use common::{expected, max_abs_diff, reference_dir};
use headhunt_engine::{Capture, HookPoint, Hooks, KeyRow, Model, Positions, RunOptions};

fn check(name: &str) {
    check_file(name, "");
}

/// `file` inside the model's folder (`""`: the safetensors directory itself), the prompt whole
/// and in chunks of 7.
fn check_file(name: &str, file: &str) {
    check_chunks(name, file, &[512, 7]);
}

fn check_chunks(name: &str, file: &str, chunks: &[usize]) {
    let dir = reference_dir().join("tiny").join(name);
    let exp = expected(&format!("tiny/{name}/expected.npz"));
    let model = Model::load(&dir.join(file)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let c = &model.config;
    let ids: Vec<u32> = exp["input_ids"].as_i64().iter().map(|&x| x as u32).collect();
    let t = ids.len();
    let want_logits = exp["logits"].as_f32();
    let want_attn = exp["attn"].as_f32(); // [L, H, T, T]
    assert_eq!(exp["attn"].shape, vec![c.n_layers, c.n_heads, t, t]);
    let want_scores = exp
        .get("attn_scores")
        .unwrap_or_else(|| panic!("{name}: the reference lacks attn_scores: regenerate it (scripts/test.sh)"))
        .as_f32(); // [L, H, T, T]

    // Whole prompt at once, then in chunks that straddle tiles and sliding windows.
    for &chunk in chunks {
        let mut hooks = Hooks::default().capture(Capture::new(HookPoint::Logits, Positions::All));
        for l in 0..c.n_layers {
            hooks = hooks.capture(Capture::new(HookPoint::Pattern(l), Positions::All));
            hooks = hooks.capture(Capture::new(HookPoint::AttnScores(l), Positions::All));
            for point in internals(l).into_iter().filter(|p| p.kind().exists_in(c)) {
                hooks = hooks.capture(Capture::new(point, Positions::All));
            }
        }
        let mut run = model
            .run(
                hooks,
                RunOptions {
                    prefill_chunk: chunk,
                    ..Default::default()
                },
            )
            .unwrap();
        run.prefill(&ids).unwrap();
        let logits = &run.recording.get(HookPoint::Logits).unwrap().data;
        let d = max_abs_diff(logits, &want_logits);
        assert!(d < 1e-4, "{name} (chunk {chunk}): logits differ by {d}");
        // Queries and keys after their norms and RoPE, values, the MLP's pre-activation: the
        // reference holds them for the rotary families, [layer, position, ...].
        let rotary = c.positions == headhunt_engine::config::PositionEncoding::Rotary;
        for (key, point) in [
            ("q", HookPoint::Q as fn(usize) -> HookPoint),
            ("k", HookPoint::K),
            ("v", HookPoint::V),
            ("mlp_pre", HookPoint::MlpPre),
            ("ln1_scale", HookPoint::Ln1Scale),
            ("ln2_scale", HookPoint::Ln2Scale),
            ("router_logits", HookPoint::Router),
            ("expert_weights", HookPoint::ExpertWeights),
            ("expert_out", HookPoint::ExpertOut),
        ] {
            let exists = point(0).kind().exists_in(c);
            let Some(want) = exp.get(key) else {
                assert!(
                    !rotary || !exists,
                    "{name}: the reference lacks {key}: regenerate it (scripts/test.sh)"
                );
                continue;
            };
            assert!(exists, "{name}: the reference has {key}, which the engine says this model lacks");
            let want = want.as_f32();
            let per_layer = want.len() / c.n_layers;
            for l in 0..c.n_layers {
                let rows = run.recording.get(point(l)).unwrap();
                assert_eq!(rows.positions, (0..t).collect::<Vec<_>>());
                let d = max_abs_diff(&rows.data, &want[l * per_layer..(l + 1) * per_layer]);
                assert!(d < 1e-4, "{name} (chunk {chunk}): {} differs by {d}", point(l));
            }
        }
        if let Some(want) = exp.get("final_scale") {
            let rows = run.recording.get(HookPoint::FinalScale).unwrap();
            let d = max_abs_diff(&rows.data, &want.as_f32());
            assert!(d < 1e-4, "{name} (chunk {chunk}): ln_final.hook_scale differs by {d}");
        } else {
            assert!(!rotary, "{name}: the reference lacks final_scale: regenerate it (scripts/test.sh)");
        }
        for l in 0..c.n_layers {
            let rows = &run.recording.patterns[&l];
            assert_eq!(rows.len(), t);
            for (q, row) in rows.iter().enumerate() {
                assert_eq!(row.position, q);
                for h in 0..c.n_heads {
                    let got = &row.values[h * (q + 1)..(h + 1) * (q + 1)];
                    let base = ((l * c.n_heads + h) * t + q) * t;
                    let want = &want_attn[base..base + q + 1];
                    let d = max_abs_diff(got, want);
                    assert!(d < 1e-4, "{name} (chunk {chunk}): attention L{l}H{h} query {q} differs by {d}");
                    // Nothing beyond the causal boundary in the reference either.
                    assert!(want_attn[base + q + 1..base + t].iter().all(|&p| p == 0.0));
                }
            }
            check_scores(name, chunk, &run.recording.scores[&l], &want_scores, l, c.n_heads, t);
        }
    }
}

/// `hook_attn_scores` of layer `l` against transformers' scores just before its softmax: equal
/// to 1e-4 of their size where a key is seen, -inf in the same places where it is masked.
fn check_scores(name: &str, chunk: usize, rows: &[KeyRow], want: &[f32], l: usize, n_heads: usize, t: usize) {
    assert_eq!(rows.len(), t);
    for (q, row) in rows.iter().enumerate() {
        assert_eq!((row.position, row.n_keys), (q, q + 1));
        for h in 0..n_heads {
            let base = ((l * n_heads + h) * t + q) * t;
            for (k, (&got, &w)) in row.head(h).iter().zip(&want[base..base + q + 1]).enumerate() {
                let ok = if w.is_finite() {
                    (got - w).abs() <= 1e-4 * w.abs().max(1.0)
                } else {
                    got == w
                };
                assert!(
                    ok,
                    "{name} (chunk {chunk}): attn_scores L{l}H{h} query {q} key {k}: {got} against {w}"
                );
            }
            assert!(want[base + q + 1..base + t].iter().all(|&s| s == f32::NEG_INFINITY));
        }
    }
}

#[test]
fn llama_with_grouped_query_attention() {
    check("llama-gqa");
}

#[test]
fn llama_as_gguf() {
    check_file("llama-gqa", "model.gguf");
}

#[test]
fn llama3_rope_scaling() {
    check("llama3-rope");
}

/// llama.cpp's converter stores Llama 3.x's RoPE scaling only as the `rope_freqs.weight` tensor;
/// a loader that skipped it would run the model without its scaling (logits off by ~0.7 here).
#[test]
fn llama3_rope_scaling_as_gguf_rope_freqs() {
    let path = reference_dir().join("tiny/llama3-rope/model.gguf");
    let model = Model::load(&path).unwrap();
    let rope = model.config.layers.iter().map(|l| l.rope_scaling).collect::<Vec<_>>();
    assert!(
        rope.iter().all(|s| *s == Some(headhunt_engine::RopeScaling::FreqFactors)),
        "{rope:?}"
    );
    check_file("llama3-rope", "model.gguf");
}

#[test]
fn qwen3_with_per_head_qk_norms() {
    check("qwen3-qknorm");
}

#[test]
fn qwen3_with_yarn() {
    let model = Model::load(&reference_dir().join("tiny/qwen3-yarn")).unwrap();
    assert!(matches!(
        model.config.layers[0].rope_scaling,
        Some(headhunt_engine::RopeScaling::Yarn { factor: 4.0, .. })
    ));
    check("qwen3-yarn");
}

#[test]
fn qwen3_as_gguf() {
    check_file("qwen3-qknorm", "model.gguf");
}

#[test]
fn gemma2_with_soft_caps_and_alternating_windows() {
    let model = Model::load(&reference_dir().join("tiny/gemma2-softcap")).unwrap();
    let windows: Vec<Option<usize>> = model.config.layers.iter().map(|l| l.window).collect();
    assert_eq!(windows, [Some(6), None, Some(6)]);
    assert_eq!(
        (model.config.attn_logit_softcap, model.config.final_logit_softcap),
        (Some(2.0), Some(3.0))
    );
    check("gemma2-softcap");
}

#[test]
fn phi3_with_fused_projections_and_window() {
    check("phi3-fused");
}

#[test]
fn olmo2_with_post_norms_and_whole_qk_norms() {
    check("olmo2-postnorm");
}

#[test]
fn qwen2_with_qkv_bias_and_tied_embeddings() {
    check("qwen2-bias");
}

#[test]
fn mistral_with_sliding_window() {
    check("mistral-window");
}

#[test]
fn gemma3_with_local_and_global_layers() {
    check("gemma3-window");
}

#[test]
fn gpt2() {
    check("gpt2");
}

#[test]
fn opt() {
    check("opt");
}

/// Weights stored in 2-byte types stay in them (no f32 copy), and give transformers' float32
/// results on the same rounded weights.
fn check_stored(name: &str, dtype: headhunt_engine::gguf::GgmlType) {
    let model = Model::load(&reference_dir().join("tiny").join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    for m in model.weights.matrices() {
        assert!(
            m.dtypes().iter().all(|&t| t == dtype),
            "{name}: a matrix is stored as {:?}",
            m.dtypes()
        );
    }
    check(name);
}

#[test]
fn llama_stored_as_bf16() {
    check_stored("llama-bf16", headhunt_engine::gguf::GgmlType::BF16);
}

#[test]
fn gpt2_stored_as_f16() {
    check_stored("gpt2-f16", headhunt_engine::gguf::GgmlType::F16);
}

/// The hook points inside attention and the MLP that the reference records per layer, and the
/// final norm's scale.
fn internals(l: usize) -> [HookPoint; 10] {
    use HookPoint::*;
    [
        Q(l),
        K(l),
        V(l),
        MlpPre(l),
        Ln1Scale(l),
        Ln2Scale(l),
        FinalScale,
        Router(l),
        ExpertWeights(l),
        ExpertOut(l),
    ]
}

#[test]
fn mixtral_with_experts_renormalised() {
    let model = Model::load(&reference_dir().join("tiny/mixtral-moe")).unwrap();
    let moe = model.config.moe.expect("read as Mixture-of-Experts");
    assert_eq!((moe.experts, moe.per_token, moe.normalize), (4, 2, true));
    check("mixtral-moe");
}

/// llama.cpp writes Mixtral as `llama` with `expert_count` and its experts stacked in 3-D
/// tensors (`ffn_gate_exps`, ...), each expert's matrices a slice of the file.
#[test]
fn mixtral_as_gguf() {
    check_file("mixtral-moe", "model.gguf");
}

#[test]
fn olmoe_with_experts_not_renormalised() {
    let model = Model::load(&reference_dir().join("tiny/olmoe-moe")).unwrap();
    assert_eq!(model.config.moe.map(|m| m.normalize), Some(false));
    check("olmoe-moe");
}

#[test]
fn qwen3_moe_with_narrow_experts() {
    let model = Model::load(&reference_dir().join("tiny/qwen3moe-moe")).unwrap();
    assert_eq!(model.config.d_mlp, 48, "each expert's width (moe_intermediate_size)");
    check("qwen3moe-moe");
}

/// llama.cpp's `qwen3moe` file: per-head Q/K norms, experts stacked in 3-D tensors, each
/// expert's width in `expert_feed_forward_length`.
#[test]
fn qwen3_moe_as_gguf() {
    let model = Model::load(&reference_dir().join("tiny/qwen3moe-moe/model.gguf")).unwrap();
    assert_eq!(model.config.d_mlp, 48, "each expert's width (expert_feed_forward_length)");
    assert_eq!(model.config.moe.map(|m| (m.experts, m.per_token, m.normalize)), Some((4, 2, true)));
    check_file("qwen3moe-moe", "model.gguf");
}

/// llama.cpp's `gemma2` file: soft-caps, alternating local and global layers, norm weights with
/// Gemma's 1 folded in, no query scalar (the head size, as llama.cpp takes it for this shape).
#[test]
fn gemma2_as_gguf() {
    let model = Model::load(&reference_dir().join("tiny/gemma2-gguf/model.gguf")).unwrap();
    let windows: Vec<Option<usize>> = model.config.layers.iter().map(|l| l.window).collect();
    assert_eq!(windows, [Some(6), None, Some(6)]);
    check("gemma2-gguf");
    check_file("gemma2-gguf", "model.gguf");
}

/// llama.cpp's `phi3` file: Q, K and V fused in `attn_qkv`, gate and up in `ffn_up`, the
/// sliding window in the metadata.
#[test]
fn phi3_as_gguf() {
    let model = Model::load(&reference_dir().join("tiny/phi3-fused/model.gguf")).unwrap();
    assert!(model.config.layers.iter().all(|l| l.window == Some(9)));
    check_file("phi3-fused", "model.gguf");
}

/// llama.cpp's `olmo2` file: norms after attention and the MLP only, Q/K norms over the whole
/// projections.
#[test]
fn olmo2_as_gguf() {
    check_file("olmo2-postnorm", "model.gguf");
}

/// llama.cpp's `olmoe` file: experts stacked in 3-D tensors, their weights not renormalised (as
/// llama.cpp's OLMoE graph computes them).
#[test]
fn olmoe_as_gguf() {
    let model = Model::load(&reference_dir().join("tiny/olmoe-gguf/model.gguf")).unwrap();
    assert_eq!(model.config.moe.map(|m| m.normalize), Some(false));
    check("olmoe-gguf");
    check_file("olmoe-gguf", "model.gguf");
}

/// YaRN as llama.cpp's files state it: `rope.scaling.type = yarn`, the factor and the original
/// context; the attention factor 1 + 0.1 ln(factor), as llama.cpp applies it.
#[test]
fn qwen3_with_yarn_as_gguf() {
    let model = Model::load(&reference_dir().join("tiny/qwen3-yarn/model.gguf")).unwrap();
    assert!(matches!(
        model.config.layers[0].rope_scaling,
        Some(headhunt_engine::RopeScaling::Yarn {
            factor: 4.0,
            original_context: 16.0,
            ..
        })
    ));
    check_file("qwen3-yarn", "model.gguf");
}

/// Disabling an expert (its router logit -inf before the choice): it weighs 0 at every
/// position, the others still make up each token's top experts (weights summing to 1 where the
/// family renormalises), and the output changes; another layer's routing before it does not.
#[test]
fn disabled_experts_are_never_chosen() {
    use headhunt_engine::{Intervention, Phase};
    let exp = expected("tiny/mixtral-moe/expected.npz");
    let ids: Vec<u32> = exp["input_ids"].as_i64().iter().map(|&x| x as u32).collect();
    let model = Model::load(&reference_dir().join("tiny/mixtral-moe")).unwrap();
    let moe = model.config.moe.unwrap();
    let run = |disable: Option<usize>| {
        let mut hooks = Hooks::default().capture(Capture::new(HookPoint::Logits, Positions::All));
        for l in 0..model.config.n_layers {
            hooks = hooks.capture(Capture::new(HookPoint::ExpertWeights(l), Positions::All));
        }
        if let Some(e) = disable {
            hooks = hooks.intervene(Intervention::DisableExperts {
                layer: 1,
                experts: vec![e],
                phase: Phase::Both,
            });
        }
        let mut run = model.run(hooks, RunOptions::default()).unwrap();
        run.prefill(&ids).unwrap();
        std::mem::take(&mut run.recording)
    };
    let base = run(None);
    let weights = |rec: &headhunt_engine::Recording, l: usize| rec.get(HookPoint::ExpertWeights(l)).unwrap().data.clone();
    // Expert 0 is chosen somewhere in layer 1 unmasked.
    assert!(weights(&base, 1).chunks_exact(moe.experts).any(|r| r[0] > 0.0));
    let off = run(Some(0));
    for row in weights(&off, 1).chunks_exact(moe.experts) {
        assert_eq!(row[0], 0.0);
        assert_eq!(row.iter().filter(|&&w| w > 0.0).count(), moe.per_token);
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
    assert_eq!(weights(&off, 0), weights(&base, 0), "layer 0 routes as before");
    let logits = |rec: &headhunt_engine::Recording| rec.get(HookPoint::Logits).unwrap().data.clone();
    assert!(max_abs_diff(&logits(&off), &logits(&base)) > 1e-3);
    // Too many disabled, or an expert that does not exist: refused.
    for experts in [vec![0, 1, 2], vec![7]] {
        let hooks = Hooks::default().intervene(Intervention::DisableExperts {
            layer: 1,
            experts,
            phase: Phase::Both,
        });
        assert!(model.run(hooks, RunOptions::default()).is_err());
    }
}

/// `hook_expert_out` holds what the MLP sums: tripling one chosen expert's output at one
/// position moves the MLP's output there by twice its weighted output, and nowhere else.
#[test]
fn patched_expert_outputs_are_what_the_mlp_sums() {
    use headhunt_engine::Intervention;
    let exp = expected("tiny/mixtral-moe/expected.npz");
    let ids: Vec<u32> = exp["input_ids"].as_i64().iter().map(|&x| x as u32).collect();
    let model = Model::load(&reference_dir().join("tiny/mixtral-moe")).unwrap();
    let (experts, d) = (model.config.moe.unwrap().experts, model.config.d_model);
    let points = [HookPoint::ExpertOut(1), HookPoint::ExpertWeights(1), HookPoint::MlpOut(1)];
    let run = |hooks: Hooks| {
        let hooks = points.iter().fold(hooks, |h, &p| h.capture(Capture::new(p, Positions::All)));
        let mut run = model.run(hooks, RunOptions::default()).unwrap();
        run.prefill(&ids).unwrap();
        let rec = std::mem::take(&mut run.recording);
        points.map(|p| rec.get(p).unwrap().data.clone())
    };
    let [outs, weights, mlp] = run(Hooks::default());
    let p = 5;
    let e = (0..experts).find(|&e| weights[p * experts + e] > 0.0).expect("a chosen expert");
    let w = weights[p * experts + e];
    let y = &outs[(p * experts + e) * d..(p * experts + e + 1) * d];
    let mut row = outs[p * experts * d..(p + 1) * experts * d].to_vec();
    row[e * d..(e + 1) * d].iter_mut().for_each(|x| *x *= 3.0);
    let set = Intervention::Set {
        point: HookPoint::ExpertOut(1),
        head: None,
        rows: [(p, row)].into_iter().collect(),
    };
    let [_, _, patched] = run(Hooks::default().intervene(set));
    for q in 0..ids.len() {
        let (got, before) = (&patched[q * d..(q + 1) * d], &mlp[q * d..(q + 1) * d]);
        if q == p {
            let want: Vec<f32> = before.iter().zip(y).map(|(&b, &v)| b + 2.0 * w * v).collect();
            assert!(max_abs_diff(got, &want) < 1e-5, "position {p}: {}", max_abs_diff(got, &want));
        } else {
            assert_eq!(got, before, "position {q} moved");
        }
    }
}

/// gpt-oss: attention sinks (each head's softmax rows share their mass with a learned logit),
/// biases on Q/K/V/O, on the router and on every expert, windowed layers alternating with full
/// ones, YaRN without truncation, and the clamped gated unit (a clamp of 0.5 that random weights
/// reach); experts stacked as transformers keeps them (`[experts, in, out]`, gate and up
/// interleaved).
#[test]
fn gpt_oss_with_sinks_and_clamped_experts() {
    let model = Model::load(&reference_dir().join("tiny/gptoss-sinks")).unwrap();
    let c = &model.config;
    assert!(c.attn_sinks);
    assert_eq!(
        c.activation,
        headhunt_engine::config::Activation::SwigluOai { alpha: 1.702, limit: 0.5 }
    );
    let windows: Vec<Option<usize>> = c.layers.iter().map(|l| l.window).collect();
    assert_eq!(windows, [Some(7), None]);
    assert_eq!(c.moe.map(|m| (m.experts, m.per_token, m.normalize)), Some((4, 2, true)));
    check("gptoss-sinks");
}

/// llama.cpp's `gpt-oss` file: the sinks as `attn_sinks.weight`, the MLP's input norm as
/// `post_attention_norm`, the experts' gate and up apart, with their biases (`ffn_*_exps.bias`);
/// the clamp llama.cpp's graph fixes (7). llama.cpp reads the same file back within 1.9e-6 of
/// transformers (reference/make_reference.py).
#[test]
fn gpt_oss_as_gguf() {
    let model = Model::load(&reference_dir().join("tiny/gptoss-gguf/model.gguf")).unwrap();
    assert_eq!(model.config.activation, headhunt_engine::config::SWIGLU_OAI);
    check("gptoss-gguf");
    check_file("gptoss-gguf", "model.gguf");
}

/// gpt-oss's tokenizer splits text as OpenAI's o200k does (`tokenizer.ggml.pre = gpt-4o`): on a
/// vocabulary whose merges cross the boundaries that split draws and GPT-2's does not, the ids
/// are tiktoken's own (reference/make_reference.py; llama.cpp's tokenizer gives them too).
#[test]
fn gpt_oss_tokenizes_as_tiktoken() {
    let dir = reference_dir().join("tiny/gptoss-gguf");
    let model = Model::load(&dir.join("model.gguf")).unwrap();
    let tok = model.tokenizer().unwrap();
    let cases: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("tokenized.json")).unwrap()).unwrap();
    for case in cases.as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(tok.encode(text, false).unwrap(), want, "{text:?}");
        assert_eq!(tok.decode(&want, false).unwrap(), text);
    }
}

/// gpt-oss's experts as the Hub ships them, in MXFP4 blocks (the checkpoint holds the same
/// values rounded; gguf-py's reader finds them in the file's blocks exactly): the exact products
/// on the blocks give transformers' logits on the rounded weights.
#[test]
fn gpt_oss_with_mxfp4_experts() {
    let model = Model::load(&reference_dir().join("tiny/gptoss-mxfp4/model.gguf")).unwrap();
    let Some(headhunt_engine::weights::Mlp::Experts { experts, .. }) = model.weights.blocks.first().map(|b| &b.mlp) else {
        panic!("gpt-oss has experts");
    };
    assert_eq!(experts[0].down.w.dtypes(), [headhunt_engine::gguf::GgmlType::Mxfp4]);
    check("gptoss-mxfp4");
    check_file("gptoss-mxfp4", "model.gguf");
}

/// Phi-4-mini's RoPE: LongRoPE on the leading half of each head. transformers picks the long
/// factors for a forward call that reaches past the original context (16 here) and the short
/// ones otherwise: the 40-token prompt whole takes the long set, its first 12 tokens the short.
/// From config.json and from llama.cpp's file (`rope_factors_{short,long}.weight`,
/// `rope.dimension_count`, read back by llama.cpp within 3.6e-6).
#[test]
fn phi3_with_long_rope_on_part_of_each_head() {
    let exp = expected("tiny/phi3-longrope/expected.npz");
    let ids: Vec<u32> = exp["input_ids"].as_i64().iter().map(|&x| x as u32).collect();
    for file in ["", "model.gguf"] {
        let model = Model::load(&reference_dir().join("tiny/phi3-longrope").join(file)).unwrap();
        assert_eq!((model.config.d_head, model.config.rotary_dim), (16, 8), "{file}");
        check_chunks("phi3-longrope", file, &[512]);
        let mut run = model
            .run(
                Hooks::default().capture(Capture::new(HookPoint::Logits, Positions::All)),
                RunOptions::default(),
            )
            .unwrap();
        run.prefill(&ids[..12]).unwrap();
        let d = max_abs_diff(&run.recording.get(HookPoint::Logits).unwrap().data, &exp["logits_short"].as_f32());
        assert!(d < 1e-4, "phi3-longrope {file}: the short factors' logits differ by {d}");
        // Keys cached by the 12-token call were rotated with the short set: continuing them to
        // 40 tokens is not the 40-token prompt, and the model says so (prefix sharing starts over).
        assert_eq!(model.long_rope_after(), Some(16));
        assert!(model.same_rotary_set(12, 16) && model.same_rotary_set(17, 40) && !model.same_rotary_set(12, 40));
        let continued = run.prefill(&ids[12..]).unwrap();
        let whole = &exp["logits"].as_f32()[39 * 256..];
        assert!(max_abs_diff(&continued, whole) > 1e-2, "the sets differ enough to show");
    }
}

/// Qwen2-MoE: a shared expert (80 wide, beside routed experts 48 wide) on every token, scaled by
/// its sigmoid gate; QKV biases; the chosen experts' weights not renormalised. From
/// safetensors and from llama.cpp's `qwen2moe` file (`ffn_*_shexp`, `ffn_gate_inp_shexp`; read
/// back by llama.cpp within 3.3e-6).
#[test]
fn qwen2_moe_with_a_shared_expert() {
    for file in ["", "model.gguf"] {
        let model = Model::load(&reference_dir().join("tiny/qwen2moe-shared").join(file)).unwrap();
        let moe = model.config.moe.unwrap();
        assert_eq!((model.config.d_mlp, moe.shared, moe.normalize), (48, Some(80), false), "{file}");
        check_file("qwen2moe-shared", file);
    }
}

/// Whole files in llama.cpp's quant types, the way its quantiser leaves them: a Llama's block
/// matrices in Q8_0 (its Q/K rows permuted before quantising; transformers' GGUF reader gives
/// the checkpoint's logits back within 1e-5) and a Mixtral's in Q4_0 (experts stacked in 3-D
/// quant tensors, each expert a slice of the file; router in F32, as llama.cpp keeps it;
/// gguf-py finds the checkpoint's values in the expert blocks exactly). The checkpoints hold
/// the same values rounded: the exact products on the blocks give transformers' numbers.
#[test]
fn whole_files_in_q8_0_and_q4_0() {
    use headhunt_engine::gguf::GgmlType;
    for (name, dtype) in [("llama-q8_0", GgmlType::Q8_0), ("mixtral-q4_0", GgmlType::Q4_0)] {
        let model = Model::load(&reference_dir().join("tiny").join(name).join("model.gguf")).unwrap();
        let down = match &model.weights.blocks[1].mlp {
            headhunt_engine::weights::Mlp::Dense(e) => &e.down,
            headhunt_engine::weights::Mlp::Experts { experts, .. } => &experts[3].down,
        };
        assert_eq!(down.w.dtypes(), [dtype], "{name}: the matrices stay in their blocks");
        check(name);
        check_file(name, "model.gguf");
    }
}

/// Files written by llama.cpp's own quantiser (`llama_model_quantize`): Q4_K_M (Q4_K blocks,
/// Q6_K for the value and down projections it favours and the unembedding) and Q8_0, each against
/// transformers on the weights its GGUF reader dequantises from the same file, whole and in
/// chunks: the K-quant super-blocks, their scales and llama.cpp's Q/K row order read right.
/// The reference script writes them only where llama-cpp-python is installed (the test command
/// does not build it): elsewhere this test says it was skipped, unless
/// HEADHUNT_REQUIRE_LLAMA_CPP is set.
#[test]
fn llamas_quantised_by_llama_cpp() {
    use headhunt_engine::gguf::GgmlType;
    for (name, types) in [
        ("llama-q4_k_m", &[GgmlType::Q4K, GgmlType::Q6K][..]),
        ("llama-q8_0-llama-cpp", &[GgmlType::Q8_0][..]),
    ] {
        let path = reference_dir().join("tiny").join(name).join("model.gguf");
        if !path.exists() {
            assert!(
                std::env::var_os("HEADHUNT_REQUIRE_LLAMA_CPP").is_none(),
                "HEADHUNT_REQUIRE_LLAMA_CPP is set, but the reference has no tiny/{name} (is llama-cpp-python installed?)"
            );
            eprintln!("SKIPPED llamas_quantised_by_llama_cpp ({name}): llama-cpp-python was not installed when the reference was made");
            continue;
        }
        let model = Model::load(&path).unwrap();
        let dtypes: Vec<GgmlType> = model
            .weights
            .blocks
            .iter()
            .flat_map(|b| match &b.mlp {
                headhunt_engine::weights::Mlp::Dense(e) => [e.up.w.dtypes(), e.down.w.dtypes()].concat(),
                headhunt_engine::weights::Mlp::Experts { .. } => unreachable!("a dense Llama"),
            })
            .collect();
        assert!(types.iter().all(|t| dtypes.contains(t)), "{name}: {dtypes:?}");
        check(name);
        check_file(name, "model.gguf");
    }
}

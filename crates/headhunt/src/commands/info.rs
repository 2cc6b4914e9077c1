//! `headhunt info`: the model card.

use anyhow::Result;
use headhunt_engine::config::{NormPlacement, PositionEncoding, QkNorm, RopeScaling};
use headhunt_engine::Model;

use super::ModelArg;

/// Print the model's architecture: shapes, attention layout per layer, tokenizer, weights.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArg,
    /// Print the card as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The model card as (field, value) rows.
pub fn card(model: &Model) -> Vec<(String, String)> {
    let c = &model.config;
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut row = |k: &str, v: String| rows.push((k.to_owned(), v));
    row("name", model.source.name.clone().unwrap_or_else(|| "-".into()));
    row("source", format!("{} ({})", model.source.path.display(), model.source.format));
    if let Some(hub) = crate::models::hub::provenance(&model.source.path) {
        row("hub", hub);
    }
    row("architecture", c.architecture.clone());
    if c.family.name != c.architecture {
        row("family", c.family.name.into());
    }
    row("parameters", format!("{:.1} M", c.approx_parameters() as f64 / 1e6));
    row("layers", c.n_layers.to_string());
    row("d_model", c.d_model.to_string());
    row(
        "attention heads",
        format!(
            "{} query, {} key/value (GQA group {}), head dim {}",
            c.n_heads,
            c.n_kv_heads,
            c.heads_per_kv_head(),
            c.d_head
        ),
    );
    let experts = c.moe.map_or(String::new(), |m| {
        format!(
            "; Mixture of Experts: {} of {} experts per token{}{}",
            m.per_token,
            m.experts,
            if m.normalize { ", weights renormalised" } else { "" },
            m.shared
                .map_or(String::new(), |w| format!(", and a shared expert {w} wide behind a sigmoid gate"))
        )
    });
    row(
        "MLP",
        format!(
            "{} wide, {:?}{}{experts}",
            c.d_mlp,
            c.activation,
            if c.gated_mlp { ", gated" } else { "" }
        ),
    );
    row(
        "norm",
        format!(
            "{:?} (eps {:e}){}{}",
            c.norm,
            c.norm_eps,
            match c.norms {
                NormPlacement::Pre => "",
                NormPlacement::Sandwich => ", before and after each sub-layer",
                NormPlacement::Post => ", after each sub-layer only",
            },
            match c.qk_norm {
                QkNorm::None => "",
                QkNorm::PerHead => ", on each head's query and key",
                QkNorm::Whole => ", on the whole query and key projections",
            }
        ),
    );
    let positions = match c.positions {
        PositionEncoding::Rotary => {
            let mut bases: Vec<String> = Vec::new();
            for l in &c.layers {
                let scaling = match l.rope_scaling {
                    None => String::new(),
                    Some(RopeScaling::FreqFactors) => ", scaled by rope_freqs.weight".into(),
                    Some(RopeScaling::Linear { factor }) => format!(", linear scaling x{factor}"),
                    Some(RopeScaling::Yarn {
                        factor, original_context, ..
                    }) => format!(", YaRN x{factor} from {original_context}"),
                    Some(RopeScaling::Llama3 {
                        factor, original_context, ..
                    }) => format!(", llama3 scaling x{factor} from {original_context}"),
                    Some(RopeScaling::LongRope { original_context, .. }) => {
                        format!(", LongRoPE (long factors past {original_context})")
                    }
                };
                let b = format!("{}{scaling}", l.rope_base);
                if !bases.contains(&b) {
                    bases.push(b);
                }
            }
            let part = if c.rotary_dim < c.d_head {
                format!(", on {} of each head's {} dimensions", c.rotary_dim, c.d_head)
            } else {
                String::new()
            };
            format!("rotary (base {}{part})", bases.join(" / "))
        }
        PositionEncoding::Learned { offset } => format!("learned (offset {offset})"),
    };
    row("positions", positions);
    let windowed: Vec<usize> = c
        .layers
        .iter()
        .enumerate()
        .filter(|(_, l)| l.window.is_some())
        .map(|(i, _)| i)
        .collect();
    let attention = if windowed.is_empty() {
        "global (causal) in every layer".to_owned()
    } else {
        let global: Vec<String> = (0..c.n_layers).filter(|l| !windowed.contains(l)).map(|l| l.to_string()).collect();
        format!(
            "sliding window {} in {} layers; global in layers {}",
            c.layers[windowed[0]].window.unwrap_or(0),
            windowed.len(),
            if global.is_empty() { "none".into() } else { global.join(", ") }
        )
    };
    let sinks = if c.attn_sinks { "; a learned sink logit per head" } else { "" };
    row("attention", format!("{attention}{sinks}"));
    row("context length", c.context_length.to_string());
    row("vocabulary", c.vocab_size.to_string());
    row(
        "embeddings",
        if c.tied_embeddings {
            "tied".into()
        } else {
            "separate unembedding".into()
        },
    );
    if !model.source.tensor_types.is_empty() {
        let types: Vec<String> = model.source.tensor_types.iter().map(|(t, n)| format!("{t} x{n}")).collect();
        row("stored as", types.join(", "));
    }
    row(
        "in memory",
        format!(
            "{:.0} MiB of weights, as stored (matrices in their file types, vectors as f32)",
            model.weights.n_bytes() as f64 / (1 << 20) as f64
        ),
    );
    row(
        "kernels",
        format!("{} (of {} on this CPU)", model.isa(), headhunt_engine::Isa::detected()),
    );
    row(
        "precision",
        match model.precision() {
            headhunt_engine::Precision::Exact => "exact (f32 products on the stored weights)".into(),
            headhunt_engine::Precision::Fast => {
                "fast (int8 products with the quantised weights: decoding, and prompts on CPUs with AVX2)".into()
            }
        },
    );
    match &model.tokenizer {
        Some(t) => {
            let name = |id: Option<u32>| id.and_then(|i| t.token_str(i)).unwrap_or_else(|| "-".into());
            row(
                "tokenizer",
                format!(
                    "{} tokens, bos {}{}, eos {}",
                    t.vocab_size(),
                    name(t.bos_id),
                    if t.adds_bos { " (added)" } else { "" },
                    t.eos_ids.iter().map(|&i| name(Some(i))).collect::<Vec<_>>().join(" / ")
                ),
            );
            row(
                "chat template",
                if t.chat_template.is_some() {
                    "yes".into()
                } else {
                    "none (base model)".into()
                },
            );
        }
        None => row("tokenizer", "none (no tokenizer.json)".into()),
    }
    rows
}

pub fn run(args: Args) -> Result<()> {
    let model = args.model.load()?;
    let rows = card(&model);
    if args.json {
        let map: serde_json::Map<String, serde_json::Value> = rows.into_iter().map(|(k, v)| (k, v.into())).collect();
        println!("{}", serde_json::to_string_pretty(&map)?);
    } else {
        let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in rows {
            println!("{k:>w$}  {v}");
        }
    }
    Ok(())
}

//! Model weights, loaded from a GGUF file or a Hugging Face safetensors directory and brought to
//! one layout whatever the source, without copying the matrices:
//!
//! * weight matrices stay in the checkpoint's storage ([`Matrix`]: quant blocks, F16, BF16 or
//!   F32, viewed in the file's memory map); only norm weights and biases become f32 vectors;
//! * linear weights are row-major `[out, in]` (PyTorch's `nn.Linear` layout; GPT-2's `[in, out]`
//!   Conv1D weights are the one copy, transposed once at load);
//! * queries, keys and values are one `[q heads | k heads | v heads]` projection, and gate and up
//!   one `[gate | up]` projection, so each costs one matrix multiply;
//! * rotary heads use the rotate-half layout (llama.cpp's interleaved Q/K rows are read in
//!   un-permuted order);
//! * Gemma's RMSNorm weights are stored as `1 + w` (as GGUF already does).

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{Family, GgufNames, HfNames, LongRopeFactors, ModelConfig, PositionEncoding, QkNorm, RopeScaling};
use crate::cpu::Isa;
use crate::error::{Error, Result};
use crate::gguf::{GgmlType, GgufFile};
use crate::kernels::Precision;
use crate::matrix::{Bytes, Matrix};

/// `y = x W^T + b`, with `W` row-major `[n_out, n_in]`.
#[derive(Debug, Clone)]
pub struct Linear {
    pub w: Matrix,
    pub b: Option<Vec<f32>>,
}

impl Linear {
    pub fn n_out(&self) -> usize {
        self.w.rows()
    }

    pub fn n_in(&self) -> usize {
        self.w.cols()
    }
}

#[derive(Debug, Clone)]
pub struct NormWeights {
    pub w: Vec<f32>,
    pub b: Option<Vec<f32>>,
}

#[derive(Debug, Clone)]
pub struct BlockWeights {
    /// `None` where the family has only post-norms (OLMo 2); so is `mlp_norm`.
    pub attn_norm: Option<NormWeights>,
    /// Rows: all query heads, then key heads, then value heads.
    pub qkv: Linear,
    pub q_norm: Option<NormWeights>,
    pub k_norm: Option<NormWeights>,
    pub o: Linear,
    /// One logit per query head that joins each softmax row (gpt-oss's attention sinks).
    pub sinks: Option<Vec<f32>>,
    pub post_attn_norm: Option<NormWeights>,
    pub mlp_norm: Option<NormWeights>,
    pub mlp: Mlp,
    pub post_mlp_norm: Option<NormWeights>,
}

/// A block's MLP: one MLP, or a router over experts (Mixture-of-Experts).
#[derive(Debug, Clone)]
pub enum Mlp {
    Dense(Expert),
    Experts {
        /// `[experts, d_model]`: each expert's logit.
        router: Linear,
        experts: Vec<Expert>,
        /// An expert every token passes through (Qwen2-MoE).
        shared: Option<Box<SharedExpert>>,
    },
}

/// Qwen2-MoE's shared expert: a gated MLP of its own width whose output every token receives,
/// scaled by `sigmoid(gate x)`.
#[derive(Debug, Clone)]
pub struct SharedExpert {
    pub mlp: Expert,
    /// `[1, d_model]`
    pub gate: Linear,
}

/// One MLP: `down(act(gate(x)) * up(x))`, or `down(act(up(x)))` where the family's MLP is not
/// gated.
#[derive(Debug, Clone)]
pub struct Expert {
    /// Gated MLPs: rows `[gate | up]` (2 x d_mlp); otherwise the single input projection.
    pub up: Linear,
    pub down: Linear,
}

impl Mlp {
    /// Every projection, router first.
    pub fn linears(&self) -> Vec<&Linear> {
        match self {
            Mlp::Dense(e) => vec![&e.up, &e.down],
            Mlp::Experts { router, experts, shared } => std::iter::once(router)
                .chain(experts.iter().flat_map(|e| [&e.up, &e.down]))
                .chain(shared.iter().flat_map(|s| [&s.mlp.up, &s.mlp.down, &s.gate]))
                .collect(),
        }
    }

    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        match self {
            Mlp::Dense(e) => vec![&mut e.up, &mut e.down],
            Mlp::Experts { router, experts, shared } => std::iter::once(router)
                .chain(experts.iter_mut().flat_map(|e| [&mut e.up, &mut e.down]))
                .chain(shared.iter_mut().flat_map(|s| [&mut s.mlp.up, &mut s.mlp.down, &mut s.gate]))
                .collect(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Weights {
    /// `[vocab, d_model]`
    pub embed: Matrix,
    /// `[positions, d_model]` for learned position tables.
    pub pos_embed: Option<Matrix>,
    pub blocks: Vec<BlockWeights>,
    pub final_norm: NormWeights,
    /// `None` when the unembedding is tied to `embed`.
    pub unembed: Option<Linear>,
    pub unembed_bias: Option<Vec<f32>>,
    /// Divisors of the RoPE inverse frequencies, one per rotary pair (`rope_freqs.weight`:
    /// llama.cpp's form of Llama 3.x's scaling).
    pub rope_freq_factors: Option<Vec<f32>>,
}

impl Weights {
    /// The unembedding matrix `[vocab, d_model]`.
    pub fn unembed_matrix(&self) -> &Matrix {
        self.unembed.as_ref().map_or(&self.embed, |l| &l.w)
    }

    /// The bias added to the logits: the unembedding's own, or a separate `final_logits_bias`.
    pub fn unembed_bias(&self) -> Option<&[f32]> {
        self.unembed.as_ref().and_then(|u| u.b.as_deref()).or(self.unembed_bias.as_deref())
    }

    /// Every weight matrix, each once.
    pub fn matrices(&self) -> impl Iterator<Item = &Matrix> {
        let blocks = self
            .blocks
            .iter()
            .flat_map(|b| [&b.qkv, &b.o].into_iter().chain(b.mlp.linears()).map(|l| &l.w));
        [Some(&self.embed), self.pos_embed.as_ref(), self.unembed.as_ref().map(|l| &l.w)]
            .into_iter()
            .flatten()
            .chain(blocks)
    }

    /// Compute every matrix's matrix-vector products at `precision` from now on.
    pub fn set_precision(&mut self, precision: Precision) {
        let blocks = self
            .blocks
            .iter_mut()
            .flat_map(|b| [&mut b.qkv, &mut b.o].into_iter().chain(b.mlp.linears_mut()).map(|l| &mut l.w));
        [
            Some(&mut self.embed),
            self.pos_embed.as_mut(),
            self.unembed.as_mut().map(|l| &mut l.w),
        ]
        .into_iter()
        .flatten()
        .chain(blocks)
        .for_each(|m| m.set_precision(precision));
    }

    /// Bytes the weights occupy: the matrices in their stored types, the vectors as f32.
    pub fn n_bytes(&self) -> usize {
        fn norm(n: &NormWeights) -> usize {
            n.w.len() + n.b.as_ref().map_or(0, Vec::len)
        }
        let vectors: usize = self
            .blocks
            .iter()
            .map(|b| {
                [&b.qkv, &b.o]
                    .into_iter()
                    .chain(b.mlp.linears())
                    .map(|l| l.b.as_ref().map_or(0, Vec::len))
                    .sum::<usize>()
                    + [
                        b.attn_norm.as_ref(),
                        b.mlp_norm.as_ref(),
                        b.q_norm.as_ref(),
                        b.k_norm.as_ref(),
                        b.post_attn_norm.as_ref(),
                        b.post_mlp_norm.as_ref(),
                    ]
                    .into_iter()
                    .flatten()
                    .map(norm)
                    .sum::<usize>()
            })
            .sum::<usize>()
            + norm(&self.final_norm)
            + self.unembed_bias().map_or(0, <[f32]>::len);
        self.matrices().map(Matrix::n_bytes).sum::<usize>() + 4 * vectors
    }
}

/// Anything that can hand out named tensors: small ones as f32, matrices in their storage.
trait TensorSource {
    fn path(&self) -> &Path;
    fn has(&self, name: &str) -> bool;
    /// Row-major data and shape, as f32 (norm weights and biases).
    fn load(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)>;
    /// The tensor's stored type, row-major shape and bytes, without copying them.
    fn stored(&self, name: &str) -> Result<(GgmlType, Vec<usize>, Bytes)>;
    /// The tensor's bytes were copied and will not be read again: let the system drop its pages.
    fn release(&self, name: &str);
    /// Every tensor name, in a stable order.
    fn names(&self) -> Vec<String>;
}

impl TensorSource for GgufFile {
    fn path(&self) -> &Path {
        GgufFile::path(self)
    }
    fn has(&self, name: &str) -> bool {
        self.tensor_info(name).is_some()
    }
    fn load(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        self.tensor_f32(name)
    }
    fn stored(&self, name: &str) -> Result<(GgmlType, Vec<usize>, Bytes)> {
        let info = self.tensor_info(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_owned(),
            path: self.path().to_owned(),
        })?;
        let bytes = Bytes::Mapped {
            map: self.map(info),
            start: info.offset,
            len: info.n_bytes,
        };
        Ok((info.dtype, info.shape.clone(), bytes))
    }
    fn release(&self, name: &str) {
        if let Some(info) = self.tensor_info(name) {
            crate::matrix::release_range(&self.map(info), info.offset, info.n_bytes);
        }
    }
    fn names(&self) -> Vec<String> {
        self.header.tensors.keys().cloned().collect()
    }
}

/// All `*.safetensors` files of a Hugging Face directory, indexed by tensor name.
pub(crate) struct SafetensorsDir {
    dir: PathBuf,
    maps: Vec<Arc<memmap2::Mmap>>,
    index: HashMap<String, usize>,
}

impl SafetensorsDir {
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::Checkpoint {
                path: dir.to_owned(),
                reason: "no *.safetensors file (a Hugging Face directory needs config.json, model*.safetensors and tokenizer.json; pytorch_model.bin is not read)".into(),
            });
        }
        let mut maps = Vec::new();
        let mut index = HashMap::new();
        for (i, path) in files.iter().enumerate() {
            let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            // SAFETY: read-only private map of a checkpoint file.
            let map = unsafe { memmap2::MmapOptions::new().populate().map(&file) }.map_err(|e| Error::io(path, e))?;
            let st = safetensors::SafeTensors::deserialize(&map).map_err(|e| Error::Checkpoint {
                path: path.clone(),
                reason: format!("not a valid safetensors file: {e}"),
            })?;
            for name in st.names() {
                index.insert(name.to_string(), i);
            }
            maps.push(Arc::new(map));
        }
        Ok(SafetensorsDir {
            dir: dir.to_owned(),
            maps,
            index,
        })
    }
}

impl SafetensorsDir {
    /// A tensor's file, dtype, shape and the range of its bytes in the file.
    fn view(&self, name: &str) -> Result<(usize, safetensors::Dtype, Vec<usize>, std::ops::Range<usize>)> {
        let missing = || Error::MissingTensor {
            name: name.to_owned(),
            path: self.dir.clone(),
        };
        let &i = self.index.get(name).ok_or_else(missing)?;
        let map = &self.maps[i];
        let st = safetensors::SafeTensors::deserialize(map).map_err(|e| Error::Checkpoint {
            path: self.dir.clone(),
            reason: e.to_string(),
        })?;
        let view = st.tensor(name).map_err(|_| missing())?;
        let start = view.data().as_ptr() as usize - map.as_ptr() as usize;
        Ok((i, view.dtype(), view.shape().to_vec(), start..start + view.data().len()))
    }

    fn dtype(&self, name: &str, dtype: safetensors::Dtype) -> Result<GgmlType> {
        match dtype {
            safetensors::Dtype::F32 => Ok(GgmlType::F32),
            safetensors::Dtype::F16 => Ok(GgmlType::F16),
            safetensors::Dtype::BF16 => Ok(GgmlType::BF16),
            other => Err(Error::Checkpoint {
                path: self.dir.clone(),
                reason: format!("tensor `{name}` has dtype {other:?}; only F32, F16 and BF16 are read"),
            }),
        }
    }
}

impl TensorSource for SafetensorsDir {
    fn path(&self) -> &Path {
        &self.dir
    }
    fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
    fn load(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let (i, dtype, shape, range) = self.view(name)?;
        let bytes = &self.maps[i][range];
        let data: Vec<f32> = match self.dtype(name, dtype)? {
            GgmlType::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            GgmlType::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            _ => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        };
        Ok((data, shape))
    }
    fn stored(&self, name: &str) -> Result<(GgmlType, Vec<usize>, Bytes)> {
        let (i, dtype, shape, range) = self.view(name)?;
        let bytes = Bytes::Mapped {
            map: self.maps[i].clone(),
            start: range.start,
            len: range.len(),
        };
        Ok((self.dtype(name, dtype)?, shape, bytes))
    }
    fn release(&self, name: &str) {
        if let Ok((i, _, _, range)) = self.view(name) {
            crate::matrix::release_range(&self.maps[i], range.start, range.len());
        }
    }
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.index.keys().cloned().collect();
        names.sort();
        names
    }
}

/// How one family names its tensors. Each logical tensor may have several spellings (with and
/// without a `transformer.` or `model.` prefix); the first present wins.
struct Naming {
    embed: Vec<String>,
    pos_embed: Vec<String>,
    final_norm: Vec<String>,
    unembed: Vec<String>,
    block: fn(usize, BlockPart) -> Vec<String>,
    /// GPT-2's Conv1D stores linear weights as `[in, out]`.
    transposed_linears: bool,
    /// GGUF `llama` files interleave the rotary halves of Q and K rows.
    interleaved_rope_rows: bool,
    /// Gemma's HF checkpoints store RMSNorm weights as `w` for a `1 + w` scale.
    norm_offset: f32,
    /// Per-pair RoPE frequency divisors (GGUF only).
    rope_freqs: Vec<String>,
    stacked: StackedLayout,
}

/// Tensors that checkpoints carry and that cannot change the text model's numbers: buffers the
/// reference implementation recomputes (old Llama checkpoints' `rotary_emb.inv_freq`, GPT-2's
/// causal-mask `attn.bias` / `attn.masked_bias`), a tied unembedding's copy of the embedding,
/// which transformers replaces by the embedding itself, and the image encoder of a multimodal
/// checkpoint (Gemma 3's `vision_tower` and `multi_modal_projector`), which text never reaches.
fn unread_is_harmless(name: &str, tied: bool) -> bool {
    let vision = ["vision_tower.", "multi_modal_projector."];
    name.ends_with(".rotary_emb.inv_freq")
        || name.ends_with(".attn.bias")
        || name.ends_with(".attn.masked_bias")
        || tied && name == "lm_head.weight"
        || vision
            .iter()
            .any(|v| name.starts_with(v) || name.strip_prefix("model.").is_some_and(|n| n.starts_with(v)))
}

#[derive(Clone, Copy, Debug)]
enum BlockPart {
    AttnNorm,
    Q,
    K,
    V,
    /// GPT-2 fuses Q, K and V into one Conv1D.
    Qkv,
    O,
    QNorm,
    KNorm,
    PostAttnNorm,
    MlpNorm,
    Gate,
    Up,
    /// Phi-3 fuses the gated MLP's input projections, `[gate | up]` as headhunt keeps them.
    GateUp,
    Down,
    PostMlpNorm,
    /// A Mixture-of-Experts MLP's router, and its experts' projections.
    Router,
    ExpertGate(usize),
    ExpertUp(usize),
    ExpertDown(usize),
    /// Every expert's projection in one 3-D tensor (laid out as [`StackedLayout`] says).
    ExpertsGate,
    ExpertsUp,
    /// Gate and up of every expert in one tensor.
    ExpertsGateUp,
    ExpertsDown,
    /// The attention sinks' logits, `[heads]`: names in full (GGUF's have `.weight`,
    /// transformers' none).
    Sinks,
    /// Qwen2-MoE's shared expert and its sigmoid gate.
    SharedGate,
    SharedUp,
    SharedDown,
    SharedExpertGate,
}

/// How a checkpoint stacks its experts' projections in 3-D tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StackedLayout {
    /// llama.cpp's: `[experts, out, in]` as `<name>.weight` and `<name>.bias`; a fused
    /// `ffn_gate_up_exps` holds each expert's gate rows, then its up rows.
    Gguf,
    /// transformers' gpt-oss: `[experts, in, out]` as `<name>` and `<name>_bias`, gate and up
    /// interleaved output by output (`gate_up_proj[..., ::2]` is the gate).
    Transformers,
}

fn names(prefixes: &[&str], name: &str) -> Vec<String> {
    prefixes.iter().map(|p| format!("{p}{name}")).collect()
}

fn gguf_block(l: usize, part: BlockPart) -> Vec<String> {
    use BlockPart::*;
    let n = match part {
        AttnNorm => "attn_norm",
        Q => "attn_q",
        K => "attn_k",
        V => "attn_v",
        Qkv => "attn_qkv",
        O => "attn_output",
        QNorm => "attn_q_norm",
        KNorm => "attn_k_norm",
        PostAttnNorm => "post_attention_norm",
        MlpNorm => "ffn_norm",
        Gate => "ffn_gate",
        Up => "ffn_up",
        // Only Phi-3's files fuse gate and up (as `ffn_up`: `gguf_phi3_block`).
        GateUp => return vec![],
        Down => "ffn_down",
        PostMlpNorm => "post_ffw_norm",
        Router => "ffn_gate_inp",
        ExpertsGate => "ffn_gate_exps",
        ExpertsUp => "ffn_up_exps",
        ExpertsGateUp => "ffn_gate_up_exps",
        ExpertsDown => "ffn_down_exps",
        Sinks => "attn_sinks.weight",
        SharedGate => "ffn_gate_shexp",
        SharedUp => "ffn_up_shexp",
        SharedDown => "ffn_down_shexp",
        SharedExpertGate => "ffn_gate_inp_shexp",
        ExpertGate(_) | ExpertUp(_) | ExpertDown(_) => return vec![],
    };
    vec![format!("blk.{l}.{n}")]
}

/// llama.cpp's gpt-oss files: the MLP's input norm is `post_attention_norm`.
fn gguf_gpt_oss_block(l: usize, part: BlockPart) -> Vec<String> {
    match part {
        BlockPart::MlpNorm => vec![format!("blk.{l}.post_attention_norm")],
        BlockPart::PostAttnNorm => vec![],
        other => gguf_block(l, other),
    }
}

/// llama.cpp's Phi-3 files: Q, K and V in one `attn_qkv`, gate and up in one `ffn_up` (gate
/// rows first, as Phi-3's `gate_up_proj`).
fn gguf_phi3_block(l: usize, part: BlockPart) -> Vec<String> {
    match part {
        BlockPart::GateUp => vec![format!("blk.{l}.ffn_up")],
        BlockPart::Gate | BlockPart::Up | BlockPart::Q | BlockPart::K | BlockPart::V => vec![],
        other => gguf_block(l, other),
    }
}

fn hf_llama_block(l: usize, part: BlockPart) -> Vec<String> {
    use BlockPart::*;
    // Mixtral's names, then OLMoE's and Qwen3-MoE's.
    let moe = |mixtral: String, others: String| {
        [mixtral, others]
            .iter()
            .flat_map(|n| names(&["model.", "model.language_model.", ""], &format!("layers.{l}.{n}")))
            .collect()
    };
    let n = match part {
        AttnNorm => "input_layernorm",
        Q => "self_attn.q_proj",
        K => "self_attn.k_proj",
        V => "self_attn.v_proj",
        Qkv => "self_attn.qkv_proj",
        O => "self_attn.o_proj",
        QNorm => "self_attn.q_norm",
        KNorm => "self_attn.k_norm",
        // Llama's `post_attention_layernorm` is the MLP's input norm; Gemma's is a real
        // post-attention norm and its MLP input norm is `pre_feedforward_layernorm`.
        PostAttnNorm => "post_attention_layernorm",
        MlpNorm => "post_attention_layernorm",
        Gate => "mlp.gate_proj",
        Up => "mlp.up_proj",
        GateUp => "mlp.gate_up_proj",
        Down => "mlp.down_proj",
        PostMlpNorm => "post_feedforward_layernorm",
        // gpt-oss's router is `mlp.router`.
        Router => {
            let mut all: Vec<String> = moe("block_sparse_moe.gate".into(), "mlp.gate".into());
            all.extend(names(&["model.", ""], &format!("layers.{l}.mlp.router")));
            return all;
        }
        ExpertGate(e) => return moe(format!("block_sparse_moe.experts.{e}.w1"), format!("mlp.experts.{e}.gate_proj")),
        ExpertUp(e) => return moe(format!("block_sparse_moe.experts.{e}.w3"), format!("mlp.experts.{e}.up_proj")),
        ExpertDown(e) => return moe(format!("block_sparse_moe.experts.{e}.w2"), format!("mlp.experts.{e}.down_proj")),
        // gpt-oss stacks its experts (`StackedLayout::Transformers`).
        ExpertsGateUp => "mlp.experts.gate_up_proj",
        ExpertsDown => "mlp.experts.down_proj",
        ExpertsGate | ExpertsUp => return vec![],
        Sinks => "self_attn.sinks",
        SharedGate => "mlp.shared_expert.gate_proj",
        SharedUp => "mlp.shared_expert.up_proj",
        SharedDown => "mlp.shared_expert.down_proj",
        SharedExpertGate => "mlp.shared_expert_gate",
    };
    names(&["model.", "model.language_model.", ""], &format!("layers.{l}.{n}"))
}

fn hf_gemma_block(l: usize, part: BlockPart) -> Vec<String> {
    match part {
        BlockPart::MlpNorm => names(
            &["model.", "model.language_model.", ""],
            &format!("layers.{l}.pre_feedforward_layernorm"),
        ),
        other => hf_llama_block(l, other),
    }
}

fn hf_gpt2_block(l: usize, part: BlockPart) -> Vec<String> {
    use BlockPart::*;
    let n = match part {
        AttnNorm => "ln_1",
        Qkv => "attn.c_attn",
        O => "attn.c_proj",
        MlpNorm => "ln_2",
        Up => "mlp.c_fc",
        Down => "mlp.c_proj",
        _ => return vec![],
    };
    names(&["transformer.", ""], &format!("h.{l}.{n}"))
}

fn hf_opt_block(l: usize, part: BlockPart) -> Vec<String> {
    use BlockPart::*;
    let n = match part {
        AttnNorm => "self_attn_layer_norm",
        Q => "self_attn.q_proj",
        K => "self_attn.k_proj",
        V => "self_attn.v_proj",
        O => "self_attn.out_proj",
        MlpNorm => "final_layer_norm",
        Up => "fc1",
        Down => "fc2",
        _ => return vec![],
    };
    names(&["model.decoder.", "decoder.", ""], &format!("layers.{l}.{n}"))
}

impl Naming {
    /// llama.cpp's names for a family.
    fn gguf(family: &Family) -> Self {
        Naming {
            embed: vec!["token_embd".into()],
            pos_embed: vec![],
            final_norm: vec!["output_norm".into()],
            unembed: vec!["output".into()],
            block: match family.gguf_names {
                GgufNames::Standard => gguf_block,
                GgufNames::Phi3 => gguf_phi3_block,
                GgufNames::GptOss => gguf_gpt_oss_block,
            },
            transposed_linears: false,
            interleaved_rope_rows: family.gguf_interleaved_rope,
            norm_offset: 0.0,
            rope_freqs: vec!["rope_freqs".into()],
            stacked: StackedLayout::Gguf,
        }
    }

    /// transformers' names for a family.
    fn hf(family: &Family) -> Self {
        let llama_like = |block: fn(usize, BlockPart) -> Vec<String>, norm_offset| Naming {
            embed: names(&["model.", "model.language_model.", ""], "embed_tokens"),
            pos_embed: vec![],
            final_norm: names(&["model.", "model.language_model.", ""], "norm"),
            unembed: vec!["lm_head".into()],
            block,
            transposed_linears: false,
            interleaved_rope_rows: false,
            norm_offset,
            rope_freqs: vec![],
            stacked: StackedLayout::Transformers,
        };
        match family.hf_names {
            HfNames::Llama => llama_like(hf_llama_block, 0.0),
            HfNames::Gemma => llama_like(hf_gemma_block, 1.0),
            HfNames::Gpt2 => Naming {
                embed: names(&["transformer.", ""], "wte"),
                pos_embed: names(&["transformer.", ""], "wpe"),
                final_norm: names(&["transformer.", ""], "ln_f"),
                unembed: vec!["lm_head".into()],
                block: hf_gpt2_block,
                transposed_linears: true,
                interleaved_rope_rows: false,
                norm_offset: 0.0,
                rope_freqs: vec![],
                stacked: StackedLayout::Transformers,
            },
            HfNames::Opt => Naming {
                embed: names(&["model.decoder.", "decoder.", ""], "embed_tokens"),
                pos_embed: names(&["model.decoder.", "decoder.", ""], "embed_positions"),
                final_norm: names(&["model.decoder.", "decoder.", ""], "final_layer_norm"),
                unembed: vec!["lm_head".into()],
                block: hf_opt_block,
                transposed_linears: false,
                interleaved_rope_rows: false,
                norm_offset: 0.0,
                rope_freqs: vec![],
                stacked: StackedLayout::Transformers,
            },
        }
    }
}

struct Loader<'a> {
    src: &'a dyn TensorSource,
    naming: Naming,
    config: &'a ModelConfig,
    isa: Isa,
    /// The tensors read so far: what is left at the end is refused, not ignored.
    used: RefCell<BTreeSet<String>>,
}

impl Loader<'_> {
    fn find(&self, candidates: &[String], suffix: &str) -> Option<String> {
        candidates.iter().map(|c| format!("{c}{suffix}")).find(|n| self.src.has(n))
    }

    fn missing(&self, candidates: &[String], suffix: &str) -> Error {
        Error::MissingTensor {
            name: candidates.first().map_or_else(String::new, |c| format!("{c}{suffix}")),
            path: self.src.path().to_owned(),
        }
    }

    /// Load a tensor that must exist with exactly this shape (`suffix` appended to each name).
    fn tensor(&self, candidates: &[String], suffix: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let name = self.find(candidates, suffix).ok_or_else(|| self.missing(candidates, suffix))?;
        self.load_checked(&name, shape)
    }

    fn optional(&self, candidates: &[String], suffix: &str, shape: &[usize]) -> Result<Option<Vec<f32>>> {
        match self.find(candidates, suffix) {
            Some(name) => self.load_checked(&name, shape).map(Some),
            None => Ok(None),
        }
    }

    fn load_checked(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.used.borrow_mut().insert(name.to_owned());
        let (data, found) = self.src.load(name)?;
        // Vectors may be stored as [n] or [1, n].
        let squeeze = |s: &[usize]| s.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>();
        if squeeze(&found) != squeeze(shape) {
            return Err(Error::TensorShape {
                name: name.to_owned(),
                found,
                expected: shape.to_vec(),
            });
        }
        Ok(data)
    }

    fn norm(&self, candidates: &[String], dim: usize) -> Result<NormWeights> {
        let mut w = self.tensor(candidates, ".weight", &[dim])?;
        if self.naming.norm_offset != 0.0 {
            w.iter_mut().for_each(|x| *x += self.naming.norm_offset);
        }
        Ok(NormWeights {
            w,
            b: self.optional(candidates, ".bias", &[dim])?,
        })
    }

    /// A matrix that must exist with exactly this shape, in its stored type.
    fn matrix(&self, candidates: &[String], suffix: &str, rows: usize, cols: usize, transposed: bool) -> Result<Matrix> {
        let name = self.find(candidates, suffix).ok_or_else(|| self.missing(candidates, suffix))?;
        self.used.borrow_mut().insert(name.clone());
        let (dtype, found, bytes) = self.src.stored(&name)?;
        let expected = if transposed { [cols, rows] } else { [rows, cols] };
        if found
            .iter()
            .copied()
            .filter(|&d| d != 1)
            .ne(expected.iter().copied().filter(|&d| d != 1))
        {
            return Err(Error::TensorShape {
                name,
                found,
                expected: expected.to_vec(),
            });
        }
        let bad = |reason: String| Error::Checkpoint {
            path: self.src.path().to_owned(),
            reason: format!("tensor `{name}`: {reason}"),
        };
        let (r, c) = (expected[0], expected[1]);
        let m = Matrix::new(dtype, r, c, bytes, self.isa).map_err(bad)?;
        if !transposed {
            return Ok(m);
        }
        let t = m.transposed().map_err(bad)?;
        self.src.release(&name);
        Ok(t)
    }

    fn linear(&self, candidates: &[String], n_out: usize, n_in: usize) -> Result<Linear> {
        Ok(Linear {
            w: self.matrix(candidates, ".weight", n_out, n_in, self.naming.transposed_linears)?,
            b: self.optional(candidates, ".bias", &[n_out])?,
        })
    }

    fn block(&self, l: usize) -> Result<BlockWeights> {
        let c = self.config;
        let part = |p| (self.naming.block)(l, p);
        let d = c.d_model;
        let (q_out, kv_out) = (c.n_heads * c.d_head, c.n_kv_heads * c.d_head);
        let qkv = if self.find(&part(BlockPart::Qkv), ".weight").is_some() {
            self.linear(&part(BlockPart::Qkv), q_out + 2 * kv_out, d)?
        } else {
            let mut q = self.linear(&part(BlockPart::Q), q_out, d)?;
            let mut k = self.linear(&part(BlockPart::K), kv_out, d)?;
            let v = self.linear(&part(BlockPart::V), kv_out, d)?;
            if self.naming.interleaved_rope_rows {
                unpermute_rope_rows(&mut q, c.n_heads, c.d_head);
                unpermute_rope_rows(&mut k, c.n_kv_heads, c.d_head);
            }
            concat_rows(vec![q, k, v])?
        };
        let mlp = match c.moe {
            None => Mlp::Dense(self.expert(l, [BlockPart::Gate, BlockPart::Up, BlockPart::GateUp, BlockPart::Down], c.d_mlp)?),
            Some(moe) => Mlp::Experts {
                router: self.linear(&part(BlockPart::Router), moe.experts, d)?,
                experts: self.experts(l, moe.experts)?,
                shared: match moe.shared {
                    Some(width) => {
                        use BlockPart::*;
                        Some(Box::new(SharedExpert {
                            // No fused gate/up: SharedGate stands in for it.
                            mlp: self.expert(l, [SharedGate, SharedUp, SharedGate, SharedDown], width)?,
                            gate: self.linear(&part(SharedExpertGate), 1, d)?,
                        }))
                    }
                    None => None,
                },
            },
        };
        // Norms are read only where the family has them: one in a file whose family has none
        // is left unread, and so refuses the file.
        let norm_if = |has: bool, p, dim| if has { self.norm(&part(p), dim).map(Some) } else { Ok(None) };
        let (pre, post) = (c.norms.has_pre(), c.norms.has_post());
        let (q_norm_dim, k_norm_dim) = match c.qk_norm {
            QkNorm::Whole => (q_out, kv_out),
            QkNorm::PerHead | QkNorm::None => (c.d_head, c.d_head),
        };
        let qk = c.qk_norm != QkNorm::None;
        Ok(BlockWeights {
            attn_norm: norm_if(pre, BlockPart::AttnNorm, d)?,
            qkv,
            q_norm: norm_if(qk, BlockPart::QNorm, q_norm_dim)?,
            k_norm: norm_if(qk, BlockPart::KNorm, k_norm_dim)?,
            o: self.linear(&part(BlockPart::O), d, q_out)?,
            sinks: if c.attn_sinks {
                Some(self.tensor(&part(BlockPart::Sinks), "", &[c.n_heads])?)
            } else {
                None
            },
            post_attn_norm: norm_if(post, BlockPart::PostAttnNorm, d)?,
            mlp_norm: norm_if(pre, BlockPart::MlpNorm, d)?,
            mlp,
            post_mlp_norm: norm_if(post, BlockPart::PostMlpNorm, d)?,
        })
    }

    /// One MLP `width` wide from its parts `[gate, up, fused gate/up, down]` (a fused one where
    /// the file has it; `fused` equal to `gate` where the family fuses none).
    fn expert(&self, l: usize, [gate, up, fused, down]: [BlockPart; 4], width: usize) -> Result<Expert> {
        let c = self.config;
        let (d, part) = (c.d_model, |p| (self.naming.block)(l, p));
        let has_fused = std::mem::discriminant(&fused) != std::mem::discriminant(&gate);
        let up = if !c.gated_mlp {
            self.linear(&part(up), width, d)?
        } else if has_fused && self.find(&part(fused), ".weight").is_some() {
            self.linear(&part(fused), 2 * width, d)?
        } else {
            let gate = self.linear(&part(gate), width, d)?;
            concat_rows(vec![gate, self.linear(&part(up), width, d)?])?
        };
        Ok(Expert {
            up,
            down: self.linear(&part(down), d, width)?,
        })
    }

    /// The suffixes of a stacked tensor's weight and bias names.
    fn stacked_suffixes(&self) -> (&'static str, &'static str) {
        match self.naming.stacked {
            StackedLayout::Gguf => (".weight", ".bias"),
            StackedLayout::Transformers => ("", "_bias"),
        }
    }

    /// A Mixture-of-Experts block's experts: stacked in 3-D tensors, or one tensor per
    /// projection and expert (transformers' Mixtral, OLMoE, Qwen3-MoE).
    fn experts(&self, l: usize, n: usize) -> Result<Vec<Expert>> {
        use BlockPart::*;
        let part = |p| (self.naming.block)(l, p);
        let (weight, _) = self.stacked_suffixes();
        if [ExpertsGate, ExpertsGateUp].iter().any(|&p| self.find(&part(p), weight).is_some()) {
            return self.stacked_experts(l, n);
        }
        if let Some(name) = self.find(&part(ExpertsGateUp), "_blocks") {
            return Err(Error::Checkpoint {
                path: self.src.path().to_owned(),
                reason: format!("`{name}`: experts stored as MXFP4 blocks in safetensors are not read; load the model's GGUF"),
            });
        }
        // No fused gate/up in these families: GateUp names nothing here.
        (0..n)
            .map(|e| self.expert(l, [ExpertGate(e), ExpertUp(e), ExpertGate(e), ExpertDown(e)], self.config.d_mlp))
            .collect()
    }

    /// The experts of a block whose projections are stacked in 3-D tensors: in llama.cpp's
    /// layout each expert's matrices view their slice of the file; transformers' (gpt-oss,
    /// `[experts, in, out]`, gate and up interleaved) is rearranged into f32 matrices.
    fn stacked_experts(&self, l: usize, n: usize) -> Result<Vec<Expert>> {
        let c = self.config;
        let (d, ff, part) = (c.d_model, c.d_mlp, |p| (self.naming.block)(l, p));
        let (_, bias) = self.stacked_suffixes();
        // Each expert's bias, from a `[experts, width]` tensor where the file has one.
        let biases = |p: BlockPart, width: usize| -> Result<Vec<Option<Vec<f32>>>> {
            Ok(match self.optional(&part(p), bias, &[n, width])? {
                Some(b) => b.chunks_exact(width).map(|r| Some(r.to_vec())).collect(),
                None => vec![None; n],
            })
        };
        let down_b = biases(BlockPart::ExpertsDown, d)?;
        if self.naming.stacked == StackedLayout::Transformers {
            return self.transformers_stacked_experts(l, n, down_b);
        }
        let fused = self.find(&part(BlockPart::ExpertsGateUp), ".weight").is_some();
        let (up, up_b): (Vec<Matrix>, Vec<Option<Vec<f32>>>) = if fused {
            (
                self.stacked(&part(BlockPart::ExpertsGateUp), n, 2 * ff, d)?,
                biases(BlockPart::ExpertsGateUp, 2 * ff)?,
            )
        } else {
            let gate = self.stacked(&part(BlockPart::ExpertsGate), n, ff, d)?;
            let up = self.stacked(&part(BlockPart::ExpertsUp), n, ff, d)?;
            let (gate_b, up_b) = (biases(BlockPart::ExpertsGate, ff)?, biases(BlockPart::ExpertsUp, ff)?);
            let mut fused_up = Vec::with_capacity(n);
            let mut fused_b = Vec::with_capacity(n);
            for (((g, u), gb), ub) in gate.into_iter().zip(up).zip(gate_b).zip(up_b) {
                let both = concat_rows(vec![Linear { w: g, b: gb }, Linear { w: u, b: ub }])?;
                fused_up.push(both.w);
                fused_b.push(both.b);
            }
            (fused_up, fused_b)
        };
        let down = self.stacked(&part(BlockPart::ExpertsDown), n, d, ff)?;
        Ok(up
            .into_iter()
            .zip(up_b)
            .zip(down.into_iter().zip(down_b))
            .map(|((w, b), (dw, db))| Expert {
                up: Linear { w, b },
                down: Linear { w: dw, b: db },
            })
            .collect())
    }

    /// transformers' stacked experts (gpt-oss): `gate_up_proj` `[experts, d_model, 2 d_mlp]`
    /// with gate and up alternating along the last axis, `down_proj` `[experts, d_mlp,
    /// d_model]`, read as f32 and brought to headhunt's `[gate | up]` rows and `[out, in]`
    /// matrices. (The Hub's gpt-oss checkpoints store these as MXFP4 blocks, which are
    /// refused by name: their GGUF conversions load.)
    fn transformers_stacked_experts(&self, l: usize, n: usize, down_b: Vec<Option<Vec<f32>>>) -> Result<Vec<Expert>> {
        let c = self.config;
        let (d, ff, part) = (c.d_model, c.d_mlp, |p| (self.naming.block)(l, p));
        let gate_up = self.tensor(&part(BlockPart::ExpertsGateUp), "", &[n, d, 2 * ff])?;
        let gate_up_b = self.optional(&part(BlockPart::ExpertsGateUp), "_bias", &[n, 2 * ff])?;
        let down = self.tensor(&part(BlockPart::ExpertsDown), "", &[n, ff, d])?;
        let isa = self.isa;
        Ok((0..n)
            .zip(down_b)
            .map(|(e, db)| {
                let w = &gate_up[e * d * 2 * ff..(e + 1) * d * 2 * ff];
                // Output column j of `[d, 2 ff]` is gate row j / 2 (even j) or up row j / 2.
                let column = |j: usize| (0..d).map(move |i| w[i * 2 * ff + j]);
                let rows: Vec<f32> = (0..ff)
                    .flat_map(|r| column(2 * r))
                    .chain((0..ff).flat_map(|r| column(2 * r + 1)))
                    .collect();
                let b = gate_up_b.as_ref().map(|b| {
                    let b = &b[e * 2 * ff..(e + 1) * 2 * ff];
                    (0..ff).map(|r| b[2 * r]).chain((0..ff).map(|r| b[2 * r + 1])).collect()
                });
                let dw = &down[e * ff * d..(e + 1) * ff * d];
                let down_rows: Vec<f32> = (0..d).flat_map(|o| (0..ff).map(move |j| dw[j * d + o])).collect();
                Expert {
                    up: Linear {
                        w: Matrix::from_f32(2 * ff, d, &rows, isa),
                        b,
                    },
                    down: Linear {
                        w: Matrix::from_f32(d, ff, &down_rows, isa),
                        b: db,
                    },
                }
            })
            .collect())
    }

    /// `n` matrices of `rows x cols` stored one after another in a `[n, rows, cols]` tensor.
    fn stacked(&self, candidates: &[String], n: usize, rows: usize, cols: usize) -> Result<Vec<Matrix>> {
        let name = self
            .find(candidates, ".weight")
            .ok_or_else(|| self.missing(candidates, ".weight"))?;
        self.used.borrow_mut().insert(name.clone());
        let (dtype, found, bytes) = self.src.stored(&name)?;
        if found != [n, rows, cols] {
            return Err(Error::TensorShape {
                name,
                found,
                expected: vec![n, rows, cols],
            });
        }
        let bad = |reason: String| Error::Checkpoint {
            path: self.src.path().to_owned(),
            reason: format!("tensor `{name}`: {reason}"),
        };
        let Bytes::Mapped { map, start, len } = bytes else {
            return Err(bad("stacked experts are read from a mapped file".into()));
        };
        let per = len / n;
        (0..n)
            .map(|e| {
                let slice = Bytes::Mapped {
                    map: map.clone(),
                    start: start + e * per,
                    len: per,
                };
                Matrix::new(dtype, rows, cols, slice, self.isa).map_err(bad)
            })
            .collect()
    }

    /// The weights, and LongRoPE's factors where the file holds them as tensors (GGUF's
    /// `rope_factors_{short,long}.weight`; config.json's are in the config already).
    fn load(&self) -> Result<(Weights, Option<LongRopeFactors>)> {
        let c = self.config;
        let embed = self.matrix(&self.naming.embed, ".weight", c.vocab_size, c.d_model, false)?;
        let pos_embed = match c.positions {
            PositionEncoding::Learned { offset } => {
                let rows = c.context_length + offset;
                Some(self.matrix(&self.naming.pos_embed, ".weight", rows, c.d_model, false)?)
            }
            PositionEncoding::Rotary => None,
        };
        let blocks = (0..c.n_layers).map(|l| self.block(l)).collect::<Result<Vec<_>>>()?;
        let final_norm = self.norm(&self.naming.final_norm, c.d_model)?;
        let unembed = if c.tied_embeddings {
            None
        } else {
            Some(self.linear(&self.naming.unembed, c.vocab_size, c.d_model)?)
        };
        let unembed_bias = self.optional(&["final_logits_bias".to_owned()], "", &[c.vocab_size])?;
        let freq_factors_used = c.layers.iter().any(|l| l.rope_scaling == Some(RopeScaling::FreqFactors));
        let rope_freq_factors = if freq_factors_used {
            Some(self.tensor(&self.naming.rope_freqs, ".weight", &[c.rotary_dim / 2])?)
        } else {
            None
        };
        let long_rope_used = c
            .layers
            .iter()
            .any(|l| matches!(l.rope_scaling, Some(RopeScaling::LongRope { .. })));
        let long_rope = if long_rope_used && c.long_rope.is_none() {
            let set = |which: &str| self.tensor(&[format!("rope_factors_{which}")], ".weight", &[c.rotary_dim / 2]);
            Some(LongRopeFactors {
                short: set("short")?,
                long: set("long")?,
            })
        } else {
            None
        };
        self.refuse_unread()?;
        let weights = Weights {
            embed,
            pos_embed,
            blocks,
            final_norm,
            unembed,
            unembed_bias,
            rope_freq_factors,
        };
        Ok((weights, long_rope))
    }

    /// Every tensor of the checkpoint was read, or is one that cannot change the numbers.
    fn refuse_unread(&self) -> Result<()> {
        let used = self.used.borrow();
        let tied = self.config.tied_embeddings;
        match self
            .src
            .names()
            .into_iter()
            .find(|n| !used.contains(n) && !unread_is_harmless(n, tied))
        {
            Some(name) => Err(Error::UnknownTensor {
                name,
                arch: self.config.architecture.clone(),
                path: self.src.path().to_owned(),
            }),
            None => Ok(()),
        }
    }
}

fn concat_rows(parts: Vec<Linear>) -> Result<Linear> {
    let b = parts.iter().any(|p| p.b.is_some()).then(|| {
        parts
            .iter()
            .flat_map(|p| p.b.clone().unwrap_or_else(|| vec![0.0; p.n_out()]))
            .collect()
    });
    let w = Matrix::concat_rows(parts.into_iter().map(|p| p.w).collect()).map_err(Error::Config)?;
    Ok(Linear { w, b })
}

/// llama.cpp stores each head's Q/K rows with the two rotary halves interleaved
/// (`[x0, x_h, x1, x_h+1, ...]`); read them back in rotate-half order.
fn unpermute_rope_rows(lin: &mut Linear, n_heads: usize, d_head: usize) {
    let half = d_head / 2;
    let from: Vec<usize> = (0..n_heads * d_head)
        .map(|r| (r / d_head) * d_head + 2 * (r % d_head % half) + r % d_head / half)
        .collect();
    lin.w.permute_rows(&from);
    if let Some(b) = &mut lin.b {
        let src = b.clone();
        for (to, &f) in from.iter().enumerate() {
            b[to] = src[f];
        }
    }
}

/// Load all weights of a GGUF model.
/// Load all weights of a GGUF model, completing `config` with what the file states as tensors
/// (LongRoPE's factors).
pub(crate) fn load_gguf(file: &GgufFile, config: &mut ModelConfig, isa: Isa) -> Result<Weights> {
    let (weights, long_rope) = Loader {
        src: file,
        naming: Naming::gguf(config.family),
        config,
        isa,
        used: RefCell::default(),
    }
    .load()?;
    if long_rope.is_some() {
        config.long_rope = long_rope;
    }
    Ok(weights)
}

/// Load all weights of a Hugging Face directory.
pub(crate) fn load_safetensors(dir: &SafetensorsDir, config: &ModelConfig, isa: Isa) -> Result<Weights> {
    Loader {
        src: dir,
        naming: Naming::hf(config.family),
        config,
        isa,
        used: RefCell::default(),
    }
    .load()
    .map(|(weights, _)| weights)
}

#[cfg(test)]
mod tests {
    use super::unread_is_harmless;

    #[test]
    fn only_tensors_that_cannot_change_the_numbers_may_stay_unread() {
        for name in [
            "model.layers.0.self_attn.rotary_emb.inv_freq",
            "h.3.attn.bias",
            "h.3.attn.masked_bias",
            "vision_tower.vision_model.embeddings.patch_embedding.weight",
            "model.multi_modal_projector.mm_input_projection_weight",
        ] {
            assert!(unread_is_harmless(name, false), "{name}");
        }
        assert!(unread_is_harmless("lm_head.weight", true));
        for name in [
            "lm_head.weight",
            "h.3.attn.c_attn.bias",
            "model.layers.0.block_sparse_moe.gate.weight",
            "rope_freqs.weight",
            "model.layers.0.self_attn.q_norm.weight",
        ] {
            assert!(!unread_is_harmless(name, false), "{name}");
        }
    }
}

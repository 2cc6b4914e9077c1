//! Model weights as plain f32 buffers, loaded from a GGUF file or a Hugging Face safetensors
//! directory and brought to one layout whatever the source:
//!
//! * linear weights are row-major `[out, in]` (PyTorch's `nn.Linear` layout);
//! * queries, keys and values are fused into one `[q heads | k heads | v heads]` projection, and
//!   gate and up into one `[gate | up]` projection, so each costs one matrix multiply;
//! * rotary heads use the rotate-half layout (llama.cpp's interleaved Q/K rows are un-permuted);
//! * Gemma's RMSNorm weights are stored as `1 + w` (as GGUF already does).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::config::{ModelConfig, PositionEncoding};
use crate::error::{Error, Result};
use crate::gguf::{GgmlType, GgufFile};
use crate::quant::{self, QuantMatrix};

/// `y = x W^T + b`, with `W` row-major `[n_out, n_in]`.
#[derive(Debug, Clone)]
pub struct Linear {
    pub w: Vec<f32>,
    pub b: Option<Vec<f32>>,
    pub n_out: usize,
    pub n_in: usize,
    /// The same weights as the checkpoint's quantized blocks, when it has them: one token's
    /// matrix-vector product reads these instead of `w`.
    pub quant: Option<QuantMatrix>,
}

#[derive(Debug, Clone)]
pub struct NormWeights {
    pub w: Vec<f32>,
    pub b: Option<Vec<f32>>,
}

#[derive(Debug, Clone)]
pub struct BlockWeights {
    pub attn_norm: NormWeights,
    /// Rows: all query heads, then key heads, then value heads.
    pub qkv: Linear,
    pub q_norm: Option<NormWeights>,
    pub k_norm: Option<NormWeights>,
    pub o: Linear,
    pub post_attn_norm: Option<NormWeights>,
    pub mlp_norm: NormWeights,
    /// Gated MLPs: rows `[gate | up]` (2 x d_mlp); otherwise the single input projection.
    pub up: Linear,
    pub down: Linear,
    pub post_mlp_norm: Option<NormWeights>,
}

#[derive(Debug, Clone)]
pub struct Weights {
    /// `[vocab, d_model]`
    pub embed: Vec<f32>,
    /// `[positions, d_model]` for learned position tables.
    pub pos_embed: Option<Vec<f32>>,
    pub blocks: Vec<BlockWeights>,
    pub final_norm: NormWeights,
    /// `None` when the unembedding is tied to `embed`.
    pub unembed: Option<Linear>,
    pub unembed_bias: Option<Vec<f32>>,
    /// The tied embedding's quantized blocks, for one position's logits.
    pub embed_quant: Option<QuantMatrix>,
}

impl Weights {
    /// The unembedding matrix `[vocab, d_model]`.
    pub fn unembed_matrix(&self) -> &[f32] {
        self.unembed.as_ref().map_or(&self.embed, |l| &l.w)
    }

    /// The bias added to the logits: the unembedding's own, or a separate `final_logits_bias`.
    pub fn unembed_bias(&self) -> Option<&[f32]> {
        self.unembed.as_ref().and_then(|u| u.b.as_deref()).or(self.unembed_bias.as_deref())
    }

    /// The unembedding as quantized blocks, when the checkpoint has them.
    pub fn unembed_quant(&self) -> Option<&QuantMatrix> {
        match &self.unembed {
            Some(l) => l.quant.as_ref(),
            None => self.embed_quant.as_ref(),
        }
    }

    pub fn n_bytes(&self) -> usize {
        fn lin(l: &Linear) -> usize {
            l.w.len() + l.b.as_ref().map_or(0, Vec::len)
        }
        fn norm(n: &NormWeights) -> usize {
            n.w.len() + n.b.as_ref().map_or(0, Vec::len)
        }
        let blocks: usize = self
            .blocks
            .iter()
            .map(|b| {
                norm(&b.attn_norm)
                    + lin(&b.qkv)
                    + lin(&b.o)
                    + lin(&b.up)
                    + lin(&b.down)
                    + norm(&b.mlp_norm)
                    + [&b.q_norm, &b.k_norm, &b.post_attn_norm, &b.post_mlp_norm]
                        .iter()
                        .map(|n| n.as_ref().map_or(0, norm))
                        .sum::<usize>()
            })
            .sum();
        let quant: usize = self
            .blocks
            .iter()
            .flat_map(|b| [&b.qkv, &b.o, &b.up, &b.down])
            .chain(self.unembed.as_ref())
            .filter_map(|l| l.quant.as_ref())
            .chain(self.embed_quant.as_ref())
            .map(QuantMatrix::n_bytes)
            .sum();
        quant
            + 4 * (self.embed.len()
                + self.pos_embed.as_ref().map_or(0, Vec::len)
                + blocks
                + norm(&self.final_norm)
                + self.unembed.as_ref().map_or(0, lin))
    }
}

/// Anything that can hand out named f32 tensors.
trait TensorSource {
    fn path(&self) -> &Path;
    fn has(&self, name: &str) -> bool;
    /// Row-major data and shape.
    fn load(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)>;
    /// The stored blocks of a quantized tensor, when there are any.
    fn raw(&self, _name: &str) -> Option<(GgmlType, &[u8])> {
        None
    }
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
    fn raw(&self, name: &str) -> Option<(GgmlType, &[u8])> {
        self.tensor_bytes(name)
    }
}

/// All `*.safetensors` files of a Hugging Face directory, indexed by tensor name.
pub(crate) struct SafetensorsDir {
    dir: PathBuf,
    maps: Vec<memmap2::Mmap>,
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
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
            let st = safetensors::SafeTensors::deserialize(&map).map_err(|e| Error::Checkpoint {
                path: path.clone(),
                reason: format!("not a valid safetensors file: {e}"),
            })?;
            for name in st.names() {
                index.insert(name.to_string(), i);
            }
            maps.push(map);
        }
        Ok(SafetensorsDir {
            dir: dir.to_owned(),
            maps,
            index,
        })
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
        let missing = || Error::MissingTensor {
            name: name.to_owned(),
            path: self.dir.clone(),
        };
        let &i = self.index.get(name).ok_or_else(missing)?;
        let st = safetensors::SafeTensors::deserialize(&self.maps[i]).map_err(|e| Error::Checkpoint {
            path: self.dir.clone(),
            reason: e.to_string(),
        })?;
        let view = st.tensor(name).map_err(|_| missing())?;
        let bytes = view.data();
        let data: Vec<f32> = match view.dtype() {
            safetensors::Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            safetensors::Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            safetensors::Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(Error::Checkpoint {
                    path: self.dir.clone(),
                    reason: format!("tensor `{name}` has dtype {other:?}; only F32, F16 and BF16 are read"),
                })
            }
        };
        Ok((data, view.shape().to_vec()))
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
    Down,
    PostMlpNorm,
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
        Down => "ffn_down",
        PostMlpNorm => "post_ffw_norm",
    };
    vec![format!("blk.{l}.{n}")]
}

fn hf_llama_block(l: usize, part: BlockPart) -> Vec<String> {
    use BlockPart::*;
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
        Down => "mlp.down_proj",
        PostMlpNorm => "post_feedforward_layernorm",
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
    fn gguf(arch: &str) -> Self {
        Naming {
            embed: vec!["token_embd".into()],
            pos_embed: vec![],
            final_norm: vec!["output_norm".into()],
            unembed: vec!["output".into()],
            block: gguf_block,
            transposed_linears: false,
            interleaved_rope_rows: arch == "llama" || arch == "mistral",
            norm_offset: 0.0,
        }
    }

    fn hf(arch: &str) -> Self {
        let llama_like = |block: fn(usize, BlockPart) -> Vec<String>, norm_offset| Naming {
            embed: names(&["model.", "model.language_model.", ""], "embed_tokens"),
            pos_embed: vec![],
            final_norm: names(&["model.", "model.language_model.", ""], "norm"),
            unembed: vec!["lm_head".into()],
            block,
            transposed_linears: false,
            interleaved_rope_rows: false,
            norm_offset,
        };
        match arch {
            "gemma3" => llama_like(hf_gemma_block, 1.0),
            "gpt2" => Naming {
                embed: names(&["transformer.", ""], "wte"),
                pos_embed: names(&["transformer.", ""], "wpe"),
                final_norm: names(&["transformer.", ""], "ln_f"),
                unembed: vec!["lm_head".into()],
                block: hf_gpt2_block,
                transposed_linears: true,
                interleaved_rope_rows: false,
                norm_offset: 0.0,
            },
            "opt" => Naming {
                embed: names(&["model.decoder.", "decoder.", ""], "embed_tokens"),
                pos_embed: names(&["model.decoder.", "decoder.", ""], "embed_positions"),
                final_norm: names(&["model.decoder.", "decoder.", ""], "final_layer_norm"),
                unembed: vec!["lm_head".into()],
                block: hf_opt_block,
                transposed_linears: false,
                interleaved_rope_rows: false,
                norm_offset: 0.0,
            },
            _ => llama_like(hf_llama_block, 0.0),
        }
    }
}

struct Loader<'a> {
    src: &'a dyn TensorSource,
    naming: Naming,
    config: &'a ModelConfig,
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

    fn optional_norm(&self, candidates: &[String], dim: usize) -> Result<Option<NormWeights>> {
        if self.find(candidates, ".weight").is_some() {
            self.norm(candidates, dim).map(Some)
        } else {
            Ok(None)
        }
    }

    fn linear(&self, candidates: &[String], n_out: usize, n_in: usize) -> Result<Linear> {
        let w = if self.naming.transposed_linears {
            transpose(&self.tensor(candidates, ".weight", &[n_in, n_out])?, n_in, n_out)
        } else {
            self.tensor(candidates, ".weight", &[n_out, n_in])?
        };
        Ok(Linear {
            w,
            b: self.optional(candidates, ".bias", &[n_out])?,
            n_out,
            n_in,
            quant: self.quant(candidates, ".weight", n_out, n_in),
        })
    }

    /// A tensor's quantized blocks as a matrix, when it is stored in a type with a kernel.
    fn quant(&self, candidates: &[String], suffix: &str, rows: usize, cols: usize) -> Option<QuantMatrix> {
        let name = self.find(candidates, suffix)?;
        let (dtype, bytes) = self.src.raw(&name)?;
        if self.naming.transposed_linears || !quant::supported(dtype) {
            return None;
        }
        QuantMatrix::new(dtype, rows, cols, bytes.to_vec())
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
            concat_rows(vec![q, k, v])
        };
        let (mlp_in, gate) = if c.gated_mlp {
            (2 * c.d_mlp, Some(self.linear(&part(BlockPart::Gate), c.d_mlp, d)?))
        } else {
            (c.d_mlp, None)
        };
        let up = self.linear(&part(BlockPart::Up), c.d_mlp, d)?;
        let up = match gate {
            Some(g) => concat_rows(vec![g, up]),
            None => up,
        };
        debug_assert_eq!(up.n_out, mlp_in);
        let sandwich = |p| {
            if c.sandwich_norms {
                self.norm(&part(p), d).map(Some)
            } else {
                Ok(None)
            }
        };
        let qk_norm = |p| {
            if c.qk_norm {
                self.norm(&part(p), c.d_head).map(Some)
            } else {
                self.optional_norm(&part(p), c.d_head)
            }
        };
        Ok(BlockWeights {
            attn_norm: self.norm(&part(BlockPart::AttnNorm), d)?,
            qkv,
            q_norm: qk_norm(BlockPart::QNorm)?,
            k_norm: qk_norm(BlockPart::KNorm)?,
            o: self.linear(&part(BlockPart::O), d, q_out)?,
            post_attn_norm: sandwich(BlockPart::PostAttnNorm)?,
            mlp_norm: self.norm(&part(BlockPart::MlpNorm), d)?,
            up,
            down: self.linear(&part(BlockPart::Down), d, c.d_mlp)?,
            post_mlp_norm: sandwich(BlockPart::PostMlpNorm)?,
        })
    }

    fn load(&self) -> Result<Weights> {
        let c = self.config;
        let embed = self.tensor(&self.naming.embed, ".weight", &[c.vocab_size, c.d_model])?;
        let pos_embed = match c.positions {
            PositionEncoding::Learned { offset } => {
                Some(self.tensor(&self.naming.pos_embed, ".weight", &[c.context_length + offset, c.d_model])?)
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
        let embed_quant = if c.tied_embeddings {
            self.quant(&self.naming.embed, ".weight", c.vocab_size, c.d_model)
        } else {
            None
        };
        Ok(Weights {
            embed,
            pos_embed,
            blocks,
            final_norm,
            unembed,
            unembed_bias,
            embed_quant,
        })
    }
}

fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}

fn concat_rows(parts: Vec<Linear>) -> Linear {
    let n_in = parts[0].n_in;
    let n_out = parts.iter().map(|p| p.n_out).sum();
    let w = parts.iter().flat_map(|p| p.w.iter().copied()).collect();
    let b = parts.iter().any(|p| p.b.is_some()).then(|| {
        parts
            .iter()
            .flat_map(|p| p.b.clone().unwrap_or_else(|| vec![0.0; p.n_out]))
            .collect()
    });
    let quant = parts
        .iter()
        .map(|p| p.quant.clone())
        .collect::<Option<Vec<_>>>()
        .and_then(QuantMatrix::concat_rows);
    Linear { w, b, n_out, n_in, quant }
}

/// llama.cpp stores each head's Q/K rows with the two rotary halves interleaved
/// (`[x0, x_h, x1, x_h+1, ...]`); put them back in rotate-half order.
fn unpermute_rope_rows(lin: &mut Linear, n_heads: usize, d_head: usize) {
    let half = d_head / 2;
    let from: Vec<usize> = (0..n_heads * d_head)
        .map(|r| (r / d_head) * d_head + 2 * (r % d_head % half) + r % d_head / half)
        .collect();
    let n_in = lin.n_in;
    let src = lin.w.clone();
    for (to, &f) in from.iter().enumerate() {
        lin.w[to * n_in..(to + 1) * n_in].copy_from_slice(&src[f * n_in..(f + 1) * n_in]);
    }
    if let Some(b) = &mut lin.b {
        let src = b.clone();
        for (to, &f) in from.iter().enumerate() {
            b[to] = src[f];
        }
    }
    if let Some(q) = &mut lin.quant {
        q.permute_rows(&from);
    }
}

/// Load all weights of a GGUF model.
pub(crate) fn load_gguf(file: &GgufFile, config: &ModelConfig) -> Result<Weights> {
    Loader {
        src: file,
        naming: Naming::gguf(&config.architecture),
        config,
    }
    .load()
}

/// Load all weights of a Hugging Face directory.
pub(crate) fn load_safetensors(dir: &SafetensorsDir, config: &ModelConfig) -> Result<Weights> {
    Loader {
        src: dir,
        naming: Naming::hf(&config.architecture),
        config,
    }
    .load()
}

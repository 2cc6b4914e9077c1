//! Tokenizers built from GGUF metadata or a `tokenizer.json`, and chat templates.
//!
//! From GGUF, the vocabulary is rebuilt as a Hugging Face `tokenizers` pipeline, the same one the
//! reference implementation builds from the file:
//!
//! * `gpt2` (byte-level BPE) with the merges the file lists and the pre-tokenizer its
//!   `tokenizer.ggml.pre` names. SmolLM2's `smollm` splits every digit on its own and adds no
//!   leading space.
//! * `llama` (SentencePiece vocabulary with scores): BPE over `▁`-spelled pieces with byte
//!   fallback; the merges are recovered from the vocabulary, ranked by score (Gemma's by the order
//!   the pieces appear in the file, which is its real merge order).
//!
//! Control tokens become special added tokens and user-defined ones plain added tokens, so both
//! are matched whole in text.

use std::path::Path;

use serde_json::json;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper};

use crate::error::{Error, Result};
use crate::gguf::{GgufHeader, Value};

/// One message of a chat.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn user(content: impl Into<String>) -> Self {
        ChatMessage {
            role: "user".into(),
            content: content.into(),
        }
    }
}

/// Longest vocabulary piece whose merges are recovered (real pieces are far shorter).
const MAX_PIECE_BYTES: usize = 256;

/// Byte ranges of tokens in the text they came from.
pub type Offsets = Vec<(usize, usize)>;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Token ids that end generation.
    pub eos_ids: Vec<u32>,
    pub bos_id: Option<u32>,
    /// Whether encoding with special tokens prepends BOS.
    pub adds_bos: bool,
    pub chat_template: Option<String>,
}

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

/// GPT-2's byte-to-unicode table: printable bytes map to themselves, the rest to U+0100 and up.
fn byte_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u32 {
        let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).expect("latin-1")
        } else {
            n += 1;
            char::from_u32(255 + n).expect("valid code point")
        };
    }
    table
}

/// The split regex a `tokenizer.ggml.pre` value stands for (llama.cpp's table); `None` for the
/// plain GPT-2 split.
fn pre_split_regex(pre: &str) -> Result<Option<&'static str>> {
    const LLAMA3: &str =
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    // OpenAI's o200k split (gpt-oss, Phi-4-mini): a capitalised word or a lower-case run keeps
    // its contraction, digits go in threes, punctuation takes the line breaks and slashes after it.
    const GPT4O: &str = concat!(
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    );
    Ok(match pre {
        "default" | "gpt2" | "gpt-2" | "smollm" | "starcoder" | "refact" | "olmo" | "mpt" => None,
        "llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe" | "dbrx" | "falcon3" => Some(LLAMA3),
        "qwen2" | "deepseek-r1-qwen" => Some(QWEN2),
        "gpt-4o" | "gpt4o" => Some(GPT4O),
        other => {
            return Err(Error::Tokenizer(format!(
                "pre-tokenizer `{other}` is not supported (supported: gpt2, smollm, starcoder, llama-bpe, qwen2, gpt-4o)"
            )))
        }
    })
}

fn strings(v: Option<&Value>, key: &str) -> Result<Vec<String>> {
    v.and_then(Value::as_array)
        .ok_or_else(|| Error::Tokenizer(format!("GGUF lacks {key}")))?
        .iter()
        .map(|s| {
            s.as_str()
                .map(str::to_owned)
                .ok_or_else(|| Error::Tokenizer(format!("{key} holds a non-string")))
        })
        .collect()
}

fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T> {
    serde_json::from_value(v).map_err(tok_err)
}

impl Tokenizer {
    /// Build the tokenizer a GGUF file describes.
    pub fn from_gguf(file: &GgufHeader) -> Result<Self> {
        let meta = |k: &str| file.meta(k);
        let model = meta("tokenizer.ggml.model").and_then(Value::as_str).unwrap_or("gpt2");
        let arch = meta("general.architecture").and_then(Value::as_str).unwrap_or("");
        let tokens = strings(meta("tokenizer.ggml.tokens"), "tokenizer.ggml.tokens")?;
        let types: Vec<i64> = match meta("tokenizer.ggml.token_type").and_then(Value::as_array) {
            Some(a) => a.iter().map(|v| v.as_i64().unwrap_or(1)).collect(),
            None => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(Error::Tokenizer("token_type and tokens differ in length".into()));
        }
        let id_of = |k: &str| {
            meta(k)
                .and_then(Value::as_u64)
                .map(|v| v as u32)
                .filter(|&v| (v as usize) < tokens.len())
        };
        let bos_id = id_of("tokenizer.ggml.bos_token_id");
        let eos_id = id_of("tokenizer.ggml.eos_token_id");

        let (mut inner, byte_level) = match model {
            "gpt2" => {
                let merges = strings(meta("tokenizer.ggml.merges"), "tokenizer.ggml.merges")?;
                let pre = meta("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("default");
                (Self::byte_level_bpe(&tokens, &merges, pre)?, true)
            }
            "llama" => {
                let scores: Vec<f32> = match meta("tokenizer.ggml.scores").and_then(Value::as_array) {
                    Some(a) => a.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect(),
                    None => vec![0.0; tokens.len()],
                };
                let gemma = arch.starts_with("gemma");
                let prefix_space = meta("tokenizer.ggml.add_space_prefix").and_then(Value::as_bool).unwrap_or(!gemma);
                (Self::sentencepiece_bpe(&tokens, &scores, gemma, prefix_space)?, false)
            }
            other => {
                return Err(Error::Tokenizer(format!(
                    "tokenizer model `{other}` is not supported (gpt2 and llama are)"
                )))
            }
        };

        // Control tokens are special; user-defined ones are matched whole but are not special.
        let alphabet: std::collections::HashSet<char> = byte_alphabet().into_iter().collect();
        let mut special = Vec::new();
        let mut user = Vec::new();
        for (t, &ty) in tokens.iter().zip(&types) {
            match ty {
                3 if !byte_level || t.chars().all(|c| alphabet.contains(&c)) => {
                    special.push(AddedToken::from(t.clone(), true).normalized(false))
                }
                4 => user.push(AddedToken::from(t.clone(), false).normalized(false)),
                _ => {}
            }
        }
        inner.add_special_tokens(special).map_err(tok_err)?;
        // A user-defined token the vocabulary spells differently (Gemma's whitespace runs) is
        // left to the model, as the reference does.
        let user: Vec<AddedToken> = user.into_iter().filter(|t| inner.token_to_id(&t.content).is_some()).collect();
        inner.add_tokens(user).map_err(tok_err)?;

        let adds_bos = meta("tokenizer.ggml.add_bos_token")
            .and_then(Value::as_bool)
            .unwrap_or(model == "llama");
        if let (true, Some(bos)) = (adds_bos, bos_id) {
            let bos_tok = &tokens[bos as usize];
            let post: PostProcessorWrapper = from_json(json!({
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos_tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos_tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos_tok, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos_tok: {"id": bos_tok, "ids": [bos], "tokens": [bos_tok]}}
            }))?;
            inner.with_post_processor(Some(post));
        }

        let mut eos_ids: Vec<u32> = eos_id.into_iter().collect();
        // Chat models end a turn with their own token, which a GGUF may not name as EOS.
        for t in ["<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|endoftext|>"] {
            if let Some(id) = inner.token_to_id(t) {
                if !eos_ids.contains(&id) {
                    eos_ids.push(id);
                }
            }
        }
        Ok(Tokenizer {
            inner,
            eos_ids,
            bos_id,
            adds_bos,
            chat_template: meta("tokenizer.chat_template").and_then(Value::as_str).map(str::to_owned),
        })
    }

    fn byte_level_bpe(tokens: &[String], merges: &[String], pre: &str) -> Result<tokenizers::Tokenizer> {
        let table = byte_alphabet();
        let alphabet: std::collections::HashSet<char> = table.iter().copied().collect();
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let spelled = if t.chars().all(|c| alphabet.contains(&c)) {
                    t.clone()
                } else {
                    t.bytes().map(|b| table[b as usize]).collect()
                };
                (spelled, i as u32)
            })
            .collect();
        let merges = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .ok_or_else(|| Error::Tokenizer(format!("malformed merge `{m}`")))
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(tok_err)?;
        let mut tok = tokenizers::Tokenizer::new(bpe);
        let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
        let pre_tokenizer = match (pre, pre_split_regex(pre)?) {
            // SmolLM2 (and StarCoder) isolate every digit before the GPT-2 split.
            ("smollm" | "starcoder" | "refact", None) => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level]}),
            (_, None) => byte_level,
            (_, Some(regex)) => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}),
        };
        tok.with_pre_tokenizer(Some(from_json::<PreTokenizerWrapper>(pre_tokenizer)?));
        tok.with_decoder(Some(from_json::<DecoderWrapper>(
            json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}),
        )?));
        Ok(tok)
    }

    fn sentencepiece_bpe(tokens: &[String], scores: &[f32], gemma: bool, prefix_space: bool) -> Result<tokenizers::Tokenizer> {
        // Gemma files store whitespace-only pieces with real spaces; the vocabulary spells them
        // with `▁` like every other piece.
        let tokens: Vec<String> = tokens
            .iter()
            .map(|t| {
                if gemma && t.contains(' ') && t.trim().is_empty() {
                    "\u{2581}".repeat(t.chars().count())
                } else {
                    t.clone()
                }
            })
            .collect();
        let mut vocab = Vocab::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            vocab.insert(t.clone(), i as u32);
        }
        // Rank of a merge = rank of the piece it produces: Gemma's file order, else its score.
        let rank = |i: usize| {
            if gemma {
                -(i as f64)
            } else {
                scores.get(i).copied().unwrap_or(0.0) as f64
            }
        };
        let mut merges: Vec<(f64, usize, usize, u32, u32)> = Vec::new();
        for (i, piece) in tokens.iter().enumerate() {
            // Real pieces are short; a pathological one would make this loop quadratic.
            if vocab.get(piece) != Some(&(i as u32)) || piece.len() > MAX_PIECE_BYTES {
                continue;
            }
            let mut local = Vec::new();
            for (split, _) in piece.char_indices().skip(1) {
                let (l, r) = piece.split_at(split);
                if let (Some(&li), Some(&ri)) = (vocab.get(l), vocab.get(r)) {
                    local.push((rank(i), l.chars().count(), r.chars().count(), li, ri));
                }
            }
            local.sort_by_key(|m| (m.3, m.4));
            merges.extend(local);
        }
        // Best rank first; among equal ranks, longer left piece first (then longer right);
        // a stable sort keeps the vocabulary order otherwise.
        merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2)));
        let merges: Vec<(String, String)> = merges
            .into_iter()
            .map(|m| (tokens[m.3 as usize].clone(), tokens[m.4 as usize].clone()))
            .collect();
        let unk = ["<unk>"].into_iter().find(|u| vocab.contains_key(*u));
        let mut builder = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true).fuse_unk(true);
        if let Some(u) = unk {
            builder = builder.unk_token(u.to_owned());
        }
        let mut tok = tokenizers::Tokenizer::new(builder.build().map_err(tok_err)?);
        let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
        let normalizer = if prefix_space {
            json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u{2581}"}, replace]})
        } else {
            replace
        };
        tok.with_normalizer(Some(from_json::<NormalizerWrapper>(normalizer)?))
            .map_err(tok_err)?;
        let mut decoders = vec![
            json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
            json!({"type": "ByteFallback"}),
            json!({"type": "Fuse"}),
        ];
        if prefix_space {
            decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
        }
        tok.with_decoder(Some(from_json::<DecoderWrapper>(
            json!({"type": "Sequence", "decoders": decoders}),
        )?));
        Ok(tok)
    }

    /// Load `tokenizer.json` (and the chat template and special tokens of `tokenizer_config.json`
    /// when present) from a Hugging Face directory.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(Error::Checkpoint {
                path: dir.to_owned(),
                reason: "missing tokenizer.json".into(),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        let read_json = |name: &str| -> Option<serde_json::Value> {
            let text = std::fs::read_to_string(dir.join(name)).ok()?;
            serde_json::from_str(&text).ok()
        };
        let tconf = read_json("tokenizer_config.json").unwrap_or_default();
        let gen = read_json("generation_config.json").unwrap_or_default();
        let token_field = |v: &serde_json::Value| -> Option<String> {
            v.as_str()
                .map(str::to_owned)
                .or_else(|| v.get("content").and_then(|c| c.as_str()).map(str::to_owned))
        };
        let id_of = |key: &str| tconf.get(key).and_then(token_field).and_then(|t| inner.token_to_id(&t));
        let bos_id = id_of("bos_token");
        let mut eos_ids: Vec<u32> = id_of("eos_token").into_iter().collect();
        match gen.get("eos_token_id") {
            Some(serde_json::Value::Number(n)) => eos_ids.extend(n.as_u64().map(|v| v as u32)),
            Some(serde_json::Value::Array(a)) => eos_ids.extend(a.iter().filter_map(|v| v.as_u64()).map(|v| v as u32)),
            _ => {}
        }
        eos_ids.sort_unstable();
        eos_ids.dedup();
        let adds_bos = match (bos_id, inner.encode("a", true)) {
            (Some(b), Ok(enc)) => enc.get_ids().first() == Some(&b),
            _ => false,
        };
        let chat_template = tconf
            .get("chat_template")
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .or_else(|| std::fs::read_to_string(dir.join("chat_template.jinja")).ok());
        Ok(Tokenizer {
            inner,
            eos_ids,
            bos_id,
            adds_bos,
            chat_template,
        })
    }

    /// Token ids of `text`; `add_special` applies the model's post-processing (BOS).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        Ok(self.inner.encode(text, add_special).map_err(tok_err)?.get_ids().to_vec())
    }

    /// Token ids with each token's byte range `(start, end)` in `text`.
    pub fn encode_with_offsets(&self, text: &str, add_special: bool) -> Result<(Vec<u32>, Offsets)> {
        let enc = self.inner.encode(text, add_special).map_err(tok_err)?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(tok_err)
    }

    /// The vocabulary string of one token (byte-level or `▁` spelling, as stored).
    pub fn token_str(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Whether a token is one of the tokenizer's special (control) tokens.
    pub fn is_special(&self, id: u32) -> bool {
        self.inner.get_added_tokens_decoder().get(&id).is_some_and(|t| t.special)
    }

    /// Render messages through the model's chat template (with the generation prompt).
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or_else(|| Error::ChatTemplate("this model has no chat template".into()))?;
        let token = |id: Option<u32>| id.and_then(|i| self.token_str(i)).unwrap_or_default();
        render_template(template, messages, &token(self.bos_id), &token(self.eos_ids.first().copied()))
    }

    /// Token ids for one user message: through the chat template when the model has one (the
    /// template writes any BOS itself), otherwise the plain text with the model's BOS.
    pub fn encode_prompt(&self, text: &str, chat: bool) -> Result<Vec<u32>> {
        if chat && self.chat_template.is_some() {
            self.encode(&self.render_chat(&[ChatMessage::user(text)])?, false)
        } else {
            self.encode(text, true)
        }
    }
}

/// Render a Hugging Face chat template (Jinja) with Python-compatible string methods.
pub fn render_template(template: &str, messages: &[ChatMessage], bos: &str, eos: &str) -> Result<String> {
    let mut env = minijinja::Environment::new();
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
    });
    let err = |e: minijinja::Error| Error::ChatTemplate(e.to_string());
    env.add_template("chat", template).map_err(err)?;
    env.get_template("chat")
        .map_err(err)?
        .render(minijinja::context! {
            messages => minijinja::Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => true,
            bos_token => bos,
            eos_token => eos,
        })
        .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_is_gpt2s() {
        let t = byte_alphabet();
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'a' as usize], 'a');
        let distinct: std::collections::HashSet<_> = t.iter().collect();
        assert_eq!(distinct.len(), 256);
    }

    #[test]
    fn chatml_template_renders() {
        let tpl = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        let out = render_template(tpl, &[ChatMessage::user(" hi ")], "", "").unwrap();
        assert_eq!(out, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
        let py = "{{ messages[0]['content'].strip().upper() }}";
        assert_eq!(render_template(py, &[ChatMessage::user(" x ")], "", "").unwrap(), "X");
        let bad = "{{ raise_exception('no system role') }}";
        assert!(render_template(bad, &[], "", "")
            .unwrap_err()
            .to_string()
            .contains("no system role"));
    }
}

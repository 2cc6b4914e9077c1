//! The engine's one error type. Every variant renders as a single line that says what went wrong
//! and, where there is one, what to do about it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The file is not a well-formed GGUF container (truncated, corrupted, or lying in its header).
    #[error("{path}: not a valid GGUF file: {reason}")]
    Gguf { path: PathBuf, reason: String },

    /// A Hugging Face directory or safetensors file that cannot be used as it is.
    #[error("{path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },

    #[error(
        "unsupported architecture `{0}` (headhunt reads GGUF files of {gguf} and Hugging Face model types {hf})",
        gguf = crate::config::Family::gguf_architectures().join(", "),
        hf = crate::config::Family::hf_model_types().join(", ")
    )]
    UnsupportedArchitecture(String),

    #[error("missing tensor `{name}` in {path}")]
    MissingTensor { name: String, path: PathBuf },

    /// A tensor the family's loader does not read: it may change the numbers, so the file is
    /// refused rather than run without it.
    #[error("{path}: tensor `{name}` is not one headhunt's `{arch}` loader reads; refusing the file rather than ignoring a tensor that may change the numbers")]
    UnknownTensor { name: String, arch: String, path: PathBuf },

    /// A metadata or config key that would change the forward pass and that headhunt does not
    /// implement.
    #[error("{source_name}: `{key}` = {value} is not supported by headhunt ({why}); refusing the file rather than computing it wrong")]
    UnsupportedKey {
        source_name: String,
        key: String,
        value: String,
        why: String,
    },

    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    TensorShape {
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },

    #[error("model config: {0}")]
    Config(String),

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("chat template: {0}")]
    ChatTemplate(String),

    #[error("the input needs {needed} positions but the model's context length is {context}")]
    ContextOverflow { needed: usize, context: usize },

    #[error("token id {id} is outside the vocabulary (size {vocab})")]
    TokenOutOfRange { id: u32, vocab: usize },

    #[error("hooks: {0}")]
    Hook(String),

    /// A run asked to do what its state does not allow (truncate past its end, an empty
    /// prefill, KV policies or kept positions of the wrong shape).
    #[error("run: {0}")]
    Run(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

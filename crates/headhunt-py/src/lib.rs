//! `headhunt._headhunt`: the native half of the Python package. It holds a loaded model and runs
//! the engine with the GIL released; the Python half (`python/headhunt`) gives it
//! TransformerLens's names and shapes. The experiments run through the CLI's own code
//! ([`headhunt::cli`]), in this process, so a notebook's `headhunt.detect` writes what `headhunt
//! detect` writes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use headhunt::{experiments::grounding, experiments::rerank, output::activations};
use headhunt_engine::{greedy, HookPoint, Hooks, Intervention, MaskMode, Model, Phase, Positions, Precision, RunOptions};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyKeyboardInterrupt};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyDict};

create_exception!(headhunt, HeadhuntError, PyException, "Any error headhunt reports.");
create_exception!(
    headhunt,
    ModelLoadError,
    HeadhuntError,
    "A model that cannot be found, fetched or loaded."
);
create_exception!(
    headhunt,
    HookError,
    HeadhuntError,
    "A hook name, position or intervention the model cannot take."
);
create_exception!(
    headhunt,
    TokenizerError,
    HeadhuntError,
    "Text the tokenizer or chat template cannot handle."
);
create_exception!(
    headhunt,
    RunError,
    HeadhuntError,
    "A run asked to do what its state does not allow (truncating past its end, an empty prompt, KV settings of the wrong shape)."
);
create_exception!(
    headhunt,
    UsageError,
    HeadhuntError,
    "Arguments an experiment cannot run with (the CLI's usage errors)."
);

/// A Rust error as the Python exception of its kind, with the CLI's message (the whole chain).
fn py_err(e: anyhow::Error) -> PyErr {
    if e.chain().any(|c| c.is::<headhunt::runner::interrupt::Interrupted>()) {
        return PyKeyboardInterrupt::new_err("interrupted between trials; rerun with the same out= to resume");
    }
    let message = e.chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": ");
    use headhunt_engine::Error as E;
    match e.chain().find_map(|c| c.downcast_ref::<E>()) {
        Some(E::Hook(_) | E::ContextOverflow { .. } | E::TokenOutOfRange { .. }) => HookError::new_err(message),
        Some(E::Run(_)) => RunError::new_err(message),
        Some(E::Tokenizer(_) | E::ChatTemplate(_)) => TokenizerError::new_err(message),
        Some(_) => ModelLoadError::new_err(message),
        None => HeadhuntError::new_err(message),
    }
}

/// A loaded model.
#[pyclass(frozen, module = "headhunt._headhunt")]
struct Engine {
    model: Arc<Model>,
}

/// f32 values from the bytes of a C-contiguous float32 array.
fn floats(bytes: &[u8]) -> PyResult<Vec<f32>> {
    if !bytes.len().is_multiple_of(4) {
        return Err(HookError::new_err("expected float32 data"));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// A bytearray holding `len` f32 values written by `fill`, for numpy to view without a copy.
fn float_buffer<'py>(py: Python<'py>, len: usize, fill: impl FnOnce(&mut [f32])) -> PyResult<Bound<'py, PyByteArray>> {
    PyByteArray::new_with(py, len * 4, |bytes: &mut [u8]| {
        if bytes.as_ptr().align_offset(std::mem::align_of::<f32>()) == 0 {
            // SAFETY: the buffer is `len * 4` bytes, aligned for f32, and any bit pattern is an f32.
            let out = unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<f32>(), len) };
            fill(out);
        } else {
            let mut out = vec![0.0f32; len];
            fill(&mut out);
            for (dst, v) in bytes.chunks_exact_mut(4).zip(out) {
                dst.copy_from_slice(&v.to_ne_bytes());
            }
        }
        Ok(())
    })
}

#[pymethods]
impl Engine {
    /// Load a known model id (fetched on first use), a .gguf file, a Hugging Face directory or a
    /// Hub id (downloaded into the Hub's cache).
    #[staticmethod]
    #[pyo3(signature = (name_or_path, precision = "exact"))]
    fn load(py: Python<'_>, name_or_path: String, precision: &str) -> PyResult<Engine> {
        let precision: Precision = precision
            .parse()
            .map_err(|_| HeadhuntError::new_err(format!("precision must be \"exact\" or \"fast\", not {precision:?}")))?;
        let arg = headhunt::commands::ModelArg {
            model: name_or_path,
            precision,
        };
        let model = py.detach(|| arg.load()).map_err(|e| ModelLoadError::new_err(format!("{e:#}")))?;
        Ok(Engine { model: Arc::new(model) })
    }

    /// The model's shapes and attention layout, as TransformerLens's `cfg` names them.
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = &self.model.config;
        let d = PyDict::new(py);
        d.set_item("model_name", self.model.source.name.clone())?;
        d.set_item("architecture", &c.architecture)?;
        d.set_item("n_layers", c.n_layers)?;
        d.set_item("n_heads", c.n_heads)?;
        d.set_item("n_key_value_heads", c.n_kv_heads)?;
        d.set_item("n_kv_heads", c.n_kv_heads)?;
        d.set_item("d_model", c.d_model)?;
        d.set_item("d_head", c.d_head)?;
        d.set_item("d_mlp", c.d_mlp)?;
        d.set_item("d_vocab", c.vocab_size)?;
        d.set_item("n_ctx", c.context_length)?;
        let layout: Vec<String> = c
            .layers
            .iter()
            .map(|l| l.window.map_or("global".to_owned(), |w| format!("local:{w}")))
            .collect();
        d.set_item("attention_layout", layout)?;
        d.set_item("precision", self.model.precision().name())?;
        Ok(d)
    }

    /// Every hook name, in TransformerLens's order.
    fn hook_names(&self) -> Vec<String> {
        headhunt_engine::HookPoint::all(&self.model.config)
            .iter()
            .map(HookPoint::to_string)
            .collect()
    }

    /// Token ids of `text`: through the chat template with `chat`, else with the model's BOS
    /// when `prepend_bos`.
    fn encode(&self, text: &str, prepend_bos: bool, chat: bool) -> PyResult<Vec<u32>> {
        let tok = self.model.tokenizer().map_err(|e| py_err(e.into()))?;
        let ids = if chat {
            tok.encode_prompt(text, true)
        } else {
            tok.encode(text, prepend_bos)
        };
        ids.map_err(|e| py_err(e.into()))
    }

    #[pyo3(signature = (tokens, skip_special = false))]
    fn decode(&self, tokens: Vec<u32>, skip_special: bool) -> PyResult<String> {
        let tok = self.model.tokenizer().map_err(|e| py_err(e.into()))?;
        tok.decode(&tokens, skip_special).map_err(|e| py_err(e.into()))
    }

    /// Each token's text, as the tokenizer decodes it alone.
    fn token_strings(&self, tokens: Vec<u32>) -> PyResult<Vec<String>> {
        let tok = self.model.tokenizer().map_err(|e| py_err(e.into()))?;
        tokens
            .iter()
            .map(|&t| tok.decode(&[t], false).map_err(|e| py_err(e.into())))
            .collect()
    }

    /// Run `tokens` once, recording the hooks `names` (`*` for every layer) at `positions`
    /// (`None`: all; negative count from the end), with the interventions applied. Returns
    /// `[(name, shape, positions, bytearray of float32)]`.
    #[pyo3(signature = (tokens, names, positions = None, mask_heads = Vec::new(), mask_mode = "uniform", add = Vec::new(), patch = Vec::new(), disable_experts = Vec::new()))]
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn run<'py>(
        &self,
        py: Python<'py>,
        tokens: Vec<u32>,
        names: Vec<String>,
        positions: Option<Vec<i64>>,
        mask_heads: Vec<(usize, usize)>,
        mask_mode: &str,
        add: Vec<(String, Vec<u8>)>,
        patch: Vec<(String, Vec<u8>)>,
        disable_experts: Vec<(usize, usize)>,
    ) -> PyResult<Vec<(String, Vec<usize>, Vec<u32>, Bound<'py, PyByteArray>)>> {
        let c = &self.model.config;
        if tokens.is_empty() {
            return Err(HookError::new_err("no tokens to run"));
        }
        let points = activations::expand_hooks(&names, c.n_layers).map_err(py_err)?;
        let positions = match &positions {
            None => Positions::All,
            Some(list) => activations::positions_at(list, tokens.len()).map_err(|e| HookError::new_err(e.to_string()))?,
        };
        let mut interventions = self.interventions(&tokens, &mask_heads, mask_mode, add, patch)?;
        interventions.extend(disabled_experts(&disable_experts));
        let model = Arc::clone(&self.model);
        let recording = py
            .detach(|| activations::record(&model, &tokens, &points, &positions, interventions))
            .map_err(py_err)?;
        let mut out = Vec::with_capacity(points.len());
        for &p in &points {
            let Some(dense) = activations::dense(&recording, p, c) else {
                continue;
            };
            let buffer = float_buffer(py, dense.len(), |dst| activations::fill(&recording, p, c, dst))?;
            out.push((p.to_string(), dense.shape, dense.positions, buffer));
        }
        Ok(out)
    }

    /// Greedy continuation of `tokens`: the new token ids (stopping at end-of-sequence), with
    /// `mask_heads` silenced and `disable_experts` never chosen in the prompt and in every step.
    #[pyo3(signature = (tokens, max_new_tokens, mask_heads = Vec::new(), mask_mode = "uniform", disable_experts = Vec::new()))]
    fn generate(
        &self,
        py: Python<'_>,
        tokens: Vec<u32>,
        max_new_tokens: usize,
        mask_heads: Vec<(usize, usize)>,
        mask_mode: &str,
        disable_experts: Vec<(usize, usize)>,
    ) -> PyResult<Vec<u32>> {
        let mut hooks = Hooks::default();
        for i in self.interventions(&tokens, &mask_heads, mask_mode, Vec::new(), Vec::new())? {
            hooks = hooks.intervene(i);
        }
        for i in disabled_experts(&disable_experts) {
            hooks = hooks.intervene(i);
        }
        let model = Arc::clone(&self.model);
        py.detach(|| {
            let mut run = model.run(
                hooks,
                RunOptions {
                    capacity: tokens.len() + max_new_tokens,
                    ..Default::default()
                },
            )?;
            Ok(greedy(&mut run, &tokens, max_new_tokens, |_| false)?)
        })
        .map_err(py_err)
    }

    /// Greedy continuation with the grounding signal of the retrieval heads of `scores` (a score
    /// file or detection run folder): per token (id, log-probability, support, lookback ratio),
    /// and the answer's (support, lookback, confidence) over its non-blank tokens.
    #[allow(clippy::type_complexity)]
    fn generate_grounded(
        &self,
        py: Python<'_>,
        tokens: Vec<u32>,
        max_new_tokens: usize,
        scores: std::path::PathBuf,
    ) -> PyResult<(Vec<(u32, f32, f64, f64)>, (f64, f64, f64))> {
        let model = Arc::clone(&self.model);
        py.detach(|| {
            let s = headhunt::experiments::retrieval::HeadScores::load(&scores)?;
            headhunt::experiments::retrieval::masking::check_scores_fit(&s, &model)?;
            let g = grounding::Grounder::from_scores(&s)?;
            let mut run = grounding::run(&model, tokens.len(), tokens.len() + max_new_tokens)?;
            let logits = run.prefill(&tokens)?;
            let steps = grounding::decode(&mut run, logits, max_new_tokens, headhunt_engine::argmax, |_| false)?;
            let per_token = steps
                .iter()
                .enumerate()
                .map(|(t, s)| (s.token, s.logprob, g.support(&tokens, s), g.lookback(s, t, tokens.len())))
                .collect();
            let kept = grounding::answer_steps(model.tokenizer()?, &steps);
            let span: Vec<grounding::GroundedStep> = kept.iter().map(|k| k.1.clone()).collect();
            let a = g.answer(&tokens, &span, kept.first().map_or(0, |k| k.0));
            Ok((per_token, (a.support, a.lookback, a.confidence)))
        })
        .map_err(py_err)
    }

    /// Each document's score for `question` from the calibrated attention of `heads` (all heads
    /// when None): ICR / QRRetriever's rule, as `headhunt rerank` scores them.
    fn rerank(
        &self,
        py: Python<'_>,
        question: String,
        docs: Vec<String>,
        heads: Option<Vec<(usize, usize)>>,
        chat: bool,
    ) -> PyResult<Vec<f64>> {
        let model = Arc::clone(&self.model);
        py.detach(|| {
            let c = &model.config;
            let heads: Vec<usize> = match heads {
                None => (0..c.n_layers * c.n_heads).collect(),
                Some(list) => list
                    .into_iter()
                    .map(|(l, h)| {
                        if l >= c.n_layers || h >= c.n_heads {
                            anyhow::bail!("no head {l}-{h}: the model has {} layers x {} heads", c.n_layers, c.n_heads);
                        }
                        Ok(l * c.n_heads + h)
                    })
                    .collect::<anyhow::Result<_>>()?,
            };
            let item = rerank::RerankItem {
                question,
                documents: docs
                    .into_iter()
                    .enumerate()
                    .map(|(i, text)| rerank::Doc { id: i.to_string(), text })
                    .collect(),
                gold: Vec::new(),
            };
            let prompt = rerank::prompt(model.tokenizer()?, &item, chat)?;
            Ok(rerank::attention_scores(&model, &prompt, &[&heads])?.remove(0))
        })
        .map_err(py_err)
    }
}

impl Engine {
    /// The engine's interventions for `run`'s arguments.
    fn interventions(
        &self,
        tokens: &[u32],
        mask_heads: &[(usize, usize)],
        mask_mode: &str,
        add: Vec<(String, Vec<u8>)>,
        patch: Vec<(String, Vec<u8>)>,
    ) -> PyResult<Vec<Intervention>> {
        let c = &self.model.config;
        let mode = match mask_mode {
            "uniform" => MaskMode::Uniform,
            "zero" => MaskMode::Zero,
            other => {
                return Err(HookError::new_err(format!(
                    "mask_mode must be \"uniform\" or \"zero\", not {other:?}"
                )))
            }
        };
        let mut out = Vec::new();
        for &(layer, head) in mask_heads {
            if layer >= c.n_layers || head >= c.n_heads {
                return Err(HookError::new_err(format!(
                    "head ({layer}, {head}) is not in the model ({} layers of {} heads)",
                    c.n_layers, c.n_heads
                )));
            }
            out.push(Intervention::MaskHead {
                layer,
                head,
                mode: mode.clone(),
                phase: Phase::Both,
            });
        }
        for (name, bytes) in add {
            let point: HookPoint = name.parse().map_err(|e: headhunt_engine::Error| py_err(e.into()))?;
            let vector = floats(&bytes)?;
            if vector.len() != point.row_len(c) {
                return Err(HookError::new_err(format!(
                    "add[{name:?}]: a vector of {} values, the hook's rows have {}",
                    vector.len(),
                    point.row_len(c)
                )));
            }
            out.push(Intervention::Add {
                point,
                positions: Positions::All,
                vector,
            });
        }
        for (name, bytes) in patch {
            let point: HookPoint = name.parse().map_err(|e: headhunt_engine::Error| py_err(e.into()))?;
            let values = floats(&bytes)?;
            let row = point.row_len(c);
            if matches!(point, HookPoint::Pattern(_)) || row == 0 || values.len() != row * tokens.len() {
                return Err(HookError::new_err(format!(
                    "patch[{name:?}]: expected {} x {row} values (every position of the prompt), got {}",
                    tokens.len(),
                    values.len()
                )));
            }
            out.push(Intervention::Set {
                point,
                head: None,
                rows: values.chunks_exact(row).map(<[f32]>::to_vec).enumerate().collect(),
            });
        }
        Ok(out)
    }
}

/// `(layer, expert)` pairs as one `DisableExperts` per layer, in prompt and decoding (the
/// engine checks the layers and experts exist when the run starts).
fn disabled_experts(pairs: &[(usize, usize)]) -> Vec<Intervention> {
    let mut by_layer: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for &(layer, expert) in pairs {
        by_layer.entry(layer).or_default().push(expert);
    }
    by_layer
        .into_iter()
        .map(|(layer, experts)| Intervention::DisableExperts {
            layer,
            experts,
            phase: Phase::Both,
        })
        .collect()
}

/// Set by the interrupt check when Python has a KeyboardInterrupt pending.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Between trials: run Python's signal handlers (the GIL taken back for a moment); a Ctrl-C
/// stops the experiment there.
fn python_interrupt() -> bool {
    let pending = Python::attach(|py| py.check_signals().is_err());
    if pending {
        INTERRUPTED.store(true, Ordering::SeqCst);
    }
    pending || INTERRUPTED.load(Ordering::SeqCst)
}

/// Run a headhunt command (`["detect", "--lengths", "600", ...]`) in this process, the GIL
/// released; Ctrl-C stops it between trials.
#[pyfunction]
fn run_command(py: Python<'_>, argv: Vec<String>) -> PyResult<()> {
    let cli = headhunt::cli::parse(std::iter::once("headhunt".to_owned()).chain(argv)).map_err(|e| UsageError::new_err(e.to_string()))?;
    INTERRUPTED.store(false, Ordering::SeqCst);
    headhunt::runner::interrupt::install(python_interrupt);
    py.detach(|| headhunt::cli::run(cli)).map_err(py_err)
}

/// Every kind of hook point, as the engine's table defines it: (name with `{l}` for the layer,
/// one position's row, whether it may be written, what it holds).
#[pyfunction]
fn hook_kinds() -> Vec<(&'static str, &'static str, bool, &'static str)> {
    headhunt_engine::hooks::HOOK_KINDS
        .iter()
        .map(|k| (k.name, k.dims, k.writable, k.doc))
        .collect()
}

#[pymodule]
fn _headhunt(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Engine>()?;
    m.add_function(wrap_pyfunction!(run_command, m)?)?;
    m.add_function(wrap_pyfunction!(hook_kinds, m)?)?;
    m.add("HeadhuntError", py.get_type::<HeadhuntError>())?;
    m.add("ModelLoadError", py.get_type::<ModelLoadError>())?;
    m.add("HookError", py.get_type::<HookError>())?;
    m.add("RunError", py.get_type::<RunError>())?;
    m.add("TokenizerError", py.get_type::<TokenizerError>())?;
    m.add("UsageError", py.get_type::<UsageError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

//! The server's model and the work it does with it: a trial's prompt rebuilt from its run's
//! settings (on the request's thread: tokenising is cheap), and the heavy work, attention
//! recomputed for a trial and answers rerun under masks, done one job at a time by a single
//! worker so that requests queue for the CPU instead of fighting over it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use headhunt_engine::hooks::KeyRow;
use headhunt_engine::{Capture, HookPoint, Hooks, Model, Positions, RunOptions};
use serde::Serialize;
use serde_json::{json, Value};

use super::runs::{read_json, read_records};
use crate::experiments::grounding::{copies_token, GroundedStep, Grounder};
use crate::experiments::retrieval::masking::{head_label, parse_heads, random_heads, top_heads, Head, MaskHow, MaskModeArg, PhaseArg};
use crate::experiments::retrieval::niah::grid::Grid;
use crate::experiments::retrieval::niah::trial::{Condition, TrialRecord, TrialRunner};
use crate::experiments::retrieval::HeadScores;
use crate::runner::store::SETTINGS_FILE;

/// Most interventions waiting at once; more are refused until the queue drains.
const MAX_QUEUED: usize = 16;
/// Finished jobs kept for their pages to read.
const KEEP_FINISHED: usize = 200;
/// Layers of recomputed attention kept (each: a trial's answer steps x heads x keys).
const KEEP_PATTERNS: usize = 4;

/// A run folder of NIAH trials, ready to rebuild any of its prompts.
pub struct RunView {
    pub dir: PathBuf,
    pub settings: Value,
    pub runner: TrialRunner<'static>,
    /// The run's own retrieval scores (a detection run's), or those its masks were chosen from.
    pub scores: Option<HeadScores>,
    /// The masks the run's trials ran under.
    pub condition: Condition,
}

/// One trial, as the trial page shows it.
pub struct TrialView {
    pub record: TrialRecord,
    pub prompt: Vec<u32>,
}

impl RunView {
    pub fn trial(&self, key: &str) -> Result<TrialView> {
        let record = read_records::<TrialRecord>(&self.dir)
            .into_iter()
            .find(|r| r.spec.key() == key)
            .with_context(|| format!("the run has no trial {key}"))?;
        let prompt = self.runner.prompt(&record.spec)?.ids;
        if prompt.len() != record.prompt_tokens {
            bail!(
                "trial {key}'s prompt rebuilds to {} tokens, but the run recorded {}: its haystack or needles changed since",
                prompt.len(),
                record.prompt_tokens
            );
        }
        Ok(TrialView { record, prompt })
    }
}

/// What an intervention asks for.
#[derive(Debug, Clone)]
pub struct InterventionRequest {
    pub run: PathBuf,
    pub trial: String,
    pub heads: Vec<Head>,
    pub how: MaskHow,
}

impl InterventionRequest {
    /// From the JSON a page posts: `{run, trial, heads: "L-H,..."}`, or `top: K` / `random: K`
    /// (with `seed`) from the run's scores; `mode` (uniform, zero, mean) and `phase` (all,
    /// decode).
    pub fn parse(body: &Value, run: PathBuf, view: &RunView) -> Result<Self> {
        let trial = body["trial"].as_str().context("give the trial's key")?.to_owned();
        let k = |name: &str| body[name].as_u64().map(|k| k as usize);
        let scores = || view.scores.as_ref().context("this run has no retrieval scores to pick heads from");
        let heads = match (body["heads"].as_str(), k("top"), k("random")) {
            (Some(list), None, None) => parse_heads(list)?,
            (None, Some(k), None) => top_heads(scores()?, k),
            (None, None, Some(k)) => random_heads(scores()?, k, body["seed"].as_u64().unwrap_or(0))?,
            _ => bail!("give one of heads, top and random"),
        };
        if heads.is_empty() {
            bail!("no heads chosen");
        }
        let c = &view.runner.model.config;
        if let Some(&h) = heads.iter().find(|h| h.0 >= c.n_layers || h.1 >= c.n_heads) {
            bail!(
                "head {} does not exist ({} layers x {} heads)",
                head_label(h),
                c.n_layers,
                c.n_heads
            );
        }
        let text = |name: &str, default: &str| body[name].as_str().unwrap_or(default).to_owned();
        let how = MaskHow {
            mode: serde_json::from_value(json!(text("mode", "uniform"))).context("mode: uniform, zero or mean")?,
            phase: serde_json::from_value(json!(text("phase", "all"))).context("phase: all or decode")?,
        };
        Ok(InterventionRequest { run, trial, heads, how })
    }
}

/// Where a queued job stands.
#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    pub id: u64,
    /// queued, running, done or failed.
    pub state: &'static str,
    pub run: String,
    pub trial: String,
    pub heads: Vec<String>,
    /// The answer so far, while it is written.
    pub text: String,
    pub result: Option<Value>,
    pub error: Option<String>,
}

enum Work {
    Intervene(InterventionRequest),
    Attention {
        view: Arc<RunView>,
        trial: String,
        layer: usize,
        reply: mpsc::Sender<Result<Arc<LayerPatterns>>>,
    },
}

struct Job {
    id: u64,
    work: Work,
}

/// A trial's attention at one layer, at each answer step: what the heat strips show.
pub struct LayerPatterns {
    pub prompt_len: usize,
    /// Per answer step, the pattern row of the query that chose that step's token.
    pub rows: Vec<KeyRow>,
}

/// A run folder, a trial's key and a layer.
type PatternKey = (PathBuf, String, usize);

/// The model, the run folders it has read, and the queue of work for it.
pub struct Engine {
    pub model: &'static Model,
    views: Mutex<HashMap<PathBuf, Arc<RunView>>>,
    queue: Mutex<VecDeque<Job>>,
    wake: Condvar,
    jobs: Mutex<BTreeMap<u64, JobStatus>>,
    next_id: Mutex<u64>,
    patterns: Mutex<VecDeque<(PatternKey, Arc<LayerPatterns>)>>,
    stopping: Mutex<bool>,
}

impl Engine {
    /// The server's engine over `model`, which lives as long as the process: a server loads one
    /// model and every request thread borrows it.
    pub fn new(model: Model) -> Arc<Engine> {
        Arc::new(Engine {
            model: Box::leak(Box::new(model)),
            views: Mutex::default(),
            queue: Mutex::default(),
            wake: Condvar::new(),
            jobs: Mutex::default(),
            next_id: Mutex::new(1),
            patterns: Mutex::default(),
            stopping: Mutex::new(false),
        })
    }

    /// The model's name as run folders record it.
    pub fn model_name(&self) -> String {
        self.model.source.name.clone().unwrap_or_else(|| {
            self.model
                .source
                .path
                .file_stem()
                .map_or_else(String::new, |s| s.to_string_lossy().into_owned())
        })
    }

    /// A NIAH run folder, read once: its grid rebuilt from `run.json`, checked to be this
    /// model's.
    pub fn view(&self, dir: &Path) -> Result<Arc<RunView>> {
        if let Some(v) = self.views.lock().unwrap().get(dir) {
            return Ok(v.clone());
        }
        let settings = read_json(&dir.join(SETTINGS_FILE)).context("the folder holds no run.json")?;
        if !super::runs::is_niah(&settings) {
            bail!("this run's records are not needle-in-a-haystack trials");
        }
        let c = &self.model.config;
        if settings["n_layers"].as_u64().is_some_and(|n| n as usize != c.n_layers)
            || settings["n_heads"].as_u64().is_some_and(|n| n as usize != c.n_heads)
        {
            bail!("this run is of another model than the server's ({})", self.model_name());
        }
        let run_model = read_json(&dir.join("model.json")).and_then(|m| m["name"].as_str().map(str::to_owned));
        if run_model.as_ref().is_some_and(|n| *n != self.model_name()) {
            bail!(
                "this run is of {}, the server runs {}: start `headhunt serve --model` with the run's model to look inside it",
                run_model.unwrap_or_default(),
                self.model_name()
            );
        }
        let grid = Grid::of_settings(&settings)?;
        let runner = TrialRunner::new(self.model, grid.needles.clone(), &grid.haystack, grid.chat, grid.max_length())?;
        let scores = HeadScores::load(&dir.join("head_scores.json")).ok();
        let masked = settings["condition"]["masked_heads"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","))
            .unwrap_or_default();
        let how = MaskHow {
            mode: serde_json::from_value(settings["condition"]["mask_mode"].clone()).unwrap_or(MaskModeArg::Uniform),
            phase: serde_json::from_value(settings["condition"]["mask_phase"].clone()).unwrap_or(PhaseArg::All),
        };
        let condition = Condition {
            interventions: how.interventions(self.model, &parse_heads(&masked)?, runner.reference_tokens(2048))?,
            ..Default::default()
        };
        let view = Arc::new(RunView {
            dir: dir.to_owned(),
            settings,
            runner,
            scores,
            condition,
        });
        self.views.lock().unwrap().insert(dir.to_owned(), view.clone());
        Ok(view)
    }

    fn next_id(&self) -> u64 {
        let mut n = self.next_id.lock().unwrap();
        *n += 1;
        *n - 1
    }

    fn push(&self, job: Job) {
        self.queue.lock().unwrap().push_back(job);
        self.wake.notify_all();
    }

    /// Queue an intervention; its id, or why it cannot be queued now.
    pub fn submit(&self, request: InterventionRequest, run_name: String) -> Result<u64> {
        let queued = self.queue.lock().unwrap().len();
        if queued >= MAX_QUEUED {
            bail!("{queued} jobs are waiting; try again when they are done");
        }
        let id = self.next_id();
        let status = JobStatus {
            id,
            state: "queued",
            run: run_name,
            trial: request.trial.clone(),
            heads: request.heads.iter().map(|&h| head_label(h)).collect(),
            text: String::new(),
            result: None,
            error: None,
        };
        {
            let mut jobs = self.jobs.lock().unwrap();
            jobs.insert(id, status);
            while jobs.len() > KEEP_FINISHED {
                let oldest = *jobs.keys().next().expect("non-empty");
                jobs.remove(&oldest);
            }
        }
        self.push(Job {
            id,
            work: Work::Intervene(request),
        });
        Ok(id)
    }

    /// A job's status and its place in the queue (1: next), if it is known.
    pub fn status(&self, id: u64) -> Option<(JobStatus, Option<usize>)> {
        let status = self.jobs.lock().unwrap().get(&id).cloned()?;
        let place = self.queue.lock().unwrap().iter().position(|j| j.id == id).map(|p| p + 1);
        Some((status, place))
    }

    pub fn queued(&self) -> usize {
        self.queue.lock().unwrap().len()
    }

    /// A trial's attention at `layer` for every answer step, recomputed (or kept from before):
    /// waits its turn in the queue.
    pub fn attention(&self, view: Arc<RunView>, trial: &str, layer: usize) -> Result<Arc<LayerPatterns>> {
        let key = (view.dir.clone(), trial.to_owned(), layer);
        if let Some((_, p)) = self.patterns.lock().unwrap().iter().find(|(k, _)| *k == key) {
            return Ok(p.clone());
        }
        let (reply, answer) = mpsc::channel();
        self.push(Job {
            id: self.next_id(),
            work: Work::Attention {
                view,
                trial: trial.to_owned(),
                layer,
                reply,
            },
        });
        let patterns = answer.recv().context("the server is stopping")??;
        let mut kept = self.patterns.lock().unwrap();
        kept.push_back((key, patterns.clone()));
        while kept.len() > KEEP_PATTERNS {
            kept.pop_front();
        }
        Ok(patterns)
    }

    pub fn stop(&self) {
        *self.stopping.lock().unwrap() = true;
        self.wake.notify_all();
    }

    /// The worker's loop: one job at a time until [`Engine::stop`].
    pub fn work(self: &Arc<Self>) {
        loop {
            let job = {
                let mut queue = self.queue.lock().unwrap();
                loop {
                    if *self.stopping.lock().unwrap() {
                        return;
                    }
                    if let Some(job) = queue.pop_front() {
                        break job;
                    }
                    queue = self.wake.wait(queue).unwrap();
                }
            };
            match job.work {
                Work::Attention { view, trial, layer, reply } => {
                    let _ = reply.send(recompute_attention(self.model, &view, &trial, layer).map(Arc::new));
                }
                Work::Intervene(request) => self.intervene(job.id, request),
            }
        }
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut JobStatus)) {
        if let Some(s) = self.jobs.lock().unwrap().get_mut(&id) {
            f(s);
        }
    }

    fn intervene(&self, id: u64, request: InterventionRequest) {
        self.update(id, |s| s.state = "running");
        let outcome = (|| -> Result<Value> {
            let view = self.view(&request.run)?;
            let original = view.trial(&request.trial)?;
            let condition = Condition {
                interventions: request
                    .how
                    .interventions(self.model, &request.heads, view.runner.reference_tokens(2048))?,
                ..Default::default()
            };
            let tok = self.model.tokenizer()?;
            let start = Instant::now();
            let record = view.runner.run_watching(&original.record.spec, &condition, &mut |ids| {
                let text = tok.decode(ids, true).unwrap_or_default();
                self.update(id, |s| s.text = text);
            })?;
            let text = tok.decode(&record.generated, true)?;
            self.update(id, |s| s.text = text);
            let support = |r: &TrialRecord| view.scores.as_ref().and_then(|s| support(s, &original.prompt, r));
            Ok(json!({
                "answer": record.answer,
                "rouge1": record.rouge1,
                "support": support(&record),
                "seconds": start.elapsed().as_secs_f64(),
                "original": {
                    "answer": original.record.answer,
                    "rouge1": original.record.rouge1,
                    "support": support(&original.record),
                },
                "mask": {"heads": request.heads.iter().map(|&h| head_label(h)).collect::<Vec<_>>(), "mode": request.how.mode, "phase": request.how.phase},
            }))
        })();
        self.update(id, |s| match outcome {
            Ok(v) => {
                s.state = "done";
                s.result = Some(v);
            }
            Err(e) => {
                s.state = "failed";
                s.error = Some(format!("{e:#}"));
            }
        });
    }
}

/// The retrieval heads' support of an answer (the weighted share of the heads above 0.1 that
/// copy each token from the prompt, averaged over the answer's steps); None without such heads.
pub fn support(scores: &HeadScores, prompt: &[u32], record: &TrialRecord) -> Option<f64> {
    let grounder = Grounder::from_scores(scores).ok()?;
    let steps: Vec<f64> = record
        .generated
        .iter()
        .zip(&record.argmax)
        .map(|(&token, argmax)| {
            let step = GroundedStep {
                token,
                logprob: 0.0,
                mass: Vec::new(),
                argmax: argmax.clone(),
            };
            grounder.support(prompt, &step)
        })
        .collect();
    (!steps.is_empty()).then(|| steps.iter().sum::<f64>() / steps.len() as f64)
}

/// Per answer step, the query heads whose attention argmax lies on a prompt token equal to the
/// token the step chose: the heads that copied it.
pub fn copying_heads(prompt: &[u32], record: &TrialRecord) -> Vec<Vec<usize>> {
    record
        .generated
        .iter()
        .zip(&record.argmax)
        .map(|(&token, argmax)| {
            argmax
                .iter()
                .enumerate()
                .filter(|&(_, &key)| copies_token(prompt, key, token))
                .map(|(h, _)| h)
                .collect()
        })
        .collect()
}

/// The trial's prompt and answer run again in one pass under the run's own masks, through the
/// layers up to `layer` only, with its full attention captured at each query that chose an
/// answer token.
fn recompute_attention(model: &Model, view: &RunView, trial: &str, layer: usize) -> Result<LayerPatterns> {
    if layer >= model.config.n_layers {
        bail!("layer {layer} does not exist ({} layers)", model.config.n_layers);
    }
    let t = view.trial(trial)?;
    let steps = t.record.generated.len();
    if steps == 0 {
        bail!("the trial's answer is empty");
    }
    let n = t.prompt.len();
    let mut tokens = t.prompt.clone();
    tokens.extend_from_slice(&t.record.generated[..steps - 1]);
    let positions: Vec<usize> = (n - 1..n - 1 + steps).collect();
    let hooks = Hooks {
        interventions: view.condition.interventions.clone(),
        ..Default::default()
    }
    .capture(Capture::new(HookPoint::Pattern(layer), Positions::At(positions)));
    let mut run = model.run(
        hooks,
        RunOptions {
            capacity: tokens.len(),
            stop_at_layer: Some(layer + 1),
            ..Default::default()
        },
    )?;
    run.prefill(&tokens)?;
    let mut rows = run.recording.patterns.remove(&layer).unwrap_or_default();
    rows.sort_by_key(|r| r.position);
    Ok(LayerPatterns { prompt_len: n, rows })
}

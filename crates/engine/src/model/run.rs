//! A run: one sequence's KV cache, hooks and recording, fed a prompt in chunks and then one token
//! at a time; greedy generation on top.

use super::{Model, RunOptions};
use crate::error::{Error, Result};
use crate::hooks::{CompiledHooks, Hooks, Phase, Recording, Step};
use crate::kv_cache::KvCache;

impl Model {
    /// Start a run: an empty KV cache, hooks compiled against this model.
    pub fn run(&self, hooks: Hooks, options: RunOptions) -> Result<Run<'_>> {
        let plan = CompiledHooks::new(hooks, &self.config)?;
        let policies = self.kv_policies(options.kv_policy.as_deref())?;
        let chunk = options.prefill_chunk.max(1);
        let store = self.kv_store();
        Ok(Run {
            model: self,
            plan,
            cache: if options.keep_windows {
                KvCache::keeping_windows(&policies, self.config.d_head, options.capacity, store)
            } else {
                KvCache::new(&policies, self.config.d_head, options.capacity, chunk, store)
            },
            recording: Recording::default(),
            tokens: Vec::new(),
            chunk,
            layers: options.stop_at_layer.map_or(self.config.n_layers, |l| l.min(self.config.n_layers)),
        })
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
        let mut cache = KvCache::new(
            &self.cache.policies(),
            self.model.config.d_head,
            capacity,
            self.chunk,
            self.cache.store(),
        );
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

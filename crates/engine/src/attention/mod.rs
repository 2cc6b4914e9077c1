//! Causal attention over the KV cache in tiles, with an online softmax.
//!
//! Work is cut into tasks of one key/value head, a block of query positions, and a share of the
//! key tiles. A task takes every query head that shares its key/value head at once (grouped-query
//! attention), so each key and value tile is read once for the whole group. A running maximum
//! and sum per row replace the full softmax, so memory grows with the block and tile sizes,
//! never with `seq x seq`. Tiles no query of the block can see (the causal future, keys behind a
//! sliding window) are never computed; tiles every query sees skip the mask test. When there are
//! too few query blocks to occupy every thread (decoding one token), the key tiles are split
//! across tasks and the partial softmaxes merged.
//!
//! At `--precision fast` a prompt's rows multiply the f16 cache's tiles in bf16 where the CPU
//! has AVX512_BF16 (`bf16`); everything else is f32.
//!
//! The kernel also serves the hooks: a head's query can be zeroed (uniform attention), its keys
//! restricted, and chosen query rows recorded whole (`hook_pattern`) or as an argmax.

mod bf16;

use crate::hooks::{HeadHooks, KeyRow, KeySet};
use crate::kv_cache::{HeadCache, KvPolicy, KvStore, Rows, Segment};
use crate::linalg::{fast_exp, matmul_nn, matmul_t};

const KEY_TILE: usize = 128;
/// Query rows (heads x positions) a task holds at most: keeps its tiles in L2.
const TASK_ROWS: usize = 192;
/// Up to this many rows (a decoding step's query heads of one group), scores are computed key by
/// key (`scores_small`: each key read once for all rows) instead of by matrix multiply, which
/// repacks the keys for every tile.
const SMALL_ROWS: usize = 8;

pub(crate) struct AttentionLayer<'a> {
    /// Roped queries `[n, n_heads * d_head]`.
    pub q: &'a [f32],
    pub n: usize,
    /// Absolute position of the first query row.
    pub p0: usize,
    pub n_heads: usize,
    pub d_head: usize,
    pub scale: f32,
    pub softcap: Option<f32>,
    /// Per query head, a logit that joins its softmax rows as a key without a value (gpt-oss).
    pub sinks: Option<&'a [f32]>,
    /// One cache per key/value head.
    pub caches: &'a [HeadCache],
    /// Per query head, or `None` when this layer has no attention hooks.
    pub head_hooks: Option<&'a [HeadHooks]>,
    /// Absolute query positions whose whole rows are recorded.
    pub pattern_positions: &'a [usize],
    /// Absolute query positions whose scores before the softmax are recorded.
    pub score_positions: &'a [usize],
    /// Absolute query positions whose argmax is recorded.
    pub argmax_positions: &'a [usize],
    /// Absolute query positions whose attention mass on keys before `mass_split` is recorded.
    pub mass_positions: &'a [usize],
    pub mass_split: usize,
}

pub(crate) struct AttentionOutput {
    /// `[n, n_heads * d_head]`
    pub z: Vec<f32>,
    pub patterns: Vec<KeyRow>,
    pub scores: Vec<KeyRow>,
    /// (query position, argmax key position per head)
    pub argmax: Vec<(usize, Vec<u32>)>,
    /// (query position, attention mass on keys before the split per head)
    pub mass: Vec<(usize, Vec<f32>)>,
}

/// A run of at most `KEY_TILE` cached keys: segment index and row range, position range.
#[derive(Clone, Copy)]
struct Tile {
    seg: usize,
    t0: usize,
    t1: usize,
    kmin: usize,
    kmax: usize,
}

/// One key/value head, a block of query positions `r0..r1`, some of its key tiles.
struct Task<'t> {
    g: usize,
    r0: usize,
    r1: usize,
    tiles: &'t [Tile],
}

/// A task's softmax state for its rows (`head-in-group * block + position`).
struct Partial {
    m: Vec<f32>,
    l: Vec<f32>,
    acc: Vec<f32>,
    /// Largest score and its key position, per row (only when an argmax is wanted).
    best: Vec<(f32, u32)>,
    /// The part of `l` from keys before the mass split, per row (only when a mass is wanted).
    before: Vec<f32>,
}

impl Partial {
    /// Fold in the state of the next keys (`later` saw keys after `self`'s).
    fn merge(&mut self, later: Partial, dh: usize) {
        for i in 0..self.m.len() {
            let m = self.m[i].max(later.m[i]);
            if m == f32::NEG_INFINITY {
                continue;
            }
            let (a, b) = ((self.m[i] - m).exp(), (later.m[i] - m).exp());
            self.l[i] = self.l[i] * a + later.l[i] * b;
            if let (Some(x), Some(y)) = (self.before.get_mut(i), later.before.get(i)) {
                *x = *x * a + y * b;
            }
            for (x, y) in self.acc[i * dh..(i + 1) * dh].iter_mut().zip(&later.acc[i * dh..(i + 1) * dh]) {
                *x = *x * a + y * b;
            }
            self.m[i] = m;
        }
        for (x, y) in self.best.iter_mut().zip(later.best) {
            // Earlier keys win ties, as the first maximum does.
            if y.0 > x.0 {
                *x = y;
            }
        }
    }
}

impl AttentionLayer<'_> {
    fn group(&self) -> usize {
        self.n_heads / self.caches.len()
    }

    /// Query positions per block: as many as keep `group * block` rows within a task's budget.
    fn block(&self) -> usize {
        (TASK_ROWS / self.group()).clamp(1, 64)
    }

    pub fn run(&self) -> AttentionOutput {
        let (dh, nh, group, block) = (self.d_head, self.n_heads, self.group(), self.block());
        let tiles: Vec<Vec<Tile>> = self.caches.iter().map(tiles_of).collect();
        let n_blocks = self.n.div_ceil(block);
        let tasks = self.tasks(&tiles, n_blocks);
        let slots: Vec<std::sync::Mutex<Option<Partial>>> = tasks.iter().map(|_| std::sync::Mutex::new(None)).collect();
        crate::team::for_each(tasks.len(), |i| {
            let part = self.task(&tasks[i].1);
            *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(part);
        });
        let partials = tasks
            .iter()
            .zip(slots)
            .map(|((key, _), slot)| (*key, slot.into_inner().unwrap_or_else(|e| e.into_inner()).expect("every task ran")));

        // Merge each block's partials (they arrive in key order) and normalise.
        let mut z = vec![0.0; self.n * nh * dh];
        let mut merged: Vec<Option<Partial>> = (0..n_blocks * self.caches.len()).map(|_| None).collect();
        for (key, p) in partials {
            match &mut merged[key] {
                Some(acc) => acc.merge(p, dh),
                slot => *slot = Some(p),
            }
        }
        let merged: Vec<Partial> = merged.into_iter().map(|p| p.expect("every block has a task")).collect();
        let mut argmax: Vec<(usize, Vec<u32>)> = self.argmax_positions.iter().map(|&p| (p, vec![0; nh])).collect();
        let mut mass: Vec<(usize, Vec<f32>)> = self.mass_positions.iter().map(|&p| (p, vec![0.0; nh])).collect();
        for (key, part) in merged.iter().enumerate() {
            let (g, b) = (key / n_blocks, key % n_blocks);
            let (r0, r1) = (b * block, ((b + 1) * block).min(self.n));
            let bq = r1 - r0;
            for hg in 0..group {
                let h = g * group + hg;
                for r in r0..r1 {
                    let i = hg * bq + (r - r0);
                    let l = self.denominator(h, part.m[i], part.l[i]);
                    let inv = if l > 0.0 { 1.0 / l } else { 0.0 };
                    let dst = &mut z[r * nh * dh + h * dh..r * nh * dh + (h + 1) * dh];
                    dst.iter_mut().zip(&part.acc[i * dh..(i + 1) * dh]).for_each(|(d, a)| *d = a * inv);
                    if let Some(slot) = argmax.iter_mut().find(|a| a.0 == self.p0 + r) {
                        slot.1[h] = part.best[i].1;
                    }
                    if let Some(slot) = mass.iter_mut().find(|a| a.0 == self.p0 + r) {
                        slot.1[h] = part.before[i] * inv;
                    }
                }
            }
        }
        AttentionOutput {
            z,
            patterns: self
                .pattern_positions
                .iter()
                .map(|&p| self.pattern_row(p, &merged, n_blocks))
                .collect(),
            scores: self.score_positions.iter().map(|&p| self.score_row(p)).collect(),
            argmax,
            mass,
        }
    }

    /// The tasks, each with the index of the (key/value head, query block) whose partial it
    /// computes. The keys are split only when the query blocks alone cannot keep every thread
    /// busy.
    fn tasks<'t>(&self, tiles: &'t [Vec<Tile>], n_blocks: usize) -> Vec<(usize, Task<'t>)> {
        let block = self.block();
        let threads = rayon::current_num_threads().max(1);
        let splits_wanted = (2 * threads).div_ceil(n_blocks * self.caches.len()).max(1);
        let mut tasks = Vec::new();
        for (g, ts) in tiles.iter().enumerate() {
            for b in 0..n_blocks {
                let (r0, r1) = (b * block, ((b + 1) * block).min(self.n));
                let (qmin, qmax) = (self.p0 + r0, self.p0 + r1 - 1);
                let policy = self.caches[g].policy;
                // Tiles are in position order; keep those some query of the block may see.
                let visible: Vec<usize> = (0..ts.len())
                    .filter(|&i| ts[i].kmin <= qmax && tile_may_be_visible(policy, ts[i].kmin, ts[i].kmax, qmin))
                    .collect();
                let (first, last) = match (visible.first(), visible.last()) {
                    (Some(&f), Some(&l)) => (f, l + 1),
                    _ => (0, 0),
                };
                let span = &ts[first..last];
                let splits = splits_wanted.min(span.len()).max(1);
                let per = span.len().div_ceil(splits).max(1);
                let mut chunks: Vec<&[Tile]> = span.chunks(per).collect();
                if chunks.is_empty() {
                    chunks.push(&[]);
                }
                let key = g * n_blocks + b;
                tasks.extend(chunks.into_iter().map(|tiles| (key, Task { g, r0, r1, tiles })));
            }
        }
        tasks
    }

    /// Every head's probabilities at query position `p`, from its block's merged softmax state.
    fn pattern_row(&self, p: usize, merged: &[Partial], n_blocks: usize) -> KeyRow {
        let (group, block) = (self.group(), self.block());
        let r = p - self.p0;
        let b = r / block;
        let bq = ((b + 1) * block).min(self.n) - b * block;
        let mut values = vec![0.0f32; self.n_heads * (p + 1)];
        for (g, cache) in self.caches.iter().enumerate() {
            let part = &merged[g * n_blocks + b];
            for hg in 0..group {
                let h = g * group + hg;
                let i = hg * bq + (r - b * block);
                if part.l[i] > 0.0 {
                    let (m, l) = (part.m[i], self.denominator(h, part.m[i], part.l[i]));
                    let q = self.query(h, r);
                    let out = &mut values[h * (p + 1)..(h + 1) * (p + 1)];
                    for seg in cache.segments() {
                        self.for_each_score(&q, cache, seg, p, h, |kp, s| out[kp] = (s - m).exp() / l);
                    }
                }
            }
        }
        KeyRow {
            position: p,
            n_keys: p + 1,
            values,
        }
    }

    /// Every head's scores before the softmax at query position `p` (-inf on keys it cannot see).
    fn score_row(&self, p: usize) -> KeyRow {
        let group = self.group();
        let r = p - self.p0;
        let mut values = vec![f32::NEG_INFINITY; self.n_heads * (p + 1)];
        for (g, cache) in self.caches.iter().enumerate() {
            for h in g * group..(g + 1) * group {
                let q = self.query(h, r);
                let out = &mut values[h * (p + 1)..(h + 1) * (p + 1)];
                for seg in cache.segments() {
                    self.for_each_score(&q, cache, seg, p, h, |kp, s| out[kp] = s);
                }
            }
        }
        KeyRow {
            position: p,
            n_keys: p + 1,
            values,
        }
    }

    /// A row's softmax denominator from its merged state (largest score `m`, sum `l` of
    /// `exp(score - m)`): the sum, plus the head's sink where it has one.
    fn denominator(&self, h: usize, m: f32, l: f32) -> f32 {
        match self.sinks {
            Some(sinks) if l > 0.0 => l + (sinks[h] - m).exp(),
            _ => l,
        }
    }

    /// Whether this step's products with `cache` run in bf16: a prompt's rows (more than one
    /// query position; decoding stays f32) against the f16 cache of `fast`, where the CPU has
    /// AVX512_BF16. A row's numbers then depend on neither its block nor what is recorded.
    fn in_bf16(&self, cache: &HeadCache) -> bool {
        self.n > 1 && cache.store() == KvStore::F16 && bf16::available(self.d_head)
    }

    fn hooks(&self, h: usize) -> Option<&HeadHooks> {
        self.head_hooks.map(|hh| &hh[h])
    }

    /// Query head `h` at row `r`, scaled (zero when the head is masked to uniform attention).
    fn query(&self, h: usize, r: usize) -> Vec<f32> {
        let (nh, dh) = (self.n_heads, self.d_head);
        if self.hooks(h).is_some_and(|hh| hh.zero_query) {
            return vec![0.0; dh];
        }
        self.q[r * nh * dh + h * dh..r * nh * dh + (h + 1) * dh]
            .iter()
            .map(|&x| x * self.scale)
            .collect()
    }

    fn task(&self, t: &Task<'_>) -> Partial {
        let (dh, group) = (self.d_head, self.group());
        let bq = t.r1 - t.r0;
        let rows = group * bq;
        let cache = &self.caches[t.g];
        let policy = cache.policy;
        let segments = cache.segments();
        let heads: Vec<usize> = (0..group).map(|hg| t.g * group + hg).collect();
        let restricted = heads.iter().any(|&h| self.hooks(h).is_some_and(|hh| hh.keys.is_some()));
        let (qmin, qmax) = (self.p0 + t.r0, self.p0 + t.r1 - 1);
        let row_pos = |i: usize| qmin + i % bq;

        // The group's queries for this block, head-major.
        let mut qb = vec![0.0f32; rows * dh];
        for (hg, &h) in heads.iter().enumerate() {
            for r in t.r0..t.r1 {
                let i = hg * bq + (r - t.r0);
                qb[i * dh..(i + 1) * dh].copy_from_slice(&self.query(h, r));
            }
        }
        let track_argmax = self.argmax_positions.iter().any(|&p| p >= qmin && p <= qmax);
        let track_mass = self.mass_positions.iter().any(|&p| p >= qmin && p <= qmax);
        let mut part = Partial {
            m: vec![f32::NEG_INFINITY; rows],
            l: vec![0.0; rows],
            acc: vec![0.0; rows * dh],
            best: if track_argmax {
                vec![(f32::NEG_INFINITY, 0); rows]
            } else {
                Vec::new()
            },
            before: if track_mass { vec![0.0; rows] } else { Vec::new() },
        };
        let mut s = vec![0.0f32; rows * KEY_TILE];
        // A tile's keys and values in f32 when the cache stores them otherwise.
        let (mut kbuf, mut vbuf) = (Vec::new(), Vec::new());
        let mut bf16 = self.in_bf16(cache).then(|| bf16::Bf16Products::new(&qb, rows, dh));
        for tile in t.tiles {
            let seg = segments[tile.seg];
            let bk = tile.t1 - tile.t0;
            let all_visible = tile.kmax <= qmin
                && !restricted
                && match policy {
                    KvPolicy::Full => true,
                    KvPolicy::SinkWindow { sink, window } => tile.kmax < sink || qmax - tile.kmin < window,
                };
            let s = &mut s[..rows * bk];
            match (&mut bf16, seg.k) {
                (Some(b), Rows::F16(k)) => b.scores(s, &k[tile.t0 * dh..tile.t1 * dh], bk, dh),
                _ => scores(s, &qb, seg.k.f32s(tile.t0 * dh, tile.t1 * dh, &mut kbuf), rows, bk, dh),
            }
            if let Some(cap) = self.softcap {
                s.iter_mut().for_each(|x| *x = cap * (*x / cap).tanh());
            }
            if !all_visible {
                for i in 0..rows {
                    let (qp, h) = (row_pos(i), heads[i / bq]);
                    let keys = self.hooks(h).and_then(|hh| hh.keys.as_ref());
                    for j in 0..bk {
                        let kp = seg.pos[tile.t0 + j] as usize;
                        if !policy.visible(qp, kp) || keys.is_some_and(|ks| !key_allowed(ks, qp, kp)) {
                            s[i * bk + j] = f32::NEG_INFINITY;
                        }
                    }
                }
            }
            for i in 0..rows {
                let row = &mut s[i * bk..(i + 1) * bk];
                let tile_max = max(row);
                if track_argmax && tile_max > part.best[i].0 {
                    let j = row.iter().position(|&x| x == tile_max).expect("max is in the row");
                    part.best[i] = (tile_max, seg.pos[tile.t0 + j]);
                }
                let m_new = part.m[i].max(tile_max);
                if m_new == f32::NEG_INFINITY {
                    row.fill(0.0);
                    continue;
                }
                let alpha = (part.m[i] - m_new).exp();
                let sum = exp_shifted(row, m_new);
                part.l[i] = part.l[i] * alpha + sum;
                if track_mass {
                    let split = self.mass_split;
                    let before: f32 = if tile.kmax < split {
                        sum
                    } else if tile.kmin >= split {
                        0.0
                    } else {
                        (0..bk).filter(|&j| (seg.pos[tile.t0 + j] as usize) < split).map(|j| row[j]).sum()
                    };
                    part.before[i] = part.before[i] * alpha + before;
                }
                part.m[i] = m_new;
                if alpha != 1.0 {
                    part.acc[i * dh..(i + 1) * dh].iter_mut().for_each(|a| *a *= alpha);
                }
            }
            match (&mut bf16, seg.v) {
                (Some(b), Rows::F16(v)) => b.weighted_values(&mut part.acc, s, &v[tile.t0 * dh..tile.t1 * dh], bk, dh),
                _ => weighted_values(&mut part.acc, s, seg.v.f32s(tile.t0 * dh, tile.t1 * dh, &mut vbuf), rows, bk, dh),
            }
        }
        part
    }

    /// Calls `f(key position, score)` for each key of `cache`'s segment `seg` that head `h`'s
    /// query at `qp` sees, its score soft-capped where the family caps; from the numbers rounded
    /// to bf16 where the step's products are (so that a recorded row agrees with its softmax).
    fn for_each_score(&self, q: &[f32], cache: &HeadCache, seg: Segment<'_>, qp: usize, h: usize, mut f: impl FnMut(usize, f32)) {
        let dh = self.d_head;
        let keys = self.hooks(h).and_then(|hh| hh.keys.as_ref());
        let rounded = self.in_bf16(cache);
        let round = |x: &mut [f32]| {
            if rounded {
                x.iter_mut().for_each(|v| *v = half::bf16::from_f32(*v).to_f32());
            }
        };
        let mut q = q.to_vec();
        round(&mut q);
        let (mut buf, mut k) = (Vec::new(), vec![0.0f32; dh]);
        for (j, &kp) in seg.pos.iter().enumerate() {
            let kp = kp as usize;
            if !cache.policy.visible(qp, kp) || keys.is_some_and(|ks| !key_allowed(ks, qp, kp)) {
                continue;
            }
            k.copy_from_slice(seg.k.f32s(j * dh, (j + 1) * dh, &mut buf));
            round(&mut k);
            let mut s = dot(&q, &k);
            if let Some(cap) = self.softcap {
                s = cap * (s / cap).tanh();
            }
            f(kp, s);
        }
    }
}

/// A cache's rows as key tiles, in position order.
fn tiles_of(cache: &HeadCache) -> Vec<Tile> {
    let mut out = Vec::new();
    for (seg, s) in cache.segments().iter().enumerate() {
        for t0 in (0..s.pos.len()).step_by(KEY_TILE) {
            let t1 = (t0 + KEY_TILE).min(s.pos.len());
            out.push(Tile {
                seg,
                t0,
                t1,
                kmin: s.pos[t0] as usize,
                kmax: s.pos[t1 - 1] as usize,
            });
        }
    }
    out
}

/// Whether any key in `[kmin, kmax]` can be visible to a query at or after `qmin`.
fn tile_may_be_visible(policy: KvPolicy, kmin: usize, kmax: usize, qmin: usize) -> bool {
    match policy {
        KvPolicy::Full => true,
        // Keys entirely behind every query's window, and none of them a sink, are never seen.
        KvPolicy::SinkWindow { sink, window } => kmin < sink || qmin < kmax + window,
    }
}

fn key_allowed(keys: &KeySet, query: usize, key: usize) -> bool {
    match keys {
        KeySet::SelfOnly => key == query,
        KeySet::Only(v) => v.contains(&key),
    }
}

/// `s[rows, bk] = q[rows, dh] · k[bk, dh]^T`
fn scores(s: &mut [f32], q: &[f32], k: &[f32], rows: usize, bk: usize, dh: usize) {
    if rows <= SMALL_ROWS {
        scores_small(s, q, k, rows, bk, dh);
    } else {
        matmul_t(s, q, k, rows, dh, bk, false, false);
    }
}

/// [`scores`] for a few rows (decoding): every row's dot product with every key, with FMA on
/// x86-64 (eight independent sums in flight: two rows by four keys), else in plain lanes.
fn scores_small(s: &mut [f32], q: &[f32], k: &[f32], rows: usize, bk: usize, dh: usize) {
    assert!(s.len() >= rows * bk && q.len() >= rows * dh && k.len() >= bk * dh);
    #[cfg(target_arch = "x86_64")]
    if dh.is_multiple_of(8) && crate::cpu::Isa::from_env() >= crate::cpu::Isa::Avx2 {
        // SAFETY: the CPU runs AVX2 and FMA; the lengths are asserted above.
        return unsafe { x86::scores_small(s, q, k, rows, bk, dh) };
    }
    for j in 0..bk {
        let kj = &k[j * dh..(j + 1) * dh];
        for i in 0..rows {
            s[i * bk + j] = dot(&q[i * dh..(i + 1) * dh], kj);
        }
    }
}

/// `acc[rows, dh] += p[rows, bk] · v[bk, dh]`
fn weighted_values(acc: &mut [f32], p: &[f32], v: &[f32], rows: usize, bk: usize, dh: usize) {
    matmul_nn(acc, p, v, rows, bk, dh, true);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// `s[i * bk + j] = q_i · k_j`. The caller asserts the lengths; `dh` is a multiple of 8.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn scores_small(s: &mut [f32], q: &[f32], k: &[f32], rows: usize, bk: usize, dh: usize) {
        let (sp, qp, kp) = (s.as_mut_ptr(), q.as_ptr(), k.as_ptr());
        let keys4 = bk - bk % 4;
        let mut i = 0;
        while i < rows {
            let pair = i + 1 < rows;
            let (q0, q1) = (qp.add(i * dh), qp.add((i + pair as usize) * dh));
            for j in (0..keys4).step_by(4) {
                let kj = kp.add(j * dh);
                let (mut a, mut b) = ([_mm256_setzero_ps(); 4], [_mm256_setzero_ps(); 4]);
                for c in (0..dh).step_by(8) {
                    let (x0, x1) = (_mm256_loadu_ps(q0.add(c)), _mm256_loadu_ps(q1.add(c)));
                    for u in 0..4 {
                        let y = _mm256_loadu_ps(kj.add(u * dh + c));
                        a[u] = _mm256_fmadd_ps(x0, y, a[u]);
                        b[u] = _mm256_fmadd_ps(x1, y, b[u]);
                    }
                }
                _mm_storeu_ps(sp.add(i * bk + j), sum4(a));
                if pair {
                    _mm_storeu_ps(sp.add((i + 1) * bk + j), sum4(b));
                }
            }
            for j in keys4..bk {
                let kj = kp.add(j * dh);
                let (mut a, mut b) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                for c in (0..dh).step_by(8) {
                    let y = _mm256_loadu_ps(kj.add(c));
                    a = _mm256_fmadd_ps(_mm256_loadu_ps(q0.add(c)), y, a);
                    b = _mm256_fmadd_ps(_mm256_loadu_ps(q1.add(c)), y, b);
                }
                *sp.add(i * bk + j) = _mm_cvtss_f32(sum4([a, a, a, a]));
                if pair {
                    *sp.add((i + 1) * bk + j) = _mm_cvtss_f32(sum4([b, b, b, b]));
                }
            }
            i += 2;
        }
    }

    /// The lane sums of four vectors, in order.
    #[inline(always)]
    unsafe fn sum4(v: [__m256; 4]) -> __m128 {
        let h = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
        _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h))
    }
}

const LANES: usize = 16;

/// Largest element (-inf for an empty or fully masked row), in independent lanes so it
/// vectorises.
#[inline]
fn max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for t in 0..LANES {
            lanes[t] = if c[t] > lanes[t] { c[t] } else { lanes[t] };
        }
    }
    let mut m = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for v in lanes {
        m = m.max(v);
    }
    m
}

/// `row[j] = exp(row[j] - shift)` in place; returns the sum. -inf (a masked key) gives exactly 0.
#[inline]
fn exp_shifted(row: &mut [f32], shift: f32) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for t in 0..LANES {
            let e = fast_exp(c[t] - shift);
            c[t] = e;
            lanes[t] += e;
        }
    }
    let mut sum = 0.0f32;
    for x in chunks.into_remainder() {
        *x = fast_exp(*x - shift);
        sum += *x;
    }
    sum + lanes.iter().sum::<f32>()
}

/// Dot product with independent lanes, so the compiler vectorises it.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let chunks = a.len() / LANES;
    for c in 0..chunks {
        let (x, y) = (&a[c * LANES..(c + 1) * LANES], &b[c * LANES..(c + 1) * LANES]);
        for t in 0..LANES {
            lanes[t] += x[t] * y[t];
        }
    }
    let mut sum: f32 = lanes.iter().sum();
    for t in chunks * LANES..a.len() {
        sum += a[t] * b[t];
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_row_scores_are_the_dot_products() {
        let value = |i: usize| ((i * 7919 % 1013) as f32 / 1013.0) - 0.5;
        for (rows, bk, dh) in [(1, 5, 64), (3, 128, 128), (6, 130, 128), (8, 7, 256), (2, 3, 40)] {
            let q: Vec<f32> = (0..rows * dh).map(value).collect();
            let k: Vec<f32> = (0..bk * dh).map(|i| value(i + 17)).collect();
            let mut s = vec![f32::NAN; rows * bk];
            scores(&mut s, &q, &k, rows, bk, dh);
            for i in 0..rows {
                for j in 0..bk {
                    let want: f64 = (0..dh).map(|d| q[i * dh + d] as f64 * k[j * dh + d] as f64).sum();
                    let got = s[i * bk + j] as f64;
                    assert!(
                        (got - want).abs() < 1e-5,
                        "rows {rows} keys {bk} dh {dh}: s[{i}, {j}] {got} against {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn fast_exp_is_within_two_ulp() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = fast_exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 2.5e-7, "relative error {worst}");
        assert_eq!(fast_exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(fast_exp(0.0), 1.0);
        let mut row = [0.0, f32::NEG_INFINITY, -1.0];
        let sum = exp_shifted(&mut row, 0.0);
        assert_eq!(row[1], 0.0);
        assert!((sum - (1.0 + (-1.0f32).exp())).abs() < 1e-6);
        assert_eq!(max(&[1.0, 5.0, -3.0]), 5.0);
        assert_eq!(max(&(0..40).map(|i| i as f32).collect::<Vec<_>>()), 39.0);
    }
}

//! Causal attention over the KV cache in tiles, with an online softmax.
//!
//! Queries are processed in blocks of rows, keys in tiles; a running maximum and sum per row
//! replace the full softmax, so memory grows with the block and tile sizes, never with
//! `seq x seq`. Tiles that no query of a block can see (the causal future, keys behind a sliding
//! window) are skipped without being computed; tiles every query sees skip the mask test.
//!
//! The kernel also serves the hooks: a head's query can be zeroed (uniform attention), its keys
//! restricted, and chosen query rows recorded whole (`hook_pattern`) or as an argmax.

use rayon::prelude::*;

use crate::hooks::{HeadHooks, KeySet, PatternRow};
use crate::kv_cache::{HeadCache, KvPolicy, Segment};
use crate::linalg::{matmul_nn, matmul_t};

const QUERY_BLOCK: usize = 64;
const KEY_TILE: usize = 128;

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
    /// One cache per key/value head.
    pub caches: &'a [HeadCache],
    /// Per query head, or `None` when this layer has no attention hooks.
    pub head_hooks: Option<&'a [HeadHooks]>,
    /// Absolute query positions whose whole rows are recorded.
    pub pattern_positions: &'a [usize],
    /// Absolute query positions whose argmax is recorded.
    pub argmax_positions: &'a [usize],
}

pub(crate) struct AttentionOutput {
    /// `[n, n_heads * d_head]`
    pub z: Vec<f32>,
    pub patterns: Vec<PatternRow>,
    /// (query position, argmax key position per head)
    pub argmax: Vec<(usize, Vec<u32>)>,
}

/// One (head, query block) task's results.
struct BlockResult {
    head: usize,
    r0: usize,
    z: Vec<f32>,
    /// (query position, probabilities over keys 0..=position)
    patterns: Vec<(usize, Vec<f32>)>,
    argmax: Vec<(usize, u32)>,
}

impl AttentionLayer<'_> {
    pub fn run(&self) -> AttentionOutput {
        let n_blocks = self.n.div_ceil(QUERY_BLOCK);
        let tasks: Vec<(usize, usize)> = (0..self.n_heads)
            .flat_map(|h| (0..n_blocks).map(move |b| (h, b * QUERY_BLOCK)))
            .collect();
        let results: Vec<BlockResult> = tasks
            .par_iter()
            .map(|&(h, r0)| self.block(h, r0, (r0 + QUERY_BLOCK).min(self.n)))
            .collect();

        let (dh, nh) = (self.d_head, self.n_heads);
        let mut z = vec![0.0; self.n * nh * dh];
        let mut patterns: Vec<PatternRow> = self
            .pattern_positions
            .iter()
            .map(|&p| PatternRow {
                position: p,
                n_keys: p + 1,
                probs: vec![0.0; nh * (p + 1)],
            })
            .collect();
        let mut argmax: Vec<(usize, Vec<u32>)> = self.argmax_positions.iter().map(|&p| (p, vec![0; nh])).collect();
        for res in results {
            for (i, row) in res.z.chunks_exact(dh).enumerate() {
                let r = res.r0 + i;
                z[r * nh * dh + res.head * dh..r * nh * dh + (res.head + 1) * dh].copy_from_slice(row);
            }
            for (pos, probs) in res.patterns {
                let slot = patterns.iter_mut().find(|p| p.position == pos).expect("requested row");
                slot.probs[res.head * (pos + 1)..(res.head + 1) * (pos + 1)].copy_from_slice(&probs);
            }
            for (pos, key) in res.argmax {
                let slot = argmax.iter_mut().find(|a| a.0 == pos).expect("requested row");
                slot.1[res.head] = key;
            }
        }
        AttentionOutput { z, patterns, argmax }
    }

    fn block(&self, h: usize, r0: usize, r1: usize) -> BlockResult {
        let (dh, nh) = (self.d_head, self.n_heads);
        let bq = r1 - r0;
        let group = nh / self.caches.len();
        let cache = &self.caches[h / group];
        let policy = cache.policy;
        let hooks = self.head_hooks.map(|hh| &hh[h]);
        let keys = hooks.and_then(|hh| hh.keys.as_ref());
        let q_pos = |i: usize| self.p0 + r0 + i;

        // This block's queries, pre-scaled; a uniform mask zeroes them.
        let mut qb = vec![0.0f32; bq * dh];
        if !hooks.is_some_and(|hh| hh.zero_query) {
            for i in 0..bq {
                let src = &self.q[(r0 + i) * nh * dh + h * dh..(r0 + i) * nh * dh + (h + 1) * dh];
                qb[i * dh..(i + 1) * dh].iter_mut().zip(src).for_each(|(d, &s)| *d = s * self.scale);
            }
        }
        let track_argmax = self.argmax_positions.iter().any(|&p| p >= q_pos(0) && p <= q_pos(bq - 1));
        let mut best: Vec<(f32, u32)> = if track_argmax {
            vec![(f32::NEG_INFINITY, 0); bq]
        } else {
            Vec::new()
        };

        let mut m = vec![f32::NEG_INFINITY; bq];
        let mut l = vec![0.0f32; bq];
        let mut acc = vec![0.0f32; bq * dh];
        let mut s = vec![0.0f32; bq * KEY_TILE];
        let (qmin, qmax) = (q_pos(0), q_pos(bq - 1));

        for seg in cache.segments() {
            for t0 in (0..seg.pos.len()).step_by(KEY_TILE) {
                let t1 = (t0 + KEY_TILE).min(seg.pos.len());
                let bk = t1 - t0;
                let (kmin, kmax) = (seg.pos[t0] as usize, seg.pos[t1 - 1] as usize);
                if kmin > qmax {
                    break;
                }
                let all_visible = kmax <= qmin
                    && keys.is_none()
                    && match policy {
                        KvPolicy::Full => true,
                        KvPolicy::SinkWindow { sink, window } => kmax < sink || qmax - kmin < window,
                    };
                if !all_visible && !tile_may_be_visible(policy, kmin, kmax, qmin) {
                    continue;
                }
                let k_tile = &seg.k[t0 * dh..t1 * dh];
                let s = &mut s[..bq * bk];
                scores(s, &qb, k_tile, bq, bk, dh);
                if let Some(cap) = self.softcap {
                    s.iter_mut().for_each(|x| *x = cap * (*x / cap).tanh());
                }
                if !all_visible {
                    for i in 0..bq {
                        let qp = q_pos(i);
                        for j in 0..bk {
                            let kp = seg.pos[t0 + j] as usize;
                            if !policy.visible(qp, kp) || keys.is_some_and(|ks| !key_allowed(ks, qp, kp)) {
                                s[i * bk + j] = f32::NEG_INFINITY;
                            }
                        }
                    }
                }
                for i in 0..bq {
                    let row = &mut s[i * bk..(i + 1) * bk];
                    let tile_max = max(row);
                    if track_argmax && tile_max > best[i].0 {
                        let j = row.iter().position(|&x| x == tile_max).expect("max is in the row");
                        best[i] = (tile_max, seg.pos[t0 + j]);
                    }
                    let m_new = m[i].max(tile_max);
                    if m_new == f32::NEG_INFINITY {
                        row.fill(0.0);
                        continue;
                    }
                    let alpha = (m[i] - m_new).exp();
                    let sum = exp_shifted(row, m_new);
                    l[i] = l[i] * alpha + sum;
                    m[i] = m_new;
                    if alpha != 1.0 {
                        acc[i * dh..(i + 1) * dh].iter_mut().for_each(|a| *a *= alpha);
                    }
                }
                weighted_values(&mut acc, s, &seg.v[t0 * dh..t1 * dh], bq, bk, dh);
            }
        }
        for i in 0..bq {
            let inv = if l[i] > 0.0 { 1.0 / l[i] } else { 0.0 };
            acc[i * dh..(i + 1) * dh].iter_mut().for_each(|a| *a *= inv);
        }

        let mut patterns = Vec::new();
        for &p in self.pattern_positions.iter().filter(|&&p| p >= qmin && p <= qmax) {
            let i = p - qmin;
            let mut probs = vec![0.0f32; p + 1];
            if l[i] > 0.0 {
                for seg in cache.segments() {
                    self.row_probs(&mut probs, &qb[i * dh..(i + 1) * dh], seg, p, policy, keys, m[i], l[i]);
                }
            }
            patterns.push((p, probs));
        }
        let argmax = self
            .argmax_positions
            .iter()
            .filter(|&&p| p >= qmin && p <= qmax)
            .map(|&p| (p, best[p - qmin].1))
            .collect();
        BlockResult {
            head: h,
            r0,
            z: acc,
            patterns,
            argmax,
        }
    }

    /// Final probabilities of one query row over one segment's keys.
    #[allow(clippy::too_many_arguments)]
    fn row_probs(
        &self,
        probs: &mut [f32],
        q: &[f32],
        seg: Segment<'_>,
        qp: usize,
        policy: KvPolicy,
        keys: Option<&KeySet>,
        m: f32,
        l: f32,
    ) {
        let dh = self.d_head;
        for (j, &kp) in seg.pos.iter().enumerate() {
            let kp = kp as usize;
            if !policy.visible(qp, kp) || keys.is_some_and(|ks| !key_allowed(ks, qp, kp)) {
                continue;
            }
            let mut s = dot(q, &seg.k[j * dh..(j + 1) * dh]);
            if let Some(cap) = self.softcap {
                s = cap * (s / cap).tanh();
            }
            probs[kp] = (s - m).exp() / l;
        }
    }
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

/// `s[bq, bk] = q[bq, dh] · k[bk, dh]^T`
fn scores(s: &mut [f32], q: &[f32], k: &[f32], bq: usize, bk: usize, dh: usize) {
    if bq <= 4 {
        for i in 0..bq {
            let qi = &q[i * dh..(i + 1) * dh];
            for j in 0..bk {
                s[i * bk + j] = dot(qi, &k[j * dh..(j + 1) * dh]);
            }
        }
    } else {
        matmul_t(s, q, k, bq, dh, bk, false, false);
    }
}

/// `acc[bq, dh] += p[bq, bk] · v[bk, dh]`
fn weighted_values(acc: &mut [f32], p: &[f32], v: &[f32], bq: usize, bk: usize, dh: usize) {
    if bq <= 4 {
        for i in 0..bq {
            let a = &mut acc[i * dh..(i + 1) * dh];
            for j in 0..bk {
                let w = p[i * bk + j];
                if w != 0.0 {
                    a.iter_mut().zip(&v[j * dh..(j + 1) * dh]).for_each(|(a, &v)| *a += w * v);
                }
            }
        }
    } else {
        matmul_nn(acc, p, v, bq, bk, dh, true);
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

/// `e^x` to within 2 ulp, in straight-line arithmetic the compiler vectorises (Cody-Waite range
/// reduction, Cephes polynomial). Arguments below the f32 range give 0.
#[inline(always)]
fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let underflow = x < -87.336_55;
    let x = x.clamp(-87.336_55, 88.376_26);
    let n = (x * LOG2E).round_ties_even();
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let y = p * r * r + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if underflow {
        0.0
    } else {
        y * scale
    }
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

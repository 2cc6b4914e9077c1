//! The key/value cache, one store per layer and key/value head, each with its own policy.
//!
//! A `Full` head keeps every position. A `SinkWindow` head keeps the first `sink` positions and a
//! ring of the most recent ones, and its attention sees exactly those: position `j` is visible to
//! query `p` when `j <= p` and (`j < sink` or `p - j < window`). Gemma's sliding-window layers
//! are `SinkWindow { sink: 0, window: 512 }` heads; compressed caches (retrieval-aware or
//! StreamingLLM style) are the same mechanism with other sizes. The ring is allocated once at its
//! final size, so a windowed head really holds `sink + window - 1 + chunk` rows, never more.
//!
//! Keys and values are stored in f32 ([`KvStore::F32`], the reference implementation's numbers)
//! or in f16 ([`KvStore::F16`], as llama.cpp stores them by default): half the bytes to hold and,
//! in decoding, to read, converted back to f32 a tile at a time where attention reads them.

use half::f16;
use half::slice::HalfFloatSliceExt;
use serde::{Deserialize, Serialize};

/// How a cache stores its keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvStore {
    #[default]
    F32,
    F16,
}

impl KvStore {
    /// Bytes of one stored key or value element.
    pub fn element_bytes(self) -> usize {
        match self {
            KvStore::F32 => 4,
            KvStore::F16 => 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvPolicy {
    Full,
    SinkWindow { sink: usize, window: usize },
}

impl KvPolicy {
    /// Whether key position `key` is visible to query position `query` under this policy
    /// (causality included).
    #[inline]
    pub fn visible(&self, query: usize, key: usize) -> bool {
        key <= query
            && match *self {
                KvPolicy::Full => true,
                KvPolicy::SinkWindow { sink, window } => key < sink || query - key < window,
            }
    }
}

/// A contiguous run of cached rows, positions ascending.
#[derive(Clone, Copy)]
pub(crate) struct Segment<'a> {
    pub pos: &'a [u32],
    pub k: Rows<'a>,
    pub v: Rows<'a>,
}

/// Stored keys or values, `d` per row, in the cache's [`KvStore`].
#[derive(Clone, Copy)]
pub(crate) enum Rows<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

impl<'a> Rows<'a> {
    /// Values `from..to` in f32: the stored ones, or converted into `buf`.
    pub fn f32s<'b>(self, from: usize, to: usize, buf: &'b mut Vec<f32>) -> &'b [f32]
    where
        'a: 'b,
    {
        match self {
            Rows::F32(v) => &v[from..to],
            Rows::F16(v) => {
                buf.resize(to - from, 0.0);
                v[from..to].convert_to_f32_slice(buf);
                buf
            }
        }
    }

    /// The value at `i`.
    #[cfg(test)]
    pub fn at(self, i: usize) -> f32 {
        match self {
            Rows::F32(v) => v[i],
            Rows::F16(v) => v[i].to_f32(),
        }
    }
}

/// A copy of `v` with the same room: a forked run allocates what the run it came from did, and
/// grows as it would have (a plain `Vec` clone keeps only the values).
fn copy_with_room<T: Copy>(v: &Vec<T>) -> Vec<T> {
    let mut c = Vec::with_capacity(v.capacity());
    c.extend_from_slice(v);
    c
}

/// Store `x` in f16, saying once if a value left f16's range (magnitude above 65,504) and became
/// infinite: the cache at `fast` cannot hold it, as llama.cpp's default f16 cache cannot.
fn to_f16(to: &mut [f16], x: &[f32]) {
    to.convert_from_f32_slice(x);
    if to.iter().any(|h| h.is_infinite()) {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            eprintln!(
                "warning: precision fast: a cached key or value exceeds f16's range (65,504) and is stored \
                 as infinite, so attention to it is wrong; run this model exact"
            )
        });
    }
}

/// A head's keys or values, in its store.
#[derive(Debug)]
enum Values {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl Values {
    fn with_capacity(store: KvStore, n: usize) -> Self {
        match store {
            KvStore::F32 => Values::F32(Vec::with_capacity(n)),
            KvStore::F16 => Values::F16(Vec::with_capacity(n)),
        }
    }

    fn store(&self) -> KvStore {
        match self {
            Values::F32(_) => KvStore::F32,
            Values::F16(_) => KvStore::F16,
        }
    }

    fn copy(&self) -> Self {
        match self {
            Values::F32(v) => Values::F32(copy_with_room(v)),
            Values::F16(v) => Values::F16(copy_with_room(v)),
        }
    }

    fn extend(&mut self, x: &[f32]) {
        match self {
            Values::F32(v) => v.extend_from_slice(x),
            Values::F16(v) => {
                let at = v.len();
                v.resize(at + x.len(), f16::ZERO);
                to_f16(&mut v[at..], x);
            }
        }
    }

    /// Append stored values as they are (a row moved within a head keeps its bits).
    fn extend_rows(&mut self, rows: Rows<'_>, from: usize, to: usize) {
        match (self, rows) {
            (Values::F32(v), Rows::F32(r)) => v.extend_from_slice(&r[from..to]),
            (Values::F16(v), Rows::F16(r)) => v.extend_from_slice(&r[from..to]),
            _ => unreachable!("rows move only within a head, whose rows share one store"),
        }
    }

    fn overwrite(&mut self, at: usize, x: &[f32]) {
        match self {
            Values::F32(v) => v[at..at + x.len()].copy_from_slice(x),
            Values::F16(v) => to_f16(&mut v[at..at + x.len()], x),
        }
    }

    fn truncate(&mut self, n: usize) {
        match self {
            Values::F32(v) => v.truncate(n),
            Values::F16(v) => v.truncate(n),
        }
    }

    fn bytes(&self) -> usize {
        let capacity = match self {
            Values::F32(v) => v.capacity(),
            Values::F16(v) => v.capacity(),
        };
        self.store().element_bytes() * capacity
    }

    fn rows(&self, from: usize, to: usize) -> Rows<'_> {
        match self {
            Values::F32(v) => Rows::F32(&v[from..to]),
            Values::F16(v) => Rows::F16(&v[from..to]),
        }
    }
}

#[derive(Debug)]
struct HeadRows {
    pos: Vec<u32>,
    k: Values,
    v: Values,
}

/// A copy with the same room as the original (see [`copy_with_room`]).
impl Clone for HeadRows {
    fn clone(&self) -> Self {
        HeadRows {
            pos: copy_with_room(&self.pos),
            k: self.k.copy(),
            v: self.v.copy(),
        }
    }
}

impl HeadRows {
    fn with_capacity(rows: usize, d: usize, store: KvStore) -> Self {
        HeadRows {
            pos: Vec::with_capacity(rows),
            k: Values::with_capacity(store, rows * d),
            v: Values::with_capacity(store, rows * d),
        }
    }

    fn push(&mut self, pos: usize, k: &[f32], v: &[f32]) {
        self.pos.push(pos as u32);
        self.k.extend(k);
        self.v.extend(v);
    }

    /// Append row `i` of `seg` as stored.
    fn push_row(&mut self, seg: &Segment<'_>, i: usize, d: usize) {
        self.pos.push(seg.pos[i]);
        self.k.extend_rows(seg.k, i * d, (i + 1) * d);
        self.v.extend_rows(seg.v, i * d, (i + 1) * d);
    }

    fn bytes(&self) -> usize {
        4 * self.pos.capacity() + self.k.bytes() + self.v.bytes()
    }

    fn truncate(&mut self, rows: usize, d: usize) {
        self.pos.truncate(rows);
        self.k.truncate(rows * d);
        self.v.truncate(rows * d);
    }

    fn segment(&self, d: usize, from: usize, to: usize) -> Segment<'_> {
        Segment {
            pos: &self.pos[from..to],
            k: self.k.rows(from * d, to * d),
            v: self.v.rows(from * d, to * d),
        }
    }
}

/// The cache of one key/value head.
#[derive(Debug, Clone)]
pub(crate) struct HeadCache {
    pub policy: KvPolicy,
    d: usize,
    sink: HeadRows,
    /// Full: every row in order. SinkWindow: a ring of `ring_cap` rows starting at `start`.
    main: HeadRows,
    ring_cap: usize,
    start: usize,
}

impl HeadCache {
    /// `capacity`: rows a full head should reserve; `max_chunk`: the most rows appended at once.
    pub fn new(policy: KvPolicy, d: usize, capacity: usize, max_chunk: usize, store: KvStore) -> Self {
        match policy {
            KvPolicy::Full => HeadCache {
                policy,
                d,
                sink: HeadRows::with_capacity(0, d, store),
                main: HeadRows::with_capacity(capacity, d, store),
                ring_cap: usize::MAX,
                start: 0,
            },
            KvPolicy::SinkWindow { sink, window } => {
                // The ring must hold every row a chunk of queries can still see; a known total
                // length only limits what is reserved up front.
                let ring_cap = window.max(1) - 1 + max_chunk.max(1);
                let reserve = |rows: usize| if capacity == 0 { rows } else { rows.min(capacity) };
                HeadCache {
                    policy,
                    d,
                    sink: HeadRows::with_capacity(reserve(sink), d, store),
                    main: HeadRows::with_capacity(reserve(ring_cap), d, store),
                    ring_cap,
                    start: 0,
                }
            }
        }
    }

    /// A head that holds every position whatever its policy (a windowed one's attention still
    /// sees only its window): it can be truncated anywhere.
    pub fn keeping_all(policy: KvPolicy, d: usize, capacity: usize, store: KvStore) -> Self {
        HeadCache {
            policy,
            d,
            sink: HeadRows::with_capacity(0, d, store),
            main: HeadRows::with_capacity(capacity, d, store),
            ring_cap: usize::MAX,
            start: 0,
        }
    }

    pub fn push(&mut self, pos: usize, k: &[f32], v: &[f32]) {
        match self.policy {
            KvPolicy::Full => self.main.push(pos, k, v),
            _ if self.ring_cap == usize::MAX => self.main.push(pos, k, v),
            KvPolicy::SinkWindow { sink, .. } if pos < sink => self.sink.push(pos, k, v),
            KvPolicy::SinkWindow { .. } => {
                if self.main.pos.len() < self.ring_cap {
                    self.main.push(pos, k, v);
                } else {
                    let (i, d) = (self.start, self.d);
                    self.main.pos[i] = pos as u32;
                    self.main.k.overwrite(i * d, k);
                    self.main.v.overwrite(i * d, v);
                    self.start = (self.start + 1) % self.ring_cap;
                }
            }
        }
    }

    /// The cached rows as up to three position-ascending segments, oldest first.
    pub fn segments(&self) -> Vec<Segment<'_>> {
        let d = self.d;
        let mut out = Vec::with_capacity(3);
        if !self.sink.pos.is_empty() {
            out.push(self.sink.segment(d, 0, self.sink.pos.len()));
        }
        let n = self.main.pos.len();
        if self.start == 0 {
            if n > 0 {
                out.push(self.main.segment(d, 0, n));
            }
        } else {
            out.push(self.main.segment(d, self.start, n));
            out.push(self.main.segment(d, 0, self.start));
        }
        out
    }

    pub fn bytes(&self) -> usize {
        self.sink.bytes() + self.main.bytes()
    }

    /// How this head stores its keys and values.
    pub fn store(&self) -> KvStore {
        self.main.k.store()
    }

    pub fn len(&self) -> usize {
        self.sink.pos.len() + self.main.pos.len()
    }

    /// Whether [`HeadCache::truncate`] can go back to `len`: always for a full head; for a
    /// windowed one, only while its ring still holds the window before `len` (rows a later
    /// position overwrote are gone).
    pub fn can_truncate(&self, len: usize) -> bool {
        let KvPolicy::SinkWindow { sink, window } = self.policy else {
            return true;
        };
        if self.ring_cap == usize::MAX {
            return true;
        }
        // The next query, at `len`, sees keys from `len + 1 - window` on (past the sink).
        let need = (len + 1).saturating_sub(window.max(1)).max(sink);
        if need >= len {
            return true;
        }
        let n = self.main.pos.len();
        let oldest = if n == 0 {
            usize::MAX
        } else {
            self.main.pos[self.start % n] as usize
        };
        oldest <= need
    }

    /// Drop every row at position `len` or later, so that the head holds what it held after
    /// position `len - 1` was appended; [`HeadCache::can_truncate`] must allow it.
    pub fn truncate(&mut self, len: usize) {
        debug_assert!(self.can_truncate(len));
        let d = self.d;
        if let (KvPolicy::SinkWindow { .. }, false) = (self.policy, self.ring_cap == usize::MAX) {
            // The ring's rows below `len`, oldest first, become an unwrapped ring.
            let mut main = HeadRows::with_capacity(self.ring_cap.min(self.main.pos.len()), d, self.store());
            for s in self.segments().into_iter().skip(usize::from(!self.sink.pos.is_empty())) {
                for i in 0..s.pos.len() {
                    if (s.pos[i] as usize) < len {
                        main.push_row(&s, i, d);
                    }
                }
            }
            self.main = main;
            self.start = 0;
        }
        // HeadRows in position order: keep those below `len`.
        for rows in [&mut self.sink, &mut self.main] {
            let keep = rows.pos.partition_point(|&p| (p as usize) < len);
            rows.truncate(keep, d);
        }
    }

    /// A copy holding only the rows at the positions `keep` (ascending; positions the head does
    /// not hold are ignored), with room for exactly `extra` more: token selection after a prefill
    /// (SnapKV and its kin). The kept keys stay at their positions; a windowed head's attention
    /// still sees only its window. From then on the head holds what it is given and appends
    /// (a ring no longer wraps, so rows are never overwritten and the bytes stay what was kept).
    pub fn retained(&self, keep: &[u32], extra: usize) -> HeadCache {
        let d = self.d;
        let kept: usize = self
            .segments()
            .iter()
            .map(|s| s.pos.iter().filter(|p| keep.binary_search(p).is_ok()).count())
            .sum();
        let mut main = HeadRows::with_capacity(kept + extra, d, self.store());
        for s in self.segments() {
            for (i, p) in s.pos.iter().enumerate() {
                if keep.binary_search(p).is_ok() {
                    main.push_row(&s, i, d);
                }
            }
        }
        HeadCache {
            policy: self.policy,
            d,
            sink: HeadRows::with_capacity(0, d, self.store()),
            main,
            ring_cap: usize::MAX,
            start: 0,
        }
    }

    /// The positions the head holds, ascending.
    pub fn positions(&self) -> Vec<u32> {
        self.segments().iter().flat_map(|s| s.pos.iter().copied()).collect()
    }

    /// Size a windowed head's ring for `n` rows appended at once: `window - 1 + n` rows, all of
    /// which the next queries may see. Decoding (n = 1) shrinks a ring a long prefill chunk
    /// had widened back to the window itself, releasing the memory.
    pub fn fit_ring(&mut self, n: usize) {
        let KvPolicy::SinkWindow { window, .. } = self.policy else { return };
        if self.ring_cap == usize::MAX {
            return;
        }
        let want = window.max(1) - 1 + n.max(1);
        if want == self.ring_cap {
            return;
        }
        // Keep the newest rows, in position order, within the new size.
        let d = self.d;
        let rows: Vec<(Segment<'_>, usize)> = self
            .segments()
            .into_iter()
            .skip(usize::from(!self.sink.pos.is_empty()))
            .flat_map(|s| (0..s.pos.len()).map(move |i| (s, i)))
            .collect();
        let keep = &rows[rows.len().saturating_sub(want)..];
        let mut main = HeadRows::with_capacity(want, d, self.store());
        for (s, i) in keep {
            main.push_row(s, *i, d);
        }
        self.main = main;
        self.ring_cap = want;
        self.start = 0;
    }
}

/// Every layer's caches.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub(crate) layers: Vec<Vec<HeadCache>>,
}

impl KvCache {
    pub(crate) fn new(policies: &[Vec<KvPolicy>], d_head: usize, capacity: usize, max_chunk: usize, store: KvStore) -> Self {
        KvCache {
            layers: policies
                .iter()
                .map(|heads| {
                    heads
                        .iter()
                        .map(|&p| HeadCache::new(p, d_head, capacity, max_chunk, store))
                        .collect()
                })
                .collect(),
        }
    }

    /// A cache whose heads hold every position (see [`HeadCache::keeping_all`]).
    pub(crate) fn keeping_windows(policies: &[Vec<KvPolicy>], d_head: usize, capacity: usize, store: KvStore) -> Self {
        KvCache {
            layers: policies
                .iter()
                .map(|heads| heads.iter().map(|&p| HeadCache::keeping_all(p, d_head, capacity, store)).collect())
                .collect(),
        }
    }

    /// How the keys and values are stored.
    pub fn store(&self) -> KvStore {
        self.layers.iter().flatten().next().map_or(KvStore::F32, HeadCache::store)
    }

    /// Size every windowed ring for `n` rows appended at once (see [`HeadCache::fit_ring`]).
    pub(crate) fn fit_rings(&mut self, n: usize) {
        self.layers.iter_mut().flatten().for_each(|h| h.fit_ring(n));
    }

    /// Bytes allocated for keys, values and their positions, all layers and heads.
    pub fn bytes(&self) -> usize {
        self.layers.iter().flatten().map(HeadCache::bytes).sum()
    }

    /// HeadRows currently held by each layer's heads.
    pub fn rows(&self) -> Vec<Vec<usize>> {
        self.layers.iter().map(|l| l.iter().map(HeadCache::len).collect()).collect()
    }

    /// Forget every position from `len` on (see `HeadCache::truncate`); false, and nothing
    /// changed, when a windowed head no longer holds what the positions from `len` would see.
    pub fn truncate(&mut self, len: usize) -> bool {
        let possible = self.layers.iter().flatten().all(|h| h.can_truncate(len));
        if possible {
            self.layers.iter_mut().flatten().for_each(|h| h.truncate(len));
        }
        possible
    }

    /// Keep, in each layer's each key/value head, only the positions `keep[layer][head]`
    /// (ascending), with room for `extra` more rows each (see `HeadCache::retained`).
    pub fn retain(&mut self, keep: &[Vec<Vec<u32>>], extra: usize) {
        *self = self.retained(keep, extra);
    }

    /// A copy holding only `keep` (see [`KvCache::retain`]).
    pub fn retained(&self, keep: &[Vec<Vec<u32>>], extra: usize) -> KvCache {
        KvCache {
            layers: self
                .layers
                .iter()
                .zip(keep)
                .map(|(heads, keeps)| heads.iter().zip(keeps).map(|(h, k)| h.retained(k, extra)).collect())
                .collect(),
        }
    }

    /// The positions each layer's heads hold, ascending.
    pub fn positions(&self) -> Vec<Vec<Vec<u32>>> {
        self.layers.iter().map(|l| l.iter().map(HeadCache::positions).collect()).collect()
    }

    pub fn policies(&self) -> Vec<Vec<KvPolicy>> {
        self.layers.iter().map(|l| l.iter().map(|h| h.policy).collect()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_sink_and_recent_window() {
        let (sink, window, chunk) = (2, 4, 3);
        // A capacity hint smaller than the sequence must not shrink the window.
        let mut h = HeadCache::new(KvPolicy::SinkWindow { sink, window }, 1, 5, chunk, KvStore::F32);
        for p in 0..20 {
            h.push(p, &[p as f32], &[-(p as f32)]);
        }
        let kept: Vec<u32> = h.segments().iter().flat_map(|s| s.pos.iter().copied()).collect();
        // sink 0,1 then the last window - 1 + chunk = 6 positions, ascending.
        assert_eq!(kept, vec![0, 1, 14, 15, 16, 17, 18, 19]);
        for s in h.segments() {
            for (i, &p) in s.pos.iter().enumerate() {
                assert_eq!(s.k.at(i), p as f32);
                assert_eq!(s.v.at(i), -(p as f32));
            }
        }
        assert_eq!(h.len(), 8);
        let fresh = HeadCache::new(KvPolicy::SinkWindow { sink, window }, 1, 0, chunk, KvStore::F32);
        assert_eq!(fresh.bytes(), 4 * 3 * 8, "sink + ring reserved exactly");
        // Decoding one row at a time needs only the window: the ring shrinks and keeps the
        // newest rows.
        h.fit_ring(1);
        let kept: Vec<u32> = h.segments().iter().flat_map(|s| s.pos.iter().copied()).collect();
        assert_eq!(kept, vec![0, 1, 16, 17, 18, 19]);
        assert_eq!(h.bytes(), 4 * 3 * (2 + 4));
        h.push(20, &[20.0], &[-20.0]);
        let kept: Vec<u32> = h.segments().iter().flat_map(|s| s.pos.iter().copied()).collect();
        assert_eq!(kept, vec![0, 1, 17, 18, 19, 20]);
    }

    #[test]
    fn truncation_returns_to_an_earlier_state() {
        let (sink, window, chunk) = (2, 4, 3);
        let policies = [KvPolicy::Full, KvPolicy::SinkWindow { sink, window }];
        let kept = |h: &HeadCache| -> Vec<u32> { h.segments().iter().flat_map(|s| s.pos.iter().copied()).collect() };
        for policy in policies {
            // Fed 0..10 in chunks of 3, then truncated to 8: what feeding 0..8 leaves (a ring
            // may hold more old rows than that, never fewer of the ones position 8 sees).
            let mut a = HeadCache::new(policy, 1, 16, chunk, KvStore::F32);
            let mut b = a.clone();
            for p in 0..10 {
                a.push(p, &[p as f32], &[-(p as f32)]);
            }
            for p in 0..8 {
                b.push(p, &[p as f32], &[-(p as f32)]);
            }
            assert!(a.can_truncate(8), "{policy:?}");
            a.truncate(8);
            let (ka, kb) = (kept(&a), kept(&b));
            assert!(ka.iter().all(|&p| p < 8), "{policy:?}: {ka:?}");
            let visible = |k: &[u32]| k.iter().copied().filter(|&p| policy.visible(8, p as usize)).collect::<Vec<_>>();
            assert_eq!(visible(&ka), visible(&kb), "{policy:?}");
            for s in a.segments() {
                for (i, &p) in s.pos.iter().enumerate() {
                    assert_eq!((s.k.at(i), s.v.at(i)), (p as f32, -(p as f32)));
                }
            }
            // Appending after the cut continues in order.
            a.push(8, &[8.0], &[-8.0]);
            assert_eq!(kept(&a).last(), Some(&8));
        }
        // A ring that has moved on cannot go back past its window.
        let mut h = HeadCache::new(KvPolicy::SinkWindow { sink, window }, 1, 0, chunk, KvStore::F32);
        for p in 0..20 {
            h.push(p, &[p as f32], &[-(p as f32)]);
        }
        // Holds 0, 1 and 14..20: going back to 16 needs 13 (16 + 1 - 4), which is gone.
        assert!(!h.can_truncate(16));
        assert!(h.can_truncate(18) && h.can_truncate(2));
        let mut full = KvCache::new(
            &[vec![KvPolicy::Full, KvPolicy::SinkWindow { sink, window }]],
            1,
            0,
            chunk,
            KvStore::F32,
        );
        for l in full.layers.iter_mut() {
            for h in l.iter_mut() {
                for p in 0..20 {
                    h.push(p, &[p as f32], &[-(p as f32)]);
                }
            }
        }
        assert!(!full.truncate(16), "one head cannot, so none does");
        assert_eq!(full.rows(), vec![vec![20, 8]]);
        assert!(full.truncate(18));
        assert_eq!(full.rows(), vec![vec![18, 6]]);
    }

    #[test]
    fn retained_rows_keep_their_positions_and_bytes() {
        let d = 2;
        for policy in [KvPolicy::Full, KvPolicy::SinkWindow { sink: 2, window: 6 }] {
            let mut h = HeadCache::new(policy, d, 0, 4, KvStore::F32);
            for p in 0..20 {
                h.push(p, &[p as f32, 1.0], &[-(p as f32), 2.0]);
            }
            let held = h.positions();
            // Keep some held positions and ask for one it no longer holds (a ring's 3).
            h = h.retained(&[0, 3, 15, 17, 19], 2);
            let want: Vec<u32> = [0, 3, 15, 17, 19].into_iter().filter(|p| held.contains(p)).collect();
            assert_eq!(h.positions(), want, "{policy:?}");
            for s in h.segments() {
                for (i, &p) in s.pos.iter().enumerate() {
                    assert_eq!((s.k.at(i * d), s.v.at(i * d)), (p as f32, -(p as f32)));
                }
            }
            // Exactly the kept rows and the room asked for: keys, values and positions.
            let bytes = 4 * (want.len() + 2) * (2 * d + 1);
            assert_eq!(h.bytes(), bytes, "{policy:?}");
            h.fit_ring(1);
            h.push(20, &[20.0, 1.0], &[-20.0, 2.0]);
            h.push(21, &[21.0, 1.0], &[-21.0, 2.0]);
            assert_eq!(h.bytes(), bytes, "{policy:?}: appending within the room allocates nothing");
            assert_eq!(h.positions().last(), Some(&21));
        }
    }

    #[test]
    fn f16_store_holds_half_the_bytes_and_moves_rows_as_stored() {
        let (d, window, chunk) = (4, 6, 3);
        let row = |p: usize, sign: f32| -> Vec<f32> { (0..d).map(|j| sign * (p as f32 + 0.1 * j as f32 + 1e-4)).collect() };
        for policy in [KvPolicy::Full, KvPolicy::SinkWindow { sink: 2, window }] {
            let (mut wide, mut half) = (
                HeadCache::new(policy, d, 32, chunk, KvStore::F32),
                HeadCache::new(policy, d, 32, chunk, KvStore::F16),
            );
            for p in 0..20 {
                wide.push(p, &row(p, 1.0), &row(p, -1.0));
                half.push(p, &row(p, 1.0), &row(p, -1.0));
            }
            // Positions take 4 bytes either way; keys and values 4 against 2.
            let rows = half.len();
            assert_eq!(wide.len(), rows);
            assert_eq!(
                wide.bytes() - half.bytes(),
                2 * 2 * d * (wide.bytes() / (4 * (2 * d + 1))),
                "{policy:?}"
            );
            let rounded = |x: f32| f16::from_f32(x).to_f32();
            let check = |h: &HeadCache| {
                for s in h.segments() {
                    for (i, &p) in s.pos.iter().enumerate() {
                        for j in 0..d {
                            assert_eq!(s.k.at(i * d + j), rounded(row(p as usize, 1.0)[j]), "{policy:?}");
                            assert_eq!(s.v.at(i * d + j), rounded(row(p as usize, -1.0)[j]), "{policy:?}");
                        }
                    }
                }
            };
            check(&half);
            // Truncating, fitting the ring and retaining move rows without changing their bits.
            half.truncate(18);
            half.fit_ring(1);
            check(&half);
            let kept = half.retained(&[0, 1, 15, 16, 17], 1);
            assert_eq!(kept.positions(), vec![0, 1, 15, 16, 17]);
            check(&kept);
            let mut buf = Vec::new();
            let s = kept.segments()[0];
            assert_eq!(
                s.k.f32s(0, d, &mut buf),
                &row(0, 1.0).iter().map(|&x| rounded(x)).collect::<Vec<_>>()[..]
            );
        }
    }

    #[test]
    fn visibility() {
        let p = KvPolicy::SinkWindow { sink: 1, window: 3 };
        let seen: Vec<usize> = (0..12).filter(|&k| p.visible(10, k)).collect();
        assert_eq!(seen, vec![0, 8, 9, 10]);
        assert!(!KvPolicy::Full.visible(3, 4));
    }
}

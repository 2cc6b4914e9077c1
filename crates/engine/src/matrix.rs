//! Weight matrices kept in the checkpoint's own storage, and the products that read them.
//!
//! A [`Matrix`] holds its rows as the file stores them (GGML quant blocks, F16, BF16 or F32),
//! usually as a view into the file's memory map, so a weight occupies its stored bytes and nothing
//! more. Products read that storage through the row kernels of `kernels`:
//!
//! * one token (decoding) is a matrix-vector product over the stored rows, split across threads;
//!   it is bound by reading the weights, so reading 0.6 bytes a weight instead of 4 is the speed;
//! * several tokens (prefill) dequantise a tile of rows into an f32 buffer and multiply it with
//!   the `gemm` crate: one dequantisation per weight per call against `m` multiply-adds, so the
//!   cost is small for long prompts, and the arithmetic is the f32 product on the dequantised
//!   weights (what the reference computes).
//!
//! Rows may come from several stored tensors (a fused Q/K/V projection whose parts were
//! quantised differently) and may be read in another order than stored (llama.cpp's rotary row
//! order, un-permuted without copying).

use std::cell::RefCell;
use std::ops::Deref;
use std::sync::Arc;

use crate::cpu::Isa;
use crate::gguf::GgmlType;
use crate::kernels::{row_kernels, Precision, QVector, RowKernels, Tile, TileProduct, Tokens, Vector, TILE_ROWS};

/// Bytes of the f32 tile a multi-row product dequantises at a time: large enough for `gemm` to
/// run at full speed, small enough to stay out of the memory budget (bench/RESULTS.md).
const TILE_BYTES: usize = 4 << 20;

/// Up to this many tokens, a product is computed row by row with the dot-product kernels rather
/// than through the GEMM (measured in bench/RESULTS.md).
const ROW_DOT_TOKENS: usize = 64;

/// A matrix's stored bytes: its own, or a range of a memory-mapped checkpoint.
#[derive(Clone)]
pub enum Bytes {
    Owned(Vec<u8>),
    Mapped { map: Arc<memmap2::Mmap>, start: usize, len: usize },
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            Bytes::Mapped { map, start, len } => &map[*start..*start + *len],
        }
    }
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bytes::Owned(v) => write!(f, "Owned({} bytes)", v.len()),
            Bytes::Mapped { start, len, .. } => write!(f, "Mapped({len} bytes at {start})"),
        }
    }
}

/// Let the system drop the pages of `[start, start + len)` of a read-only map that nothing will
/// read again soon (they are read back from the file if touched).
pub(crate) fn release_range(map: &memmap2::Mmap, start: usize, len: usize) {
    const PAGE: usize = 4096;
    let (from, to) = (start.div_ceil(PAGE) * PAGE, (start + len) / PAGE * PAGE);
    if to > from {
        // SAFETY: a private read-only file map: dropped pages are re-read from the file, so no
        // reference into the map sees different bytes.
        unsafe {
            map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, from, to - from).ok();
        }
    }
}

/// Consecutive stored rows of one type.
#[derive(Clone)]
struct Part {
    rows: usize,
    dtype: GgmlType,
    row_bytes: usize,
    data: Bytes,
    kernels: RowKernels,
}

impl std::fmt::Debug for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} x {:?} ({:?})", self.rows, self.dtype, self.data)
    }
}

/// A row-major `[rows, cols]` weight matrix in its stored types.
#[derive(Clone, Debug)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    parts: Vec<Part>,
    /// Logical row `r` is stored row `order[r]` (stored rows count through the parts in order).
    order: Option<Vec<u32>>,
    precision: Precision,
}

impl Matrix {
    /// `rows` rows of `cols` values stored as `dtype` in `data`, read with `isa`'s kernels.
    pub fn new(dtype: GgmlType, rows: usize, cols: usize, data: Bytes, isa: Isa) -> Result<Self, String> {
        let kernels = row_kernels(dtype, isa).ok_or_else(|| {
            let names: Vec<String> = crate::kernels::SUPPORTED.iter().map(|t| format!("{t:?}")).collect();
            format!(
                "stored as {dtype:?}, which headhunt cannot compute with (it reads {})",
                names.join(", ")
            )
        })?;
        let (block, block_bytes) = dtype.block_layout();
        if !cols.is_multiple_of(block) {
            return Err(format!("rows of {cols} values are not whole {dtype:?} blocks of {block}"));
        }
        let row_bytes = cols / block * block_bytes;
        if rows.checked_mul(row_bytes) != Some(data.len()) {
            return Err(format!("{} bytes do not hold {rows} x {cols} values as {dtype:?}", data.len()));
        }
        Ok(Matrix {
            rows,
            cols,
            parts: vec![Part {
                rows,
                dtype,
                row_bytes,
                data,
                kernels,
            }],
            order: None,
            precision: Precision::Exact,
        })
    }

    /// An f32 matrix owning its values (for tests and synthetic models).
    pub fn from_f32(rows: usize, cols: usize, values: &[f32], isa: Isa) -> Self {
        assert_eq!(values.len(), rows * cols, "from_f32: {rows} x {cols} needs {} values", rows * cols);
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Matrix::new(GgmlType::F32, rows, cols, Bytes::Owned(bytes), isa).expect("f32 rows are always whole")
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes the weights occupy (stored blocks and the row order).
    pub fn n_bytes(&self) -> usize {
        self.parts.iter().map(|p| p.data.len()).sum::<usize>() + self.order.as_ref().map_or(0, |o| 4 * o.len())
    }

    /// The storage type of each part, in row order.
    pub fn dtypes(&self) -> Vec<GgmlType> {
        self.parts.iter().map(|p| p.dtype).collect()
    }

    /// Read with `isa`'s kernels from now on (capped at what the CPU runs).
    pub fn set_isa(&mut self, isa: Isa) {
        for p in &mut self.parts {
            p.kernels = row_kernels(p.dtype, isa).expect("the type was accepted at construction");
        }
    }

    /// Compute matrix-vector products at `precision` from now on (a matrix without fast
    /// kernels, a dense one, stays exact).
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    /// The precision its matrix-vector products run at.
    pub fn precision(&self) -> Precision {
        let fast = self.precision == Precision::Fast && self.parts.iter().all(|p| p.kernels.dot_q8.is_some());
        if fast {
            Precision::Fast
        } else {
            Precision::Exact
        }
    }

    /// Stack matrices with the same column count.
    pub fn concat_rows(matrices: Vec<Matrix>) -> Result<Self, String> {
        let cols = matrices.first().ok_or("nothing to concatenate")?.cols;
        if let Some(m) = matrices.iter().find(|m| m.cols != cols) {
            return Err(format!("cannot stack rows of {} and {cols} values", m.cols));
        }
        let rows = matrices.iter().map(|m| m.rows).sum();
        let order = matrices.iter().any(|m| m.order.is_some()).then(|| {
            let mut order = Vec::with_capacity(rows);
            let mut base = 0u32;
            for m in &matrices {
                match &m.order {
                    Some(o) => order.extend(o.iter().map(|&r| base + r)),
                    None => order.extend(base..base + m.rows as u32),
                }
                base += m.rows as u32;
            }
            order
        });
        Ok(Matrix {
            rows,
            cols,
            precision: matrices[0].precision,
            parts: matrices.into_iter().flat_map(|m| m.parts).collect(),
            order,
        })
    }

    /// Read rows in another order: row `i` becomes what row `from[i]` was. Nothing is copied.
    pub fn permute_rows(&mut self, from: &[usize]) {
        assert_eq!(from.len(), self.rows, "permute_rows: one source per row");
        let order = from.iter().map(|&f| self.order.as_ref().map_or(f as u32, |o| o[f])).collect();
        self.order = Some(order);
    }

    /// The transpose, `[cols, rows]`, as an owned copy in the same type (only for F32, F16 and
    /// BF16, whose values can be moved one by one: GPT-2's `[in, out]` Conv1D weights).
    pub fn transposed(&self) -> Result<Self, String> {
        let (dtype, width) = match self.dtypes()[..] {
            [t @ GgmlType::F32] => (t, 4),
            [t @ (GgmlType::F16 | GgmlType::BF16)] => (t, 2),
            _ => return Err(format!("cannot transpose a matrix stored as {:?}", self.dtypes())),
        };
        let mut out = vec![0u8; self.rows * self.cols * width];
        for r in 0..self.rows {
            let src = self.row_bytes(r).1;
            for c in 0..self.cols {
                let to = (c * self.rows + r) * width;
                out[to..to + width].copy_from_slice(&src[c * width..(c + 1) * width]);
            }
        }
        let mut t = Matrix::new(dtype, self.cols, self.rows, Bytes::Owned(out), Isa::Portable)?;
        t.parts[0].kernels = self.parts[0].kernels;
        Ok(t)
    }

    /// The stored bytes of logical row `r` and the part that holds them.
    #[inline]
    fn row_bytes(&self, r: usize) -> (&Part, &[u8]) {
        self.stored_row(self.order.as_ref().map_or(r, |o| o[r] as usize))
    }

    /// The bytes of stored row `s` (counting through the parts) and the part that holds them.
    #[inline]
    fn stored_row(&self, row: usize) -> (&Part, &[u8]) {
        let mut s = row;
        for p in &self.parts {
            if s < p.rows {
                return (p, &p.data[s * p.row_bytes..(s + 1) * p.row_bytes]);
            }
            s -= p.rows;
        }
        panic!("row {row} of a matrix with {} rows", self.rows)
    }

    /// Row `r`'s values.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let (p, bytes) = self.row_bytes(r);
        (p.kernels.dequantize)(bytes, &mut out[..self.cols]);
    }

    /// `sum_c W[r, c] x[c]` for each of `rows`.
    pub fn dot_rows(&self, rows: &[usize], x: &[f32]) -> Vec<f32> {
        let x = Vector::new(&x[..self.cols]);
        rows.iter()
            .map(|&r| {
                let (p, bytes) = self.row_bytes(r);
                (p.kernels.dot)(bytes, &x)
            })
            .collect()
    }

    /// All values, `[rows, cols]` (a full f32 copy: for tests and diagnostics, not the forward
    /// pass).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        self.dequantize_rows(0, &mut out);
        out
    }

    /// Rows `first..` into `out` (whole rows), split across threads.
    fn dequantize_rows(&self, first: usize, out: &mut [f32]) {
        use rayon::prelude::*;
        let per_task = (out.len() / self.cols).div_ceil(4 * rayon::current_num_threads()).max(1);
        out.par_chunks_mut(per_task * self.cols).enumerate().for_each(|(t, chunk)| {
            for (i, row) in chunk.chunks_exact_mut(self.cols).enumerate() {
                self.dequantize_row(first + t * per_task + i, row);
            }
        });
    }

    /// `out[r] = sum_c W[r, c] x[c]` for every row, split across threads.
    pub fn gemv(&self, x: &[f32], out: &mut [f32]) {
        assert!(
            x.len() >= self.cols && out.len() >= self.rows,
            "gemv: buffers smaller than the matrix"
        );
        match self.precision() {
            Precision::Exact => {
                let x = Vector::new(&x[..self.cols]);
                self.each_row(out, |p, bytes| (p.kernels.dot)(bytes, &x));
            }
            Precision::Fast => {
                let x = QVector::new(&x[..self.cols]);
                self.each_row(out, |p, bytes| (p.kernels.dot_q8.expect("precision() checked"))(bytes, &x));
            }
        }
    }

    /// `out[r] = f(row r)` for every row, split across threads. Rows are read in their stored
    /// order and the results put in place after: read in a permuted order (a llama.cpp Q/K
    /// projection's), the rows defeat the prefetchers (a 7B model's fused QKV product ran at half
    /// the speed of the other products).
    fn each_row(&self, out: &mut [f32], f: impl Fn(&Part, &[u8]) -> f32 + Sync) {
        match &self.order {
            None => self.stored_rows(&mut out[..self.rows], 1, |p, bytes, y| y[0] = f(p, bytes)),
            Some(order) => {
                let mut stored = vec![0.0f32; self.rows];
                self.stored_rows(&mut stored, 1, |p, bytes, y| y[0] = f(p, bytes));
                for (y, &s) in out.iter_mut().zip(order) {
                    *y = stored[s as usize];
                }
            }
        }
    }

    /// `f(row s, out[s * width..][..width])` for every stored row `s`, in stored order, split
    /// across threads.
    fn stored_rows(&self, out: &mut [f32], width: usize, f: impl Fn(&Part, &[u8], &mut [f32]) + Sync) {
        // A few tasks per thread: enough to balance, few enough to keep overhead small.
        let per_task = self.rows.div_ceil(4 * rayon::current_num_threads()).max(8);
        crate::team::for_each_chunk(out, per_task * width, |t, chunk| {
            for (i, ys) in chunk.chunks_exact_mut(width).enumerate() {
                let (p, bytes) = self.stored_row(t * per_task + i);
                f(p, bytes, ys);
            }
        });
    }

    /// [`Matrix::matmul`] for a few tokens: each row's dot product with every token (exact, or
    /// in integers at [`Precision::Fast`]), rows split across threads (a row is read from memory
    /// once and from cache for the other tokens). Tiles through the GEMM cost more at this size:
    /// `gemm` packs each 4 MiB tile before multiplying, which alone takes longer than the
    /// products (a 1B model's 16-token prefill took 2.0 s).
    fn matmul_by_rows(&self, out: &mut [f32], x: &[f32], m: usize) {
        let (n, k) = (self.rows, self.cols);
        let mut stored = vec![0.0f32; n * m];
        match self.precision() {
            Precision::Exact => {
                let xs: Vec<Vector> = x[..m * k].chunks_exact(k).map(Vector::new).collect();
                self.stored_rows(&mut stored, m, |p, bytes, ys| {
                    for (y, x) in ys.iter_mut().zip(&xs) {
                        *y = (p.kernels.dot)(bytes, x);
                    }
                });
            }
            Precision::Fast => {
                let xs: Vec<QVector> = x[..m * k].chunks_exact(k).map(QVector::new).collect();
                self.stored_rows(&mut stored, m, |p, bytes, ys| {
                    let dot = p.kernels.dot_q8.expect("precision() checked");
                    for (y, x) in ys.iter_mut().zip(&xs) {
                        *y = dot(bytes, x);
                    }
                });
            }
        }
        for r in 0..n {
            let s = self.order.as_ref().map_or(r, |o| o[r] as usize);
            for (t, &y) in stored[s * m..(s + 1) * m].iter().enumerate() {
                out[t * n + r] = y;
            }
        }
    }

    /// The int8 tile product of every part's rows, where the CPU has one (see `kernels::tiles`;
    /// every part runs at the same level, so their products are the same).
    fn tile_product(&self) -> Option<TileProduct> {
        let all = self
            .parts
            .iter()
            .all(|p| p.kernels.tiles.is_some() && p.kernels.tile_product.is_some());
        all.then(|| self.parts[0].kernels.tile_product).flatten()
    }

    /// [`Matrix::matmul`] at [`Precision::Fast`] for many tokens: the tokens quantised once, the
    /// rows built into int8 tiles of 16, one tile per task, each multiplied with every token
    /// into the task's scratch and written into its columns of `out`.
    fn matmul_tiles(&self, out: &mut [f32], x: &[f32], m: usize, product: TileProduct) {
        thread_local! {
            static SCRATCH: RefCell<(Tile, Vec<f32>)> = RefCell::new((Tile::default(), Vec::new()));
            static TOKENS: RefCell<Tokens> = RefCell::new(Tokens::default());
        }
        let (n, k) = (self.rows, self.cols);
        let width = self
            .parts
            .iter()
            .map(|p| p.kernels.tiles.expect("tile_product() checked").width)
            .min()
            .expect("a matrix has parts");
        let dst = crate::team::Disjoint::new(&mut out[..m * n]);
        TOKENS.with_borrow_mut(|tokens| {
            tokens.quantise(x, m, k, width);
            crate::team::for_each(n.div_ceil(TILE_ROWS), |i| {
                let r0 = i * TILE_ROWS;
                let rows = TILE_ROWS.min(n - r0);
                SCRATCH.with_borrow_mut(|(tile, ys)| {
                    tile.fill(rows, k, width, |j| {
                        let (p, bytes) = self.row_bytes(r0 + j);
                        (bytes, p.kernels.tiles.expect("checked above").unpack)
                    });
                    ys.resize(m * TILE_ROWS, 0.0);
                    product(tile, tokens, ys);
                    for (t, y) in ys.chunks_exact(TILE_ROWS).enumerate() {
                        // SAFETY: row t's columns r0 .. r0 + rows are this tile's alone.
                        let to = unsafe { dst.part(t * n + r0, rows) };
                        if rows == TILE_ROWS {
                            // A known-size copy: a `memmove` call per row cost 7%.
                            to[..TILE_ROWS].copy_from_slice(&y[..TILE_ROWS]);
                        } else {
                            to.copy_from_slice(&y[..rows]);
                        }
                    }
                });
            });
        });
    }

    /// `out[m, rows] = x[m, cols] · W^T`. One row is [`Matrix::gemv`]; up to
    /// `ROW_DOT_TOKENS` are each row's dot products; more are int8 tiles at
    /// [`Precision::Fast`] where the CPU has their instructions, and otherwise dequantise tiles
    /// of rows into f32 and multiply them with `gemm` on all threads.
    pub fn matmul(&self, out: &mut [f32], x: &[f32], m: usize) {
        let (n, k) = (self.rows, self.cols);
        assert!(out.len() >= m * n && x.len() >= m * k, "matmul: buffers smaller than their shapes");
        if m == 1 {
            return self.gemv(x, out);
        }
        if m <= ROW_DOT_TOKENS {
            return self.matmul_by_rows(out, x, m);
        }
        if self.precision() == Precision::Fast {
            match self.tile_product() {
                Some(product) => return self.matmul_tiles(out, x, m, product),
                None => note_exact_prompts(),
            }
        }
        thread_local! {
            static TILE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
        }
        let tile_rows = (TILE_BYTES / (4 * k)).clamp(16, n.max(16));
        TILE.with_borrow_mut(|tile| {
            let want = tile_rows.min(n) * k;
            if tile.len() < want {
                tile.resize(want, 0.0);
            }
            for r0 in (0..n).step_by(tile_rows) {
                let rows = tile_rows.min(n - r0);
                let w = &mut tile[..rows * k];
                self.dequantize_rows(r0, w);
                crate::linalg::matmul_t_strided(&mut out[r0..], n, x, w, m, k, rows, false, true);
            }
        });
    }
}

/// Say once that prompts run exact: the int8 products of many tokens need AVX2 (and VNNI for
/// Q8_0's full bytes).
fn note_exact_prompts() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        eprintln!(
            "note: precision fast: this CPU (or the HEADHUNT_SIMD cap) has no int8 product of many tokens for \
             some weights (they need AVX2, and AVX-512 VNNI or AVX-VNNI for Q8_0); their products in prompts \
             of more than {ROW_DOT_TOKENS} tokens run exact"
        )
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| (((i * 37 + seed * 11) % 101) as f32 - 50.0) / 25.0).collect()
    }

    #[test]
    fn products_match_the_naive_ones_on_f32() {
        // A few tokens (row by row) and more than ROW_DOT_TOKENS (through the GEMM).
        for m in [5, ROW_DOT_TOKENS + 3] {
            products_match_with(m);
        }
    }

    fn products_match_with(m: usize) {
        let (rows, cols) = (37, 48);
        let w = values(rows * cols, 1);
        let x = values(m * cols, 2);
        for isa in Isa::available() {
            let mat = Matrix::from_f32(rows, cols, &w, isa);
            let mut out = vec![0.0; m * rows];
            mat.matmul(&mut out, &x, m);
            let mut one = vec![0.0; rows];
            mat.matmul(&mut one, &x[cols..], 1);
            for i in 0..m {
                for r in 0..rows {
                    let want: f32 = (0..cols).map(|c| x[i * cols + c] * w[r * cols + c]).sum();
                    assert!((out[i * rows + r] - want).abs() < 1e-4, "{isa}: [{i}, {r}]");
                    if i == 1 {
                        assert!((one[r] - want).abs() < 1e-4, "{isa}: gemv row {r}");
                    }
                }
            }
        }
    }

    #[test]
    fn stacked_permuted_and_transposed_rows() {
        let isa = Isa::from_env();
        let a = Matrix::from_f32(2, 3, &[1., 2., 3., 4., 5., 6.], isa);
        let mut b = Matrix::from_f32(3, 3, &[7., 8., 9., 10., 11., 12., 13., 14., 15.], isa);
        b.permute_rows(&[2, 0, 1]);
        let mut m = Matrix::concat_rows(vec![a, b]).unwrap();
        assert_eq!(m.to_f32(), [1., 2., 3., 4., 5., 6., 13., 14., 15., 7., 8., 9., 10., 11., 12.]);
        m.permute_rows(&[4, 3, 2, 1, 0]);
        assert_eq!(m.to_f32(), [10., 11., 12., 7., 8., 9., 13., 14., 15., 4., 5., 6., 1., 2., 3.]);
        assert_eq!(m.dot_rows(&[1, 4], &[1., 0., 1.]), [16.0, 4.0]);
        // Products read permuted rows in their stored order and put each result in place.
        let (w, x) = (m.to_f32(), [1., 2., 3., -1., 0.5, 2.]);
        let (mut one, mut two) = ([0.0; 5], [0.0; 10]);
        m.gemv(&x[..3], &mut one);
        m.matmul(&mut two, &x, 2);
        for t in 0..2 {
            for r in 0..5 {
                let want: f32 = (0..3).map(|c| w[r * 3 + c] * x[t * 3 + c]).sum();
                assert_eq!(two[t * 5 + r], want, "token {t}, row {r}");
                if t == 0 {
                    assert_eq!(one[r], want, "row {r}");
                }
            }
        }
        let t = Matrix::from_f32(2, 3, &[1., 2., 3., 4., 5., 6.], isa).transposed().unwrap();
        assert_eq!((t.rows(), t.cols()), (3, 2));
        assert_eq!(t.to_f32(), [1., 4., 2., 5., 3., 6.]);
        assert!(Matrix::concat_rows(vec![t, m]).is_err());
    }

    #[test]
    fn bad_storage_is_refused() {
        let isa = Isa::Portable;
        let err = Matrix::new(GgmlType::Q8_1, 1, 32, Bytes::Owned(vec![0; 36]), isa).unwrap_err();
        assert!(err.contains("Q8_1") && err.contains("cannot compute"), "{err}");
        assert!(Matrix::new(GgmlType::Q8_0, 2, 32, Bytes::Owned(vec![0; 34]), isa).is_err());
        assert!(Matrix::new(GgmlType::Q4K, 1, 32, Bytes::Owned(vec![0; 144]), isa).is_err());
    }
}

//! The fast products of many tokens (prompts at [`Precision::Fast`]): weight rows repacked into
//! int8 tiles, multiplied with int8 tokens in int32.
//!
//! A tile is [`TILE_ROWS`] rows in the common form of [`Format`], made unsigned (a type whose
//! integers can be negative adds a bias, moved into the offset: `s q + m = s (q + b) + (m - s b)`)
//! and interleaved four values per row: four consecutive values of all sixteen rows fill one
//! 64-byte vector, so one `vpdpbusd` multiplies them with the same four values of a token,
//! broadcast, into sixteen int32 row sums. The sums stay in integers over a group of values
//! that shares a scale (16, or 32 where both halves of a run share theirs), then are scaled in
//! f32 once per group and token: eight integer instructions to four f32 ones for 512 products,
//! where the exact GEMM needs 32 f32 multiply-adds.
//!
//! A tile is built when a product needs it and kept only for that product (in a thread's
//! scratch), so the weights stay in the checkpoint's storage: unpacking costs ~one pass over
//! the rows per product, small against its hundreds of tokens.
//!
//! [`Precision::Fast`]: super::Precision::Fast

use super::{Format, Tokens};

/// Rows per tile: one 512-bit register holds four values of each.
pub(crate) const TILE_ROWS: usize = 16;

/// A stored row in the tiles' form: unsigned small integers, and per 16 values a scale and an
/// offset, `w = scale q + min`. `q` holds the row's values, `scale` and `min` one per 16.
pub(crate) type UnpackRow = fn(row: &[u8], q: &mut [u8], scale: &mut [f32], min: &mut [f32]);

/// The product of one tile with every token: row `i`'s with token `t` at `out[t * 16 + i]`.
pub(crate) type TileProduct = fn(tile: &Tile, x: &Tokens, out: &mut [f32]);

/// How a storage type becomes tiles: its unpacking, and how many values share a scale.
#[derive(Clone, Copy)]
pub(crate) struct TileForm {
    pub unpack: UnpackRow,
    /// 32 where both halves of every run of 32 share scale and offset, else 16.
    pub width: usize,
    /// Whether the tile bytes use all eight bits (Q8_0's), else at most six.
    pub full_bytes: bool,
}

impl TileForm {
    pub(crate) fn of<F: Format>() -> TileForm {
        TileForm {
            unpack: unpack_row::<F>,
            width: if F::PAIRED { 32 } else { 16 },
            full_bytes: F::FULL_BYTES,
        }
    }
}

fn unpack_row<F: Format>(row: &[u8], q: &mut [u8], scale: &mut [f32], min: &mut [f32]) {
    let (mut bq, mut bs, mut bm) = ([0i8; 256], [0f32; 16], [0f32; 16]);
    for (n, block) in row.chunks_exact(F::BYTES).enumerate() {
        F::unpack(block, &mut bq, &mut bs, &mut bm);
        for (o, &v) in q[n * F::BLOCK..(n + 1) * F::BLOCK].iter_mut().zip(&bq) {
            *o = (v as i32 + F::BIAS) as u8;
        }
        let groups = F::BLOCK / 16;
        for g in 0..groups {
            scale[n * groups + g] = bs[g];
            // The bias is a power of two: the offset's change is exact.
            min[n * groups + g] = bm[g] - F::BIAS as f32 * bs[g];
        }
    }
}

/// Sixteen rows, interleaved: group `g`'s values `4 j .. 4 j + 4` of row `i` at
/// `q[((g * width / 4 + j) * 16 + i) * 4..][..4]`; its scale and offset at `[g * 16 + i]`.
#[derive(Default)]
pub(crate) struct Tile {
    pub width: usize,
    pub groups: usize,
    pub q: Vec<u8>,
    pub scale: Vec<f32>,
    pub min: Vec<f32>,
    /// Whether any offset is non-zero (else the products skip them).
    pub has_min: bool,
    /// The rows in the common form, before interleaving: `[16][cols]` values, `[16][cols / 16]`
    /// scales and offsets.
    rows_q: Vec<u8>,
    rows_scale: Vec<f32>,
    rows_min: Vec<f32>,
}

impl Tile {
    /// Fill with `rows` rows of `cols` values (the rest zero), row `i` from `row(i)`: its bytes
    /// and how to unpack them. `width` must divide every row type's shared-scale width.
    pub(crate) fn fill<'a>(&mut self, rows: usize, cols: usize, width: usize, row: impl Fn(usize) -> (&'a [u8], UnpackRow)) {
        debug_assert!(rows <= TILE_ROWS && cols.is_multiple_of(32) && (width == 16 || width == 32));
        let (groups, per16) = (cols / width, cols / 16);
        self.width = width;
        self.groups = groups;
        self.q.resize(cols * TILE_ROWS, 0);
        self.scale.resize(groups * TILE_ROWS, 0.0);
        self.min.resize(groups * TILE_ROWS, 0.0);
        self.rows_q.resize(cols * TILE_ROWS, 0);
        self.rows_scale.resize(per16 * TILE_ROWS, 0.0);
        self.rows_min.resize(per16 * TILE_ROWS, 0.0);
        for i in 0..TILE_ROWS {
            let (q, scale, min) = (
                &mut self.rows_q[i * cols..(i + 1) * cols],
                &mut self.rows_scale[i * per16..(i + 1) * per16],
                &mut self.rows_min[i * per16..(i + 1) * per16],
            );
            if i < rows {
                let (bytes, unpack) = row(i);
                unpack(bytes, q, scale, min);
            } else {
                q.fill(0);
                scale.fill(0.0);
                min.fill(0.0);
            }
        }
        // Four bytes at a time: word `w` of row `i` goes to word `w * 16 + i`.
        let words = cols / 4;
        for (w, out) in self.q.chunks_exact_mut(4 * TILE_ROWS).enumerate() {
            for (i, o) in out.chunks_exact_mut(4).enumerate() {
                o.copy_from_slice(&self.rows_q[i * cols + 4 * w..][..4]);
            }
        }
        debug_assert_eq!(self.q.len(), words * 4 * TILE_ROWS);
        let step = width / 16;
        for g in 0..groups {
            for i in 0..TILE_ROWS {
                self.scale[g * TILE_ROWS + i] = self.rows_scale[i * per16 + g * step];
                self.min[g * TILE_ROWS + i] = self.rows_min[i * per16 + g * step];
            }
        }
        self.has_min = self.min.iter().any(|&m| m != 0.0);
    }
}

/// [`TileProduct`] in plain Rust, in the same order of operations as the SIMD kernels (integer
/// sums per group, then `acc += sum * (scale * d)` and `acc += min * token sum`, fused): the
/// reference the SIMD kernels are tested against.
#[cfg(test)]
pub(crate) fn product_portable(tile: &Tile, x: &Tokens, out: &mut [f32]) {
    let (w, steps) = (tile.width, tile.width / 4);
    for t in 0..x.m {
        let (q, d, sums) = x.token(t);
        for i in 0..TILE_ROWS {
            let mut acc = 0.0f32;
            for g in 0..tile.groups {
                let mut s = 0i32;
                for j in 0..steps {
                    let at = ((g * steps + j) * TILE_ROWS + i) * 4;
                    for k in 0..4 {
                        s += tile.q[at + k] as i32 * q[g * w + 4 * j + k] as i32;
                    }
                }
                let scale = tile.scale[g * TILE_ROWS + i] * d[g * w / 32];
                acc = (s as f32).mul_add(scale, acc);
                if tile.has_min {
                    acc = tile.min[g * TILE_ROWS + i].mul_add(sums[g], acc);
                }
            }
            out[t * TILE_ROWS + i] = acc;
        }
    }
}

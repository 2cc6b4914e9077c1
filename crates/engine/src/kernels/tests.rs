//! Every storage type's kernels, at every instruction-set level this CPU runs, against candle's
//! dequantisation (an independent implementation of the GGML formats) and a plain f64 product.

use super::*;
use crate::gguf::dequantize;

/// Random bytes make valid blocks once the f16 scales are tamed (a random f16 can be huge, NaN
/// or infinite).
fn random_rows(dtype: GgmlType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let (block, bb) = dtype.block_layout();
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    let f16_bytes = |v: f32| half::f16::from_f32(v).to_le_bytes();
    match dtype {
        GgmlType::F32 => (0..rows * cols)
            .flat_map(|_| ((next() % 2001) as f32 / 1000.0 - 1.0).to_le_bytes())
            .collect(),
        GgmlType::F16 => (0..rows * cols)
            .flat_map(|_| f16_bytes((next() % 2001) as f32 / 1000.0 - 1.0))
            .collect(),
        GgmlType::BF16 => (0..rows * cols)
            .flat_map(|_| half::bf16::from_f32((next() % 2001) as f32 / 1000.0 - 1.0).to_le_bytes())
            .collect(),
        GgmlType::Mxfp4 => {
            let mut data: Vec<u8> = (0..rows * cols / block * bb).map(|_| next() as u8).collect();
            // Scales 2^-9 .. 2^2 (E8M0 exponents 118..129), so that products stay finite.
            data.chunks_exact_mut(bb).for_each(|b| b[0] = 118 + (next() % 12) as u8);
            data
        }
        _ => {
            let mut data: Vec<u8> = (0..rows * cols / block * bb).map(|_| next() as u8).collect();
            let scale_at: &[usize] = match dtype {
                GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
                GgmlType::Q2K => &[80, 82],
                GgmlType::Q3K => &[108],
                GgmlType::Q6K => &[208],
                _ => &[0],
            };
            for blk in data.chunks_exact_mut(bb) {
                for &at in scale_at {
                    // Positive and negative scales of different sizes.
                    let v = (next() % 200) as f32 / 1000.0 - 0.1;
                    blk[at..at + 2].copy_from_slice(&f16_bytes(v));
                }
            }
            data
        }
    }
}

#[test]
fn every_type_at_every_level_matches_the_reference() {
    let levels = Isa::available();
    if !levels.contains(&Isa::Avx512) {
        eprintln!("note: this CPU has no AVX-512; its kernels were not tested here");
    }
    // candle has no MXFP4: `mxfp4_blocks_hold_the_ocp_values` checks it against the format.
    for dtype in SUPPORTED.into_iter().filter(|t| t.candle().is_some()) {
        let (block, _) = dtype.block_layout();
        // Dense rows of an odd length exercise the SIMD loops' tails.
        let (rows, cols) = if block == 1 { (7, 83) } else { (7, 4 * block.max(64)) };
        let data = random_rows(dtype, rows, cols, 7 + dtype as u64);
        let want = dequantize(dtype, &data, &[rows, cols]).unwrap();
        let x: Vec<f32> = (0..cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
        let row_bytes = data.len() / rows;
        for &isa in &levels {
            let k = row_kernels(dtype, isa).unwrap();
            let mut got = vec![0.0f32; cols];
            for r in 0..rows {
                let row = &data[r * row_bytes..(r + 1) * row_bytes];
                let w = &want[r * cols..(r + 1) * cols];
                (k.dequantize)(row, &mut got);
                for c in 0..cols {
                    // One rounding apart at most (scale * q + min in one FMA or two steps).
                    let tol = 2.0 * f32::EPSILON * w[c].abs().max(1e-6);
                    assert!(
                        (got[c] - w[c]).abs() <= tol,
                        "{dtype:?} {isa}: value [{r}, {c}] {} vs {}",
                        got[c],
                        w[c]
                    );
                }
                let exact: f64 = w.iter().zip(&x).map(|(&w, &x)| w as f64 * x as f64).sum();
                let scale: f64 = w.iter().zip(&x).map(|(&w, &x)| (w as f64 * x as f64).abs()).sum::<f64>().max(1e-6);
                let dot = (k.dot)(row, &Vector::new(&x)) as f64;
                assert!(
                    ((dot - exact) / scale).abs() < 1e-5,
                    "{dtype:?} {isa}: row {r} dot {dot} vs {exact}"
                );
            }
        }
    }
}

/// MXFP4 as the OCP Microscaling spec defines it: an E8M0 scale `2^(e - 127)` times E2M1
/// values {0, 0.5, 1, 1.5, 2, 3, 4, 6} with a sign bit; code j in the low nibble of byte j is
/// value j, in the high nibble value j + 16 (llama.cpp's `block_mxfp4`).
#[test]
fn mxfp4_blocks_hold_the_ocp_values() {
    const E2M1: [f32; 8] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];
    let value = |code: u8| {
        if code & 8 != 0 {
            -E2M1[(code & 7) as usize]
        } else {
            E2M1[code as usize]
        }
    };
    for e in [0u8, 1, 2, 100, 127, 130, 254] {
        let mut block = vec![e];
        // Codes 0..16 in the low nibbles, 15..0 in the high ones.
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let scale = 2f64.powi(e as i32 - 127);
        let want: Vec<f32> = (0..32u8)
            .map(|j| (value(if j < 16 { j } else { 31 - j }) as f64 * scale) as f32)
            .collect();
        for &isa in &Isa::available() {
            let mut got = vec![0.0f32; 32];
            (row_kernels(GgmlType::Mxfp4, isa).unwrap().dequantize)(&block, &mut got);
            assert_eq!(got, want, "e = {e} ({isa})");
        }
    }
}

/// MXFP4 rows at every level: the SIMD unpacking (a byte shuffle of the E2M1 codes, the E8M0
/// scale) gives the values of the OCP spec (checked above on the portable kernel) and their dot
/// product with a vector, as the other types are checked against candle.
#[test]
fn mxfp4_rows_at_every_level_match_the_spec_values() {
    let (rows, cols) = (5, 256);
    let data = random_rows(GgmlType::Mxfp4, rows, cols, 41);
    let row_bytes = data.len() / rows;
    let x: Vec<f32> = (0..cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
    let portable = row_kernels(GgmlType::Mxfp4, Isa::Portable).unwrap();
    for r in 0..rows {
        let row = &data[r * row_bytes..(r + 1) * row_bytes];
        let mut want = vec![0.0f32; cols];
        (portable.dequantize)(row, &mut want);
        let exact: f64 = want.iter().zip(&x).map(|(&w, &x)| w as f64 * x as f64).sum();
        let scale: f64 = want
            .iter()
            .zip(&x)
            .map(|(&w, &x)| (w as f64 * x as f64).abs())
            .sum::<f64>()
            .max(1e-6);
        for &isa in &Isa::available() {
            let k = row_kernels(GgmlType::Mxfp4, isa).unwrap();
            let mut got = vec![0.0f32; cols];
            (k.dequantize)(row, &mut got);
            assert_eq!(got, want, "row {r} ({isa})");
            let dot = (k.dot)(row, &Vector::new(&x)) as f64;
            assert!(((dot - exact) / scale).abs() < 1e-5, "row {r} ({isa}): dot {dot} vs {exact}");
        }
    }
}

#[test]
fn unsupported_types_have_no_kernels() {
    for dtype in [GgmlType::Q8_1, GgmlType::Q8K] {
        assert!(!supported(dtype) && row_kernels(dtype, Isa::Portable).is_none());
    }
}

/// The fast products' integer part, computed the plain way: per 16 weights `sum q qx` in i64.
fn int8_reference(dtype: GgmlType, row: &[u8], x: &QVector) -> f64 {
    let (block, bb) = dtype.block_layout();
    let (mut q, mut scale, mut min) = ([0i8; 256], [0f32; 16], [0f32; 16]);
    type Unpacker = fn(&[u8], &mut [i8; 256], &mut [f32; 16], &mut [f32; 16]);
    let unpack: Unpacker = match dtype {
        GgmlType::Q4_0 => Q4_0::unpack,
        GgmlType::Q4_1 => Q4_1::unpack,
        GgmlType::Q5_0 => Q5_0::unpack,
        GgmlType::Q5_1 => Q5_1::unpack,
        GgmlType::Q8_0 => Q8_0::unpack,
        GgmlType::Q2K => Q2K::unpack,
        GgmlType::Q3K => Q3K::unpack,
        GgmlType::Q4K => Q4K::unpack,
        GgmlType::Q5K => Q5K::unpack,
        GgmlType::Q6K => Q6K::unpack,
        GgmlType::Mxfp4 => Mxfp4::unpack,
        other => unreachable!("{other:?}"),
    };
    let mut sum = 0.0f64;
    for (n, b) in row.chunks_exact(bb).enumerate() {
        unpack(b, &mut q, &mut scale, &mut min);
        for g in 0..block / 16 {
            let at = n * block + 16 * g;
            let isum: i64 = (0..16).map(|t| q[16 * g + t] as i64 * x.q[at + t] as i64).sum();
            sum += scale[g] as f64 * x.d[at / 32] as f64 * isum as f64 + min[g] as f64 * x.sums16[at / 16] as f64;
        }
    }
    sum
}

#[test]
fn vectors_quantise_to_int8_within_half_a_step() {
    let mut x: Vec<f32> = (0..96)
        .map(|i| ((i * 53 % 97) as f32 - 48.0) / 7.0 * if i < 32 { 1.0 } else { 1e-3 })
        .collect();
    x[64..].fill(0.0); // an all-zero block has scale 0
    let q = QVector::new(&x);
    for (b, xb) in x.chunks_exact(32).enumerate() {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert_eq!(q.d[b], amax / 127.0);
        for (i, &v) in xb.iter().enumerate() {
            let back = q.d[b] * q.q[32 * b + i] as f32;
            assert!((back - v).abs() <= 0.5 * q.d[b] * 1.0001, "block {b} value {i}: {v} -> {back}");
            assert!(q.q[32 * b + i] != -128);
        }
    }
    assert!(q.q[64..].iter().all(|&v| v == 0));
}

#[test]
fn fast_products_match_integer_arithmetic_and_stay_near_f32() {
    let levels = Isa::available();
    for dtype in SUPPORTED.into_iter().filter(|t| t.block_layout().0 > 1) {
        let (block, _) = dtype.block_layout();
        let (rows, cols) = (5, 4 * block.max(64));
        let data = random_rows(dtype, rows, cols, 11 + dtype as u64);
        let w = dequantize(dtype, &data, &[rows, cols]).unwrap();
        // A vector with one outlier per block of 32, as activations have.
        let x: Vec<f32> = (0..cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0 * if i % 32 == 5 { 8.0 } else { 1.0 })
            .collect();
        let xq = QVector::new(&x);
        let row_bytes = data.len() / rows;
        let mut variants: Vec<(String, DotQ8)> = Vec::new();
        for &isa in &levels {
            match isa {
                Isa::Portable => variants.push(("portable".into(), row_kernels(dtype, isa).unwrap().dot_q8.unwrap())),
                #[cfg(target_arch = "x86_64")]
                _ => {
                    for (name, f) in x86::int8_variants(dtype, isa == Isa::Avx512) {
                        variants.push((format!("{isa}/{name}"), f));
                    }
                }
                #[cfg(not(target_arch = "x86_64"))]
                _ => {}
            }
        }
        for r in 0..rows {
            let row = &data[r * row_bytes..(r + 1) * row_bytes];
            let wr = &w[r * cols..(r + 1) * cols];
            let want = int8_reference(dtype, row, &xq);
            // The integer sums are exact; what differs is the order of the f32 scaling.
            let scale: f64 = wr.iter().zip(&x).map(|(&w, &x)| (w as f64 * x as f64).abs()).sum::<f64>().max(1e-6);
            let exact: f64 = wr.iter().zip(&x).map(|(&w, &x)| w as f64 * x as f64).sum();
            // Quantising x moves each product by at most half a step of its block.
            let bound: f64 = wr
                .iter()
                .enumerate()
                .map(|(c, &w)| (w as f64).abs() * 0.5 * xq.d[c / 32] as f64)
                .sum::<f64>();
            for (name, f) in &variants {
                let got = f(row, &xq) as f64;
                assert!(
                    ((got - want) / scale).abs() < 1e-5,
                    "{dtype:?} {name}: row {r} {got} vs integer reference {want}"
                );
                assert!(
                    (got - exact).abs() <= bound * 1.001 + 1e-5 * scale,
                    "{dtype:?} {name}: row {r} {got} vs f32 {exact} (bound {bound})"
                );
            }
        }
        eprintln!(
            "{dtype:?}: fast products checked with {}",
            variants.iter().map(|v| v.0.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
}

/// The integer products bit for bit, at their extremes: weights -128..127 (Q8_0) through the sign
/// trick, 0..63 (Q6_K's and the offset types' range) directly, vector bytes -127..127.
#[cfg(target_arch = "x86_64")]
#[test]
fn integer_products_are_exact() {
    let mut state = 99u64;
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    let mut cases: Vec<([i8; 32], [i8; 32], bool)> = vec![
        ([-128; 32], [127; 32], true),
        ([-128; 32], [-127; 32], true),
        ([63; 32], [-127; 32], false),
    ];
    for _ in 0..200 {
        let x: [i8; 32] = std::array::from_fn(|_| ((next() % 255) as i32 - 127) as i8);
        let w: [i8; 32] = std::array::from_fn(|_| next() as u8 as i8);
        let u: [i8; 32] = std::array::from_fn(|_| (next() % 64) as i8);
        cases.push((w, x, true));
        cases.push((u, x, false));
    }
    let mut seen = Vec::new();
    for (w, x, signed) in cases {
        let want: [i32; 8] = std::array::from_fn(|k| (4 * k..4 * k + 4).map(|i| w[i] as i32 * x[i] as i32).sum());
        for (name, got) in x86::run_sums(&w, &x, signed) {
            assert_eq!(got, want, "{name}: w {w:?} x {x:?}");
            if !seen.contains(&name) {
                seen.push(name);
            }
        }
    }
    eprintln!("integer products checked with {}", seen.join(", "));
}

/// The int8 tiles of prompts: the portable product against the integer reference above, and
/// every SIMD product this CPU runs against the portable one, for a full and a partial tile.
#[test]
fn tile_products_match_integer_arithmetic() {
    let (m, rows) = (11, TILE_ROWS + 5);
    let mut checked = Vec::new();
    for dtype in SUPPORTED.into_iter().filter(|t| t.block_layout().0 > 1) {
        let (block, _) = dtype.block_layout();
        let cols = 4 * block.max(64);
        let data = random_rows(dtype, rows, cols, 23 + dtype as u64);
        let row_bytes = data.len() / rows;
        let x: Vec<f32> = (0..m * cols)
            .map(|i| ((i * 41 % 103) as f32 - 51.0) / 20.0 * if i % 32 == 9 { 6.0 } else { 1.0 })
            .collect();
        let kernels = row_kernels(dtype, Isa::detected()).unwrap();
        let form = kernels.tiles.expect("quant types have tiles");
        #[cfg(target_arch = "x86_64")]
        let mut simd = x86::tile_products(Isa::detected(), form.full_bytes);
        #[cfg(not(target_arch = "x86_64"))]
        let mut simd: Vec<(&str, TileProduct)> = Vec::new();
        simd.extend(kernels.tile_product.map(|p| ("chosen", p)));
        let tokens = Tokens::new(&x, m, cols, form.width);
        let vectors: Vec<QVector> = x.chunks_exact(cols).map(QVector::new).collect();
        for (t, v) in vectors.iter().enumerate() {
            let (q, d, sums) = tokens.token(t);
            assert!(q == &v.q[..] && d == &v.d[..], "{dtype:?}: token {t} quantised differently");
            let per16: Vec<f32> = v.sums16.chunks_exact(form.width / 16).map(|c| c.iter().sum()).collect();
            assert!(sums.iter().zip(&per16).all(|(a, b)| (a - b).abs() <= 1e-5 * b.abs().max(1.0)));
        }
        let mut tile = Tile::default();
        for r0 in (0..rows).step_by(TILE_ROWS) {
            let n = TILE_ROWS.min(rows - r0);
            tile.fill(n, cols, form.width, |i| {
                (&data[(r0 + i) * row_bytes..(r0 + i + 1) * row_bytes], form.unpack)
            });
            let mut portable = vec![f32::NAN; m * TILE_ROWS];
            tiles::product_portable(&tile, &tokens, &mut portable);
            for t in 0..m {
                for i in 0..TILE_ROWS {
                    let got = portable[t * TILE_ROWS + i] as f64;
                    if i >= n {
                        assert_eq!(got, 0.0, "{dtype:?}: padding row {i}");
                        continue;
                    }
                    let row = &data[(r0 + i) * row_bytes..(r0 + i + 1) * row_bytes];
                    let want = int8_reference(dtype, row, &vectors[t]);
                    let w = dequantize(dtype, row, &[1, cols]).unwrap();
                    let xt = &x[t * cols..(t + 1) * cols];
                    let scale: f64 = w.iter().zip(xt).map(|(&w, &x)| (w as f64 * x as f64).abs()).sum::<f64>().max(1e-6);
                    assert!(
                        ((got - want) / scale).abs() < 1e-5,
                        "{dtype:?}: row {} token {t}: {got} vs integer reference {want}",
                        r0 + i
                    );
                }
            }
            // Same integer sums, same f32 steps in the same order: the same numbers.
            for (name, product) in &simd {
                let mut got = vec![f32::NAN; m * TILE_ROWS];
                product(&tile, &tokens, &mut got);
                assert_eq!(got, portable, "{dtype:?}: the {name} tile product");
            }
        }
        let names: Vec<&str> = simd.iter().map(|p| p.0).filter(|&n| n != "chosen").collect();
        checked.push(format!("{dtype:?} ({})", names.join(", ")));
    }
    eprintln!("tile products checked against the portable one: {}", checked.join(", "));
}

/// The tile products where their integers peak: six-bit weights at 63 against token bytes at
/// +127 and -127 (each `vpmaddubsw` pair sum 2 x 63 x 127, two of them added in i16 by the AVX2
/// product), and Q8_0's full bytes, 255 after the bias, where the products have VNNI.
#[cfg(target_arch = "x86_64")]
#[test]
fn tile_products_at_the_integer_extremes() {
    let (m, cols) = (9, 256);
    for (full_bytes, value) in [(false, 63u8), (true, 255u8)] {
        let unpack: tiles::UnpackRow = if full_bytes {
            |_, q, s, m| {
                q.fill(255);
                s.fill(1.0);
                m.fill(0.0);
            }
        } else {
            |_, q, s, m| {
                q.fill(63);
                s.fill(1.0);
                m.fill(0.0);
            }
        };
        let mut tile = Tile::default();
        tile.fill(TILE_ROWS, cols, 32, |_| (&[], unpack));
        // Token t is all +1 or all -1: bytes +127 or -127 with scale 1 / 127.
        let x: Vec<f32> = (0..m * cols)
            .map(|i| if (i / cols).is_multiple_of(2) { 1.0 } else { -1.0 })
            .collect();
        let tokens = Tokens::new(&x, m, cols, 32);
        let products = x86::tile_products(Isa::detected(), full_bytes);
        for (name, product) in &products {
            let mut got = vec![f32::NAN; m * TILE_ROWS];
            product(&tile, &tokens, &mut got);
            for (j, &g) in got.iter().enumerate() {
                let sign = if (j / TILE_ROWS).is_multiple_of(2) { 1.0 } else { -1.0 };
                let want = sign * value as f32 * cols as f32;
                assert!((g - want).abs() <= 1e-3 * want.abs(), "{name}, {value}: [{j}] {g} vs {want}");
            }
        }
        eprintln!(
            "extremes ({value}) checked with {:?}",
            products.iter().map(|p| p.0).collect::<Vec<_>>()
        );
    }
}

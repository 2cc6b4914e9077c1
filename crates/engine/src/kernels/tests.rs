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
    for dtype in SUPPORTED {
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

#[test]
fn unsupported_types_have_no_kernels() {
    for dtype in [GgmlType::Q8_1, GgmlType::Q8K] {
        assert!(!supported(dtype) && row_kernels(dtype, Isa::Portable).is_none());
    }
}

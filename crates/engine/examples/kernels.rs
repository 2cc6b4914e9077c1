//! Matrix-vector throughput of every storage type's kernel, at every instruction-set level this
//! CPU runs, against the memory bandwidth (a plain read of 1 GiB on the same threads): how close
//! decoding comes to its bound. Random weights (valid blocks), so this measures speed only.
//!
//!     cargo run --release -p headhunt-engine --example kernels -- [ROWS COLS [ITERATIONS]] [fast] [tokens=M] [TYPE ...]
//!
//! `fast` measures the int8 products of `--precision fast` (the dense types stay exact).
//! `tokens=M` times the product with `M` tokens at once (a prompt chunk: the GEMM path) and
//! reports GFLOP/s (2 M ROWS COLS per product) instead of bandwidth.
//!
//! The default shape, 32768 x 4096, is larger than any CPU cache in every type, as a 7B model's
//! matrices are; all of rayon's threads (`RAYON_NUM_THREADS`) take part, as in decoding.

use std::hint::black_box;
use std::time::Instant;

use headhunt_engine::cpu::Isa;
use headhunt_engine::gguf::GgmlType;
use headhunt_engine::kernels::{Precision, SUPPORTED};
use headhunt_engine::matrix::{Bytes, Matrix};

/// Random bytes with every f16 scale set to a small value, so that the blocks are valid.
fn random_matrix(dtype: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    let (block, bb) = dtype.block_layout();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut data: Vec<u8> = (0..rows * cols / block * bb)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let scale = half::f16::from_f32(0.01).to_le_bytes();
    let scale_at: &[usize] = match dtype {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => &[],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
        GgmlType::Q2K => &[80, 82],
        GgmlType::Q3K => &[108],
        GgmlType::Q6K => &[208],
        _ => &[0],
    };
    if !scale_at.is_empty() {
        for blk in data.chunks_exact_mut(bb) {
            for &at in scale_at {
                blk[at..at + 2].copy_from_slice(&scale);
            }
        }
    }
    if dtype == GgmlType::F32 {
        for v in data.chunks_exact_mut(4) {
            v.copy_from_slice(&(v[0] as f32 / 256.0).to_le_bytes());
        }
    }
    data
}

/// Seconds per call of `f`, the median of `iterations` calls after one warm-up.
fn time(iterations: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..iterations)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// Seconds to read `bytes` once on all threads: a sum of its words as f32 with independent
/// accumulators, which compilers vectorise (a plain u64 sum did not, and ran at a fraction of the
/// memory's speed).
fn read_time(bytes: &mut [u8], iterations: usize) -> f64 {
    // SAFETY: every bit pattern is an f32; align_to_mut returns the aligned middle part.
    let (_, words, _) = unsafe { bytes.align_to_mut::<f32>() };
    let per_task = words.len().div_ceil(4 * rayon::current_num_threads());
    time(iterations, || {
        headhunt_engine::team::for_each_chunk(words, per_task, |_, chunk| {
            let mut acc = [0f32; 64];
            for c in chunk.chunks_exact(64) {
                for t in 0..64 {
                    acc[t] += c[t];
                }
            }
            black_box(acc);
        });
    })
}

fn main() {
    let words: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<usize> = words.iter().filter_map(|a| a.parse().ok()).collect();
    let precision = if words.iter().any(|w| w == "fast") {
        Precision::Fast
    } else {
        Precision::Exact
    };
    let tokens = words
        .iter()
        .find_map(|w| w.strip_prefix("tokens=").and_then(|m| m.parse::<usize>().ok()))
        .unwrap_or(1);
    let only: Vec<&String> = words
        .iter()
        .filter(|a| a.parse::<usize>().is_err() && *a != "fast" && !a.starts_with("tokens="))
        .collect();
    let (rows, cols) = (args.first().copied().unwrap_or(32768), args.get(1).copied().unwrap_or(4096));
    let iterations = args.get(2).copied().unwrap_or(10);
    let levels = Isa::available();
    if tokens > 1 {
        return prefill(rows, cols, tokens, iterations, precision, &levels, &only);
    }
    println!(
        "gemv [{rows} x {cols}], {precision} precision, {} threads, median of {iterations}; levels: {}",
        rayon::current_num_threads(),
        levels.iter().map(|l| l.name()).collect::<Vec<_>>().join(", ")
    );
    let mut big = vec![1u8; 1 << 30];
    let bandwidth = (1u64 << 30) as f64 / read_time(&mut big, iterations) / 1e9;
    drop(big);
    println!("memory read bandwidth: {bandwidth:.1} GB/s");
    print!("{:>5} {:>9}", "type", "MiB");
    for l in &levels {
        print!(" | {:>7} ms {:>6} GB/s {:>5}", l.name(), "", "of bw");
    }
    println!();
    let x: Vec<f32> = (0..cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
    let mut out = vec![0.0f32; rows];
    for dtype in SUPPORTED {
        if !only.is_empty() && !only.iter().any(|t| t.eq_ignore_ascii_case(&format!("{dtype:?}"))) {
            continue;
        }
        let data = random_matrix(dtype, rows, cols);
        let n_bytes = data.len();
        print!("{:>5} {:>9.1}", format!("{dtype:?}"), n_bytes as f64 / 1048576.0);
        let mut m = Matrix::new(dtype, rows, cols, Bytes::Owned(data), levels[0]).expect("valid matrix");
        m.set_precision(precision);
        for &l in &levels {
            m.set_isa(l);
            let s = time(iterations, || m.gemv(&x, &mut out));
            let gbs = n_bytes as f64 / s / 1e9;
            print!(" | {:>10.2} {:>11.1} {:>5.2}", s * 1e3, gbs, gbs / bandwidth);
        }
        println!();
        black_box(&out);
    }
}

/// GFLOP/s of `matmul` with `tokens` tokens: the prefill's products.
fn prefill(rows: usize, cols: usize, tokens: usize, iterations: usize, precision: Precision, levels: &[Isa], only: &[&String]) {
    println!(
        "matmul [{tokens} tokens] x [{rows} x {cols}]^T, {precision} precision, {} threads, median of {iterations}",
        rayon::current_num_threads()
    );
    let x: Vec<f32> = (0..tokens * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
    let mut out = vec![0.0f32; tokens * rows];
    for dtype in SUPPORTED {
        if !only.is_empty() && !only.iter().any(|t| t.eq_ignore_ascii_case(&format!("{dtype:?}"))) {
            continue;
        }
        let mut m = Matrix::new(dtype, rows, cols, Bytes::Owned(random_matrix(dtype, rows, cols)), levels[0]).expect("valid matrix");
        m.set_precision(precision);
        print!("{:>5}", format!("{dtype:?}"));
        // The best level only: the GEMM is the `gemm` crate's whatever the level.
        for &l in levels.iter().max().into_iter() {
            m.set_isa(l);
            let s = time(iterations, || m.matmul(&mut out, &x, tokens));
            print!(
                " | {:>7} {:>8.1} ms {:>6.1} GFLOP/s",
                l.name(),
                s * 1e3,
                2.0 * (tokens * rows * cols) as f64 / s / 1e9
            );
        }
        println!();
        black_box(&out);
    }
}

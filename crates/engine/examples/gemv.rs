//! Time one-token matrix-vector products on a model's real weights: the f32 matmul against the
//! quantized-block kernel, per projection, all layers.
//!
//!     cargo run --release -p headhunt-engine --example gemv -- MODEL.gguf [ITERATIONS]

use std::time::Instant;

use headhunt_engine::linalg::matmul_t;
use headhunt_engine::Model;

fn time(iterations: usize, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..iterations {
        f();
    }
    start.elapsed().as_secs_f64() / iterations as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).expect("usage: gemv MODEL.gguf [ITERATIONS]");
    let iterations: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20);
    let model = Model::load(std::path::Path::new(path)).expect("model loads");
    let blocks = &model.weights.blocks;
    if let Some(q) = model.weights.unembed_quant() {
        let c = &model.config;
        let x: Vec<f32> = (0..c.d_model).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        let mut out = vec![0.0f32; c.vocab_size];
        let w = model.weights.unembed_matrix();
        let f = time(iterations, || matmul_t(&mut out, &x, w, 1, c.d_model, c.vocab_size, false, true));
        let b = time(iterations, || q.gemv(&x, &mut out));
        println!(
            "unembed ({} rows): f32 {:.2} ms ({:.1} GB/s), blocks {:.2} ms ({:.1} GB/s, {:.1} Gweights/s), x{:.2}",
            c.vocab_size,
            f * 1e3,
            (w.len() * 4) as f64 / f / 1e9,
            b * 1e3,
            q.n_bytes() as f64 / b / 1e9,
            w.len() as f64 / b / 1e9,
            f / b
        );
    }
    let names = ["qkv", "o", "gate+up", "down"];
    for (k, name) in names.iter().enumerate() {
        let lins: Vec<_> = blocks.iter().map(|b| [&b.qkv, &b.o, &b.up, &b.down][k]).collect();
        let x: Vec<f32> = (0..lins[0].n_in).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        let mut out = vec![0.0f32; lins[0].n_out];
        let bytes_f32: usize = lins.iter().map(|l| l.w.len() * 4).sum();
        let start = Instant::now();
        for _ in 0..iterations {
            for l in &lins {
                matmul_t(&mut out, &x, &l.w, 1, l.n_in, l.n_out, false, true);
            }
        }
        let f32_s = start.elapsed().as_secs_f64() / iterations as f64;
        let Some(q0) = &lins[0].quant else {
            println!(
                "{name:>8}: f32 {:.2} ms ({:.1} GB/s); no quantized blocks",
                f32_s * 1e3,
                bytes_f32 as f64 / f32_s / 1e9
            );
            continue;
        };
        let bytes_q: usize = lins.iter().map(|l| l.quant.as_ref().map_or(0, |q| q.n_bytes())).sum();
        let start = Instant::now();
        for _ in 0..iterations {
            for l in &lins {
                l.quant.as_ref().unwrap().gemv(&x, &mut out);
            }
        }
        let q_s = start.elapsed().as_secs_f64() / iterations as f64;
        println!(
            "{name:>8} ({} rows): f32 {:.2} ms ({:.1} GB/s), blocks {:.2} ms ({:.1} GB/s, {:.1} Gweights/s), x{:.2}",
            q0.rows(),
            f32_s * 1e3,
            bytes_f32 as f64 / f32_s / 1e9,
            q_s * 1e3,
            bytes_q as f64 / q_s / 1e9,
            (bytes_f32 / 4) as f64 / q_s / 1e9,
            f32_s / q_s
        );
    }
}

//! The gated MLP's activation (`act(gate) * up`, packed in place over its `[gate | up]` rows),
//! as the engine computes it (each row's result written straight to its packed place, the up
//! projection through a closure that is the identity except for gpt-oss), against the engine's
//! earlier forms (each row through a small buffer, with and without that closure); side by
//! side in one process, alternating, at widths where the read and write addresses do
//! (multiples of 1024 floats: 4 KiB apart) and do not alias.
//!
//!     cargo run --release -p headhunt-engine --example activation -- [ROWS [REPEATS]]
//!
//! Prints each width's median time per call and the ratios to the engine's.

use std::hint::black_box;
use std::time::Instant;

use headhunt_engine::config::Activation;
use headhunt_engine::linalg::{activate, mlp_activation};

fn silu(x: f32) -> f32 {
    activate(x, Activation::Silu)
}

/// The engine's form before gpt-oss: each row through a buffer, no closure on `up`.
fn buffered_before(mut h: Vec<f32>, rows: usize, d_mlp: usize) -> Vec<f32> {
    let mut row = vec![0.0f32; d_mlp];
    for r in 0..rows {
        let (gate, up) = h[2 * r * d_mlp..2 * (r + 1) * d_mlp].split_at(d_mlp);
        row.iter_mut().zip(gate).zip(up).for_each(|((o, &g), &u)| *o = silu(g) * u);
        h[r * d_mlp..(r + 1) * d_mlp].copy_from_slice(&row);
    }
    h.truncate(rows * d_mlp);
    h
}

/// The form until 2026-12-07: each row through a buffer, `up` through a closure (identity).
fn buffered(mut h: Vec<f32>, rows: usize, d_mlp: usize, up_of: impl Fn(f32) -> f32) -> Vec<f32> {
    let mut row = vec![0.0f32; d_mlp];
    for r in 0..rows {
        let (gate, up) = h[2 * r * d_mlp..2 * (r + 1) * d_mlp].split_at(d_mlp);
        row.iter_mut().zip(gate).zip(up).for_each(|((o, &g), &u)| *o = silu(g) * up_of(u));
        h[r * d_mlp..(r + 1) * d_mlp].copy_from_slice(&row);
    }
    h.truncate(rows * d_mlp);
    h
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let rows = args.first().copied().unwrap_or(256);
    let repeats = args.get(1).copied().unwrap_or(21);
    println!("| d_mlp | rows | engine (ms) | buffered, with the up closure | buffered, without it |");
    println!("|---|---|---|---|---|");
    for d_mlp in [1536, 2048, 4096, 8192, 8960] {
        let input: Vec<f32> = (0..rows * 2 * d_mlp).map(|i| ((i % 97) as f32 - 48.0) / 16.0).collect();
        let want = mlp_activation(input.clone(), rows, d_mlp, true, Activation::Silu);
        assert_eq!(
            buffered(input.clone(), rows, d_mlp, |u| u),
            want,
            "the forms compute the same values"
        );
        assert_eq!(
            buffered_before(input.clone(), rows, d_mlp),
            want,
            "the forms compute the same values"
        );
        let forms: [&dyn Fn(Vec<f32>) -> Vec<f32>; 3] = [
            &|h| mlp_activation(h, rows, d_mlp, true, Activation::Silu),
            &|h| buffered(h, rows, d_mlp, |u| u),
            &|h| buffered_before(h, rows, d_mlp),
        ];
        let mut times = vec![Vec::new(); forms.len()];
        for _ in 0..repeats {
            for (f, t) in forms.iter().zip(&mut times) {
                let h = input.clone();
                let start = Instant::now();
                black_box(f(black_box(h)));
                t.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        let m: Vec<f64> = times.into_iter().map(median).collect();
        println!(
            "| {d_mlp} | {rows} | {:.3} | {:.3} (x{:.2}) | {:.3} (x{:.2}) |",
            m[0],
            m[1],
            m[1] / m[0],
            m[2],
            m[2] / m[0]
        );
    }
}

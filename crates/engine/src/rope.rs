//! Rotary position embeddings, computed the way the reference implementation computes them so
//! that angles agree at every position up to the context length: inverse frequencies rounded to
//! f32, the angle `position * inv_freq` rounded to f32, then cosine and sine of that angle.

use crate::config::RopeScaling;

/// Cosine and sine tables `[positions, d_head / 2]` for one base and scaling.
#[derive(Debug, Clone)]
pub struct RopeTable {
    pub half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    pub fn new(d_head: usize, base: f32, scaling: Option<RopeScaling>, positions: usize) -> Self {
        let half = d_head / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| {
                // torch: 1.0 / base ** (arange(0, d, 2).float() / d), all in f32.
                let exponent = (2 * i) as f32 / d_head as f32;
                let pow = (base as f64).powf(exponent as f64) as f32;
                1.0f32 / pow
            })
            .map(|f| match scaling {
                None => f,
                Some(RopeScaling::Linear { factor }) => f / factor,
                Some(RopeScaling::Llama3 {
                    factor,
                    low_freq_factor,
                    high_freq_factor,
                    original_context,
                }) => {
                    let low_wavelen = original_context / low_freq_factor;
                    let high_wavelen = original_context / high_freq_factor;
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (original_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                }
            })
            .collect();
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for p in 0..positions {
            for &f in &inv_freq {
                let angle = (p as f32 * f) as f64;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        RopeTable { half, cos, sin }
    }

    pub fn positions(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }

    /// Rotate one head vector (rotate-half layout) to position `pos`.
    #[inline]
    pub fn apply(&self, x: &mut [f32], pos: usize) {
        let h = self.half;
        let cos = &self.cos[pos * h..(pos + 1) * h];
        let sin = &self.sin[pos * h..(pos + 1) * h];
        let (a, b) = x.split_at_mut(h);
        for i in 0..h {
            let (x1, x2) = (a[i], b[i]);
            a[i] = x1 * cos[i] + (-x2) * sin[i];
            b[i] = x2 * cos[i] + x1 * sin[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_preserves_norm_and_position_zero_is_identity() {
        let t = RopeTable::new(8, 10_000.0, None, 100);
        let mut x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let orig = x;
        t.apply(&mut x, 0);
        assert_eq!(x, orig);
        t.apply(&mut x, 57);
        let n0: f32 = orig.iter().map(|v| v * v).sum();
        let n1: f32 = x.iter().map(|v| v * v).sum();
        assert!((n0 - n1).abs() < 1e-4);
    }

    #[test]
    fn relative_positions_only() {
        // q(p)·k(p') depends only on p - p'.
        let t = RopeTable::new(4, 100.0, None, 64);
        let q = [0.3, -1.2, 0.7, 0.1];
        let k = [1.1, 0.4, -0.5, 0.9];
        let dot = |pq: usize, pk: usize| {
            let (mut a, mut b) = (q, k);
            t.apply(&mut a, pq);
            t.apply(&mut b, pk);
            a.iter().zip(&b).map(|(x, y)| x * y).sum::<f32>()
        };
        assert!((dot(10, 3) - dot(40, 33)).abs() < 1e-4);
    }
}

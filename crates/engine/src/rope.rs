//! Rotary position embeddings, computed the way the reference implementation computes them so
//! that angles agree at every position up to the context length: inverse frequencies rounded to
//! f32, the angle `position * inv_freq` rounded to f32, then cosine and sine of that angle.

use crate::config::{LongRopeFactors, RopeScaling};

/// torch's `base ** (arange(0, d, 2).float() / d)` for pair `i` of `d` rotated dimensions.
fn pos_freq(base: f32, d: usize, i: usize) -> f32 {
    (base as f64).powf(((2 * i) as f32 / d as f32) as f64) as f32
}

/// The inverse frequencies of one RoPE base and scaling.
#[derive(Debug, Clone)]
pub struct RopeTable {
    inv_freq: Vec<f32>,
    /// LongRoPE: the long set, for forward calls that reach past the original context.
    long: Option<(Vec<f32>, usize)>,
    /// Multiplies every cosine and sine (YaRN's and LongRoPE's attention factor; 1 otherwise).
    attention_factor: f32,
}

impl RopeTable {
    /// `d_head` is the number of rotated dimensions of each head (its leading ones).
    pub fn new(d_head: usize, base: f32, scaling: Option<RopeScaling>) -> Self {
        let pos_freq = |i: usize| pos_freq(base, d_head, i);
        let ramp = match scaling {
            Some(RopeScaling::Yarn {
                original_context,
                beta_fast,
                beta_slow,
                truncate,
                ..
            }) => yarn_ramp(d_head, base, original_context, beta_fast, beta_slow, truncate),
            _ => (0.0, 1.0),
        };
        let inv_freq = (0..d_head / 2)
            .map(|i| {
                let f = 1.0f32 / pos_freq(i);
                match scaling {
                    // The factors are the checkpoint's: applied by `with_freq_factors` and
                    // `long_rope`.
                    None | Some(RopeScaling::FreqFactors | RopeScaling::LongRope { .. }) => f,
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
                    // transformers' `_compute_yarn_parameters`: interpolated where the ramp is 1,
                    // kept where it is 0, blended in f32 between.
                    Some(RopeScaling::Yarn { factor, .. }) => {
                        let (low, high) = ramp;
                        let interpolated = ((i as f32 - low as f32) / (high - low) as f32).clamp(0.0, 1.0);
                        let kept = 1.0 - interpolated;
                        1.0 / (factor * pos_freq(i)) * (1.0 - kept) + f * kept
                    }
                }
            })
            .collect();
        let attention_factor = match scaling {
            Some(RopeScaling::Yarn { attention_factor, .. } | RopeScaling::LongRope { attention_factor, .. }) => attention_factor,
            _ => 1.0,
        };
        RopeTable {
            inv_freq,
            long: None,
            attention_factor,
        }
    }

    /// LongRoPE's two sets, `1 / (factor_i * base^(2i / d))` as transformers computes them:
    /// the short one for forward calls within `original_context` positions, the long one past it.
    pub fn long_rope(d_head: usize, base: f32, scaling: RopeScaling, factors: &LongRopeFactors) -> Self {
        let RopeScaling::LongRope {
            original_context,
            attention_factor,
        } = scaling
        else {
            unreachable!("long_rope takes a LongRoPE scaling")
        };
        let set = |f: &[f32]| -> Vec<f32> { f.iter().enumerate().map(|(i, &e)| 1.0 / (e * pos_freq(base, d_head, i))).collect() };
        RopeTable {
            inv_freq: set(&factors.short),
            long: Some((set(&factors.long), original_context as usize)),
            attention_factor,
        }
    }

    /// Divide each inverse frequency by its factor (llama.cpp's `rope_freqs.weight`, one per
    /// rotary pair), as llama.cpp's RoPE does: `theta_i = p * inv_freq_i / factor_i`.
    pub fn with_freq_factors(mut self, factors: &[f32]) -> Self {
        debug_assert_eq!(factors.len(), self.inv_freq.len(), "the loader checks the shape");
        self.inv_freq.iter_mut().zip(factors).for_each(|(f, d)| *f /= d);
        self
    }

    /// LongRoPE: the number of positions past which a forward call takes the long set.
    pub fn long_set_after(&self) -> Option<usize> {
        self.long.as_ref().map(|(_, original)| *original)
    }

    /// Cosines and sines for positions `p0..p0 + n`: computed per forward call, so memory
    /// never scales with the model's context length.
    pub fn at_positions(&self, p0: usize, n: usize) -> RopeAngles {
        let inv_freq = match &self.long {
            Some((long, original)) if p0 + n > *original => long,
            _ => &self.inv_freq,
        };
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for p in p0..p0 + n {
            for &f in inv_freq {
                let angle = (p as f32 * f) as f64;
                cos.push(angle.cos() as f32 * self.attention_factor);
                sin.push(angle.sin() as f32 * self.attention_factor);
            }
        }
        RopeAngles { half, cos, sin }
    }
}

/// YaRN's correction range: the rotary pairs below `low` keep their frequency, those above
/// `high` are interpolated (f64, as transformers computes it).
fn yarn_ramp(d_head: usize, base: f32, original_context: f32, beta_fast: f32, beta_slow: f32, truncate: bool) -> (f64, f64) {
    let dim = d_head as f64;
    let correction_dim = |rotations: f32| {
        dim * (original_context as f64 / (rotations as f64 * 2.0 * std::f64::consts::PI)).ln() / (2.0 * (base as f64).ln())
    };
    let (mut low, mut high) = (correction_dim(beta_fast), correction_dim(beta_slow));
    if truncate {
        (low, high) = (low.floor(), high.ceil());
    }
    let (low, high) = (low.max(0.0), high.min(dim - 1.0));
    (low, if low == high { high + 0.001 } else { high })
}

/// Rotations for a run of consecutive positions.
pub struct RopeAngles {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeAngles {
    /// Rotate one head vector (rotate-half layout within its leading `2 * half` dimensions; the
    /// rest pass through) by row `r` of these positions.
    #[inline]
    pub fn apply(&self, x: &mut [f32], r: usize) {
        let h = self.half;
        let cos = &self.cos[r * h..(r + 1) * h];
        let sin = &self.sin[r * h..(r + 1) * h];
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
        let t = RopeTable::new(8, 10_000.0, None).at_positions(0, 100);
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
        let t = RopeTable::new(4, 100.0, None).at_positions(0, 64);
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

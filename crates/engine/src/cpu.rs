//! Which SIMD instruction sets the weight kernels use, decided at run time.
//!
//! One binary serves every x86-64 CPU: the kernels for AVX-512 and for AVX2 are compiled into
//! every build (behind `#[target_feature]`) and chosen when a model is loaded, from what the CPU
//! reports. `HEADHUNT_SIMD=avx2` (or `portable`) caps the choice, to measure or test the paths a
//! CPU without AVX-512 would take; a cap above what the CPU has is ignored.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

/// A kernel level, from the slowest to the fastest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Plain Rust, vectorised by the compiler for the build's target only.
    Portable,
    /// AVX2 with FMA and F16C (x86-64-v3: Intel since Haswell, AMD since Zen 1).
    Avx2,
    /// AVX-512 F/BW/VL on top of AVX2 (Intel servers and some laptops, AMD since Zen 4).
    Avx512,
}

impl Isa {
    pub const ALL: [Isa; 3] = [Isa::Portable, Isa::Avx2, Isa::Avx512];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// The best level this CPU runs.
    pub fn detected() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(detect)
    }

    /// Every level this CPU runs, slowest first.
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|&i| i <= Isa::detected()).collect()
    }

    /// The level models load with: the CPU's best, capped by `HEADHUNT_SIMD` when it is set.
    pub fn from_env() -> Isa {
        static CHOSEN: OnceLock<Isa> = OnceLock::new();
        *CHOSEN.get_or_init(|| match std::env::var("HEADHUNT_SIMD") {
            Ok(v) if !v.is_empty() => match v.parse::<Isa>() {
                Ok(cap) => cap.min(Isa::detected()),
                Err(e) => {
                    eprintln!("warning: ignoring HEADHUNT_SIMD: {e}");
                    Isa::detected()
                }
            },
            _ => Isa::detected(),
        })
    }

    /// `self`, or the best level below it that this CPU runs.
    pub fn supported(self) -> Isa {
        self.min(Isa::detected())
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Isa {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Isa::ALL
            .into_iter()
            .find(|i| i.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("unknown SIMD level `{s}` (use portable, avx2 or avx512)"))
    }
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Isa {
    let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c");
    let avx512 = is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vl");
    match (avx2, avx512) {
        (true, true) => Isa::Avx512,
        (true, false) => Isa::Avx2,
        _ => Isa::Portable,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Isa {
    Isa::Portable
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_order_and_cap() {
        assert_eq!("AVX2".parse::<Isa>(), Ok(Isa::Avx2));
        assert!("sse".parse::<Isa>().is_err());
        assert!(Isa::Portable < Isa::Avx2 && Isa::Avx2 < Isa::Avx512);
        assert_eq!(Isa::available().last(), Some(&Isa::detected()));
        assert_eq!(Isa::Avx512.supported(), Isa::detected());
        assert_eq!(Isa::Portable.supported(), Isa::Portable);
    }
}

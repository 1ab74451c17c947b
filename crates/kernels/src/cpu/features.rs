//! Which SIMD instruction sets the running CPU has, detected once at run time.
//!
//! Builds never use `target-cpu=native`: the build machines advertise AMX, which faults, and a
//! shipped binary must run on CPUs older than the one that built it.

use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    pub avx2_fma: bool,
    pub avx512_vnni: bool,
}

impl Features {
    pub fn get() -> Features {
        static DETECTED: OnceLock<Features> = OnceLock::new();
        *DETECTED.get_or_init(Features::detect)
    }

    /// No SIMD at all: what tests use to check the portable paths.
    pub const PORTABLE: Features = Features {
        avx2_fma: false,
        avx512_vnni: false,
    };

    #[cfg(target_arch = "x86_64")]
    fn detect() -> Features {
        if std::env::var_os("MEDITRON_NO_SIMD").is_some() {
            return Features::PORTABLE;
        }
        let avx2_fma = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        Features {
            avx2_fma,
            avx512_vnni: avx2_fma
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni"),
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn detect() -> Features {
        Features::PORTABLE
    }

    pub fn describe(&self) -> &'static str {
        match (self.avx512_vnni, self.avx2_fma) {
            (true, _) => "AVX-512 VNNI",
            (false, true) => "AVX2",
            _ => "portable",
        }
    }
}

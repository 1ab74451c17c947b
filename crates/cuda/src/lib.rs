//! CUDA backend: a device layer on the driver API (loaded at run time, so the workspace builds
//! and runs without CUDA), kernels in CUDA C compiled by NVRTC at first use and cached on disk,
//! GPTQ (3/4/8-bit, any group size, act-order) and fp16 Llama forward passes, and the checks and
//! benchmarks that run them on a GPU.

pub mod bench;
pub mod check;
pub mod driver;
pub mod gptq;
pub mod kernels;
pub mod llama;
pub mod load;
pub mod sample;
pub mod serve;

pub use driver::{driver_present, Gpu};

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel variant compiles for Hopper (and an older arch) wherever NVRTC is installed
    /// (no GPU needed); skipped where it is not, as on CI.
    #[test]
    fn kernels_compile_with_nvrtc() {
        // SAFETY: only tries to dlopen the library.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            eprintln!("skipped: libnvrtc not found");
            return;
        }
        let [(_, gptq), (_, llama)] = kernels::sources();
        for arch in ["sm_90", "sm_80"] {
            for bits in [3, 4, 8] {
                for (nb, spf) in [(1, 4), (1, 1), (4, 2)] {
                    let kw = if bits == 8 { 64 } else { 128 };
                    let spf = spf.min(kw / 32);
                    let src = format!("#define BITS {bits}\n#define NB {nb}\n#define KW {kw}\n#define SPF {spf}\n{gptq}");
                    driver::compile("gptq", &src, arch).unwrap_or_else(|e| panic!("{e:#}"));
                }
            }
            for (nt, ring, x, hoist) in [
                (2, 0, 0, 0),
                (3, 0, 0, 1),
                (4, 0, 0, 0),
                (4, 8, 0, 1),
                (3, 3, 1, 0),
                (4, 2, 1, 1),
            ] {
                let src = format!(
                    "#define BITS 4\n#define NT {nt}\n#define TCA {ring}\n#define TCX {x}\n#define TCS {hoist}\n{gptq}"
                );
                driver::compile("gptq", &src, arch).unwrap_or_else(|e| panic!("{e:#}"));
            }
            driver::compile("sample", &sample::source(), arch).unwrap_or_else(|e| panic!("{e:#}"));
            for (hd, gqa) in [(128, 8), (64, 3)] {
                let src = format!("#define HD {hd}\n#define GQA {gqa}\n{llama}");
                driver::compile("llama", &src, arch).unwrap_or_else(|e| panic!("{e:#}"));
            }
        }
    }

    #[test]
    fn no_driver_is_a_clear_error() {
        if driver_present() {
            return;
        }
        let e = Gpu::new()
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(e.contains("NVIDIA driver"), "{e}");
    }
}

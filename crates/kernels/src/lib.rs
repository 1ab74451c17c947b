//! Compute kernels: CPU matrix products over quantized weights, chosen by CPU features at run time.

pub mod cpu;

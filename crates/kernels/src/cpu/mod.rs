//! CPU kernels: the thread pool, activation quantization, dot products and matrix products.

pub mod ahead;
pub mod attention;
pub mod dot;
pub mod features;
pub mod gptq;
pub mod matmul;
pub mod ops;
pub mod packed;
pub mod pool;
pub mod q8;

pub use features::Features;
pub use matmul::{matmul, WeightView};
pub use pool::ThreadPool;

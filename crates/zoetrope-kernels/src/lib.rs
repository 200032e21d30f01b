//! zoetrope's CPU kernels on plain slices: no tensor library, no allocation once warm.
//!
//! - [`gemm`]: packed, blocked f32 matrix products with an AVX-512 micro-kernel;
//! - [`gemm_bf16`]: bf16 products on AMX tiles (f32 accumulation), weights packed once;
//! - [`attention`]: flash-style attention (online softmax, no full score matrix);
//! - [`rows`]: fused row ops (LayerNorm with modulation, gated residuals, vector exp).
//!
//! Every kernel picks its instruction set at run time ([`cpu::features`]) and has a portable
//! path, so the same binary runs on any x86-64 (or other) CPU. Tests compare each path against
//! a plain reference in f64.

pub mod attention;
pub mod buf;
pub mod conv;
pub mod cpu;
pub mod gemm;
pub mod gemm_bf16;
pub mod peak;
pub mod rows;

//! Benchmarks behind `vla-rt bench`. Timing claims live here, never in tests.

pub mod control;
pub mod policy;
pub mod quant;
pub mod record;

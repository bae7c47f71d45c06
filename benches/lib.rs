//! Benchmark support (the benches live beside this file).

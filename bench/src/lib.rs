//! Shared helpers for anonmirror's benchmarks (the binaries in `src/bin/`).
//!
//! Every benchmark measures its baseline (raw TCP, nginx, the upstream
//! mirror) in the same run and reports a ratio, so figures from different
//! machines and days stay comparable.

#![forbid(unsafe_code)]

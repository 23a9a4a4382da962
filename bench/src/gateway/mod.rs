//! What the gateway benchmarks (`gateway`, `hosts`) drive: the real
//! `anonmirror` binary's processes, a keep-alive HTTP client as apt's, and
//! a generated repository.

pub mod http;
pub mod procs;
pub mod repo;

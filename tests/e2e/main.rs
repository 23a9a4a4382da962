//! anonmirror's end-to-end tests: one integration-test binary, one module
//! per capability. Network tests stay on 127.0.0.1 with ephemeral ports,
//! or on private addresses of the testbed's namespaces (`testbed`).

mod cli_audit;
mod cli_policy;
mod clients;
mod daemon;
mod gateway;
mod gateway_http;
mod lan;
mod layering;
mod mapping;
mod rendezvous_crash;
mod testbed;
mod transfer;

/// Real repositories, nginx, apt and pacman for the tests above.
mod support;

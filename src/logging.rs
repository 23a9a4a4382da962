//! Logging setup: tracing with an env-filter.
//!
//! The default filter is `info`. Nothing sensitive is logged at any level
//! unless the operator opts in: package names, item keys, addresses and
//! tokens go through [`anonmirror_core::Sensitive`], which redacts them
//! until `--dangerous-log-sensitive` (or the policy's
//! `log.dangerous_log_sensitive`) is given.

use tracing_subscriber::EnvFilter;

/// The environment variable that overrides the log filter.
pub const LOG_ENV: &str = "ANONMIRROR_LOG";

/// Install the global subscriber, writing to stderr. `verbose` raises the
/// default from `info` to `debug`; `ANONMIRROR_LOG` (env-filter syntax)
/// overrides both.
pub fn init(verbose: bool) {
    let default = if verbose { "debug" } else { "info" };
    let filter = EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new(default));
    // A second init (tests calling `run` twice) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

//! Redaction of sensitive values in logs.
//!
//! Package names, item keys, peer addresses, onion addresses, tokens and
//! credentials are wrapped in [`Sensitive`] wherever they might reach a log
//! line or an error message. Their `Display` and `Debug` print
//! `[scrubbed]` unless the operator has opted in with
//! [`set_log_sensitive`] (the policy's `log.dangerous_log_sensitive`).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

static LOG_SENSITIVE: AtomicBool = AtomicBool::new(false);

/// Let [`Sensitive`] values show in logs (`true`), or scrub them (`false`,
/// the default). Process-wide: set once at start-up from the policy.
pub fn set_log_sensitive(show: bool) {
    LOG_SENSITIVE.store(show, Ordering::Relaxed);
}

/// Whether sensitive values currently show in logs.
pub fn log_sensitive() -> bool {
    LOG_SENSITIVE.load(Ordering::Relaxed)
}

/// A value that must not appear in logs unless the operator opted in.
///
/// Wrapping changes only how the value formats; get it back with
/// [`Sensitive::into_inner`] or `Deref`.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sensitive<T>(T);

impl<T> Sensitive<T> {
    /// Wrap a value.
    pub fn new(value: T) -> Self {
        Sensitive(value)
    }

    /// Unwrap the value.
    pub fn into_inner(self) -> T {
        self.0
    }

    /// Borrow the value.
    pub fn as_inner(&self) -> &T {
        &self.0
    }
}

impl<T> From<T> for Sensitive<T> {
    fn from(value: T) -> Self {
        Sensitive(value)
    }
}

impl<T> std::ops::Deref for Sensitive<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

const SCRUBBED: &str = "[scrubbed]";

impl<T: fmt::Display> fmt::Display for Sensitive<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if log_sensitive() {
            fmt::Display::fmt(&self.0, f)
        } else {
            f.write_str(SCRUBBED)
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for Sensitive<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if log_sensitive() {
            fmt::Debug::fmt(&self.0, f)
        } else {
            f.write_str(SCRUBBED)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test touches the process-wide flag, so the order of the two
    // checks is fixed here instead of racing between tests.
    #[test]
    fn scrubbed_by_default_and_shown_on_opt_in() {
        let addr = Sensitive::new("192.0.2.7:4000");
        assert!(!log_sensitive());
        assert_eq!(addr.to_string(), "[scrubbed]");
        assert_eq!(format!("{addr:?}"), "[scrubbed]");
        set_log_sensitive(true);
        assert_eq!(addr.to_string(), "192.0.2.7:4000");
        assert_eq!(format!("{addr:?}"), "\"192.0.2.7:4000\"");
        set_log_sensitive(false);
        assert_eq!(addr.to_string(), "[scrubbed]");
        assert_eq!(*addr, "192.0.2.7:4000");
    }
}

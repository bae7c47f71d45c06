//! [`ConfigError`]: an invalid layer setting, shared by every layer's builder.

// Parts of this module serve layers a build without `full` may leave out.
#![cfg_attr(not(feature = "full"), allow(dead_code))]

use std::borrow::Cow;
use std::fmt;

/// An invalid layer setting. The message names the field, what it must be, and the value given,
/// e.g. `rate_limit.limit must be > 0, got 0` or
/// `circuit_breaker.failure_rate_threshold must be 1..=100, got 101`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    field: &'static str,
    requirement: Cow<'static, str>,
    value: String,
}

impl ConfigError {
    /// `value` is rendered with `Debug` (so a `Duration` reads `250ms`).
    pub(crate) fn new(
        field: &'static str,
        requirement: impl Into<Cow<'static, str>>,
        value: impl fmt::Debug,
    ) -> Self {
        Self::with_value_text(field, requirement, format!("{value:?}"))
    }

    /// Like [`new`](Self::new), with the value already written out.
    pub(crate) fn with_value_text(
        field: &'static str,
        requirement: impl Into<Cow<'static, str>>,
        value: String,
    ) -> Self {
        ConfigError {
            field,
            requirement: requirement.into(),
            value,
        }
    }

    /// The offending setting, prefixed by its layer, e.g. `"rate_limit.burst"`.
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// The rejected value as written in the message.
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} must be {}, got {}",
            self.field, self.requirement, self.value
        )
    }
}

impl std::error::Error for ConfigError {}

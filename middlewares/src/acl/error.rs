//! [`Denied`]: the access list's refusal and its `403` (or `400`) rendering.

use std::fmt;

use http::StatusCode;

use crate::Rejection;

/// A request refused by the access list.
///
/// Rendered through [`Rejection`] the same way in both hosts: `403 Forbidden` with an empty
/// body, or `400 Bad Request` when a rule had to read a path or host that has no unambiguous
/// reading ([`DenyReason::Unreadable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied {
    reason: DenyReason,
}

/// Why [`Denied`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DenyReason {
    /// The deny rule at this index (from 0, in the order given) matched first.
    Rule(usize),
    /// No rule matched and the default action is deny.
    Default,
    /// A rule looks at the path or host and the request's cannot be read unambiguously
    /// (an encoded `/`, a malformed `Host`; see [`canonical`](crate::canonical)).
    Unreadable(&'static str),
}

impl Denied {
    pub(super) const fn new(reason: DenyReason) -> Self {
        Denied { reason }
    }

    /// Why the request was refused.
    pub fn reason(&self) -> DenyReason {
        self.reason
    }
}

impl Rejection for Denied {
    /// `403 Forbidden`; `400 Bad Request` for an unreadable path or host.
    fn status(&self) -> StatusCode {
        match self.reason {
            DenyReason::Unreadable(_) => StatusCode::BAD_REQUEST,
            DenyReason::Rule(_) | DenyReason::Default => StatusCode::FORBIDDEN,
        }
    }
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            DenyReason::Rule(i) => write!(f, "denied by access rule {i}"),
            DenyReason::Default => f.write_str("denied by the access list's default action"),
            DenyReason::Unreadable(why) => write!(f, "request target refused: {why}"),
        }
    }
}

impl std::error::Error for Denied {}

//! Failures of calls into the host (libvirt, the kernel), sorted by what
//! the caller should do about them.

use std::fmt;
use std::time::Duration;

/// What kind of failure, so callers can tell "this domain is gone" (carry
/// on with the others) from "libvirt is down" (retry later) from "libvirt
/// refused this change" (roll back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No connection: libvirtd is down or restarting.
    Unavailable,
    /// No answer within the call timeout.
    Timeout,
    /// The domain does not exist or is not running any more.
    Gone,
    /// libvirt or the kernel refused or failed the call.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
pub struct HostError {
    /// The call, with the domain and target it was about.
    pub op: String,
    pub kind: ErrorKind,
    pub message: String,
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.op, self.message)
    }
}

impl HostError {
    pub fn new(op: &str, kind: ErrorKind, message: &str) -> Self {
        Self {
            op: op.to_string(),
            kind,
            message: message.to_string(),
        }
    }

    pub fn unavailable(op: &str, message: &str) -> Self {
        Self::new(op, ErrorKind::Unavailable, message)
    }

    pub fn timeout(op: &str, timeout: Duration) -> Self {
        Self::new(
            op,
            ErrorKind::Timeout,
            &format!("no answer from libvirt within {timeout:?}"),
        )
    }

    pub fn is_gone(&self) -> bool {
        self.kind == ErrorKind::Gone
    }

    /// libvirt could not be asked at all (down or hung): nothing about the
    /// domain is known, as opposed to a refusal.
    pub fn is_unreachable(&self) -> bool {
        matches!(self.kind, ErrorKind::Unavailable | ErrorKind::Timeout)
    }
}

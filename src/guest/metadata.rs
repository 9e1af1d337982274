//! numapin's per-domain override, kept in the domain's own `<metadata>` so it
//! travels with the domain (migration, redefine) and any tool can set it:
//!
//! ```xml
//! <metadata>
//!   <numapin:policy xmlns:numapin="http://numapin.org/xmlns/domain/1" name="dedicated"/>
//! </metadata>
//! ```
//!
//! or `virsh metadata DOM --uri http://numapin.org/xmlns/domain/1 --key numapin
//! --set '<policy name="exclude"/>' --live --config`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// XML namespace of numapin's `<metadata>` element.
pub const METADATA_NAMESPACE: &str = "http://numapin.org/xmlns/domain/1";

/// Policy names, also usable in the config's `[[domain]]` rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DomainPolicy {
    /// numapin never touches the domain.
    Exclude,
    /// numapin decides: dedicated for nested hypervisors (when configured),
    /// shared otherwise.
    Auto,
    /// vCPUs float over the CPUs of the chosen node(s).
    Shared,
    /// Every vCPU gets a host CPU of its own (1:1), guest SMT pairs on host
    /// SMT siblings.
    Dedicated,
}

impl DomainPolicy {
    pub const NAMES: [&'static str; 4] = ["exclude", "auto", "shared", "dedicated"];
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown policy {0:?}; expected one of exclude, auto, shared, dedicated")]
pub struct UnknownPolicy(pub String);

impl FromStr for DomainPolicy {
    type Err = UnknownPolicy;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "exclude" => Ok(Self::Exclude),
            "auto" => Ok(Self::Auto),
            "shared" => Ok(Self::Shared),
            "dedicated" => Ok(Self::Dedicated),
            other => Err(UnknownPolicy(other.to_string())),
        }
    }
}

impl fmt::Display for DomainPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::NAMES[*self as usize])
    }
}

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

/// Why numapin's element inside `<metadata>` could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyElementProblem {
    #[error("missing attribute 'name'")]
    MissingName,
    #[error(transparent)]
    Unknown(#[from] UnknownPolicy),
    /// libvirt keeps one element per namespace, so a second one means the
    /// XML was edited by hand and which one wins would be a guess.
    #[error("more than one numapin policy element")]
    Duplicate,
}

/// A [`PolicyElementProblem`] with the element it was found on, so the
/// caller can report where it is.
#[derive(Debug, Clone)]
pub struct PolicyElementError<'a, 'input> {
    pub node: roxmltree::Node<'a, 'input>,
    pub problem: PolicyElementProblem,
}

/// Reads numapin's policy from the children of a domain's `<metadata>`
/// element. Elements of other namespaces belong to other tools and are
/// skipped, as are other numapin elements (room for later additions).
pub fn policy_in_metadata<'a, 'input>(
    metadata: roxmltree::Node<'a, 'input>,
) -> Result<Option<DomainPolicy>, PolicyElementError<'a, 'input>> {
    let mut found = None;
    for node in metadata.children().filter(is_policy_element) {
        let fail = |problem| PolicyElementError { node, problem };
        if found.is_some() {
            return Err(fail(PolicyElementProblem::Duplicate));
        }
        let name = node
            .attribute("name")
            .ok_or(fail(PolicyElementProblem::MissingName))?;
        found = Some(name.parse().map_err(|e: UnknownPolicy| fail(e.into()))?);
    }
    Ok(found)
}

fn is_policy_element(node: &roxmltree::Node) -> bool {
    node.is_element()
        && node.tag_name().namespace() == Some(METADATA_NAMESPACE)
        && node.tag_name().name() == "policy"
}

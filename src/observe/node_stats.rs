//! The kernel's per-node page allocation counters, from
//! `sys/devices/system/node/nodeN/numastat`.
//!
//! The counters only grow; the difference of two readings tells how many
//! allocations a node served for its own CPUs (`local_node`) and how many
//! landed elsewhere (`numa_miss`, `other_node`), i.e. whether placement works.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ObserveError;
use super::files::{bad, read_text};
use crate::topology::sysfs;

/// Counts of pages, since boot. Field meanings as in the kernel's
/// Documentation/admin-guide/numastat.rst.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeNumaStat {
    /// Allocated on this node as intended.
    pub numa_hit: u64,
    /// Allocated on this node although another was preferred.
    pub numa_miss: u64,
    /// Intended for this node but allocated on another.
    pub numa_foreign: u64,
    /// Interleaved allocations that got this node as intended.
    pub interleave_hit: u64,
    /// Allocated on this node for a process running on it.
    pub local_node: u64,
    /// Allocated on this node for a process running on another node.
    pub other_node: u64,
}

/// Every node's counters; empty on a kernel without NUMA.
pub fn read(root: &Path) -> Result<BTreeMap<u32, NodeNumaStat>, ObserveError> {
    let nodes = sysfs::node_ids(root).map_err(ObserveError::Nodes)?;
    nodes
        .iter()
        .map(|id| {
            let path = root.join(format!("sys/devices/system/node/node{id}/numastat"));
            Ok((id, parse(&path, &read_text(&path)?)?))
        })
        .collect()
}

/// Parses `numastat` text (`numa_hit 44675371` lines); unknown keys, which
/// newer kernels may add, are ignored. `path` only labels errors.
pub fn parse(path: &Path, text: &str) -> Result<NodeNumaStat, ObserveError> {
    let mut values = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (key, value) = line
            .split_once(char::is_whitespace)
            .and_then(|(k, v)| Some((k, v.trim().parse::<u64>().ok()?)))
            .ok_or_else(|| bad(path, line, "a `counter value` line"))?;
        values.insert(key, value);
    }
    let get = |key: &'static str| {
        values
            .get(key)
            .copied()
            .ok_or_else(|| bad(path, key, "a counter this numastat has"))
    };
    Ok(NodeNumaStat {
        numa_hit: get("numa_hit")?,
        numa_miss: get("numa_miss")?,
        numa_foreign: get("numa_foreign")?,
        interleave_hit: get("interleave_hit")?,
        local_node: get("local_node")?,
        other_node: get("other_node")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_every_counter_and_ignores_new_ones() {
        let text = "numa_hit 5\nnuma_miss 1\nnuma_foreign 2\ninterleave_hit 3\n\
                    local_node 4\nother_node 6\nfuture_counter 9\n";
        let s = parse(Path::new("numastat"), text).unwrap();
        assert_eq!(
            s,
            NodeNumaStat {
                numa_hit: 5,
                numa_miss: 1,
                numa_foreign: 2,
                interleave_hit: 3,
                local_node: 4,
                other_node: 6
            }
        );
    }

    #[test]
    fn missing_or_garbled_counters_are_errors() {
        let p = Path::new("numastat");
        assert!(parse(p, "numa_hit 5\n").is_err());
        assert!(parse(p, "numa_hit five\n").is_err());
        assert!(parse(p, "numa_hit\n").is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = parse(Path::new("numastat"), &text);
        }
    }
}

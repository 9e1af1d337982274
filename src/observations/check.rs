//! Observations checked against the host and domains they describe. A
//! measurement is taken as a fact by the planner, so one that cannot be
//! true (memory on a node the host lacks, more memory than the guest has,
//! steal on a CPU that does not exist) is refused here rather than planned
//! with, which would print wrapped or impossible numbers as results.

use std::collections::BTreeMap;

use super::Observations;
use crate::guest::Domain;
use crate::topology::HostTopology;

/// Memory a domain's process may hold beyond its guest RAM: QEMU's own
/// code, heap, video RAM and device buffers. A quarter of the guest's RAM
/// plus 1 GiB is far above what QEMU uses, so a real reading never trips it,
/// yet it catches readings that cannot be this guest's.
pub const OVERHEAD_FRACTION: f64 = 0.25;
pub const OVERHEAD_MIB: u64 = 1024;

/// Most MiB a process holding `guest_kib` of guest RAM may have resident.
pub fn most_resident_mib(guest_kib: u64) -> u64 {
    let guest_mib = guest_kib.div_ceil(1024);
    let overhead = (guest_mib as f64 * OVERHEAD_FRACTION) as u64;
    guest_mib
        .saturating_add(overhead)
        .saturating_add(OVERHEAD_MIB)
}

/// Checks `obs` against the host and the domains (by name); the error is
/// the key and the reason, naming the value.
pub fn check(
    obs: &Observations,
    topo: &HostTopology,
    domains: &BTreeMap<&str, &Domain>,
) -> Result<(), (String, String)> {
    let nodes = topo.node_ids();
    let missing_node = |node: u32| format!("node {node} does not exist on this host ({nodes})");
    for (&id, n) in &obs.nodes {
        let at = |k: &str| format!("nodes.{id}{k}");
        let Some(node) = topo.node(id) else {
            return Err((at(""), missing_node(id)));
        };
        if let Some(free) = n.free_mib
            && free > node.memory_mib
        {
            return Err((
                at(".free_mib"),
                format!(
                    "{free} MiB free is more than the node's {} MiB",
                    node.memory_mib
                ),
            ));
        }
        for (&size, &free) in &n.free_hugepages {
            let total = node.pool(size).map_or(0, |p| p.total);
            if free > total {
                return Err((
                    at(".free_hugepages"),
                    format!("{free} free pages of {size} KiB, but the node's pool has {total}"),
                ));
            }
        }
    }
    for (name, d) in &obs.domains {
        let at = |k: &str| format!("domains.{name:?}.{k}");
        for &node in d.memory_mib.keys() {
            if !nodes.contains(node) {
                return Err((at(&format!("memory_mib.\"{node}\"")), missing_node(node)));
            }
        }
        for (cell, per_node) in &d.cell_memory_mib {
            if let Some(&node) = per_node.keys().find(|n| !nodes.contains(**n)) {
                return Err((
                    at(&format!("cell_memory_mib.\"{cell}\".\"{node}\"")),
                    missing_node(node),
                ));
            }
        }
        // Observations of a domain not in the snapshot are not planned with.
        let Some(domain) = domains.get(name.as_str()) else {
            continue;
        };
        let most = most_resident_mib(domain.memory_kib);
        let total = d
            .memory_mib
            .values()
            .try_fold(0u64, |sum, &m| sum.checked_add(m));
        if total.is_none_or(|t| t > most) {
            let shown = total.map_or("more than 2^64".to_string(), |t| t.to_string());
            return Err((
                at("memory_mib"),
                format!(
                    "{shown} MiB in all is more than the guest's {} MiB of RAM allows (at most {most} MiB with QEMU's own)",
                    domain.memory_kib.div_ceil(1024)
                ),
            ));
        }
        for (cell, per_node) in &d.cell_memory_mib {
            let at = at(&format!("cell_memory_mib.\"{cell}\""));
            let Some(guest_cell) = domain.cpu.cells.iter().find(|c| c.id == *cell) else {
                return Err((at, format!("the guest has no cell {cell}")));
            };
            let sum = per_node
                .values()
                .try_fold(0u64, |sum, &m| sum.checked_add(m));
            let most = most_resident_mib(guest_cell.memory_kib);
            if sum.is_none_or(|s| s > most) {
                return Err((
                    at,
                    format!(
                        "more MiB than the cell's {} MiB of RAM allows (at most {most} MiB)",
                        guest_cell.memory_kib.div_ceil(1024)
                    ),
                ));
            }
        }
        for (key, per_vcpu) in [("vcpu_load", &d.vcpu_load), ("vcpu_wait", &d.vcpu_wait)] {
            if per_vcpu.len() > domain.vcpus_max as usize {
                return Err((
                    at(key),
                    format!(
                        "{} values for a guest with {} vCPUs",
                        per_vcpu.len(),
                        domain.vcpus_max
                    ),
                ));
            }
        }
    }
    let known = topo.online_cpus().union(&topo.offline_cpus);
    if let Some(&cpu) = obs.cpu_steal.keys().find(|c| !known.contains(**c)) {
        return Err((
            format!("cpu_steal.\"{cpu}\""),
            format!("CPU {cpu} does not exist on this host"),
        ));
    }
    Ok(())
}

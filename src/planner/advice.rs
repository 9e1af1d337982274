//! Changes numapin cannot make on a running domain but an operator can, at
//! the next restart or redefine, and that would make placement better.

use crate::topology::HostTopology;

use super::cpus::Pins;
use super::domain_info::{DomainInfo, MemoryHandling};
use super::ledger::Part;

/// `host_smt`: the host's [`HostTopology::smt_width`], worked out once
/// per plan rather than once per dedicated guest.
pub fn advice_for(
    info: &DomainInfo,
    topo: &HostTopology,
    host_smt: usize,
    parts: Option<&[Part]>,
    pins: Option<&Pins>,
) -> Vec<String> {
    let d = info.domain;
    let mut out = Vec::new();
    let cpu_nodes = topo.nodes.iter().filter(|n| !n.is_memory_only()).count();
    if let Some(parts) = parts {
        let nodes: std::collections::BTreeSet<u32> = parts.iter().map(|p| p.node).collect();
        if d.cpu.cells.is_empty() && nodes.len() > 1 {
            out.push(format!(
                "give this {}-vCPU guest {} vNUMA cells (<cpu><numa>), one per host node it spans, so its kernel keeps memory next to its vCPUs",
                info.vcpu_count(),
                nodes.len()
            ));
        }
        if !d.cpu.cells.is_empty() && d.cpu.cells.len() > cpu_nodes {
            out.push(format!(
                "the guest has {} NUMA cells but the host only {} nodes with CPUs: cells share host nodes; use at most {cpu_nodes} cells",
                d.cpu.cells.len(),
                cpu_nodes
            ));
        }
        let cells_mapped = parts.iter().any(|p| p.cell.is_some());
        if !d.cpu.cells.is_empty() && !cells_mapped {
            out.push(format!(
                "no host node has room for a whole guest cell now: the guest is split over nodes {} with its {} cells not mapped onto them; smaller cells let each land on one node",
                nodes.iter().map(u32::to_string).collect::<Vec<_>>().join(","),
                d.cpu.cells.len()
            ));
        }
        if !d.cpu.cells.is_empty()
            && cells_mapped
            && matches!(info.memory, MemoryHandling::Migrate)
            && nodes.len() > 1
        {
            let map: Vec<String> = parts
                .iter()
                .filter_map(|p| {
                    p.cell.map(|c| {
                        format!(
                            "<memnode cellid='{c}' mode='restrictive' nodeset='{}'/>",
                            p.node
                        )
                    })
                })
                .collect();
            out.push(format!(
                "bind each cell's memory to its node at start: <numatune> with {}",
                map.join(" ")
            ));
        }
    }
    if let MemoryHandling::Fixed(mode) = info.memory {
        let why = mode.as_str();
        out.push(format!(
            "memory is bound with numatune mode='{why}', which libvirt cannot change on a running domain, so numapin pins vCPUs only; use mode='restrictive' so memory can move live"
        ));
    }
    if info.memory == MemoryHandling::FirstTouch
        && let Some(parts) = parts
    {
        let target: crate::idset::NodeSet = parts.iter().map(|p| p.node).collect();
        if info.mib_outside(&target) > 0 {
            out.push(format!(
                "memory stays where it is (apply.migrate_memory = false): only new allocations follow the vCPUs to node(s) {target}"
            ));
        }
    }
    if d.vcpu_placement_auto || d.numatune.as_ref().is_some_and(|n| n.placement_auto) {
        out.push(
            "placement='auto' fixes the nodes once, at start (numad advice); drop it and let numapin place and rebalance the domain".into(),
        );
    }
    if info.is_dedicated() {
        let threads = d.threads_per_core() as usize;
        if host_smt >= 2 && threads == 1 {
            out.push(format!(
                "the host has {host_smt} SMT threads per core: declare <topology ... threads='{host_smt}'/> so the guest sees which of its vCPUs share a core"
            ));
        } else if threads >= 2 && host_smt < threads {
            out.push(format!(
                "the guest declares {threads} threads per core but the host has {host_smt}: declare threads='{host_smt}' so the guest's view matches the hardware"
            ));
        } else if pins.is_some_and(|p| p.smt_unmatched) {
            out.push(
                "not enough whole free cores: some guest SMT siblings are on different host cores"
                    .into(),
            );
        }
    }
    out
}

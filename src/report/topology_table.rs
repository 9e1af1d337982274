//! The host topology in the spirit of `numactl -H`: nodes, CPUs, SMT,
//! memory and hugepage pools, and the distance matrix.

use std::fmt::Write;

use crate::topology::HostTopology;

use super::mib;

pub fn render(topo: &HostTopology, source: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "host ({source}): {}", topo.kind);
    let _ = writeln!(
        s,
        "{} nodes, {} online CPUs, {} SMT thread(s) per core, {} memory, hardware virtualisation for guests: {}",
        topo.nodes.len(),
        topo.cpus.len(),
        topo.smt_width(),
        mib(topo.total_memory_mib()),
        if topo.virtualization_extensions {
            "yes"
        } else {
            "no"
        }
    );
    if !topo.offline_cpus.is_empty() {
        let _ = writeln!(s, "offline CPUs: {}", topo.offline_cpus);
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<5} {:>5}  {:<24} {:<8} {:>10}  HUGEPAGES",
        "NODE", "CPUS", "CPU LIST", "SOCKETS", "MEMORY"
    );
    for n in &topo.nodes {
        let sockets: crate::idset::IdSet = n
            .cpus
            .iter()
            .filter_map(|c| topo.cpu(c).and_then(|c| c.socket))
            .collect();
        let pages: Vec<String> = n
            .hugepages
            .iter()
            .map(|p| format!("{} x {}", p.total, mib_or_kib(p.size_kib)))
            .collect();
        let cpulist = if n.cpus.is_empty() {
            "(memory only)".to_string()
        } else {
            n.cpus.to_string()
        };
        let _ = writeln!(
            s,
            "{:<5} {:>5}  {:<24} {:<8} {:>10}  {}",
            n.id,
            n.cpus.len(),
            cpulist,
            if sockets.is_empty() {
                "-".into()
            } else {
                sockets.to_string()
            },
            mib(n.memory_mib),
            if pages.is_empty() {
                "-".into()
            } else {
                pages.join(", ")
            }
        );
    }
    if topo.smt_width() > 1 {
        let _ = writeln!(s, "\nSMT sibling groups:");
        let mut seen = crate::idset::IdSet::new();
        let mut groups = Vec::new();
        for c in &topo.cpus {
            if !seen.contains(c.id) {
                seen.union_with(&c.siblings);
                groups.push(format!("[{}]", c.siblings));
            }
        }
        for chunk in groups.chunks(12) {
            let _ = writeln!(s, "  {}", chunk.join(" "));
        }
    }
    let _ = writeln!(s, "\nnode distances:");
    let _ = write!(s, "node ");
    for n in &topo.nodes {
        let _ = write!(s, "{:>4}", n.id);
    }
    let _ = writeln!(s);
    for a in &topo.nodes {
        let _ = write!(s, "{:>3}: ", a.id);
        for b in &topo.nodes {
            let _ = write!(s, "{:>4}", topo.distance(a.id, b.id));
        }
        let _ = writeln!(s);
    }
    s
}

fn mib_or_kib(kib: u64) -> String {
    if kib >= 1024 {
        mib(kib / 1024)
    } else {
        format!("{kib} KiB")
    }
}

//! Moving an unbound guest's memory cell by cell. migrate_pages(2) on the
//! whole QEMU process only gets the memory into the union of the guest's
//! nodes: one cell's RAM may then sit on another cell's node, which a
//! guest that places work by its own topology (a nested hypervisor) cannot
//! see. When every cell's RAM block is measured and the cells are on
//! distinct nodes, each cell not yet in place moves on its own to its
//! node; only what belongs to no cell (QEMU's own heap, device memory)
//! moves as a whole, and only from outside the guest's nodes.

use std::collections::BTreeMap;

use crate::idset::NodeSet;

use super::domain_info::{DomainInfo, MemoryHandling};
use super::ledger::Part;

/// One guest cell's RAM to move to its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellMove {
    pub cell: u32,
    pub node: u32,
    /// MiB of the cell not on its node now.
    pub mib: u64,
}

/// The memory moves of a domain moved cell by cell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryMoves {
    pub cells: Vec<CellMove>,
    /// Nodes outside the target holding memory of no cell.
    pub rest_from: NodeSet,
    pub rest_mib: u64,
}

impl MemoryMoves {
    pub fn mib(&self) -> u64 {
        self.cells.iter().map(|c| c.mib).sum::<u64>() + self.rest_mib
    }
}

/// Guest cell -> host node of the parts that are cells.
pub fn cells_of(parts: &[Part]) -> BTreeMap<u32, u32> {
    parts
        .iter()
        .filter_map(|p| p.cell.map(|c| (c, p.node)))
        .collect()
}

/// The moves that bring each cell's RAM to its node under the mapping
/// `cells`, and the rest of the memory into `nodeset`; `None` when the
/// memory moves as a whole: a binding moves it, a cell's RAM was not
/// measured, or the cells do not each have a node of their own.
pub fn memory_moves(
    info: &DomainInfo,
    cells: &BTreeMap<u32, u32>,
    nodeset: &NodeSet,
) -> Option<MemoryMoves> {
    let measured = &info.current.cell_memory_mib;
    if info.memory != MemoryHandling::Migrate
        || measured.is_empty()
        || cells.len() != measured.len()
        || measured.keys().any(|c| !cells.contains_key(c))
    {
        return None;
    }
    let nodes: NodeSet = cells.values().copied().collect();
    // Distinct nodes, and no memory beyond them (a memory-only node that
    // takes what a cell's node cannot hold): each cell fits its node.
    if nodes.len() != cells.len() || !nodeset.is_subset(&nodes) {
        return None;
    }
    let mut out = MemoryMoves::default();
    let mut rest = info.current.memory_mib.clone();
    for (&cell, &node) in cells {
        let mem = &measured[&cell];
        for (n, mib) in mem {
            if let Some(left) = rest.get_mut(n) {
                *left = left.saturating_sub(*mib);
            }
        }
        let total: u64 = mem.values().sum();
        let on = mem.get(&node).copied().unwrap_or(0);
        // A cell mostly on its node is in place: moving the last pages
        // (some may be pinned) every cycle would gain nothing.
        if total > 0 && (on as f64) < info.settled_share * total as f64 {
            out.cells.push(CellMove {
                cell,
                node,
                mib: total - on,
            });
        }
    }
    for (&n, &mib) in &rest {
        if mib > 0 && !nodeset.contains(n) {
            out.rest_from.insert(n);
            out.rest_mib += mib;
        }
    }
    Some(out)
}

/// MiB that would move if the domain went to `nodeset` with its cells on
/// the nodes `cells` gives: cell by cell when it can, else as a whole.
pub fn migrate_mib(info: &DomainInfo, cells: &BTreeMap<u32, u32>, nodeset: &NodeSet) -> u64 {
    match memory_moves(info, cells, nodeset) {
        Some(moves) => moves.mib(),
        None => info.migrate_mib_to(nodeset),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::observations::{DomainObservation, Observations};
    use crate::planner::DomainInput;
    use crate::planner::domain_info::Analyzer;
    use crate::synth::{DomainExt, HostShape, domain};

    fn obs() -> Observations {
        let mut o = Observations::default();
        o.domains.insert(
            "g".into(),
            DomainObservation {
                memory_mib: BTreeMap::from([(0, 3000), (1, 1000), (2, 96)]),
                cell_memory_mib: BTreeMap::from([
                    (0, BTreeMap::from([(0, 2048)])),
                    (1, BTreeMap::from([(0, 952), (1, 1000)])),
                ]),
                ..Default::default()
            },
        );
        o
    }

    fn moves(config: &Config, cells: &[(u32, u32)]) -> Option<MemoryMoves> {
        let topo = HostShape::new(4, 4, 1, 16 * 1024).build();
        let o = obs();
        let input = DomainInput::new(domain("g", 4, 4096).with_cells(2), None);
        let analyzer = Analyzer::new(&topo, &o, config);
        let info = analyzer.analyze(&input);
        let cells: BTreeMap<u32, u32> = cells.iter().copied().collect();
        let nodeset = cells.values().copied().collect();
        memory_moves(&info, &cells, &nodeset)
    }

    #[test]
    fn each_cell_off_its_node_moves_and_the_rest_follows_into_the_nodes() {
        let m = moves(&Config::default(), &[(0, 0), (1, 1)]).unwrap();
        assert_eq!(
            m.cells,
            [CellMove {
                cell: 1,
                node: 1,
                mib: 952
            }]
        );
        assert_eq!(m.rest_from, NodeSet::single(2));
        assert_eq!(m.rest_mib, 96);
        assert_eq!(m.mib(), 1048);
    }

    #[test]
    fn cells_sharing_a_node_or_memory_that_may_not_move_go_as_a_whole() {
        assert_eq!(moves(&Config::default(), &[(0, 0), (1, 0)]), None);
        assert_eq!(
            moves(&Config::default(), &[(0, 0)]),
            None,
            "a cell unmapped"
        );
        let mut off = Config::default();
        off.apply.migrate_memory = false;
        assert_eq!(moves(&off, &[(0, 0), (1, 1)]), None);
    }
}

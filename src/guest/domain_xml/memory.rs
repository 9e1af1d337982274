//! `<numatune>`, `<memory>` and `<memoryBacking>`: where the guest's
//! memory may live, how much it has and its page sizes.

use roxmltree::Node;

use super::Result;
use super::access::{
    attr_enum, attr_kib, attr_problem, attr_set, child, children, placement, problem,
    required_number, required_set, text_kib, text_problem,
};
use crate::guest::{GuestCell, HugepageBacking, MemNode, MemoryMode, NumaTune};
use crate::idset::IdSet;

fn memory_mode(node: Node) -> Result<MemoryMode> {
    let expected = "'strict', 'preferred', 'interleave' or 'restrictive'";
    let mode = attr_enum(node, "mode", expected, |v| match v {
        "strict" => Some(MemoryMode::Strict),
        "preferred" => Some(MemoryMode::Preferred),
        "interleave" => Some(MemoryMode::Interleave),
        "restrictive" => Some(MemoryMode::Restrictive),
        _ => None,
    })?;
    Ok(mode.unwrap_or(MemoryMode::Strict))
}

pub(super) fn numatune(
    node: Node,
    vcpu_placement_auto: bool,
    cell_count: usize,
) -> Result<NumaTune> {
    let mut tune = NumaTune {
        mode: MemoryMode::Strict,
        nodeset: None,
        placement_auto: false,
        memnodes: Vec::new(),
    };
    if let Some(memory) = child(node, "memory") {
        tune.mode = memory_mode(memory)?;
        tune.nodeset = attr_set(memory, "nodeset")?;
        let placement = placement(memory)?;
        if placement == Some(false) && tune.nodeset.is_none() {
            return Err(attr_problem(
                memory,
                "placement",
                "static placement needs a nodeset",
            ));
        }
        // libvirt: static when a nodeset is given, else <vcpu>'s placement.
        tune.placement_auto = placement.unwrap_or(tune.nodeset.is_none() && vcpu_placement_auto);
    }
    for memnode in children(node, "memnode") {
        let entry = memnode_entry(memnode, cell_count)?;
        if tune.memnodes.iter().any(|m| m.cellid == entry.cellid) {
            let msg = format!("cell {} has more than one <memnode>", entry.cellid);
            return Err(attr_problem(memnode, "cellid", msg));
        }
        tune.memnodes.push(entry);
    }
    Ok(tune)
}

fn memnode_entry(node: Node, cell_count: usize) -> Result<MemNode> {
    let cellid: u32 = required_number(node, "cellid")?;
    if cell_count == 0 {
        return Err(attr_problem(
            node,
            "cellid",
            "the domain has no guest NUMA cells (<cpu><numa>)",
        ));
    }
    if cellid as usize >= cell_count {
        let msg = format!("cell {cellid} does not exist (the domain has {cell_count})");
        return Err(attr_problem(node, "cellid", msg));
    }
    Ok(MemNode {
        cellid,
        mode: memory_mode(node)?,
        nodeset: required_set(node, "nodeset")?,
    })
}

// ---- memory -------------------------------------------------------------

/// `(<memory>, <currentMemory>)` in KiB.
pub(super) fn memory(root: Node, cells: &[GuestCell]) -> Result<(u64, u64)> {
    let max = match child(root, "memory") {
        Some(node) => text_kib(node)?,
        // libvirt accepts a domain sized by its NUMA cells alone.
        None if !cells.is_empty() => cells
            .iter()
            .fold(0u64, |sum, c| sum.saturating_add(c.memory_kib)),
        None => return Err(problem(root, None, None, "missing element <memory>")),
    };
    if max == 0 {
        let node = child(root, "memory").unwrap_or(root);
        return Err(text_problem(node, "the domain has no memory"));
    }
    let current = match child(root, "currentMemory") {
        Some(node) => text_kib(node)?,
        None => max,
    };
    // libvirt treats a balloon of 0 or above the maximum as the maximum.
    let current = if current == 0 || current > max {
        max
    } else {
        current
    };
    Ok((max, current))
}

pub(super) fn hugepages(root: Node, cell_count: usize) -> Result<Vec<HugepageBacking>> {
    let Some(node) = child(root, "memoryBacking").and_then(|m| child(m, "hugepages")) else {
        return Ok(Vec::new());
    };
    let pages: Vec<HugepageBacking> = children(node, "page")
        .map(|p| page(p, cell_count))
        .collect::<Result<_>>()?;
    if pages.is_empty() {
        return Ok(vec![HugepageBacking {
            size_kib: None,
            nodeset: None,
        }]);
    }
    Ok(pages)
}

fn page(node: Node, cell_count: usize) -> Result<HugepageBacking> {
    let size_kib = attr_kib(node, "size")?;
    if size_kib == 0 {
        return Err(attr_problem(node, "size", "a page size of zero"));
    }
    let nodeset = attr_set(node, "nodeset")?;
    // A domain without <numa> has a single implicit cell 0, as in libvirt.
    let cells = cell_count.max(1);
    if let Some(last) = nodeset.as_ref().and_then(IdSet::last)
        && last as usize >= cells
    {
        let msg = format!("guest cell {last} does not exist (the domain has {cells})");
        return Err(attr_problem(node, "nodeset", msg));
    }
    Ok(HugepageBacking {
        size_kib: Some(size_kib),
        nodeset,
    })
}

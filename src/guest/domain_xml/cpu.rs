//! `<cpu>`: the guest CPU's mode, topology, features and NUMA cells.

use std::collections::BTreeMap;

use roxmltree::Node;

use super::Result;
use super::access::{
    attr_enum, attr_kib, attr_number, attr_problem, attr_set, child, children, problem,
    required_attr, required_number, text,
};
use super::vcpus::missing_vcpu;
use crate::guest::{CpuFeature, CpuMode, FeaturePolicy, GuestCell, GuestCpu, GuestCpuTopology};
use crate::idset::IdSet;

pub(super) fn guest_cpu(node: Node, vcpus_max: u32) -> Result<GuestCpu> {
    let model = child(node, "model")
        .map(|m| text(m).trim())
        .filter(|m| !m.is_empty())
        .map(str::to_string);
    Ok(GuestCpu {
        mode: cpu_mode(node, model.is_some())?,
        topology: child(node, "topology")
            .map(|t| topology(t, vcpus_max))
            .transpose()?,
        features: children(node, "feature")
            .map(feature)
            .collect::<Result<_>>()?,
        cells: match child(node, "numa") {
            Some(numa) => cells(numa, vcpus_max)?,
            None => Vec::new(),
        },
        model,
    })
}

/// libvirt's default mode is custom, and it prints `mode=` whenever the mode
/// is not custom or a model is named. So a `<cpu>` without `mode=` and
/// without a model (typically only `<topology>`/`<numa>`) means the
/// hypervisor's default CPU, recorded as `None`; with a model it is custom.
fn cpu_mode(node: Node, has_model: bool) -> Result<Option<CpuMode>> {
    let expected = "'custom', 'host-model', 'host-passthrough' or 'maximum'";
    let mode = attr_enum(node, "mode", expected, |v| match v {
        "custom" => Some(CpuMode::Custom),
        "host-model" => Some(CpuMode::HostModel),
        "host-passthrough" => Some(CpuMode::HostPassthrough),
        "maximum" => Some(CpuMode::Maximum),
        _ => None,
    })?;
    Ok(mode.or(has_model.then_some(CpuMode::Custom)))
}

fn topology(node: Node, vcpus_max: u32) -> Result<GuestCpuTopology> {
    let level = |attr: &str, default: Option<u32>| -> Result<u32> {
        let value = match default {
            Some(d) => attr_number(node, attr)?.unwrap_or(d),
            None => required_number(node, attr)?,
        };
        if value == 0 {
            return Err(attr_problem(node, attr, "must be at least 1"));
        }
        Ok(value)
    };
    let t = GuestCpuTopology {
        sockets: level("sockets", None)?,
        dies: level("dies", Some(1))?,
        cores: level("cores", None)?,
        threads: level("threads", None)?,
    };
    // libvirt 10 adds clusters; counting them keeps newer XML valid here.
    let clusters = level("clusters", Some(1))?;
    let product = [t.sockets, t.dies, clusters, t.cores, t.threads]
        .iter()
        .map(|&n| u64::from(n))
        .product::<u64>();
    if product != u64::from(vcpus_max) {
        let msg = format!(
            "sockets={} dies={} cores={} threads={} make {product} vCPUs, but <vcpu> is {vcpus_max}",
            t.sockets, t.dies, t.cores, t.threads
        );
        return Err(problem(node, None, None, msg));
    }
    Ok(t)
}

fn feature(node: Node) -> Result<CpuFeature> {
    let name = required_attr(node, "name")?.trim();
    if name.is_empty() {
        return Err(attr_problem(node, "name", "the feature name is empty"));
    }
    let expected = "'force', 'require', 'optional', 'disable' or 'forbid'";
    let policy = attr_enum(node, "policy", expected, |v| match v {
        "force" => Some(FeaturePolicy::Force),
        "require" => Some(FeaturePolicy::Require),
        "optional" => Some(FeaturePolicy::Optional),
        "disable" => Some(FeaturePolicy::Disable),
        "forbid" => Some(FeaturePolicy::Forbid),
        _ => None,
    })?;
    // A guest CPU feature without a policy is required (libvirt's default).
    let policy = policy.unwrap_or(FeaturePolicy::Require);
    Ok(CpuFeature {
        name: name.to_string(),
        policy,
    })
}

/// Guest NUMA cells, ascending by id. libvirt requires ids 0..N-1, each
/// once; `id=` may be left out, giving the cell its position.
fn cells(numa: Node, vcpus_max: u32) -> Result<Vec<GuestCell>> {
    let nodes: Vec<Node> = children(numa, "cell").collect();
    let count = u32::try_from(nodes.len()).unwrap_or(u32::MAX);
    let mut cells: BTreeMap<u32, GuestCell> = BTreeMap::new();
    let mut placed = IdSet::new();
    for (position, node) in (0..count).zip(nodes) {
        let id = attr_number(node, "id")?.unwrap_or(position);
        if id >= count {
            let msg = format!("cell ids must run from 0 to {} ({count} cells)", count - 1);
            return Err(attr_problem(node, "id", msg));
        }
        if cells.contains_key(&id) {
            return Err(attr_problem(
                node,
                "id",
                format!("cell {id} is defined twice"),
            ));
        }
        let cpus = cell_cpus(node, vcpus_max, &placed)?;
        placed.union_with(&cpus);
        let cell = GuestCell {
            id,
            cpus,
            memory_kib: attr_kib(node, "memory")?,
            distances: distances(node, id, count)?,
        };
        cells.insert(id, cell);
    }
    Ok(cells.into_values().collect())
}

/// A cell's vCPUs. Since libvirt 6.6 `cpus=` may be left out for a
/// memory-only (CPU-less) cell; when given it must name existing vCPUs that
/// no earlier cell holds.
fn cell_cpus(node: Node, vcpus_max: u32, placed: &IdSet) -> Result<IdSet> {
    let Some(cpus) = attr_set(node, "cpus")? else {
        return Ok(IdSet::new());
    };
    if let Some(last) = cpus.last()
        && last >= vcpus_max
    {
        return Err(attr_problem(node, "cpus", missing_vcpu(last, vcpus_max)));
    }
    if let Some(shared) = cpus.intersection(placed).first() {
        return Err(attr_problem(
            node,
            "cpus",
            format!("vCPU {shared} is already in another cell"),
        ));
    }
    Ok(cpus)
}

/// `<distances><sibling id= value=/>`: ids of existing cells, values in
/// the ACPI SLIT range libvirt accepts (10 local ..= 255 unreachable).
fn distances(cell: Node, cell_id: u32, count: u32) -> Result<BTreeMap<u32, u32>> {
    let mut map = BTreeMap::new();
    let siblings = child(cell, "distances")
        .into_iter()
        .flat_map(|d| children(d, "sibling"));
    for node in siblings {
        let id: u32 = required_number(node, "id")?;
        if id >= count {
            return Err(attr_problem(
                node,
                "id",
                format!("cell {id} does not exist (the domain has {count})"),
            ));
        }
        let value: u32 = required_number(node, "value")?;
        if !(10..=255).contains(&value) || (id == cell_id) != (value == 10) {
            let msg = "distance must be 10 to the cell itself and 11 to 255 to others";
            return Err(attr_problem(node, "value", msg));
        }
        if map.insert(id, value).is_some() {
            return Err(attr_problem(
                node,
                "id",
                format!("distance to cell {id} is given twice"),
            ));
        }
    }
    Ok(map)
}

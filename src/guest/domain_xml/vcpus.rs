//! `<vcpu>`, `<vcpus>`, `<iothreads>` and `<cputune>`: how many vCPUs and
//! IOThreads a domain has, which are online, and their pins.

use std::collections::BTreeSet;

use roxmltree::Node;

use super::access::{
    attr_enum, attr_number, attr_problem, attr_set, child, children, placement, problem,
    required_number, required_set, text_number, text_problem,
};
use super::{MAX_IOTHREADS, MAX_VCPUS, Result};
use crate::guest::CpuTune;
use crate::idset::{IdSet, MAX_ID};

pub(super) struct Vcpus {
    pub(super) max: u32,
    pub(super) current: u32,
    /// Ids of the online vCPUs.
    pub(super) online: IdSet,
    /// Explicit `placement=`, as `Some(is_auto)`.
    pub(super) placement: Option<bool>,
    pub(super) cpuset: Option<IdSet>,
}

pub(super) fn vcpus(root: Node) -> Result<Vcpus> {
    // libvirt gives a domain without <vcpu> one vCPU.
    let Some(node) = child(root, "vcpu") else {
        return Ok(Vcpus {
            max: 1,
            current: 1,
            online: IdSet::single(0),
            placement: None,
            cpuset: None,
        });
    };
    let max: u32 = text_number(node)?;
    if max == 0 {
        return Err(text_problem(node, "a domain needs at least one vCPU"));
    }
    if max > MAX_VCPUS {
        return Err(text_problem(
            node,
            format!("{max} vCPUs is more than numapin handles ({MAX_VCPUS})"),
        ));
    }
    let current = attr_number(node, "current")?.unwrap_or(max);
    if current == 0 || current > max {
        let msg = format!("current vCPUs must be between 1 and the maximum {max}");
        return Err(attr_problem(node, "current", msg));
    }
    // The per-vCPU list, when present, is the state libvirt really tracks.
    let online = match child(root, "vcpus") {
        Some(list) => enabled_vcpus(list, max)?,
        None => IdSet::first_n(current),
    };
    Ok(Vcpus {
        max,
        current: online.len() as u32,
        online,
        placement: placement(node)?,
        cpuset: attr_set(node, "cpuset")?,
    })
}

/// Ids of the `<vcpus><vcpu id= enabled='yes'/>` entries.
fn enabled_vcpus(list: Node, max: u32) -> Result<IdSet> {
    let mut seen = BTreeSet::new();
    let mut enabled = IdSet::new();
    for node in children(list, "vcpu") {
        let id: u32 = required_number(node, "id")?;
        if id >= max {
            return Err(attr_problem(node, "id", missing_vcpu(id, max)));
        }
        if !seen.insert(id) {
            return Err(attr_problem(
                node,
                "id",
                format!("vCPU {id} is listed twice"),
            ));
        }
        let on = attr_enum(node, "enabled", "'yes' or 'no'", |v| match v {
            "yes" => Some(true),
            "no" => Some(false),
            _ => None,
        })?;
        match on {
            Some(true) => enabled.insert(id),
            Some(false) => {}
            None => {
                return Err(problem(
                    node,
                    Some("enabled"),
                    None,
                    "missing attribute 'enabled'",
                ));
            }
        }
    }
    if enabled.is_empty() {
        return Err(problem(list, None, None, "no vCPU is enabled"));
    }
    Ok(enabled)
}

pub(super) fn missing_vcpu(id: u32, max: u32) -> String {
    format!("vCPU {id} does not exist (the domain has {max})")
}

/// libvirt's default for `<vcpu placement>`: auto when `<numatune><memory>`
/// says auto and no cpuset is given, static otherwise.
pub(super) fn vcpu_placement_auto(vcpus: &Vcpus, numatune: Option<Node>) -> Result<bool> {
    if let Some(explicit) = vcpus.placement {
        return Ok(explicit);
    }
    let memory = numatune.and_then(|n| child(n, "memory"));
    let numa_auto = memory.map(placement).transpose()?.flatten() == Some(true);
    Ok(vcpus.cpuset.is_none() && numa_auto)
}

/// IOThread ids, ascending. `<iothreadids>` names ids explicitly; threads
/// that `<iothreads>N` counts beyond those get the lowest free ids, as
/// libvirt assigns them.
pub(super) fn iothreads(root: Node) -> Result<Vec<u32>> {
    let count = match child(root, "iothreads") {
        Some(node) => {
            let count: u32 = text_number(node)?;
            if count > MAX_IOTHREADS {
                return Err(text_problem(
                    node,
                    format!("{count} IOThreads is more than numapin handles ({MAX_IOTHREADS})"),
                ));
            }
            count
        }
        None => 0,
    };
    let mut ids = BTreeSet::new();
    for node in child(root, "iothreadids")
        .into_iter()
        .flat_map(|n| children(n, "iothread"))
    {
        let id: u32 = required_number(node, "id")?;
        if id == 0 || id > MAX_ID {
            return Err(attr_problem(
                node,
                "id",
                format!("IOThread ids run from 1 to {MAX_ID}"),
            ));
        }
        if !ids.insert(id) {
            return Err(attr_problem(
                node,
                "id",
                format!("IOThread {id} is listed twice"),
            ));
        }
    }
    let mut next = 1;
    while ids.len() < count as usize {
        ids.insert(next);
        next += 1;
    }
    Ok(ids.into_iter().collect())
}

// ---- <cputune> ----------------------------------------------------------

pub(super) fn cputune(node: Node, vcpus_max: u32, iothreads: &[u32]) -> Result<CpuTune> {
    let mut tune = CpuTune::default();
    for pin in children(node, "vcpupin") {
        let vcpu: u32 = required_number(pin, "vcpu")?;
        if vcpu >= vcpus_max {
            return Err(attr_problem(pin, "vcpu", missing_vcpu(vcpu, vcpus_max)));
        }
        if tune
            .vcpupin
            .insert(vcpu, required_set(pin, "cpuset")?)
            .is_some()
        {
            return Err(attr_problem(
                pin,
                "vcpu",
                format!("vCPU {vcpu} is pinned twice"),
            ));
        }
    }
    let mut emulator = children(node, "emulatorpin");
    if let Some(pin) = emulator.next() {
        tune.emulatorpin = Some(required_set(pin, "cpuset")?);
    }
    if let Some(extra) = emulator.next() {
        return Err(problem(
            extra,
            None,
            None,
            "only one <emulatorpin> is allowed",
        ));
    }
    for pin in children(node, "iothreadpin") {
        let id: u32 = required_number(pin, "iothread")?;
        if !iothreads.contains(&id) {
            let known: IdSet = iothreads.iter().copied().collect();
            let msg = match known.is_empty() {
                true => format!("IOThread {id} does not exist (the domain has none)"),
                false => format!("IOThread {id} does not exist (the domain has {known})"),
            };
            return Err(attr_problem(pin, "iothread", msg));
        }
        if tune
            .iothreadpin
            .insert(id, required_set(pin, "cpuset")?)
            .is_some()
        {
            return Err(attr_problem(
                pin,
                "iothread",
                format!("IOThread {id} is pinned twice"),
            ));
        }
    }
    Ok(tune)
}

//! The plan as a terminal table: per domain where it is, where it goes and
//! why; then advice, the steps apply would take, and the score.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::idset::CpuSet;
use crate::planner::{Action, DomainPlan, Hypervisor, Plan, Status};
use crate::topology::HostTopology;

use super::{mib, percent};

fn status_word(s: Status) -> &'static str {
    match s {
        Status::LeftAlone => "left alone",
        Status::Kept => "kept",
        Status::Placed => "place",
        Status::Moved => "move",
        Status::Deferred => "deferred",
        Status::NoFit => "no fit",
    }
}

fn nodes_text(nodes: &crate::idset::NodeSet) -> String {
    if nodes.is_empty() {
        "-".into()
    } else {
        nodes.to_string()
    }
}

/// Consecutive vcpupin steps with the same CPUs read as one line.
fn compact_actions(actions: &[Action]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut run: Option<(CpuSet, CpuSet)> = None; // (vcpus, cpus)
    let flush = |run: &mut Option<(CpuSet, CpuSet)>, out: &mut Vec<String>| {
        if let Some((vcpus, cpus)) = run.take() {
            out.push(format!("vcpupin {vcpus} -> {cpus}"));
        }
    };
    for a in actions {
        match a {
            Action::Vcpupin { vcpu, cpus } => match &mut run {
                Some((vcpus, run_cpus)) if run_cpus == cpus => vcpus.insert(*vcpu),
                _ => {
                    flush(&mut run, &mut out);
                    run = Some((CpuSet::single(*vcpu), cpus.clone()));
                }
            },
            other => {
                flush(&mut run, &mut out);
                out.push(other.to_string());
            }
        }
    }
    flush(&mut run, &mut out);
    out
}

pub fn render(plan: &Plan, topo: &HostTopology, source: &str) -> String {
    let mut s = String::new();
    let cpus = topo.cpus.len();
    let _ = writeln!(
        s,
        "numapin plan for {source}: {} nodes, {cpus} CPUs ({} per core), {}, {}\n",
        topo.nodes.len(),
        topo.smt_width(),
        mib(topo.total_memory_mib()),
        topo.kind
    );
    let name_w = plan
        .domains
        .iter()
        .map(|d| d.name.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let _ = writeln!(
        s,
        "{:<name_w$}  {:>5}  {:>8}  {:<10}  {:<6} {:>5}    {:<6} {:>5}  {:<10}  WHY",
        "DOMAIN", "VCPUS", "MEMORY", "POLICY", "NOW", "LOCAL", "PLAN", "LOCAL", "STATUS"
    );
    for d in &plan.domains {
        let policy = match (&d.policy, d.nested_hypervisor) {
            (Some(p), true) => format!("{}*", p.as_str()),
            (Some(p), false) => p.as_str().to_string(),
            (None, _) => "-".into(),
        };
        let _ = writeln!(
            s,
            "{:<name_w$}  {:>5}  {:>8}  {:<10}  {:<6} {:>5} -> {:<6} {:>5}  {:<10}  {}",
            d.name,
            d.vcpus,
            mib(d.memory_mib),
            policy,
            nodes_text(&d.current.nodes),
            percent(d.current.locality),
            nodes_text(&d.nodes),
            percent(d.locality_after),
            status_word(d.status),
            d.reason
        );
    }
    let _ = writeln!(
        s,
        "\nNOW/PLAN: host nodes the vCPUs may run on; LOCAL: distance-weighted memory locality; * nested hypervisor"
    );
    render_hypervisors(&mut s, &plan.domains);
    render_memory_tiers(&mut s, &plan.domains, topo);
    render_cells(&mut s, &plan.domains);
    render_advice(&mut s, &plan.domains);
    render_actions(&mut s, &plan.domains);
    render_score(&mut s, plan);
    s
}

/// Guests that can run VMs: which are taken for hypervisors and why, so a
/// host-model guest given shared CPUs is explained, not a surprise.
fn render_hypervisors(s: &mut String, domains: &[DomainPlan]) {
    let capable: Vec<&DomainPlan> = domains
        .iter()
        .filter(|d| d.hypervisor != Hypervisor::Unable)
        .collect();
    if capable.is_empty() {
        return;
    }
    let _ = writeln!(s, "\nNested virtualisation:");
    for d in capable {
        let verdict = if d.nested_hypervisor {
            "hypervisor"
        } else {
            "ordinary guest"
        };
        let _ = writeln!(s, "  {}: {verdict}: {}", d.name, d.hypervisor);
    }
}

/// Guests with memory on memory-only nodes (CXL, HBM), now or planned:
/// how much of it is on each tier.
fn render_memory_tiers(s: &mut String, domains: &[DomainPlan], topo: &HostTopology) {
    let tiers: Vec<u32> = topo
        .nodes
        .iter()
        .filter(|n| n.cpus.is_empty())
        .map(|n| n.id)
        .collect();
    let on_tier = |m: &BTreeMap<u32, u64>| -> u64 {
        m.iter()
            .filter(|(n, _)| tiers.contains(n))
            .map(|(_, mib)| mib)
            .sum()
    };
    let rows: Vec<&DomainPlan> = domains
        .iter()
        .filter(|d| !d.memory_only_mib.is_empty() || on_tier(&d.current.memory_mib) > 0)
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(s, "\nMemory on memory-only nodes (now -> planned):");
    for d in rows {
        let now = on_tier(&d.current.memory_mib);
        let planned: u64 = if d.status == Status::LeftAlone
            || d.status == Status::Deferred
            || d.status == Status::NoFit
        {
            now
        } else {
            d.memory_only_mib.values().sum()
        };
        let nodes: Vec<String> = d
            .memory_only_mib
            .keys()
            .map(|n| format!("node {n}"))
            .collect();
        let _ = writeln!(
            s,
            "  {}: {} -> {} of {}{}",
            d.name,
            mib(now),
            mib(planned),
            mib(d.memory_mib),
            if nodes.is_empty() {
                String::new()
            } else {
                format!(" (on {})", nodes.join(", "))
            }
        );
    }
}

fn render_cells(s: &mut String, domains: &[DomainPlan]) {
    let with_cells: Vec<&DomainPlan> = domains.iter().filter(|d| !d.cells.is_empty()).collect();
    if with_cells.is_empty() {
        return;
    }
    let _ = writeln!(s, "\nGuest NUMA cells -> host nodes:");
    for d in with_cells {
        let map: Vec<String> = d
            .cells
            .iter()
            .map(|(c, n)| format!("cell {c} -> node {n}"))
            .collect();
        let _ = writeln!(s, "  {}: {}", d.name, map.join(", "));
    }
}

fn render_advice(s: &mut String, domains: &[DomainPlan]) {
    if domains.iter().all(|d| d.advice.is_empty()) {
        return;
    }
    let _ = writeln!(s, "\nAdvice (needs a restart or a redefine):");
    for d in domains {
        for a in &d.advice {
            let _ = writeln!(s, "  {}: {a}", d.name);
        }
    }
}

fn render_actions(s: &mut String, domains: &[DomainPlan]) {
    if domains.iter().all(|d| d.actions.is_empty()) {
        let _ = writeln!(s, "\nNothing to change.");
        return;
    }
    let _ = writeln!(s, "\nSteps apply would take, in order:");
    for d in domains.iter().filter(|d| !d.actions.is_empty()) {
        let _ = writeln!(s, "  {}:", d.name);
        for line in compact_actions(&d.actions) {
            let _ = writeln!(s, "    {line}");
        }
    }
}

fn render_score(s: &mut String, plan: &Plan) {
    let sc = &plan.score;
    let _ = writeln!(
        s,
        "\nScore: memory locality {} -> {}, node imbalance {:.2} -> {:.2}, guests spanning nodes needlessly {} -> {}, {} moves, {} to migrate, {} steps",
        percent(sc.locality_before),
        percent(sc.locality_after),
        sc.imbalance_before,
        sc.imbalance_after,
        sc.spanning_before,
        sc.spanning_after,
        sc.moves,
        mib(sc.migrate_mib),
        sc.actions
    );
    let loads: Vec<String> = plan
        .nodes
        .iter()
        .filter(|n| !n.cpus.is_empty())
        .map(|n| {
            format!(
                "node {} {} -> {}",
                n.id,
                percent(n.pressure_before),
                percent(n.pressure_after)
            )
        })
        .collect();
    let _ = writeln!(s, "Node load: {}", loads.join(", "));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_vcpupins_collapse() {
        let cpus: CpuSet = "0-3".parse().unwrap();
        let other: CpuSet = "4".parse().unwrap();
        let actions = vec![
            Action::Emulatorpin { cpus: cpus.clone() },
            Action::Vcpupin {
                vcpu: 0,
                cpus: cpus.clone(),
            },
            Action::Vcpupin {
                vcpu: 1,
                cpus: cpus.clone(),
            },
            Action::Vcpupin {
                vcpu: 2,
                cpus: other.clone(),
            },
        ];
        assert_eq!(
            compact_actions(&actions),
            ["emulatorpin 0-3", "vcpupin 0-1 -> 0-3", "vcpupin 2 -> 4"]
        );
    }
}

//! `numapin status`: where every running domain is now, and each node's
//! load. Built from a live reading and the plan numapin would make for it
//! (which says whether a domain is managed and why not).

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::config::Config;
use crate::converge::Progress;
use crate::idset::{CpuSet, NodeSet};
use crate::live::LiveState;
use crate::live::state::Unreadable;
use crate::observe::node_stats::NodeNumaStat;
use crate::planner::domain_info::Analyzer;
use crate::planner::score::{Distances, locality, vcpu_node_weights};
use crate::planner::{Action, Hypervisor, Plan, Status as PlanStatus};

use super::{mib, percent};

#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub nodes: Vec<NodeStatus>,
    pub domains: Vec<DomainStatus>,
    pub unreadable: Vec<Unreadable>,
    /// Domains with an unfinished transaction in the journal.
    pub pending_transactions: Vec<String>,
    /// The host-wide rate memory moves at (`apply.migrate_rate_mib_s`).
    pub memory_move_rate_mib_s: f64,
    /// MiB the daemon has moved since it started (the daemon's own status
    /// only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_moved_mib: Option<u64>,
}

/// A guest's memory on its way to where it is confined.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryToMove {
    /// MiB still off its placement.
    pub mib: u64,
    /// Seconds until it should have arrived at the configured rate,
    /// counting the guests served before it.
    pub eta_secs: f64,
    /// Why it does not move now (a job, a pause), if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub id: u32,
    pub cpus: CpuSet,
    pub total_mib: u64,
    pub free_mib: Option<u64>,
    /// Busy vCPUs expected on the node's CPUs (measured loads, each vCPU
    /// shared out over the nodes its affinity allows).
    pub vcpu_demand: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub numastat: Option<NodeNumaStat>,
    /// CPUs held by dedicated vCPUs once the plan is applied.
    pub dedicated_cpus: CpuSet,
    /// vCPUs waiting in the run queue on the node's CPUs, in CPUs (the sum
    /// of their measured wait shares, each shared out like the demand);
    /// `None` when no wait was measured.
    pub vcpu_wait: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DomainStatus {
    pub name: String,
    pub uuid: String,
    pub state: String,
    pub vcpus: usize,
    /// Host nodes its vCPUs may run on.
    pub vcpu_nodes: NodeSet,
    /// Resident MiB per host node, when measured.
    pub memory_mib: BTreeMap<u32, u64>,
    /// Distance-weighted memory locality (1 = all local).
    pub locality: Option<f64>,
    pub managed: bool,
    /// Why not managed, or what numapin would do now.
    pub reason: String,
    /// What an operator changed after numapin placed it, when that is why
    /// numapin stopped managing it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed_by_operator: Option<String>,
    /// Whether it is taken for a hypervisor of its own.
    pub nested_hypervisor: bool,
    /// Why, or why not.
    pub hypervisor: String,
    /// Mean share of time its vCPUs waited for a host CPU over the last
    /// window (libvirt's `vcpu.N.delay`); `None` when not measured.
    pub vcpu_wait: Option<f64>,
    /// CPUs dedicated to other guests that its threads may run on, for a
    /// domain numapin leaves alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_dedicated_cpus: Option<CpuSet>,
    /// Memory still to move to where it is confined.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_to_move: Option<MemoryToMove>,
    /// Seconds since numapin confined it where it is (the daemon's own
    /// status only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confined_secs: Option<f64>,
}

pub fn build(
    state: &LiveState,
    plan: &Plan,
    config: &Config,
    pending: Vec<String>,
) -> StatusReport {
    let topo = &state.topology;
    let analyzer = Analyzer::new(topo, &state.observations, config);
    let distances = Distances::new(topo);
    let mut demand: BTreeMap<u32, f64> = BTreeMap::new();
    let mut waiting: BTreeMap<u32, f64> = BTreeMap::new();
    let mut domains = Vec::new();
    for live in &state.domains {
        let info = analyzer.analyze(&live.input);
        let affinities: Vec<&CpuSet> = info.current.vcpu_affinity.values().collect();
        let weights = vcpu_node_weights(topo, affinities.iter().copied());
        for (node, w) in &weights {
            *demand.entry(*node).or_default() += info.load * w;
        }
        let observed = state.observations.domains.get(&live.r.name);
        let memory_mib = observed.map(|o| o.memory_mib.clone()).unwrap_or_default();
        // The online vCPUs' summed wait, in CPUs, when it was measured.
        let wait_total: Option<f64> = observed
            .map(|o| &o.vcpu_wait)
            .filter(|w| !w.is_empty())
            .map(|w| {
                info.online_vcpus
                    .iter()
                    .filter_map(|v| w.get(*v as usize))
                    .sum()
            });
        if let Some(total) = wait_total {
            for (node, w) in &weights {
                *waiting.entry(*node).or_default() += total * w;
            }
        }
        let vcpu_wait = wait_total.map(|total| round2(total / info.vcpu_count().max(1) as f64));
        let locality =
            (!memory_mib.is_empty()).then(|| locality(&distances, &weights, &memory_mib).0);
        let planned = plan.domains.iter().find(|p| p.uuid == live.r.uuid);
        let reason = match planned {
            Some(p) if p.status == PlanStatus::LeftAlone => p.reason.clone(),
            Some(p) if p.actions.iter().all(Action::is_page_move) => {
                format!("placed: {}", p.reason)
            }
            Some(p) => format!("would change: {}", p.reason),
            None => String::new(),
        };
        domains.push(DomainStatus {
            name: live.r.name.clone(),
            uuid: live.r.uuid.clone(),
            state: live.activity.state.clone(),
            vcpus: info.vcpu_count(),
            vcpu_nodes: info.current.nodes.clone(),
            memory_mib,
            locality,
            managed: planned.map_or(info.is_managed(), |p| p.managed),
            reason,
            changed_by_operator: planned.and_then(|p| p.changed_by_operator.clone()),
            nested_hypervisor: info.is_nested_hypervisor(),
            hypervisor: info.hypervisor.to_string(),
            vcpu_wait,
            on_dedicated_cpus: planned.and_then(|p| p.on_dedicated_cpus.clone()),
            memory_to_move: None,
            confined_secs: None,
        });
    }
    let rate = config.apply.migrate_rate_mib_s as f64;
    estimate_memory_to_move(plan, rate, &mut domains);
    let dedicated: CpuSet = plan
        .nodes
        .iter()
        .fold(CpuSet::new(), |all, n| all.union(&n.dedicated_cpus));
    let nodes = topo
        .nodes
        .iter()
        .map(|n| NodeStatus {
            id: n.id,
            cpus: n.cpus.clone(),
            total_mib: n.memory_mib,
            free_mib: state.observations.nodes.get(&n.id).and_then(|o| o.free_mib),
            vcpu_demand: round2(demand.get(&n.id).copied().unwrap_or(0.0)),
            numastat: state.node_stats.get(&n.id).cloned(),
            dedicated_cpus: n.cpus.intersection(&dedicated),
            vcpu_wait: waiting.get(&n.id).map(|w| round2(*w)),
        })
        .collect();
    StatusReport {
        nodes,
        domains,
        unreadable: state.unreadable.clone(),
        pending_transactions: pending,
        memory_move_rate_mib_s: rate,
        memory_moved_mib: None,
    }
}

/// What the plan still has to move per guest, served the way the mover
/// serves them (most first), at `rate` MiB/s: an estimate for `numapin
/// status`, which does not see the daemon's mover.
fn estimate_memory_to_move(plan: &Plan, rate: f64, domains: &mut [DomainStatus]) {
    let mut moving: Vec<(&str, u64)> = plan
        .domains
        .iter()
        .filter(|d| d.managed && d.migrate_mib > 0 && d.actions.iter().any(Action::is_page_move))
        .map(|d| (d.uuid.as_str(), d.migrate_mib))
        .collect();
    moving.sort_by_key(|&(uuid, mib)| (std::cmp::Reverse(mib), uuid));
    let mut ahead = 0;
    for (uuid, mib) in moving {
        ahead += mib;
        if let Some(d) = domains.iter_mut().find(|d| d.uuid == uuid) {
            d.memory_to_move = Some(MemoryToMove {
                mib,
                eta_secs: ahead as f64 / rate.max(1.0),
                held: None,
            });
        }
    }
}

impl StatusReport {
    /// The daemon's own figures: what its mover has left to move.
    pub fn set_memory_progress(&mut self, p: &Progress) {
        self.memory_move_rate_mib_s = p.mib_per_sec;
        self.memory_moved_mib = Some(p.moved_total_mib);
        for d in &mut self.domains {
            d.memory_to_move = p.of(&d.uuid).map(|m| MemoryToMove {
                mib: m.left_mib,
                eta_secs: m.eta_secs,
                held: m.held.clone(),
            });
        }
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

pub fn render(r: &StatusReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "NODE  CPUS          MEMORY     FREE       vCPU DEMAND                      WAITING  DEDICATED"
    );
    for n in &r.nodes {
        let demand = format!("{:.2} busy vCPUs on {} CPUs", n.vcpu_demand, n.cpus.len());
        let _ = writeln!(
            s,
            "{:<5} {:<13} {:<10} {:<10} {:<32} {:<8} {}",
            n.id,
            n.cpus.to_string(),
            mib(n.total_mib),
            n.free_mib.map_or("-".into(), mib),
            demand,
            n.vcpu_wait.map_or("-".into(), |w| format!("{w:.2}")),
            if n.dedicated_cpus.is_empty() {
                "-".to_string()
            } else {
                n.dedicated_cpus.to_string()
            },
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "DOMAIN               STATE    vCPUS  vCPU NODES  MEMORY BY NODE          LOCALITY  WAIT   MANAGED"
    );
    for d in &r.domains {
        let memory = if d.memory_mib.is_empty() {
            "-".to_string()
        } else {
            // Memory-only nodes (CXL, HBM) are marked: memory there is far.
            let tier = |n: &u32| {
                r.nodes
                    .iter()
                    .any(|node| node.id == *n && node.cpus.is_empty())
            };
            d.memory_mib
                .iter()
                .map(|(n, m)| format!("{n}{}:{}", if tier(n) { "*" } else { "" }, mib(*m)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let vcpu_nodes = if d.vcpu_nodes.is_empty() {
            "-".to_string()
        } else {
            d.vcpu_nodes.to_string()
        };
        let _ = writeln!(
            s,
            "{:<20} {:<8} {:<6} {:<11} {:<23} {:<9} {:<6} {}",
            d.name,
            d.state,
            d.vcpus,
            vcpu_nodes,
            memory,
            d.locality.map_or("-".into(), percent),
            d.vcpu_wait.map_or("-".into(), percent),
            if d.managed { "yes" } else { "no" },
        );
        if !d.reason.is_empty() {
            let _ = writeln!(s, "    {}", d.reason);
        }
        if d.hypervisor != Hypervisor::Unable.to_string() {
            let verdict = if d.nested_hypervisor {
                "hypervisor"
            } else {
                "ordinary guest"
            };
            let _ = writeln!(s, "    {verdict}: {}", d.hypervisor);
        }
        if let Some(m) = &d.memory_to_move {
            let when = match &m.held {
                Some(why) => format!("waits: {why}"),
                None => format!(
                    "about {:.0} s at {:.0} MiB/s",
                    m.eta_secs, r.memory_move_rate_mib_s
                ),
            };
            let _ = writeln!(
                s,
                "    memory: {} still to move to its placement, {when}",
                mib(m.mib)
            );
        }
        if let Some(cpus) = &d.on_dedicated_cpus {
            let _ = writeln!(
                s,
                "    may run on CPUs {cpus}, dedicated to other guests (left alone: numapin does not change it)"
            );
        }
    }
    if r.nodes.iter().any(|n| n.cpus.is_empty()) {
        let _ = writeln!(
            s,
            "\n* memory-only node (CXL, HBM): memory there is far from every CPU"
        );
    }
    for u in &r.unreadable {
        let _ = writeln!(s, "{:<20} unreadable, left alone: {}", u.name, u.reason);
    }
    if !r.pending_transactions.is_empty() {
        let _ = writeln!(
            s,
            "\nunfinished transactions (rolled back by the next apply or daemon start): {}",
            r.pending_transactions.join(", ")
        );
    }
    s
}

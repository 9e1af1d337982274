//! Guests shaped like a production host's: mostly small host-passthrough
//! and host-model guests (what virt-install and cloud images default to),
//! 70% of them mostly idle, a few nested hypervisors with two guest NUMA
//! cells, declared in their definition or only seen running nested guests.

use crate::synth::Rng;

use super::trace::{CpuKind, GuestSpec, HypervisorKind};

/// vCPUs per host CPU (hardware thread) the population asks for.
pub const OVERCOMMIT: f64 = 2.5;

/// Share of the guests that are nested hypervisors.
pub const HYPERVISORS: f64 = 0.03;

/// Share of the ordinary guests that are mostly idle.
pub const IDLE: f64 = 0.7;

/// Mean vCPUs of a guest, from the sizes below (hypervisors counted, on
/// a node of 48 CPUs): sets the population.
pub const MEAN_VCPUS: f64 = 4.6;

/// An ordinary guest: 1-16 vCPUs (mostly 1-4), 2 or 4 GiB per vCPU;
/// or, one in thirty-three, a hypervisor of a quarter of a node's CPUs
/// with two cells and 4 GiB per vCPU.
pub fn guest(rng: &mut Rng, node_cpus: u32) -> GuestSpec {
    if rng.chance(HYPERVISORS) {
        let vcpus = (node_cpus / 4).max(2) / 2 * 2;
        let declared = rng.chance(0.5);
        return GuestSpec {
            vcpus,
            mem_mib: vcpus as u64 * 4096,
            cells: 2,
            load: load(rng, false),
            cpu: CpuKind::HostPassthrough,
            hypervisor: Some(if declared {
                HypervisorKind::Declared
            } else {
                HypervisorKind::Observed
            }),
            idle: false,
            ..GuestSpec::default()
        };
    }
    let vcpus = *rng.pick(&[1, 1, 2, 2, 2, 4, 4, 4, 8, 16]);
    let per_vcpu = *rng.pick(&[2048, 2048, 2048, 2048, 4096, 4096]);
    let cpu = match rng.below(10) {
        0..=4 => CpuKind::HostPassthrough,
        5..=8 => CpuKind::HostModel,
        _ => CpuKind::Named,
    };
    let idle = rng.chance(IDLE);
    GuestSpec {
        vcpus,
        mem_mib: vcpus as u64 * per_vcpu,
        cells: 0,
        load: load(rng, idle),
        cpu,
        hypervisor: None,
        idle,
        ..GuestSpec::default()
    }
}

/// A mostly idle guest's vCPUs are busy 1-10% of the time; an active
/// one's 30-95%.
pub fn load(rng: &mut Rng, idle: bool) -> f64 {
    let l = if idle {
        0.01 + 0.09 * rng.unit()
    } else {
        0.3 + 0.65 * rng.unit()
    };
    (l * 100.0).round() / 100.0
}

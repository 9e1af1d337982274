//! A libvirt domain as numapin sees it: sizes, the guest's own topology,
//! current tuning, and numapin's per-domain policy. Filled from the live
//! domain XML that `virsh dumpxml` prints ([`domain_xml`]).

pub mod domain_xml;
pub mod metadata;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::idset::{CpuSet, NodeSet};

pub use metadata::{DomainPolicy, METADATA_NAMESPACE};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Domain {
    pub name: String,
    pub uuid: String,
    /// Virtualisation type: "kvm", "qemu", ...
    pub virt_type: String,
    /// `<os><type arch=..>`: the guest's architecture, when given.
    pub arch: Option<String>,
    /// Running domain id (`id=` attribute); absent for inactive XML.
    pub id: Option<i32>,
    /// `<vcpu>` value: the most vCPUs the domain can have.
    pub vcpus_max: u32,
    /// `<vcpu current=..>`: vCPUs online now (defaults to the maximum).
    pub vcpus_current: u32,
    /// Ids of the online vCPUs: `0..vcpus_current`, or the `<vcpus>` entries
    /// with `enabled='yes'` when the XML lists them.
    pub online_vcpus: CpuSet,
    /// `<vcpu placement='auto'>`: libvirt asked numad at start.
    pub vcpu_placement_auto: bool,
    /// `<vcpu cpuset=..>`: default affinity of all vCPUs.
    pub vcpu_cpuset: Option<CpuSet>,
    /// `<memory>` in KiB (maximum).
    pub memory_kib: u64,
    /// `<currentMemory>` in KiB (defaults to `memory_kib`).
    pub current_memory_kib: u64,
    pub hugepages: Vec<HugepageBacking>,
    pub cpu: GuestCpu,
    pub cputune: CpuTune,
    pub numatune: Option<NumaTune>,
    /// IOThread ids (`<iothreads>N</iothreads>` gives 1..=N; `<iothreadids>`
    /// lists them explicitly).
    pub iothreads: Vec<u32>,
    /// numapin's own `<metadata>` element, when present.
    pub policy: Option<DomainPolicy>,
    /// Target names of its disks (`vda`, `sdb`): where block jobs (copy,
    /// commit, backup) run.
    pub disks: Vec<String>,
}

/// One `<memoryBacking><hugepages><page .../>` entry. A `<hugepages/>` with
/// no `<page>` child means the host's default hugepage size, recorded as
/// `size_kib: None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HugepageBacking {
    pub size_kib: Option<u64>,
    /// Guest NUMA cells this page size backs; `None` means all memory.
    pub nodeset: Option<NodeSet>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CpuMode {
    Custom,
    HostModel,
    HostPassthrough,
    Maximum,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FeaturePolicy {
    Force,
    Require,
    Optional,
    Disable,
    Forbid,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CpuFeature {
    pub name: String,
    pub policy: FeaturePolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GuestCpuTopology {
    pub sockets: u32,
    pub dies: u32,
    pub cores: u32,
    pub threads: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GuestCpu {
    /// `None` when the XML has no `<cpu mode=..>` (libvirt's default model).
    pub mode: Option<CpuMode>,
    pub model: Option<String>,
    pub topology: Option<GuestCpuTopology>,
    pub features: Vec<CpuFeature>,
    /// Guest NUMA cells, ascending by id.
    pub cells: Vec<GuestCell>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuestCell {
    pub id: u32,
    /// Guest vCPU ids in this cell.
    pub cpus: CpuSet,
    pub memory_kib: u64,
    /// Declared distances to other cells (guest SLIT), possibly empty.
    pub distances: BTreeMap<u32, u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct CpuTune {
    /// vCPU id -> host CPUs.
    pub vcpupin: BTreeMap<u32, CpuSet>,
    pub emulatorpin: Option<CpuSet>,
    /// IOThread id -> host CPUs.
    pub iothreadpin: BTreeMap<u32, CpuSet>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryMode {
    Strict,
    Preferred,
    Interleave,
    Restrictive,
}

impl MemoryMode {
    /// The name libvirt uses in `<numatune>`.
    pub fn as_str(self) -> &'static str {
        match self {
            MemoryMode::Strict => "strict",
            MemoryMode::Preferred => "preferred",
            MemoryMode::Interleave => "interleave",
            MemoryMode::Restrictive => "restrictive",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NumaTune {
    /// `<memory mode=..>`; libvirt's default is strict.
    pub mode: MemoryMode,
    pub nodeset: Option<NodeSet>,
    /// `<memory placement='auto'>`: nodeset chosen by numad at start.
    pub placement_auto: bool,
    pub memnodes: Vec<MemNode>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemNode {
    pub cellid: u32,
    pub mode: MemoryMode,
    pub nodeset: NodeSet,
}

/// What a guest's CPU definition says about running VMs of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VirtCapability {
    /// `vmx` or `svm` with policy `require` or `force`: asked for by name.
    Required,
    /// It could run VMs: host-passthrough, host-model or maximum on a host
    /// with vmx/svm, or vmx/svm `optional`. Most guests made with
    /// virt-install's defaults are such guests; few of them run VMs.
    Possible,
    /// vmx/svm disabled or forbidden, or a CPU model without them.
    Unable,
}

impl Domain {
    pub fn memory_mib(&self) -> u64 {
        self.current_memory_kib.div_ceil(1024)
    }

    /// Whether this definition asks for hardware virtualisation.
    /// `host_has_extensions` is whether the host CPU offers vmx/svm
    /// (inherited by host-passthrough and host-model guests). An explicit
    /// `disable`/`forbid` of vmx/svm always wins.
    ///
    /// Read it from the persistent definition where there is one: libvirt
    /// rewrites a running host-model guest's CPU into `mode='custom'` with
    /// every host feature, `vmx` included, as `require`.
    pub fn virt_capability(&self, host_has_extensions: bool) -> VirtCapability {
        let policies: Vec<&FeaturePolicy> = self
            .cpu
            .features
            .iter()
            .filter(|f| f.name == "vmx" || f.name == "svm")
            .map(|f| &f.policy)
            .collect();
        let any = |wanted: &[FeaturePolicy]| policies.iter().any(|p| wanted.contains(p));
        if any(&[FeaturePolicy::Disable, FeaturePolicy::Forbid]) {
            return VirtCapability::Unable;
        }
        if any(&[FeaturePolicy::Force, FeaturePolicy::Require]) {
            return VirtCapability::Required;
        }
        let possible = any(&[FeaturePolicy::Optional]);
        let inherits = matches!(
            self.cpu.mode,
            Some(CpuMode::HostPassthrough | CpuMode::HostModel | CpuMode::Maximum)
        );
        if possible || (inherits && host_has_extensions) {
            VirtCapability::Possible
        } else {
            VirtCapability::Unable
        }
    }

    /// Guest SMT width (threads per core), 1 when no topology is declared.
    pub fn threads_per_core(&self) -> u32 {
        self.cpu.topology.map_or(1, |t| t.threads.max(1))
    }

    /// Whether the XML pins CPUs by hand: vcpupin, emulatorpin, iothreadpin
    /// or a `<vcpu cpuset>`. A numatune nodeset is not counted: numapin
    /// moves restrictive bindings and places vCPUs next to strict ones.
    pub fn has_manual_pinning(&self) -> bool {
        let t = &self.cputune;
        !t.vcpupin.is_empty()
            || t.emulatorpin.is_some()
            || !t.iothreadpin.is_empty()
            || (self.vcpu_cpuset.is_some() && !self.vcpu_placement_auto)
    }

    /// Hugepage size (KiB) backing the given guest cell, if any. `default_kib`
    /// resolves `<hugepages/>` without an explicit size.
    pub fn hugepage_size_for_cell(&self, cell: Option<u32>, default_kib: u64) -> Option<u64> {
        self.hugepages
            .iter()
            .find(|h| match (&h.nodeset, cell) {
                (None, _) => true,
                (Some(set), Some(c)) => set.contains(c),
                (Some(_), None) => true,
            })
            .map(|h| h.size_kib.unwrap_or(default_kib))
    }
}

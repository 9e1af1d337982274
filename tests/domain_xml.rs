//! The domain XML parser against libvirt-shaped fixtures, its validation
//! messages, and its behaviour on garbage.

use std::collections::BTreeMap;

use numapin::guest::domain_xml::{DomainXmlError, Invalid, parse};
use numapin::guest::{
    CpuFeature, CpuMode, Domain, DomainPolicy, FeaturePolicy, GuestCell, GuestCpuTopology,
    HugepageBacking, MemNode, MemoryMode, NumaTune, VirtCapability,
};
use numapin::idset::IdSet;
use proptest::prelude::*;

const MINIMAL: &str = include_str!("data/domains/minimal.xml");
const NESTED: &str = include_str!("data/domains/nested_hypervisor.xml");
const RESTRICTIVE: &str = include_str!("data/domains/restrictive_memnodes.xml");
const AUTO: &str = include_str!("data/domains/auto_placement.xml");
const HUGEPAGES: &str = include_str!("data/domains/hugepages.xml");
const IOTHREADS: &str = include_str!("data/domains/iothreads_pinned.xml");
const EXCLUDED: &str = include_str!("data/domains/metadata_exclude.xml");
const HOTPLUG: &str = include_str!("data/domains/vcpus_hotplug.xml");
const HOST_MODEL: &str = include_str!("data/domains/host_model_svm_disabled.xml");
const HOST_MODEL_LIVE: &str = include_str!("data/domains/host_model_svm_disabled_live.xml");

const FIXTURES: [&str; 10] = [
    MINIMAL,
    NESTED,
    RESTRICTIVE,
    AUTO,
    HUGEPAGES,
    IOTHREADS,
    EXCLUDED,
    HOTPLUG,
    HOST_MODEL,
    HOST_MODEL_LIVE,
];

fn set(text: &str) -> IdSet {
    text.parse().unwrap()
}

fn feature(name: &str, policy: FeaturePolicy) -> CpuFeature {
    CpuFeature {
        name: name.into(),
        policy,
    }
}

fn cell(id: u32, cpus: &str, memory_kib: u64, distances: &[(u32, u32)]) -> GuestCell {
    GuestCell {
        id,
        cpus: set(cpus),
        memory_kib,
        distances: distances.iter().copied().collect(),
    }
}

fn topology(sockets: u32, dies: u32, cores: u32, threads: u32) -> Option<GuestCpuTopology> {
    Some(GuestCpuTopology {
        sockets,
        dies,
        cores,
        threads,
    })
}

fn memnode(cellid: u32, mode: MemoryMode, nodeset: &str) -> MemNode {
    MemNode {
        cellid,
        mode,
        nodeset: set(nodeset),
    }
}

fn parsed(xml: &str) -> Domain {
    parse(xml).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn minimal_diskless_domain() {
    let d = parsed(MINIMAL);
    assert_eq!(d.name, "tiny");
    assert_eq!(d.uuid, "1d0e8c4e-2a3b-4c5d-8e9f-0a1b2c3d4e5f");
    assert_eq!(d.virt_type, "kvm");
    assert_eq!(d.id, Some(3));
    assert_eq!((d.vcpus_max, d.vcpus_current), (1, 1));
    assert!(!d.vcpu_placement_auto);
    assert_eq!(d.vcpu_cpuset, None);
    assert_eq!((d.memory_kib, d.current_memory_kib), (1_048_576, 1_048_576));
    assert_eq!(d.memory_mib(), 1024);
    assert!(d.hugepages.is_empty());
    assert_eq!(d.cpu.mode, Some(CpuMode::Custom));
    assert_eq!(d.cpu.model.as_deref(), Some("qemu64"));
    assert_eq!(d.cpu.topology, None);
    assert_eq!(
        d.cpu.features,
        [
            feature("x2apic", FeaturePolicy::Require),
            feature("hypervisor", FeaturePolicy::Require),
            feature("lahf_lm", FeaturePolicy::Require),
            feature("svm", FeaturePolicy::Disable),
        ]
    );
    assert!(d.cpu.cells.is_empty());
    assert_eq!(d.cputune, Default::default());
    assert_eq!(d.numatune, None);
    assert!(d.iothreads.is_empty());
    assert_eq!(d.policy, None);
    assert_eq!(d.virt_capability(true), VirtCapability::Unable);
    assert!(!d.has_manual_pinning());
    assert_eq!(d.threads_per_core(), 1);
}

#[test]
fn host_passthrough_nested_hypervisor_with_two_cells() {
    let d = parsed(NESTED);
    assert_eq!((d.name.as_str(), d.id), ("nested-hv", Some(7)));
    assert_eq!(d.uuid, "6b1f2c7a-93d4-4e58-a1c2-7f0e9d8b3a64");
    assert_eq!((d.vcpus_max, d.vcpus_current), (8, 8));
    assert_eq!(
        (d.memory_kib, d.current_memory_kib),
        (16_777_216, 16_777_216)
    );
    assert_eq!(d.cpu.mode, Some(CpuMode::HostPassthrough));
    assert_eq!(d.cpu.model, None);
    assert_eq!(d.cpu.topology, topology(1, 1, 4, 2));
    assert_eq!(d.cpu.features, [feature("vmx", FeaturePolicy::Require)]);
    assert_eq!(
        d.cpu.cells,
        [
            cell(0, "0-3", 8_388_608, &[(0, 10), (1, 21)]),
            cell(1, "4-7", 8_388_608, &[(0, 21), (1, 10)]),
        ]
    );
    assert_eq!(d.numatune, None);
    assert!(d.hugepages.is_empty() && d.iothreads.is_empty() && d.policy.is_none());
    assert_eq!(d.virt_capability(false), VirtCapability::Required);
    assert_eq!(d.virt_capability(true), VirtCapability::Required);
    assert!(!d.has_manual_pinning());
    assert_eq!(d.threads_per_core(), 2);
}

#[test]
fn restrictive_numatune_with_memnodes() {
    let d = parsed(RESTRICTIVE);
    assert_eq!((d.name.as_str(), d.id), ("db-restrictive", Some(12)));
    assert_eq!((d.vcpus_max, d.vcpus_current), (4, 4));
    assert_eq!(d.memory_kib, 8_388_608);
    assert_eq!(d.cpu.mode, Some(CpuMode::Custom));
    assert_eq!(d.cpu.model.as_deref(), Some("Skylake-Client-IBRS"));
    assert_eq!(d.cpu.topology, topology(2, 1, 2, 1));
    assert_eq!(d.cpu.features.len(), 7);
    assert_eq!(d.cpu.features[4], feature("mpx", FeaturePolicy::Disable));
    assert_eq!(
        d.cpu.cells,
        [
            cell(0, "0-1", 4_194_304, &[]),
            cell(1, "2-3", 4_194_304, &[])
        ]
    );
    assert_eq!(
        d.numatune,
        Some(NumaTune {
            mode: MemoryMode::Restrictive,
            nodeset: Some(set("0-1")),
            placement_auto: false,
            memnodes: vec![
                memnode(0, MemoryMode::Restrictive, "0"),
                memnode(1, MemoryMode::Restrictive, "1"),
            ],
        })
    );
    assert_eq!(d.virt_capability(true), VirtCapability::Unable);
    // A memory binding is not CPU pinning: numapin moves restrictive ones.
    assert!(!d.has_manual_pinning());
}

#[test]
fn automatic_placement_by_numad() {
    let d = parsed(AUTO);
    assert_eq!((d.name.as_str(), d.id), ("numad-guest", Some(5)));
    assert_eq!((d.vcpus_max, d.vcpus_current), (4, 4));
    assert!(d.vcpu_placement_auto);
    assert_eq!(d.vcpu_cpuset, None);
    assert_eq!(
        d.numatune,
        Some(NumaTune {
            mode: MemoryMode::Strict,
            nodeset: None,
            placement_auto: true,
            memnodes: vec![],
        })
    );
    assert_eq!(d.cpu.mode, Some(CpuMode::HostPassthrough));
    assert_eq!(d.cpu.topology, None);
    assert!(d.cpu.features.is_empty() && d.cpu.cells.is_empty());
    assert_eq!(d.virt_capability(true), VirtCapability::Possible);
    assert_eq!(d.virt_capability(false), VirtCapability::Unable);
    assert!(!d.has_manual_pinning());
}

#[test]
fn hugepages_per_cell() {
    let d = parsed(HUGEPAGES);
    assert_eq!((d.name.as_str(), d.id), ("hp-guest", Some(9)));
    assert_eq!(
        d.hugepages,
        [
            HugepageBacking {
                size_kib: Some(2048),
                nodeset: Some(set("0"))
            },
            HugepageBacking {
                size_kib: Some(1_048_576),
                nodeset: Some(set("1"))
            },
        ]
    );
    assert_eq!(d.hugepage_size_for_cell(Some(0), 2048), Some(2048));
    assert_eq!(d.hugepage_size_for_cell(Some(1), 2048), Some(1_048_576));
    assert_eq!(d.cpu.topology, topology(2, 1, 2, 1));
    assert_eq!(
        d.cpu.cells,
        [
            cell(0, "0-1", 4_194_304, &[]),
            cell(1, "2-3", 4_194_304, &[])
        ]
    );
    let tune = d.numatune.as_ref().unwrap();
    assert_eq!(
        (tune.mode, tune.nodeset.clone()),
        (MemoryMode::Strict, Some(set("0-1")))
    );
    assert_eq!(
        tune.memnodes,
        [
            memnode(0, MemoryMode::Strict, "0"),
            memnode(1, MemoryMode::Strict, "1")
        ]
    );
    // Strict memory stays put, but no CPU is pinned by hand.
    assert!(!d.has_manual_pinning());
    assert_eq!(d.virt_capability(true), VirtCapability::Possible);
}

#[test]
fn iothreads_and_manual_pinning() {
    let d = parsed(IOTHREADS);
    assert_eq!((d.name.as_str(), d.id), ("io-pinned", Some(4)));
    assert_eq!((d.memory_kib, d.current_memory_kib), (4_194_304, 2_097_152));
    assert_eq!(d.memory_mib(), 2048);
    assert_eq!(d.iothreads, [1, 3]);
    let pins: BTreeMap<u32, IdSet> = [(0, set("2")), (1, set("3")), (2, set("4")), (3, set("5"))]
        .into_iter()
        .collect();
    assert_eq!(d.cputune.vcpupin, pins);
    assert_eq!(d.cputune.emulatorpin, Some(set("0-1")));
    let io: BTreeMap<u32, IdSet> = [(1, set("0-1")), (3, set("6"))].into_iter().collect();
    assert_eq!(d.cputune.iothreadpin, io);
    assert_eq!(d.numatune, None);
    assert!(d.has_manual_pinning());
    assert_eq!(d.virt_capability(true), VirtCapability::Possible);
}

#[test]
fn numapin_metadata_among_other_namespaces() {
    let d = parsed(EXCLUDED);
    assert_eq!((d.name.as_str(), d.id), ("excluded", Some(2)));
    assert_eq!(d.policy, Some(DomainPolicy::Exclude));
    assert_eq!((d.vcpus_max, d.memory_kib), (2, 2_097_152));
    assert!(!d.has_manual_pinning());
}

#[test]
fn vcpu_hotplug_list_gives_the_current_count() {
    let d = parsed(HOTPLUG);
    assert_eq!((d.name.as_str(), d.id), ("hotplug", Some(6)));
    assert_eq!((d.vcpus_max, d.vcpus_current), (4, 2));
    assert_eq!(d.online_vcpus.to_string(), "0-1");
    assert_eq!(d.cpu.topology, topology(4, 1, 1, 1));
    assert_eq!(d.cpu.model.as_deref(), Some("qemu64"));
    assert_eq!(d.virt_capability(true), VirtCapability::Unable);
    assert!(!d.has_manual_pinning());
}

#[test]
fn online_vcpu_ids_follow_the_enabled_entries() {
    // After `setvcpu 1 --disable` the online vCPUs are not 0..current.
    let xml = HOTPLUG
        .replace("<vcpu id='1' enabled='yes'", "<vcpu id='1' enabled='no'")
        .replace("<vcpu id='2' enabled='no'", "<vcpu id='2' enabled='yes'");
    let d = parsed(&xml);
    assert_eq!(d.vcpus_current, 2);
    assert_eq!(d.online_vcpus.to_string(), "0,2");
}

#[test]
fn host_model_with_svm_disabled_inactive_and_live() {
    let inactive = parsed(HOST_MODEL);
    assert_eq!(inactive.id, None);
    assert_eq!(inactive.name, "amd-nonested");
    assert_eq!(inactive.cpu.mode, Some(CpuMode::HostModel));
    assert_eq!(inactive.cpu.model, None);
    assert_eq!(
        inactive.cpu.features,
        [feature("svm", FeaturePolicy::Disable)]
    );
    assert_eq!(inactive.virt_capability(true), VirtCapability::Unable);
    assert_eq!((inactive.vcpus_max, inactive.memory_kib), (2, 4_194_304));

    // A running host-model domain shows the CPU libvirt expanded it to.
    let live = parsed(HOST_MODEL_LIVE);
    assert_eq!(live.id, Some(8));
    assert_eq!(live.cpu.mode, Some(CpuMode::Custom));
    assert_eq!(live.cpu.model.as_deref(), Some("EPYC-Rome"));
    assert_eq!(live.cpu.features.len(), 11);
    assert!(
        live.cpu
            .features
            .contains(&feature("svm", FeaturePolicy::Disable))
    );
    assert_eq!(live.virt_capability(true), VirtCapability::Unable);
    assert!(!live.has_manual_pinning() && !inactive.has_manual_pinning());
}

// ---- smaller documents for defaults and errors ---------------------------

/// A domain with `body` after the identity elements.
fn domain(body: &str) -> String {
    format!(
        "<domain type='kvm'>\n  <name>t</name>\n  <uuid>00000000-0000-0000-0000-000000000001</uuid>\n{body}\n</domain>\n"
    )
}

fn with_vcpus(vcpus: &str, rest: &str) -> String {
    domain(&format!(
        "  <memory unit='KiB'>1048576</memory>\n  <vcpu>{vcpus}</vcpu>\n{rest}"
    ))
}

#[test]
fn cpu_with_only_topology_and_numa() {
    let d = parsed(&with_vcpus(
        "4",
        "  <cpu>\n    <topology sockets='2' cores='2' threads='1'/>\n    <numa>\n      \
         <cell cpus='0-1' memory='512' unit='MiB'/>\n      <cell cpus='2-3' memory='524288'/>\n    \
         </numa>\n  </cpu>",
    ));
    assert_eq!(d.cpu.mode, None);
    assert_eq!(d.cpu.model, None);
    assert_eq!(d.cpu.topology, topology(2, 1, 2, 1));
    assert_eq!(
        d.cpu.cells,
        [cell(0, "0-1", 524_288, &[]), cell(1, "2-3", 524_288, &[])]
    );
    assert_eq!(d.vcpus_current, 4);
}

#[test]
fn defaults_and_units() {
    let d = parsed(&domain(
        "  <memory unit='GB'>1</memory>\n  <currentMemory>0</currentMemory>\n  \
         <memoryBacking><hugepages/></memoryBacking>\n  <iothreads>2</iothreads>\n  \
         <iothreadids><iothread id='5'/></iothreadids>\n  <cpu><model>Haswell</model>\n  \
         <feature name='vmx'/></cpu>",
    ));
    assert_eq!((d.vcpus_max, d.vcpus_current), (1, 1));
    assert_eq!(d.memory_kib, 976_563);
    assert_eq!(d.current_memory_kib, d.memory_kib);
    assert_eq!(
        d.hugepages,
        [HugepageBacking {
            size_kib: None,
            nodeset: None
        }]
    );
    assert_eq!(d.iothreads, [1, 5]);
    assert_eq!(d.cpu.mode, Some(CpuMode::Custom));
    assert_eq!(d.cpu.features, [feature("vmx", FeaturePolicy::Require)]);
    assert_eq!(d.id, None);
}

#[test]
fn memory_only_cell_and_cpuset_exclusion() {
    let d = parsed(&with_vcpus(
        "2",
        "  <numatune><memory nodeset='0-3,^1'/></numatune>\n  <cpu><numa>\n    \
         <cell id='1' memory='1' unit='GiB'/>\n    <cell id='0' cpus='0-1' memory='1048576'/>\n  \
         </numa></cpu>",
    ));
    assert_eq!(
        d.cpu.cells,
        [cell(0, "0-1", 1 << 20, &[]), cell(1, "", 1 << 20, &[])]
    );
    let tune = d.numatune.unwrap();
    assert_eq!(
        (tune.mode, tune.nodeset),
        (MemoryMode::Strict, Some(set("0,2-3")))
    );
    assert!(!tune.placement_auto);
}

fn invalid(xml: &str) -> Invalid {
    match parse(xml) {
        Err(DomainXmlError::Invalid(invalid)) => *invalid,
        other => panic!("expected a validation error, got {other:?}"),
    }
}

/// Checks the error names the element, attribute and value, and that the
/// message mentions `fragment`.
fn assert_invalid(
    xml: &str,
    element: &str,
    attribute: Option<&str>,
    value: Option<&str>,
    fragment: &str,
) {
    let e = invalid(xml);
    let text = e.to_string();
    assert_eq!(e.element, element, "{text}");
    assert_eq!(e.attribute.as_deref(), attribute, "{text}");
    assert_eq!(e.value.as_deref().map(str::trim), value, "{text}");
    assert!(text.contains(fragment), "{text:?} lacks {fragment:?}");
    assert!(
        text.starts_with(&format!("line {}:{}: ", e.line, e.column)),
        "{text}"
    );
}

#[test]
fn vcpupin_beyond_the_vcpus_names_element_value_and_position() {
    let xml = IOTHREADS.replace("<vcpupin vcpu='3'", "<vcpupin vcpu='9'");
    let e = invalid(&xml);
    assert_eq!(
        e.to_string(),
        "line 16:5: <vcpupin vcpu='9'>: vCPU 9 does not exist (the domain has 4)"
    );
}

#[test]
fn vcpu_count_errors() {
    assert_invalid(
        &with_vcpus("0", ""),
        "vcpu",
        None,
        Some("0"),
        "at least one vCPU",
    );
    assert_invalid(
        &with_vcpus("four", ""),
        "vcpu",
        None,
        Some("four"),
        "not a valid number",
    );
    let xml = HOTPLUG.replace("current='2'>4<", "current='5'>4<");
    assert_invalid(
        &xml,
        "vcpu",
        Some("current"),
        Some("5"),
        "between 1 and the maximum 4",
    );
    let xml = HOTPLUG.replace("<vcpu id='3' enabled='no'", "<vcpu id='4' enabled='no'");
    assert_invalid(&xml, "vcpu", Some("id"), Some("4"), "vCPU 4 does not exist");
    let xml = HOTPLUG.replace("enabled='yes'", "enabled='no'");
    assert_invalid(&xml, "vcpus", None, None, "no vCPU is enabled");
}

#[test]
fn cell_errors() {
    let xml = NESTED.replace("cpus='4-7'", "cpus='4-8'");
    assert_invalid(
        &xml,
        "cell",
        Some("cpus"),
        Some("4-8"),
        "vCPU 8 does not exist (the domain has 8)",
    );
    let xml = NESTED.replace("cpus='4-7'", "cpus='3-7'");
    assert_invalid(
        &xml,
        "cell",
        Some("cpus"),
        Some("3-7"),
        "vCPU 3 is already in another cell",
    );
    let xml = NESTED.replace("<cell id='1'", "<cell id='2'");
    assert_invalid(
        &xml,
        "cell",
        Some("id"),
        Some("2"),
        "cell ids must run from 0 to 1",
    );
    let xml = NESTED.replace("<cell id='1'", "<cell id='0'");
    assert_invalid(
        &xml,
        "cell",
        Some("id"),
        Some("0"),
        "cell 0 is defined twice",
    );
    let xml = NESTED.replace("cpus='4-7'", "cpus='4-x'");
    assert_invalid(
        &xml,
        "cell",
        Some("cpus"),
        Some("4-x"),
        "\"x\" is not a number",
    );
    let xml = NESTED.replace(
        "<sibling id='1' value='21'/>",
        "<sibling id='2' value='21'/>",
    );
    assert_invalid(
        &xml,
        "sibling",
        Some("id"),
        Some("2"),
        "cell 2 does not exist",
    );
    let xml = NESTED.replace(
        "<sibling id='1' value='21'/>",
        "<sibling id='1' value='300'/>",
    );
    assert_invalid(&xml, "sibling", Some("value"), Some("300"), "distance");
    let xml = NESTED.replace("memory='8388608' unit='KiB'>", "memory='8' unit='parsecs'>");
    assert_invalid(&xml, "cell", Some("unit"), Some("parsecs"), "unknown unit");
}

#[test]
fn topology_must_match_the_vcpu_count() {
    let xml = NESTED.replace("cores='4' threads='2'", "cores='3' threads='2'");
    assert_invalid(
        &xml,
        "topology",
        None,
        None,
        "make 6 vCPUs, but <vcpu> is 8",
    );
    let xml = NESTED.replace("cores='4' threads='2'", "cores='0' threads='2'");
    assert_invalid(&xml, "topology", Some("cores"), Some("0"), "at least 1");
    let xml = NESTED.replace(" cores='4'", "");
    assert_invalid(
        &xml,
        "topology",
        Some("cores"),
        None,
        "missing attribute 'cores'",
    );
}

#[test]
fn memnode_must_name_an_existing_cell() {
    let xml = RESTRICTIVE.replace("<memnode cellid='1'", "<memnode cellid='2'");
    assert_invalid(
        &xml,
        "memnode",
        Some("cellid"),
        Some("2"),
        "cell 2 does not exist (the domain has 2)",
    );
    let xml = AUTO.replace(
        "<memory mode='strict' placement='auto'/>",
        "<memnode cellid='0' nodeset='0'/>",
    );
    assert_invalid(
        &xml,
        "memnode",
        Some("cellid"),
        Some("0"),
        "no guest NUMA cells",
    );
    let xml = RESTRICTIVE.replace(
        "mode='restrictive' nodeset='0-1'",
        "mode='lenient' nodeset='0-1'",
    );
    assert_invalid(
        &xml,
        "memory",
        Some("mode"),
        Some("lenient"),
        "'strict', 'preferred'",
    );
}

#[test]
fn iothreadpin_must_name_an_existing_iothread() {
    let xml = IOTHREADS.replace("<iothreadpin iothread='3'", "<iothreadpin iothread='2'");
    assert_invalid(
        &xml,
        "iothreadpin",
        Some("iothread"),
        Some("2"),
        "IOThread 2 does not exist (the domain has 1,3)",
    );
    let xml = IOTHREADS.replace("<iothread id='3'/>", "<iothread id='1'/>");
    assert_invalid(&xml, "iothread", Some("id"), Some("1"), "listed twice");
    let xml = IOTHREADS.replace("<vcpupin vcpu='1'", "<vcpupin vcpu='0'");
    assert_invalid(&xml, "vcpupin", Some("vcpu"), Some("0"), "pinned twice");
    let xml = IOTHREADS.replace("<emulatorpin cpuset='0-1'/>", "<emulatorpin cpuset=''/>");
    assert_invalid(&xml, "emulatorpin", Some("cpuset"), Some(""), "empty");
}

#[test]
fn metadata_policy_errors() {
    let xml = EXCLUDED.replace("name=\"exclude\"", "name=\"sometimes\"");
    assert_invalid(
        &xml,
        "policy",
        Some("name"),
        Some("sometimes"),
        "unknown policy \"sometimes\"",
    );
    let xml = EXCLUDED.replace(" name=\"exclude\"", "");
    assert_invalid(
        &xml,
        "policy",
        Some("name"),
        None,
        "missing attribute 'name'",
    );
    // Same local name in another namespace is someone else's business.
    let xml = EXCLUDED.replace(
        "http://numapin.org/xmlns/domain/1",
        "http://example.org/other",
    );
    assert_eq!(parsed(&xml).policy, None);
}

#[test]
fn hugepage_and_memory_errors() {
    let xml = HUGEPAGES.replace(
        "nodeset='1'/>\n    </hugepages>",
        "nodeset='2'/>\n    </hugepages>",
    );
    assert_invalid(
        &xml,
        "page",
        Some("nodeset"),
        Some("2"),
        "guest cell 2 does not exist",
    );
    let xml = MINIMAL.replace("<memory unit='KiB'>1048576", "<memory unit='KiB'>lots");
    assert_invalid(&xml, "memory", None, Some("lots"), "not a valid number");
    let xml = MINIMAL.replace(
        "<memory unit='KiB'>1048576",
        "<memory unit='EiB'>18446744073709551615",
    );
    assert_invalid(
        &xml,
        "memory",
        None,
        Some("18446744073709551615"),
        "more than 4 PiB",
    );
}

#[test]
fn structural_errors() {
    assert!(matches!(parse("<domain"), Err(DomainXmlError::Xml(_))));
    assert_invalid(
        "<network/>",
        "network",
        None,
        None,
        "root element must be <domain>",
    );
    let xml = MINIMAL.replace("<name>tiny</name>", "");
    assert_invalid(&xml, "domain", None, None, "missing element <name>");
    let xml = MINIMAL.replace("1d0e8c4e-2a3b", "not-a-uuid");
    assert_invalid(
        &xml,
        "uuid",
        None,
        Some("not-a-uuid-4c5d-8e9f-0a1b2c3d4e5f"),
        "not a UUID",
    );
    let xml = MINIMAL.replace("<vcpu placement='static'>", "<vcpu placement='random'>");
    assert_invalid(
        &xml,
        "vcpu",
        Some("placement"),
        Some("random"),
        "'static' or 'auto'",
    );
    let xml = MINIMAL.replace("<cpu mode='custom'", "<cpu mode='fancy'");
    assert_invalid(
        &xml,
        "cpu",
        Some("mode"),
        Some("fancy"),
        "'host-passthrough'",
    );
    let xml = MINIMAL.replace("policy='disable' name='svm'", "policy='maybe' name='svm'");
    assert_invalid(&xml, "feature", Some("policy"), Some("maybe"), "'forbid'");
}

// ---- robustness ----------------------------------------------------------

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn arbitrary_strings_never_panic(text in ".{0,256}") {
        let _ = parse(&text);
    }

    #[test]
    fn xml_shaped_strings_never_panic(text in "<domain( [a-z]+='[0-9a-z,^-]*')*>(<[a-zA-Z]+( [a-z]+='[0-9a-zA-Z,^-]{0,6}')*/?>[0-9a-z]{0,4}(</[a-zA-Z]+>)?){0,12}</domain>") {
        let _ = parse(&text);
    }

    #[test]
    fn mutated_fixtures_never_panic(
        which in 0..FIXTURES.len(),
        start in any::<prop::sample::Index>(),
        len in 0usize..64,
        replacement in "[ -~]{0,8}",
    ) {
        let xml = FIXTURES[which].as_bytes();
        let start = start.index(xml.len());
        let end = (start + len).min(xml.len());
        let mut mutated = xml[..start].to_vec();
        mutated.extend_from_slice(replacement.as_bytes());
        mutated.extend_from_slice(&xml[end..]);
        let _ = parse(&String::from_utf8_lossy(&mutated));
    }

    #[test]
    fn mutated_numbers_never_panic(
        which in 0..FIXTURES.len(),
        at in any::<prop::sample::Index>(),
        number in prop_oneof![Just("0".to_string()), Just("4294967295".to_string()), Just("-1".to_string()), "[0-9]{1,25}"],
    ) {
        // Replace one quoted or text number with an extreme one, to reach
        // the validation paths rather than the XML tokenizer.
        let xml = FIXTURES[which];
        let spots: Vec<usize> = xml.match_indices(|c: char| c.is_ascii_digit()).map(|(i, _)| i).collect();
        let i = spots[at.index(spots.len())];
        let end = xml[i..].find(|c: char| !c.is_ascii_digit()).map_or(xml.len(), |n| i + n);
        let mutated = format!("{}{}{}", &xml[..i], number, &xml[end..]);
        let _ = parse(&mutated);
    }
}

#[test]
fn fixtures_round_trip_through_serde() {
    for xml in FIXTURES {
        let d = parsed(xml);
        let json = serde_json::to_string(&d).unwrap();
        assert!(json.contains(&format!("\"name\":\"{}\"", d.name)));
    }
}

//! The libvirt adapter's calls against the real libvirtd.

mod common;

use std::time::Duration;

use common::{Spec, TestDomain, URI, virsh};
use numapin::libvirt::{Libvirt, Scope};

fn libvirt() -> Libvirt {
    numapin::libvirt::silence_default_error_printer();
    Libvirt::new(URI, Duration::from_secs(30))
}

#[test]
fn reads_and_changes_pins_of_a_running_domain() {
    let dom = TestDomain::start(
        "calls-pins",
        &Spec {
            iothreads: 1,
            ..Spec::default()
        },
    );
    let lv = libvirt();
    let d = lv
        .running_domains()
        .unwrap()
        .into_iter()
        .find(|d| d.name == dom.name)
        .expect("listed");
    assert_eq!(d.uuid, dom.uuid());
    let pins = lv.pins(&d).unwrap();
    println!("{pins:?}");
    assert_eq!(pins.vcpus.len(), 2);
    assert!(pins.iothreads.contains_key(&1));
    let one: numapin::idset::CpuSet = "1".parse().unwrap();
    lv.pin_vcpu(&d, 0, &one, Scope::Live).unwrap();
    lv.pin_emulator(&d, &one, Scope::Live).unwrap();
    lv.pin_iothread(&d, 1, &one, Scope::Live).unwrap();
    let after = lv.pins(&d).unwrap();
    assert_eq!(after.vcpus[&0], one);
    assert_eq!(after.emulator, one);
    assert_eq!(after.iothreads[&1], one);
    assert_eq!(dom.vcpu_thread_cpus()[&0], "1");
    let b = lv.memory_binding(&d).unwrap();
    println!("{b:?}");
    let _ = virsh(&["list"]);
}

/// The policy element documented in the README, set with `virsh metadata`
/// on a running domain, is what numapin reads.
#[test]
fn metadata_policy_set_with_virsh_is_honoured() {
    let dom = TestDomain::start(
        "calls-metadata",
        &Spec {
            vcpus: 1,
            ..Spec::default()
        },
    );
    virsh(&[
        "metadata",
        &dom.name,
        "--uri",
        numapin::guest::metadata::METADATA_NAMESPACE,
        "--key",
        "numapin",
        "--set",
        "<policy name=\"exclude\"/>",
        "--live",
    ])
    .unwrap();
    let lv = libvirt();
    let d = lv.domain(&dom.uuid()).unwrap();
    let (live, persistent) = lv.domain_xml(&d).unwrap();
    assert!(persistent.is_none(), "transient test domain");
    let parsed = numapin::guest::domain_xml::parse(&live).unwrap();
    assert_eq!(
        parsed.policy,
        Some(numapin::guest::DomainPolicy::Exclude),
        "{live}"
    );
}

/// libvirt's vCPU stats give every vCPU's run-queue wait and, for a KVM
/// domain, KVM's nested-entry count: zero for a guest that runs no VM.
#[test]
fn vcpu_stats_give_run_queue_wait_and_nested_entries() {
    let dom = TestDomain::start("calls-stats", &Spec::default());
    let lv = libvirt();
    let first = lv.vcpu_stats().unwrap();
    let before = first
        .get(&dom.uuid())
        .expect("the domain has stats")
        .clone();
    assert_eq!(before.keys().copied().collect::<Vec<_>>(), [0, 1]);
    std::thread::sleep(Duration::from_millis(500));
    let after = lv.vcpu_stats().unwrap()[&dom.uuid()].clone();
    for (vcpu, counters) in &after {
        let delay = counters.delay_ns.expect("vcpu.N.delay");
        assert!(delay >= before[vcpu].delay_ns.unwrap(), "vCPU {vcpu}");
        // KVM's binary stats exist only for KVM domains.
        if common::domain_type() == "kvm" {
            assert_eq!(counters.nested_runs, Some(0), "vCPU {vcpu}");
        } else {
            assert_eq!(counters.nested_runs, None, "vCPU {vcpu}");
        }
    }
    let w = numapin::nested::window(&before, &after, 0.5);
    assert_eq!(w.wait.len(), 2);
    assert!(w.wait.values().all(|f| (0.0..=1.0).contains(f)));
    if common::domain_type() == "kvm" {
        assert_eq!(w.nested_entries, Some(0), "a guest that runs no VM");
    }
    // What numapin reads for it matches what virsh prints.
    let text = virsh(&["domstats", "--vcpu", &dom.name]).unwrap();
    let parsed = numapin::nested::parse_domstats(&text);
    assert_eq!(parsed[&dom.name].len(), 2);
}

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

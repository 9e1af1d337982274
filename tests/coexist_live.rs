//! numapin next to everything else that happens to a VM, against the real
//! libvirtd: a paused domain, an operator's own `virsh vcpupin`, vCPU
//! hotplug, and a block job in progress.

mod common;

use std::time::{Duration, Instant};

use common::{Spec, TestDomain, isolated_config, numapin, serial, virsh};

fn domain_json(out: &std::process::Output, name: &str) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["domains"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {v}"))
        .clone()
}

fn plan_of(config: &str, name: &str) -> serde_json::Value {
    let out = numapin(&[
        "apply",
        "--dry-run",
        "--format",
        "json",
        "--sample",
        "0",
        "--config",
        config,
    ]);
    domain_json(&out, name)
}

fn apply(config: &str) -> String {
    let out = numapin(&["apply", "--sample", "0", "--config", config]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    text
}

fn one_vcpu() -> Spec {
    Spec {
        vcpus: 1,
        ..Spec::default()
    }
}

#[test]
fn a_paused_domain_is_skipped_and_placed_once_resumed() {
    let _s = serial();
    let d = TestDomain::start("coexist-paused", &one_vcpu());
    let tmp = tempfile::tempdir().unwrap();
    let cfg = isolated_config(tmp.path(), &[&d], "");
    let cfg = cfg.to_str().unwrap();
    virsh(&["suspend", &d.name]).unwrap();
    let p = plan_of(cfg, &d.name);
    assert_eq!(p["managed"], false, "{p}");
    assert!(p["reason"].as_str().unwrap().contains("paused"), "{p}");
    apply(cfg);
    assert_eq!(d.vcpu_thread_cpus()[&0], "0-1", "untouched while paused");

    virsh(&["resume", &d.name]).unwrap();
    apply(cfg);
    assert_eq!(d.vcpu_thread_cpus()[&0], "1");
}

#[test]
fn an_operators_vcpupin_is_noticed_not_fought_until_handed_back() {
    let _s = serial();
    let d = TestDomain::start("coexist-operator", &one_vcpu());
    let tmp = tempfile::tempdir().unwrap();
    let cfg = isolated_config(tmp.path(), &[&d], "");
    let cfg = cfg.to_str().unwrap();
    apply(cfg);
    assert_eq!(d.vcpu_thread_cpus()[&0], "1", "numapin placed it");

    // The operator moves it by hand.
    virsh(&["vcpupin", &d.name, "0", "0", "--live"]).unwrap();
    apply(cfg);
    assert_eq!(d.vcpu_thread_cpus()[&0], "0", "numapin does not fight");
    let status = numapin(&[
        "status", "--format", "json", "--sample", "0", "--config", cfg,
    ]);
    let s = domain_json(&status, &d.name);
    assert_eq!(s["managed"], false, "{s}");
    assert_eq!(s["changed_by_operator"], "vCPU 0 1 -> 0", "{s}");
    assert!(
        s["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("numapin manage {}", d.name)),
        "{s}"
    );

    // Handed back: numapin places it again.
    let out = numapin(&["manage", &d.name, "--config", cfg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    apply(cfg);
    assert_eq!(d.vcpu_thread_cpus()[&0], "1", "managed again");
    let missing = numapin(&["manage", "nptest-no-such-domain", "--config", cfg]);
    assert_eq!(missing.status.code(), Some(66));
}

#[test]
fn a_vcpu_hotplugged_after_placement_is_placed_too() {
    let _s = serial();
    let d = TestDomain::start(
        "coexist-hotplug",
        &Spec {
            vcpus: 2,
            current_vcpus: Some(1),
            ..Spec::default()
        },
    );
    let tmp = tempfile::tempdir().unwrap();
    // Two shared vCPUs need two CPUs: reserve none.
    let cfg = isolated_config(tmp.path(), &[&d], "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("reserved_cpus = \"0\"", "reserved_cpus = \"\"");
    std::fs::write(&cfg, text).unwrap();
    let cfg = cfg.to_str().unwrap();
    apply(cfg);
    let p = plan_of(cfg, &d.name);
    assert_eq!(p["managed"], true, "{p}");
    let pins: Vec<&String> = p["vcpupin"].as_object().unwrap().keys().collect();
    assert_eq!(pins, ["0"], "one vCPU online: {p}");

    virsh(&["setvcpus", &d.name, "2", "--live"]).unwrap();
    let p = plan_of(cfg, &d.name);
    assert_eq!(
        p["managed"], true,
        "a hotplug is not an operator's change: {p}"
    );
    let pins: Vec<&String> = p["vcpupin"].as_object().unwrap().keys().collect();
    assert_eq!(pins, ["0", "1"], "the new vCPU is placed: {p}");
    apply(cfg);
    let threads = d.vcpu_thread_cpus();
    assert_eq!(threads.len(), 2);
    for (vcpu, cpus) in &threads {
        assert_eq!(
            cpus,
            p["vcpupin"][vcpu.to_string()].as_str().unwrap(),
            "vCPU {vcpu}"
        );
    }

    // Unplugging needs a guest OS to release the vCPU (ACPI), which these
    // diskless domains lack: the unplug side is covered by the unit tests
    // (an_unplugged_vcpu_is_never_pinned, an_unplugged_vcpu_is_not_an_
    // operators_change).
}

#[test]
fn a_domain_with_a_block_job_is_left_alone_until_the_job_ends() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    // Random data, so a copy throttled to 1 MiB/s runs for a minute.
    let disk = tmp.path().join("disk.img");
    let data: Vec<u8> = (0..32u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&disk, data).unwrap();
    let d = TestDomain::start(
        "coexist-blockjob",
        &Spec {
            vcpus: 1,
            devices: format!(
                "<disk type='file' device='disk'><driver name='qemu' type='raw'/>\
                 <source file='{}'/><target dev='vda' bus='virtio'/></disk>",
                disk.display()
            ),
            ..Spec::default()
        },
    );
    let cfg = isolated_config(tmp.path(), &[&d], "");
    let cfg = cfg.to_str().unwrap();
    let copy = tmp.path().join("copy.img");
    virsh(&[
        "blockcopy",
        &d.name,
        "vda",
        copy.to_str().unwrap(),
        "--bandwidth",
        "1",
    ])
    .unwrap();
    let started = Instant::now();
    let p = plan_of(cfg, &d.name);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the copy must still run"
    );
    assert_eq!(p["managed"], false, "{p}");
    assert!(
        p["reason"].as_str().unwrap().contains("block copy on vda"),
        "{p}"
    );
    apply(cfg);
    assert_eq!(d.vcpu_thread_cpus()[&0], "0-1", "untouched during the job");

    virsh(&["blockjob", &d.name, "vda", "--abort"]).unwrap();
    apply(cfg);
    assert_eq!(d.vcpu_thread_cpus()[&0], "1", "placed once the job ended");
}

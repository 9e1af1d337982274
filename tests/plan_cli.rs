//! `numapin plan` and `numapin topology` end to end, through the binary and
//! the file readers: snapshot tests on several host shapes, and the errors
//! and exit codes bad input gets.

mod plan_json;

use std::path::{Path, PathBuf};
use std::process::Command;

const DOMAINS: &[&str] = &[
    "minimal",
    "nested_hypervisor",
    "restrictive_memnodes",
    "auto_placement",
    "hugepages",
    "iothreads_pinned",
    "metadata_exclude",
    "vcpus_hotplug",
];

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}

/// A snapshot directory: one host's capabilities and the common domains.
fn snapshot(caps: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        data(&format!("caps/{caps}.xml")),
        dir.path().join("capabilities.xml"),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("domains")).unwrap();
    for d in DOMAINS {
        std::fs::copy(
            data(&format!("domains/{d}.xml")),
            dir.path().join(format!("domains/{d}.xml")),
        )
        .unwrap();
    }
    dir
}

/// Runs the binary with exactly these arguments.
fn numapin_raw(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_numapin"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Runs the binary; `plan` never picks up the machine's own config.
fn numapin(args: &[&str]) -> (i32, String, String) {
    let mut args = args.to_vec();
    if args.first() == Some(&"plan") {
        args.extend(["--config", "/dev/null"]);
    }
    numapin_raw(&args)
}

fn plan_json(caps: &str) -> serde_json::Value {
    let dir = snapshot(caps);
    let (code, out, err) = numapin(&[
        "plan",
        "--snapshot",
        dir.path().to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

/// The fields the plan's JSON promises for every domain.
fn assert_contract(plan: &serde_json::Value) {
    for d in plan["domains"].as_array().unwrap() {
        for key in ["name", "uuid", "reason", "emulatorpin", "nodeset"] {
            assert!(d[key].is_string(), "{key} in {d}");
        }
        assert!(d["managed"].is_boolean());
        assert!(d["nodes"].as_array().unwrap().iter().all(|n| n.is_u64()));
        for key in ["vcpupin", "cells"] {
            assert!(d[key].is_object(), "{key} in {d}");
        }
        assert!(d["advice"].is_array());
    }
    assert!(plan["score"]["locality_after"].is_number());
}

macro_rules! host_shape_snapshot {
    ($test:ident, $caps:literal) => {
        #[test]
        fn $test() {
            let plan = plan_json($caps);
            assert_contract(&plan);
            insta::assert_json_snapshot!($caps, plan);
        }
    };
}

host_shape_snapshot!(intel_two_socket_with_smt, "intel-2s-smt");
host_shape_snapshot!(epyc_like_eight_nodes, "epyc-8node");
host_shape_snapshot!(memory_only_cxl_node, "cxl-memory-node");
host_shape_snapshot!(sparse_node_ids_and_offline_cpu, "sparse-ids");
host_shape_snapshot!(interleaved_cpu_ids, "libvirt-caps-interleaved-2node");
host_shape_snapshot!(single_node, "one-node");
host_shape_snapshot!(nested_virtual_host, "nested-virtual-host");

#[test]
fn no_vcpu_lands_on_a_memory_only_node() {
    let plan = plan_json("cxl-memory-node");
    for d in plan["domains"].as_array().unwrap() {
        assert!(
            !d["nodes"]
                .as_array()
                .unwrap()
                .contains(&serde_json::json!(2)),
            "{}",
            d["name"]
        );
    }
}

#[test]
fn table_reads_per_domain_now_plan_and_why() {
    let dir = snapshot("intel-2s-smt");
    let (code, out, _) = numapin(&["plan", "--snapshot", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0);
    let out = out.replace(dir.path().to_str().unwrap(), "SNAPSHOT");
    insta::assert_snapshot!("intel-2s-smt-table", out);
}

#[test]
fn topology_prints_nodes_smt_and_distances() {
    let (code, out, _) = numapin(&[
        "topology",
        "--snapshot",
        data("caps").join("..").join("caps").to_str().unwrap(),
    ]);
    // The caps folder is not a snapshot: capabilities.xml is missing.
    assert_eq!(code, 66, "{out}");
    let dir = snapshot("epyc-8node");
    let (code, out, err) = numapin(&["topology", "--snapshot", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let out = out.replace(dir.path().to_str().unwrap(), "SNAPSHOT");
    insta::assert_snapshot!("epyc-8node-topology", out);
}

#[test]
fn topology_of_a_captured_sysfs_tree_shows_a_virtual_host() {
    let (code, out, err) = numapin(&[
        "topology",
        "--root",
        data("sysfs/this-machine").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("virtual machine"), "{out}");
}

#[test]
fn a_missing_snapshot_exits_66_naming_the_file() {
    let (code, _, err) = numapin(&["plan", "--snapshot", "/nonexistent/snap"]);
    assert_eq!(code, 66);
    assert!(err.contains("/nonexistent/snap/capabilities.xml"), "{err}");
}

#[test]
fn malformed_domain_xml_exits_65_naming_file_and_position() {
    let dir = snapshot("one-node");
    let broken = dir.path().join("domains/broken.xml");
    std::fs::write(
        &broken,
        "<domain type='kvm'><name>x</name>\n<vcpu>two</vcpu></domain>",
    )
    .unwrap();
    let (code, _, err) = numapin(&["plan", "--snapshot", dir.path().to_str().unwrap()]);
    assert_eq!(code, 65, "{err}");
    assert!(
        err.contains("broken.xml") && err.contains("line 2") && err.contains("two"),
        "{err}"
    );
    std::fs::write(&broken, "<domain type='kvm'><name>x</name>").unwrap();
    let (code, _, err) = numapin(&["plan", "--snapshot", dir.path().to_str().unwrap()]);
    assert_eq!(code, 65, "{err}");
    assert!(
        err.contains("broken.xml") && err.contains("not well-formed"),
        "{err}"
    );
}

#[test]
fn invalid_observations_exit_65_naming_the_key() {
    let dir = snapshot("one-node");
    std::fs::write(
        dir.path().join("observations.toml"),
        "[nodes.zero]\nfree_mib = 1\n",
    )
    .unwrap();
    let (code, _, err) = numapin(&["plan", "--snapshot", dir.path().to_str().unwrap()]);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("nodes.zero"), "{err}");
}

#[test]
fn a_bad_config_exits_78_naming_key_and_reason() {
    let dir = snapshot("one-node");
    let config = dir.path().join("numapin.toml");
    let snap = dir.path().to_str().unwrap();
    let plan = || {
        numapin_raw(&[
            "plan",
            "--snapshot",
            snap,
            "--config",
            config.to_str().unwrap(),
        ])
    };
    std::fs::write(&config, "[planner]\nmin_gain = 3\n").unwrap();
    let (code, _, err) = plan();
    assert_eq!(code, 78);
    assert!(
        err.contains("planner.min_gain") && err.contains("numapin.toml"),
        "{err}"
    );
    // A config that reserves CPUs the host does not have is impossible too.
    std::fs::write(&config, "[host]\nreserved_cpus = \"0-99\"\n").unwrap();
    let (code, _, err) = plan();
    assert_eq!(code, 78);
    assert!(
        err.contains("host.reserved_cpus") && err.contains("CPU 8 does not exist"),
        "{err}"
    );
}

#[test]
fn bad_command_line_exits_64() {
    let (code, _, _) = numapin(&["plan"]);
    assert_eq!(code, 64);
    let (code, _, _) = numapin(&["frobnicate"]);
    assert_eq!(code, 64);
}

#[test]
fn check_config_prints_every_key() {
    let (code, out, _) = numapin(&["check-config", "--config", "/dev/null"]);
    assert_eq!(code, 0);
    for key in [
        "reserved_cpus",
        "memory_headroom_mib",
        "strategy",
        "min_gain",
        "rebalance_wait_secs",
        "max_moves_per_cycle",
        "cpu_overcommit",
    ] {
        assert!(out.contains(key), "{key} missing from\n{out}");
    }
}

/// The README's first command plans the bundled demo; its key outcomes.
#[test]
fn the_bundled_demo_plans_as_documented() {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo");
    let (code, out, err) = numapin(&[
        "plan",
        "--snapshot",
        demo.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let plan: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_contract(&plan);
    let d = |name: &str| plan_json::domain(&plan, name);
    let nested = d("nested-hv");
    assert_eq!(nested["policy"], "dedicated");
    assert_ne!(
        nested["cells"]["0"], nested["cells"]["1"],
        "cells on distinct nodes"
    );
    assert!(
        nested["vcpupin"]
            .as_object()
            .unwrap()
            .values()
            .all(|c| !c.as_str().unwrap().contains([',', '-']))
    );
    assert!(
        d("wide-01")["advice"][0]
            .as_str()
            .unwrap()
            .contains("vNUMA cells")
    );
    assert_eq!(d("legacy-strict")["nodes"], serde_json::json!([1]));
    for name in ["pinned-by-hand", "excluded-01"] {
        assert_eq!(d(name)["managed"], false);
    }
    assert_eq!(d("hotplug-01")["vcpupin"].as_object().unwrap().len(), 2);
    let score = &plan["score"];
    assert!(score["locality_after"].as_f64() > score["locality_before"].as_f64());
    // The first cycle confines every guest and moves memory within the
    // budget; guests whose memory cannot move yet stay where it is, so
    // balance comes from later moves: no node is overloaded meanwhile
    // while another has room. This host's busy vCPUs outnumber its cores
    // (pressure counts what vCPUs past the cores lose on shared ones), so
    // both nodes end near full and one may pass it.
    assert!(score["spanning_after"].as_u64() < score["spanning_before"].as_u64());
    let pressures: Vec<f64> = plan["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["pressure_after"].as_f64().unwrap())
        .collect();
    let least = pressures.iter().copied().fold(f64::MAX, f64::min);
    for p in &pressures {
        assert!(*p <= 1.0 || least > 0.9, "{pressures:?}");
    }
    for d in plan["domains"].as_array().unwrap() {
        if d["managed"] == true {
            assert_ne!(d["status"], "deferred", "{}", d["name"]);
        }
    }
    // A host-model guest that runs no VM shares CPUs; a guest seen running
    // VMs gets its own.
    assert_eq!(d("dev-01")["policy"], "shared");
    assert_eq!(d("dev-01")["nested_hypervisor"], false);
    assert_eq!(d("ci-runner")["policy"], "dedicated");
    assert_eq!(
        d("ci-runner")["hypervisor"],
        "ran nested guests in the last 12 s"
    );
}

/// The man pages and completions the package ships come from the command
/// line definition: one page per visible command, with its options and
/// examples, and completions that know every visible subcommand.
#[test]
fn generate_assets_writes_man_pages_and_completions_from_the_cli() {
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_numapin"))
        .args(["generate-assets", "--out"])
        .arg(out.path())
        .status()
        .unwrap();
    assert!(status.success());
    let read = |rel: &str| {
        std::fs::read_to_string(out.path().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    };
    let main = read("man/numapin.1");
    assert!(main.contains("Exit status"), "{main}");
    let plan = read("man/numapin-plan.1");
    assert!(plan.contains("snapshot"), "{plan}");
    assert!(plan.contains("examples/demo"), "{plan}");
    let subcommands = [
        "plan",
        "topology",
        "check-config",
        "snapshot",
        "status",
        "apply",
        "run",
        "manage",
        "rebalance",
        "recover",
    ];
    for cmd in subcommands {
        read(&format!("man/numapin-{cmd}.1"));
    }
    // Hidden commands are for the build, not for users.
    assert!(!out.path().join("man/numapin-generate-assets.1").exists());
    for file in [
        "completions/numapin.bash",
        "completions/_numapin",
        "completions/numapin.fish",
    ] {
        let text = read(file);
        for cmd in subcommands {
            assert!(text.contains(cmd), "{file} lacks {cmd}");
        }
    }
}

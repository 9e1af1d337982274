//! Hostile and broken input through the binary: each test is one finding
//! of the directed campaign (issue #14), checked by exit code and message.
//! Readers are bounded in memory and time, refuse what is not a regular
//! file, and every command maps failures to the README's exit codes.

mod plan_json;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn demo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo")
}

fn numapin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_numapin"))
        .args(args)
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Runs `args` with a deadline of 10 s, so a reader that blocks (or takes
/// gigabytes) fails the test instead of hanging it.
fn numapin_within(args: &[&str]) -> Output {
    let limit = Duration::from_secs(10);
    let mut child = Command::new(env!("CARGO_BIN_EXE_numapin"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            child.kill().unwrap();
            panic!("numapin {args:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The command failed with `code`, saying `needle`.
fn expect_failure(o: &Output, code: i32, needle: &str) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(code), "{e}");
    assert!(e.contains(needle), "wanted {needle:?} in: {e}");
}

/// A snapshot of the demo host's capabilities with the given domains.
fn snapshot(domains: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        demo().join("capabilities.xml"),
        dir.path().join("capabilities.xml"),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("domains")).unwrap();
    for (name, xml) in domains {
        std::fs::write(dir.path().join(format!("domains/{name}")), xml).unwrap();
    }
    dir
}

fn domain(name: &str, uuid: &str, body: &str) -> String {
    format!(
        "<domain type='kvm'><name>{name}</name><uuid>{uuid}</uuid>\
         <memory unit='MiB'>4096</memory>{body}</domain>"
    )
}

const UUID_A: &str = "00000000-0000-0000-0000-00000000000a";
const UUID_B: &str = "00000000-0000-0000-0000-00000000000b";

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

fn plan(dir: &Path) -> Output {
    numapin(&["plan", "--snapshot", dir.to_str().unwrap()])
}

#[test]
fn observation_node_ids_are_capped() {
    let dir = snapshot(&[("a.xml", &domain("a", UUID_A, "<vcpu>2</vcpu>"))]);
    std::fs::write(
        dir.path().join("observations.toml"),
        "[domains.a]\nmemory_mib = { \"4294967295\" = 1 }\n",
    )
    .unwrap();
    let o = plan(dir.path());
    expect_failure(&o, 65, "is not a node id (0-65535)");
}

#[test]
fn many_vcpus_with_a_wide_cpuset_are_refused_not_allocated() {
    let xml = domain(
        "a",
        UUID_A,
        "<vcpu cpuset='0-65535'>65536</vcpu><iothreads>65535</iothreads>",
    );
    let dir = snapshot(&[("a.xml", &xml)]);
    let o = numapin_within(&["plan", "--snapshot", dir.path().to_str().unwrap()]);
    expect_failure(&o, 65, "65536 vCPUs is more than numapin handles (4096)");
}

#[test]
fn a_fifo_as_capabilities_does_not_block() {
    let dir = tempfile::tempdir().unwrap();
    mkfifo(&dir.path().join("capabilities.xml"));
    let o = numapin_within(&["topology", "--snapshot", dir.path().to_str().unwrap()]);
    expect_failure(&o, 66, "is a FIFO, not a regular file");
}

#[test]
fn a_fifo_as_a_sysfs_cpulist_does_not_block() {
    let root = tempfile::tempdir().unwrap();
    let cpu = root.path().join("sys/devices/system/cpu");
    let node = root.path().join("sys/devices/system/node/node0");
    std::fs::create_dir_all(&cpu).unwrap();
    std::fs::create_dir_all(&node).unwrap();
    std::fs::write(cpu.join("online"), "0\n").unwrap();
    mkfifo(&node.join("cpulist"));
    let o = numapin_within(&["topology", "--root", root.path().to_str().unwrap()]);
    expect_failure(&o, 66, "cpulist is a FIFO");
}

#[test]
fn dev_zero_as_input_is_refused_for_every_kind() {
    // cpu/online under --root
    let root = tempfile::tempdir().unwrap();
    let cpu = root.path().join("sys/devices/system/cpu");
    std::fs::create_dir_all(&cpu).unwrap();
    std::os::unix::fs::symlink("/dev/zero", cpu.join("online")).unwrap();
    let o = numapin_within(&["topology", "--root", root.path().to_str().unwrap()]);
    expect_failure(&o, 66, "a character device");
    // observations.toml
    let dir = snapshot(&[]);
    std::os::unix::fs::symlink("/dev/zero", dir.path().join("observations.toml")).unwrap();
    let o = numapin_within(&["plan", "--snapshot", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(66), "{}", stderr(&o));
    // --config
    let o = numapin_within(&["check-config", "--config", "/dev/zero"]);
    expect_failure(&o, 66, "a character device");
}

#[test]
fn an_oversized_file_is_refused_naming_the_cap() {
    let dir = snapshot(&[]);
    let big = format!("# {}\n", "x".repeat(17 << 20));
    std::fs::write(dir.path().join("observations.toml"), big).unwrap();
    let o = plan(dir.path());
    expect_failure(
        &o,
        65,
        "observations.toml is larger than 16 MiB, numapin's cap for observations",
    );
}

#[test]
fn a_full_stdout_is_an_io_error_not_a_panic() {
    let demo = demo();
    let demo = demo.to_str().unwrap();
    for args in [
        &["topology", "--snapshot", demo][..],
        &["plan", "--snapshot", demo][..],
        &["check-config"][..],
    ] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_numapin"))
            .args(args)
            .stdout(full)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(74), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("cannot write to standard output"),
            "{args:?}: {}",
            stderr(&o)
        );
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    }
}

#[test]
fn impossible_observed_memory_is_refused_not_wrapped() {
    let dir = snapshot(&[("a.xml", &domain("a", UUID_A, "<vcpu>2</vcpu>"))]);
    std::fs::write(
        dir.path().join("observations.toml"),
        format!(
            "[domains.a]\nmemory_mib = {{ \"0\" = {m}, \"1\" = {m} }}\n",
            m = i64::MAX
        ),
    )
    .unwrap();
    let o = plan(dir.path());
    assert_eq!(o.status.code(), Some(65), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("domains.\"a\".memory_mib") && e.contains("guest's 4096 MiB of RAM"),
        "{e}"
    );
}

#[test]
fn observations_on_missing_nodes_and_cpus_are_refused() {
    for (text, key) in [
        (
            "[domains.a]\nmemory_mib = { \"7\" = 1 }\n",
            "memory_mib.\"7\"",
        ),
        ("[nodes.7]\nfree_mib = 1\n", "nodes.7"),
        ("[cpu_steal]\n\"500\" = 0.1\n", "cpu_steal.\"500\""),
    ] {
        let dir = snapshot(&[("a.xml", &domain("a", UUID_A, "<vcpu>2</vcpu>"))]);
        std::fs::write(dir.path().join("observations.toml"), text).unwrap();
        let o = plan(dir.path());
        assert_eq!(o.status.code(), Some(65), "{text}: {}", stderr(&o));
        assert!(stderr(&o).contains(key), "{text}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("does not exist"),
            "{text}: {}",
            stderr(&o)
        );
    }
}

#[test]
fn a_persistent_definition_of_another_domain_is_refused() {
    let live = domain("a", UUID_A, "<vcpu>2</vcpu>");
    let other = domain("b", UUID_B, "<vcpu cpuset='0'>2</vcpu>");
    let dir = snapshot(&[("a.xml", &live), ("a.inactive.xml", &other)]);
    let o = plan(dir.path());
    assert_eq!(o.status.code(), Some(65), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("a.inactive.xml") && e.contains("a.xml (UUID") && e.contains(UUID_B),
        "{e}"
    );
}

#[test]
fn pins_and_bindings_to_what_the_host_lacks_are_reported() {
    let pinned = domain(
        "pinned",
        UUID_A,
        "<vcpu>2</vcpu><cputune><vcpupin vcpu='0' cpuset='200-201'/>\
         <vcpupin vcpu='1' cpuset='200-201'/></cputune>",
    );
    let bound = domain(
        "bound",
        UUID_B,
        "<vcpu>2</vcpu><numatune><memory mode='strict' nodeset='5'/></numatune>",
    );
    let dir = snapshot(&[("pinned.xml", &pinned), ("bound.xml", &bound)]);
    let o = numapin(&[
        "plan",
        "--snapshot",
        dir.path().to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let find = |name: &str| plan_json::domain(&plan, name);
    let p = find("pinned");
    assert!(
        p["advice"][0]
            .as_str()
            .unwrap()
            .contains("vCPUs 0-1 are pinned to CPUs 200-201, which this host lacks"),
        "{p}"
    );
    assert_eq!(p["current"]["locality"], 0.0, "{p}");
    let b = find("bound");
    assert!(
        b["advice"][0]
            .as_str()
            .unwrap()
            .contains("its memory is bound to node 5, which this host lacks"),
        "{b}"
    );
    if b["status"] == "no_fit" {
        assert!(b["reason"].as_str().unwrap().contains("node 5"), "{b}");
    }
}

#[test]
fn topology_root_exit_codes_follow_the_class() {
    let o = numapin(&["topology", "--root", "/nonexistent/numapin-root"]);
    assert_eq!(o.status.code(), Some(66), "{}", stderr(&o));
    let root = tempfile::tempdir().unwrap();
    let cpu = root.path().join("sys/devices/system/cpu");
    std::fs::create_dir_all(&cpu).unwrap();
    std::fs::write(cpu.join("online"), "zero\n").unwrap();
    let o = numapin(&["topology", "--root", root.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(65), "{}", stderr(&o));
}

#[test]
fn a_directory_as_capabilities_is_no_input() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("capabilities.xml")).unwrap();
    let o = numapin(&["topology", "--snapshot", dir.path().to_str().unwrap()]);
    expect_failure(&o, 66, "is a directory");
}

#[test]
fn a_missing_config_is_no_input() {
    let demo = demo();
    for args in [
        &["check-config", "--config", "/nonexistent/numapin.toml"][..],
        &[
            "plan",
            "--snapshot",
            demo.to_str().unwrap(),
            "--config",
            "/nonexistent/numapin.toml",
        ][..],
    ] {
        let o = numapin(args);
        assert_eq!(o.status.code(), Some(66), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn capabilities_without_online_cpus_are_blamed_on_capabilities() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("capabilities.xml"),
        "<capabilities><host><topology><cells num='1'><cell id='0'>\
         <memory unit='KiB'>1048576</memory><cpus num='0'/></cell></cells>\
         </topology></host></capabilities>",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("domains")).unwrap();
    let o = plan(dir.path());
    assert_eq!(o.status.code(), Some(65), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("capabilities.xml") && e.contains("no online CPU"),
        "{e}"
    );
    assert!(!e.contains("built-in defaults"), "{e}");
}

#[test]
fn invalid_utf8_gives_the_byte_offset() {
    let dir = snapshot(&[]);
    std::fs::write(dir.path().join("observations.toml"), b"# ok\n\xff\n").unwrap();
    let o = plan(dir.path());
    expect_failure(&o, 65, "invalid UTF-8 at byte 5");
}

/// A reader that goes away (`numapin plan ... | head -c0`) ends the command
/// quietly and successfully, with SIGPIPE ignored as the daemon needs it.
#[test]
fn output_to_a_closed_pipe_ends_quietly() {
    let demo = demo();
    let mut child = Command::new(env!("CARGO_BIN_EXE_numapin"))
        .args([
            "plan",
            "--snapshot",
            demo.to_str().unwrap(),
            "--format",
            "json",
        ])
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the read end before numapin writes anything.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
}

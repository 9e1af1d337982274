//! Real QEMU domains on the real libvirtd for integration tests.
//!
//! Domains are transient (`virsh create`), diskless and boot nothing:
//! SeaBIOS finds no disk and waits, which is all pinning needs. They run
//! under KVM where this machine allows it and fall back to TCG otherwise
//! (see the README's notes on nested KVM). Each is destroyed on drop.

#![allow(dead_code)]

pub mod daemon;

use std::process::Command;
use std::sync::OnceLock;

pub const URI: &str = "qemu:///system";

pub fn virsh(args: &[&str]) -> Result<String, String> {
    let out = Command::new("virsh")
        .arg("-c")
        .arg(URI)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run virsh: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "virsh {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Fails the test with instructions when libvirtd is not there: these
/// tests must not pass by skipping.
pub fn require_libvirt() {
    if let Err(e) = virsh(&["version"]) {
        panic!("libvirtd is not reachable at {URI} ({e}); start it with `bash .ci/start-libvirt`");
    }
}

/// What goes inside `<domain>` besides name, type and devices.
#[derive(Clone)]
pub struct Spec {
    pub vcpus: u32,
    pub current_vcpus: Option<u32>,
    pub memory_mib: u32,
    pub iothreads: u32,
    /// Extra elements, e.g. `<numatune>...</numatune>` or `<cputune>`.
    pub extra: String,
    /// Extra devices, e.g. a `<disk>`.
    pub devices: String,
}

impl Default for Spec {
    fn default() -> Self {
        Self {
            vcpus: 2,
            current_vcpus: None,
            memory_mib: 64,
            iothreads: 0,
            extra: String::new(),
            devices: String::new(),
        }
    }
}

fn xml(name: &str, kind: &str, spec: &Spec) -> String {
    let current = spec
        .current_vcpus
        .map(|c| format!(" current='{c}'"))
        .unwrap_or_default();
    let iothreads = if spec.iothreads > 0 {
        format!("<iothreads>{}</iothreads>", spec.iothreads)
    } else {
        String::new()
    };
    format!(
        "<domain type='{kind}'>
  <name>{name}</name>
  <memory unit='MiB'>{mem}</memory>
  <vcpu placement='static'{current}>{vcpus}</vcpu>
  {iothreads}
  {extra}
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <memballoon model='none'/>
    {devices}
  </devices>
</domain>",
        mem = spec.memory_mib,
        vcpus = spec.vcpus,
        extra = spec.extra,
        devices = spec.devices,
    )
}

/// `kvm` when a KVM domain starts here, else `qemu`; probed once.
pub fn domain_type() -> &'static str {
    static KIND: OnceLock<&'static str> = OnceLock::new();
    KIND.get_or_init(|| {
        let name = format!("numapin-probe-{}", std::process::id());
        let path = std::env::temp_dir().join(format!("{name}.xml"));
        std::fs::write(&path, xml(&name, "kvm", &Spec::default())).unwrap();
        let ok = virsh(&["create", path.to_str().unwrap()]).is_ok();
        let _ = virsh(&["destroy", &name]);
        let _ = std::fs::remove_file(&path);
        if ok { "kvm" } else { "qemu" }
    })
}

/// A running transient domain, destroyed on drop.
pub struct TestDomain {
    pub name: String,
}

impl TestDomain {
    pub fn start(name: &str, spec: &Spec) -> Self {
        require_libvirt();
        let name = format!("nptest-{name}");
        // A leftover from an aborted run would make create fail.
        let _ = virsh(&["destroy", &name]);
        let path = std::env::temp_dir().join(format!("{name}.xml"));
        std::fs::write(&path, xml(&name, domain_type(), spec)).unwrap();
        if let Err(e) = virsh(&["create", path.to_str().unwrap()]) {
            panic!("cannot start test domain {name}: {e}");
        }
        let _ = std::fs::remove_file(&path);
        TestDomain { name }
    }

    pub fn uuid(&self) -> String {
        virsh(&["domuuid", &self.name]).unwrap().trim().to_string()
    }

    pub fn pid(&self) -> u32 {
        let path = format!("/run/libvirt/qemu/{}.pid", self.name);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .trim()
            .parse()
            .unwrap()
    }

    /// `Cpus_allowed_list` of every vCPU thread, from the kernel, by vCPU.
    pub fn vcpu_thread_cpus(&self) -> std::collections::BTreeMap<u32, String> {
        let pid = self.pid();
        let mut out = std::collections::BTreeMap::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
            let dir = task.unwrap().path();
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            let Some(rest) = comm.trim().strip_prefix("CPU ") else {
                continue;
            };
            let Some(index) = rest.split('/').next().and_then(|i| i.parse().ok()) else {
                continue;
            };
            let status = std::fs::read_to_string(dir.join("status")).unwrap();
            let cpus = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap()
                .trim()
                .to_string();
            out.insert(index, cpus);
        }
        out
    }

    pub fn destroy(&self) {
        let _ = virsh(&["destroy", &self.name]);
    }
}

impl Drop for TestDomain {
    fn drop(&mut self) {
        self.destroy();
    }
}

/// Runs the numapin binary built for these tests.
pub fn numapin(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_numapin"))
        .args(args)
        .output()
        .expect("numapin runs")
}

/// A config for one test: its own state dir, CPU 0 reserved (so a 1-vCPU
/// domain's pins really change on this 2-CPU machine), and only the
/// test's own domains managed, so tests never touch each other's domains.
/// No memory headroom and a low assumed vCPU load: these tests are about
/// applying changes, not about whatever else this machine runs.
pub fn isolated_config(
    dir: &std::path::Path,
    managed: &[&TestDomain],
    extra: &str,
) -> std::path::PathBuf {
    let mut text = format!(
        "[host]\nreserved_cpus = \"0\"\nmemory_headroom_mib = 0\n[planner]\ndefault_vcpu_load = 0.1\n[apply]\nstate_dir = \"{}\"\nmemory_verify_timeout_secs = 5\n{extra}\n",
        dir.join("state").display()
    );
    for d in managed {
        text.push_str(&format!(
            "[[domain]]\nname = \"{}\"\npolicy = \"auto\"\n",
            d.name
        ));
    }
    text.push_str("[[domain]]\nname = \"*\"\npolicy = \"exclude\"\n");
    let path = dir.join("numapin.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Serialises the tests of one file: they share the host's two CPUs.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

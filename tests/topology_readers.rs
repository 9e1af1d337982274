//! Both topology readers against committed fixtures and synthesised trees.

use std::fs;
use std::path::{Path, PathBuf};

use numapin::topology::sysfs::{self, HugepageUsage, NodeMemory, SysfsError};
use numapin::topology::{HostKind, HostTopology, PagePool, capabilities};
use proptest::prelude::*;

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}

fn caps_text(name: &str) -> String {
    fs::read_to_string(data(&format!("caps/{name}"))).unwrap()
}

fn caps(name: &str) -> HostTopology {
    capabilities::parse(&caps_text(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Node id -> its CPUs as a cpulist string.
fn cpus_by_node(t: &HostTopology) -> Vec<(u32, String)> {
    t.nodes.iter().map(|n| (n.id, n.cpus.to_string())).collect()
}

/// Distance rows in node order.
fn distance_rows(t: &HostTopology) -> Vec<Vec<u32>> {
    t.nodes
        .iter()
        .map(|n| n.distances.values().copied().collect())
        .collect()
}

fn memory(t: &HostTopology) -> Vec<u64> {
    t.nodes.iter().map(|n| n.memory_mib).collect()
}

fn pool(size_kib: u64, total: u64) -> PagePool {
    PagePool { size_kib, total }
}

/// What both readers must see on the machine the fixtures were captured
/// from: one node, CPUs 0-1, no SMT, a virtual host without vmx/svm.
fn assert_this_machine(t: &HostTopology) {
    assert_eq!(cpus_by_node(t), [(0, "0-1".into())]);
    assert_eq!(t.smt_width(), 1);
    assert_eq!(distance_rows(t), [[10]]);
    assert!(t.kind.is_virtual());
    assert!(!t.virtualization_extensions);
    assert!(t.offline_cpus.is_empty());
    assert_eq!(
        t.node(0).unwrap().hugepages,
        [pool(2048, 0), pool(1048576, 0)]
    );
    assert!(t.total_memory_mib() > 1024);
}

#[test]
fn caps_this_machine() {
    assert_this_machine(&caps("this-machine.xml"));
}

#[test]
fn caps_interleaved_without_distances_or_siblings() {
    let t = caps("libvirt-caps-interleaved-2node.xml");
    assert_eq!(
        cpus_by_node(&t),
        [
            (0, "0,2,4,6,8,10,12,14,16,18,20,22".into()),
            (1, "1,3,5,7,9,11,13,15,17,19,21,23".into())
        ]
    );
    assert_eq!(t.smt_width(), 1);
    assert_eq!(distance_rows(&t), [[10, 20], [20, 10]]);
    assert_eq!(memory(&t), [12277, 12287]);
    assert_eq!(t.kind, HostKind::BareMetal);
    assert!(t.virtualization_extensions);
    assert!(t.offline_cpus.is_empty());
    assert_eq!(t.cpu(5).unwrap().socket, None);
}

#[test]
fn caps_intel_two_sockets_with_smt() {
    let t = caps("intel-2s-smt.xml");
    assert_eq!(
        cpus_by_node(&t),
        [(0, "0-19,40-59".into()), (1, "20-39,60-79".into())]
    );
    assert_eq!(t.smt_width(), 2);
    assert_eq!(t.cpu(3).unwrap().siblings.to_string(), "3,43");
    assert_eq!(t.cpu(63).unwrap().socket, Some(1));
    assert_eq!(t.cpu(63).unwrap().core, Some(3));
    assert_eq!(distance_rows(&t), [[10, 21], [21, 10]]);
    assert_eq!(memory(&t), [196608, 196608]);
    for node in &t.nodes {
        assert_eq!(node.hugepages, [pool(2048, 16384), pool(1048576, 0)]);
    }
    assert_eq!(t.kind, HostKind::BareMetal);
    assert!(t.virtualization_extensions);
}

#[test]
fn caps_epyc_nps4() {
    let t = caps("epyc-8node.xml");
    assert_eq!(t.nodes.len(), 8);
    assert_eq!(t.cpus.len(), 128);
    assert_eq!(t.node(0).unwrap().cpus.to_string(), "0-7,64-71");
    assert_eq!(t.node(5).unwrap().cpus.to_string(), "40-47,104-111");
    assert_eq!(t.cpu(104).unwrap().siblings.to_string(), "40,104");
    assert_eq!(t.smt_width(), 2);
    assert_eq!(t.distance(0, 3), 12);
    assert_eq!(t.distance(0, 4), 32);
    assert_eq!(t.distance(7, 4), 12);
    assert_eq!(t.distance(6, 6), 10);
    assert!(memory(&t).iter().all(|&m| m == 65536));
    assert!(t.virtualization_extensions);
    assert_eq!(t.kind, HostKind::BareMetal);
}

#[test]
fn caps_cxl_memory_only_node() {
    let t = caps("cxl-memory-node.xml");
    assert_eq!(
        cpus_by_node(&t),
        [
            (0, "0-15,32-47".into()),
            (1, "16-31,48-63".into()),
            (2, "".into())
        ]
    );
    assert!(t.node(2).unwrap().is_memory_only());
    assert_eq!(memory(&t), [131072, 131072, 262144]);
    assert_eq!(
        distance_rows(&t),
        [[10, 21, 24], [21, 10, 28], [24, 28, 10]]
    );
}

#[test]
fn caps_sparse_node_ids_with_an_offline_cpu() {
    let t = caps("sparse-ids.xml");
    assert_eq!(cpus_by_node(&t), [(0, "0-3".into()), (2, "8-9,11".into())]);
    assert_eq!(t.node_ids().to_string(), "0,2");
    assert!(t.cpu(10).is_none());
    assert_eq!(t.cpu(11).unwrap().siblings.to_string(), "11");
    assert_eq!(t.smt_width(), 2);
    assert_eq!(distance_rows(&t), [[10, 20], [20, 10]]);
    assert_eq!(memory(&t), [16384, 16384]);
}

#[test]
fn caps_one_node_without_smt() {
    let t = caps("one-node.xml");
    assert_eq!(cpus_by_node(&t), [(0, "0-7".into())]);
    assert_eq!(t.smt_width(), 1);
    assert_eq!(distance_rows(&t), [[10]]);
    assert_eq!(memory(&t), [32768]);
    assert_eq!(t.node(0).unwrap().pool(2048), Some(&pool(2048, 512)));
}

#[test]
fn caps_nested_virtual_host() {
    let t = caps("nested-virtual-host.xml");
    assert_eq!(
        cpus_by_node(&t),
        [
            (0, "0".into()),
            (1, "1".into()),
            (2, "2".into()),
            (3, "3".into())
        ]
    );
    assert_eq!(
        distance_rows(&t),
        [
            [10, 20, 30, 30],
            [20, 10, 30, 30],
            [30, 30, 10, 20],
            [30, 30, 20, 10]
        ]
    );
    assert_eq!(memory(&t), [768; 4]);
    assert_eq!(t.kind, HostKind::Virtual { hypervisor: None });
    assert!(!t.virtualization_extensions);
}

#[test]
fn caps_host_cpu_details() {
    let cpu = capabilities::host_cpu(&caps_text("epyc-8node.xml")).unwrap();
    assert_eq!(cpu.vendor.as_deref(), Some("AMD"));
    assert_eq!(cpu.model.as_deref(), Some("EPYC-Milan"));
    assert!(cpu.has_feature("svm"));
}

#[test]
fn caps_error_names_the_bad_value_and_its_place() {
    let xml = caps_text("sparse-ids.xml").replace("<cpu id='9'", "<cpu id='nine'");
    let msg = capabilities::parse(&xml).unwrap_err().to_string();
    assert!(
        msg.ends_with("<cpu id='nine'>: \"nine\" is not a CPU id"),
        "{msg}"
    );
    assert!(msg.starts_with("line "), "{msg}");
    let xml = caps_text("one-node.xml").replace("value='10'", "value='5'");
    let msg = capabilities::parse(&xml).unwrap_err().to_string();
    assert!(msg.contains("distance 5"), "{msg}");
}

#[test]
fn sysfs_this_machine() {
    let root = data("sysfs/this-machine");
    assert_this_machine(&sysfs::read(&root).unwrap());
    let mem = sysfs::read_node_memory(&root).unwrap();
    assert_eq!(mem.len(), 1);
    assert!(mem[0].free_mib <= mem[0].total_mib && mem[0].total_mib > 1024);
    // MemFree 3583352 kB plus Inactive(file) 821024 kB: cold page cache
    // is memory a guest can have.
    assert_eq!(mem[0].free_mib, (3_583_352 + 821_024) / 1024);
}

/// Writes `files` (path relative to root, content) into a fresh tempdir.
fn tree(files: &[(String, String)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, content) in files {
        let path = dir.path().join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }
    dir
}

fn file(path: &str, content: &str) -> (String, String) {
    (path.to_string(), content.to_string())
}

fn node_files(id: u32, cpulist: &str, mem_kb: u64, distance: &str) -> Vec<(String, String)> {
    let dir = format!("sys/devices/system/node/node{id}");
    let meminfo = format!(
        "Node {id} MemTotal:       {mem_kb} kB\nNode {id} MemFree:        {} kB\nNode {id} MemUsed:        {} kB\n",
        mem_kb / 2,
        mem_kb / 2
    );
    vec![
        file(&format!("{dir}/cpulist"), &format!("{cpulist}\n")),
        file(&format!("{dir}/meminfo"), &meminfo),
        file(&format!("{dir}/distance"), &format!("{distance}\n")),
        file(
            &format!("{dir}/hugepages/hugepages-2048kB/nr_hugepages"),
            "512\n",
        ),
        file(
            &format!("{dir}/hugepages/hugepages-2048kB/free_hugepages"),
            "100\n",
        ),
        file(
            &format!("{dir}/hugepages/hugepages-1048576kB/nr_hugepages"),
            "0\n",
        ),
        file(
            &format!("{dir}/hugepages/hugepages-1048576kB/free_hugepages"),
            "0\n",
        ),
    ]
}

fn cpu_files(id: u32, package: u32, core: u32, siblings: &str) -> Vec<(String, String)> {
    let dir = format!("sys/devices/system/cpu/cpu{id}/topology");
    vec![
        file(
            &format!("{dir}/physical_package_id"),
            &format!("{package}\n"),
        ),
        file(&format!("{dir}/die_id"), "0\n"),
        file(&format!("{dir}/core_id"), &format!("{core}\n")),
        file(
            &format!("{dir}/thread_siblings_list"),
            &format!("{siblings}\n"),
        ),
    ]
}

/// Two sockets, 2 cores x 2 threads each, on nodes 0 and 2; CPU 6 is
/// offline (no topology directory, absent from online and node cpulists),
/// so CPU 7 has no online sibling.
fn sparse_smt_files() -> Vec<(String, String)> {
    let mut files = vec![
        file("sys/devices/system/cpu/online", "0-5,7\n"),
        file("sys/devices/system/cpu/present", "0-7\n"),
        file("sys/devices/system/node/online", "0,2\n"),
        file("proc/cpuinfo", "processor\t: 0\nflags\t\t: fpu vmx ht\n\n"),
        file("sys/class/dmi/id/sys_vendor", "Supermicro\n"),
    ];
    files.extend(node_files(0, "0-3", 8 * 1024 * 1024, "10 21"));
    files.extend(node_files(2, "4-5,7", 8 * 1024 * 1024, "21 10"));
    for (cpu, package, core, siblings) in [
        (0, 0, 0, "0-1"),
        (1, 0, 0, "0-1"),
        (2, 0, 1, "2-3"),
        (3, 0, 1, "2-3"),
        (4, 1, 0, "4-5"),
        (5, 1, 0, "4-5"),
        (7, 1, 1, "7"),
    ] {
        files.extend(cpu_files(cpu, package, core, siblings));
    }
    files
}

#[test]
fn sysfs_sparse_nodes_smt_and_offline_cpu() {
    let dir = tree(&sparse_smt_files());
    let t = sysfs::read(dir.path()).unwrap();
    assert_eq!(cpus_by_node(&t), [(0, "0-3".into()), (2, "4-5,7".into())]);
    assert_eq!(t.offline_cpus.to_string(), "6");
    assert_eq!(t.smt_width(), 2);
    assert_eq!(t.cpu(7).unwrap().siblings.to_string(), "7");
    assert_eq!(t.cpu(4).unwrap().socket, Some(1));
    assert_eq!(t.distance(0, 2), 21);
    assert_eq!(memory(&t), [8192, 8192]);
    assert_eq!(
        t.node(2).unwrap().hugepages,
        [pool(2048, 512), pool(1048576, 0)]
    );
    assert_eq!(t.kind, HostKind::BareMetal);
    assert!(t.virtualization_extensions);

    let mem = sysfs::read_node_memory(dir.path()).unwrap();
    assert_eq!(
        mem[1],
        NodeMemory {
            node: 2,
            total_mib: 8192,
            free_mib: 4096,
            hugepages: vec![
                HugepageUsage {
                    size_kib: 2048,
                    total: 512,
                    free: 100
                },
                HugepageUsage {
                    size_kib: 1048576,
                    total: 0,
                    free: 0
                }
            ]
        }
    );
}

#[test]
fn sysfs_memory_only_node() {
    let mut files = vec![
        file("sys/devices/system/cpu/online", "0-1\n"),
        file("sys/devices/system/node/online", "0-1\n"),
    ];
    files.extend(node_files(0, "0-1", 4 * 1024 * 1024, "10 24"));
    files.extend(node_files(1, "", 64 * 1024 * 1024, "24 10"));
    files.extend(cpu_files(0, 0, 0, "0"));
    files.extend(cpu_files(1, 0, 1, "1"));
    let dir = tree(&files);
    let t = sysfs::read(dir.path()).unwrap();
    assert_eq!(cpus_by_node(&t), [(0, "0-1".into()), (1, "".into())]);
    assert!(t.node(1).unwrap().is_memory_only());
    assert_eq!(memory(&t), [4096, 65536]);
    assert_eq!(t.distance(1, 0), 24);
    assert_eq!(t.kind, HostKind::Unknown);
}

#[test]
fn sysfs_kernel_without_numa() {
    let dir = tree(&[
        file("sys/devices/system/cpu/online", "0-3\n"),
        file(
            "proc/meminfo",
            "MemTotal:       16384000 kB\nMemFree:         8192000 kB\n",
        ),
        file("proc/cpuinfo", "flags\t\t: fpu hypervisor\n"),
        file("sys/class/dmi/id/sys_vendor", "QEMU\n"),
    ]);
    let t = sysfs::read(dir.path()).unwrap();
    assert_eq!(cpus_by_node(&t), [(0, "0-3".into())]);
    assert_eq!(memory(&t), [16000]);
    assert_eq!(
        t.kind,
        HostKind::Virtual {
            hypervisor: Some("QEMU".into())
        }
    );
    let mem = sysfs::read_node_memory(dir.path()).unwrap();
    assert_eq!((mem[0].total_mib, mem[0].free_mib), (16000, 8000));
}

#[test]
fn sysfs_errors_name_the_file_and_content() {
    let mut files = sparse_smt_files();
    files.push(file(
        "sys/devices/system/cpu/cpu5/topology/core_id",
        "five\n",
    ));
    let err = sysfs::read(tree(&files).path()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, SysfsError::BadContent { .. }));
    assert!(
        msg.ends_with("cpu5/topology/core_id: \"five\" is not a topology id"),
        "{msg}"
    );

    let mut files = sparse_smt_files();
    files.push(file("sys/devices/system/node/node2/distance", "21 10 30\n"));
    let msg = sysfs::read(tree(&files).path()).unwrap_err().to_string();
    assert!(
        msg.contains("node2/distance: has 3 entries but 2 nodes"),
        "{msg}"
    );

    let files: Vec<_> = sparse_smt_files()
        .into_iter()
        .filter(|(p, _)| p != "sys/devices/system/cpu/online")
        .collect();
    let msg = sysfs::read(tree(&files).path()).unwrap_err().to_string();
    assert!(msg.contains("sys/devices/system/cpu/online"), "{msg}");
}

const CAPS_FIXTURES: [&str; 8] = [
    "this-machine.xml",
    "libvirt-caps-interleaved-2node.xml",
    "intel-2s-smt.xml",
    "epyc-8node.xml",
    "cxl-memory-node.xml",
    "sparse-ids.xml",
    "one-node.xml",
    "nested-virtual-host.xml",
];

/// A character-level edit of a document: delete, replace or insert at a
/// position given as a fraction of its length.
#[derive(Debug, Clone)]
enum Edit {
    Delete(f64, usize),
    Replace(f64, char),
    Insert(f64, String),
}

fn apply(text: &str, edit: &Edit) -> String {
    let chars: Vec<char> = text.chars().collect();
    let at = |f: f64| ((chars.len() as f64) * f) as usize % chars.len().max(1);
    let mut out = chars.clone();
    match edit {
        Edit::Delete(f, n) => {
            let start = at(*f);
            let end = (start + n).min(out.len());
            out.drain(start..end);
        }
        Edit::Replace(f, c) => {
            let i = at(*f);
            if i < out.len() {
                out[i] = *c;
            }
        }
        Edit::Insert(f, s) => {
            let i = at(*f);
            out.splice(i..i, s.chars());
        }
    }
    out.into_iter().collect()
}

fn edit() -> impl Strategy<Value = Edit> {
    let near_xml = prop_oneof![
        Just('<'),
        Just('>'),
        Just('\''),
        Just('"'),
        Just('-'),
        Just(','),
        Just('^'),
        Just('9'),
        any::<char>()
    ];
    prop_oneof![
        (0.0..1.0f64, 1usize..40).prop_map(|(f, n)| Edit::Delete(f, n)),
        (0.0..1.0f64, near_xml).prop_map(|(f, c)| Edit::Replace(f, c)),
        (
            0.0..1.0f64,
            prop_oneof![
                Just("<cpu id='99999999999'/>".to_string()),
                Just(" siblings='0-65535'".to_string()),
                Just("<cell id='0'/>".to_string()),
                Just("<pages size='4' unit='EiB'>99999999999999999999</pages>".to_string()),
                ".{0,12}"
            ]
        )
            .prop_map(|(f, s)| Edit::Insert(f, s)),
    ]
}

/// Every sysfs file the synthesised tree has, to corrupt one at a time.
fn sparse_paths() -> Vec<String> {
    sparse_smt_files().into_iter().map(|(p, _)| p).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn caps_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = capabilities::parse(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn caps_arbitrary_strings_never_panic(text in ".{0,256}") {
        let _ = capabilities::parse(&text);
        let _ = capabilities::parse(&format!("<capabilities><host><topology><cells>{text}</cells></topology></host></capabilities>"));
    }

    #[test]
    fn caps_mutated_fixtures_never_panic(
        which in 0..CAPS_FIXTURES.len(),
        edits in proptest::collection::vec(edit(), 1..6),
    ) {
        let mut text = caps_text(CAPS_FIXTURES[which]);
        for e in &edits {
            text = apply(&text, e);
        }
        let _ = capabilities::parse(&text);
        let _ = capabilities::host_cpu(&text);
    }
}

proptest! {
    // Each case writes a whole tree to disk, so fewer of them.
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn sysfs_arbitrary_file_contents_never_panic(
        index in 0..sparse_smt_files().len(),
        content in proptest::collection::vec(any::<u8>(), 0..64),
        text in prop_oneof![Just("0-65535".to_string()), Just("-1".to_string()), Just("18446744073709551616".to_string()), ".{0,16}"],
        as_text in any::<bool>(),
    ) {
        let dir = tree(&sparse_smt_files());
        let path = dir.path().join(&sparse_paths()[index]);
        if as_text {
            fs::write(&path, text).unwrap();
        } else {
            fs::write(&path, content).unwrap();
        }
        let _ = sysfs::read(dir.path());
        let _ = sysfs::read_node_memory(dir.path());
    }
}

//! Unit tests of the capabilities reader: errors name line, element and
//! value; what libvirt prints is read as documented in the module.

use super::*;

fn caps(cells: &str) -> String {
    format!(
        "<capabilities>\n  <host>\n    <cpu>\n      <arch>x86_64</arch>\n    </cpu>\n    \
         <topology>\n      <cells num='1'>\n{cells}\n      </cells>\n    </topology>\n  \
         </host>\n</capabilities>\n"
    )
}

#[test]
fn bad_cpu_id_names_line_element_and_value() {
    let xml = caps(
        "        <cell id='0'>\n          <cpus num='1'>\n            <cpu id='x'/>\n          </cpus>\n        </cell>",
    );
    let err = parse(&xml).unwrap_err();
    assert_eq!(
        err.to_string(),
        "line 10:13: <cpu id='x'>: \"x\" is not a CPU id"
    );
}

#[test]
fn ids_beyond_the_id_set_limit_are_rejected() {
    let xml = caps(
        "        <cell id='0'>\n          <cpus num='1'>\n            <cpu id='4000000000'/>\n          </cpus>\n        </cell>",
    );
    let msg = parse(&xml).unwrap_err().to_string();
    assert!(msg.ends_with("\"4000000000\" is not a CPU id"), "{msg}");
    let msg = parse(&caps("        <cell id='65536'/>"))
        .unwrap_err()
        .to_string();
    assert!(msg.ends_with("\"65536\" is not a NUMA node id"), "{msg}");
}

#[test]
fn bad_memory_text_and_unit_are_reported() {
    let xml =
        caps("        <cell id='0'>\n          <memory unit='KiB'>12k</memory>\n        </cell>");
    let msg = parse(&xml).unwrap_err().to_string();
    assert_eq!(
        msg,
        "line 9:11: <memory unit='KiB'>: \"12k\" is not a memory size"
    );
    let xml = caps(
        "        <cell id='0'>\n          <memory unit='furlong'>12</memory>\n        </cell>",
    );
    let msg = parse(&xml).unwrap_err().to_string();
    assert!(
        msg.contains("<memory unit='furlong'>: \"furlong\" is not a size unit"),
        "{msg}"
    );
}

#[test]
fn missing_and_malformed_attributes() {
    let msg = parse(&caps("        <cell/>")).unwrap_err().to_string();
    assert_eq!(msg, "line 8:9: <cell> has no id attribute");
    let xml = caps(
        "        <cell id='0'>\n          <cpus num='1'>\n            <cpu id='0' siblings='0,,1'/>\n          </cpus>\n        </cell>",
    );
    let msg = parse(&xml).unwrap_err().to_string();
    assert!(
        msg.contains("<cpu siblings='0,,1'>: not a CPU list: empty element in list \"0,,1\""),
        "{msg}"
    );
    let xml = caps(
        "        <cell id='0'>\n          <distances>\n            <sibling id='0' value='-10'/>\n          </distances>\n        </cell>",
    );
    let msg = parse(&xml).unwrap_err().to_string();
    assert!(
        msg.contains("<sibling value='-10'>: \"-10\" is not a NUMA distance"),
        "{msg}"
    );
}

#[test]
fn rejects_documents_that_are_not_capabilities() {
    assert!(matches!(
        parse("<domain/>"),
        Err(CapabilitiesError::NotCapabilities { .. })
    ));
    assert!(matches!(
        parse("<capabilities/>"),
        Err(CapabilitiesError::NoHost)
    ));
    assert!(matches!(
        parse("<capabilities><host><cpu/></host></capabilities>"),
        Err(CapabilitiesError::NoTopology)
    ));
    assert!(matches!(
        parse("<capabilities"),
        Err(CapabilitiesError::Xml(_))
    ));
    assert!(matches!(
        parse(&caps("")),
        Err(CapabilitiesError::Topology(TopologyError::NoNodes))
    ));
}

#[test]
fn bare_cpu_next_to_described_ones_is_offline() {
    let xml = caps(
        "        <cell id='0'>\n          <cpus num='3'>\n            \
         <cpu id='0' socket_id='0' core_id='0' siblings='0-1'/>\n            \
         <cpu id='1'/>\n            \
         <cpu id='2' socket_id='0' core_id='1' siblings='2'/>\n          </cpus>\n        </cell>",
    );
    let topo = parse(&xml).unwrap();
    assert_eq!(topo.online_cpus().to_string(), "0,2");
    assert_eq!(topo.offline_cpus.to_string(), "1");
    assert_eq!(topo.cpu(0).unwrap().siblings.to_string(), "0");
    assert_eq!(topo.cpu(2).unwrap().die, None);
}

#[test]
fn base_pages_are_not_pools() {
    let xml = caps(
        "        <cell id='0'>\n          <pages unit='KiB' size='64'>100</pages>\n          \
         <pages unit='MiB' size='512'>3</pages>\n          \
         <cpus num='1'><cpu id='0'/></cpus>\n        </cell>",
    );
    let topo = parse(&xml).unwrap();
    assert_eq!(
        topo.node(0).unwrap().hugepages,
        [PagePool {
            size_kib: 524_288,
            total: 3
        }]
    );
}

#[test]
fn host_kind_from_cpu_features() {
    let cpu = |arch: &str, features: &[&str]| HostCpu {
        arch: Some(arch.into()),
        features: features.iter().map(|f| f.to_string()).collect(),
        ..Default::default()
    };
    assert!(cpu("x86_64", &["hypervisor"]).host_kind().is_virtual());
    assert_eq!(cpu("x86_64", &[]).host_kind(), HostKind::BareMetal);
    assert_eq!(cpu("aarch64", &[]).host_kind(), HostKind::Unknown);
    assert!(cpu("x86_64", &["svm"]).virtualization_extensions());
    assert!(!cpu("x86_64", &["ht"]).virtualization_extensions());
}

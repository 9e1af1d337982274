//! Hostile input to the readers, one test per finding of the directed
//! campaign (issue #14): numbers that would wrap, values dropped silently,
//! and messages that must say where and why.

use numapin::guest::domain_xml;
use numapin::topology::capabilities;

fn caps(cells: &str) -> String {
    format!(
        "<capabilities>\n<host>\n<topology>\n<cells num='2'>\n{cells}\n</cells>\n\
         </topology>\n</host>\n</capabilities>\n"
    )
}

fn cell(id: u32, inner: &str) -> String {
    format!("<cell id='{id}'>\n<memory unit='KiB'>1048576</memory>\n{inner}\n</cell>")
}

fn cpus(ids: &[u32]) -> String {
    let list: String = ids
        .iter()
        .map(|i| format!("<cpu id='{i}' socket_id='0' core_id='{i}' siblings='{i}'/>\n"))
        .collect();
    format!("<cpus num='{}'>\n{list}</cpus>", ids.len())
}

fn caps_err(xml: &str) -> String {
    capabilities::parse(xml).unwrap_err().to_string()
}

#[test]
fn a_cpu_listed_twice_names_its_line_and_first_cell() {
    let xml = caps(&format!(
        "{}\n{}",
        cell(0, &cpus(&[3])),
        cell(1, &cpus(&[3]))
    ));
    let e = caps_err(&xml);
    assert!(e.starts_with("line "), "{e}");
    assert!(e.contains("CPU 3 is listed twice (first in cell 0)"), "{e}");
}

#[test]
fn a_distance_to_a_missing_node_is_an_error_not_dropped() {
    let d = "<distances>\n<sibling id='0' value='10'/>\n<sibling id='9' value='20'/>\n</distances>";
    let xml = caps(&cell(0, &format!("{}\n{d}", cpus(&[0]))));
    let e = caps_err(&xml);
    assert!(e.starts_with("line "), "{e}");
    assert!(
        e.contains("distance to node 9, which no <cell> defines"),
        "{e}"
    );
}

#[test]
fn a_distance_below_10_is_an_error_naming_the_cell() {
    let d = "<distances>\n<sibling id='0' value='10'/>\n<sibling id='1' value='5'/>\n</distances>";
    let xml = caps(&format!(
        "{}\n{}",
        cell(0, &format!("{}\n{d}", cpus(&[0]))),
        cell(1, "")
    ));
    let e = caps_err(&xml);
    assert!(e.starts_with("line "), "{e}");
    assert!(
        e.contains("distance 5 from node 0 to node 1 is outside 10-254"),
        "{e}"
    );
}

#[test]
fn a_backwards_sibling_range_gives_the_reason() {
    let xml = caps(&cell(
        0,
        "<cpus num='1'>\n<cpu id='0' socket_id='0' core_id='0' siblings='3-1'/>\n</cpus>",
    ));
    let e = caps_err(&xml);
    assert!(e.contains("range 3-1 runs backwards"), "{e}");
}

#[test]
fn an_unknown_memory_unit_lists_the_valid_ones() {
    let xml = caps(
        "<cell id='0'>\n<memory unit='furlong'>1</memory>\n<cpus num='1'>\n\
         <cpu id='0'/>\n</cpus>\n</cell>",
    );
    let e = caps_err(&xml);
    assert!(
        e.contains("KiB") && e.contains("MiB") && e.contains("GiB"),
        "{e}"
    );
    let dom = "<domain type='kvm'><name>a</name><memory unit='furlong'>1</memory></domain>";
    let e = domain_xml::parse(dom).unwrap_err().to_string();
    assert!(
        e.contains("unknown unit") && e.contains("KiB") && e.contains("GiB"),
        "{e}"
    );
}

#[test]
fn a_hugepage_pool_too_large_to_count_is_refused_not_zero() {
    let pool = "<pages unit='KiB' size='1048576'>17592186044416</pages>";
    let xml = caps(&cell(0, &format!("{pool}\n{}", cpus(&[0]))));
    let e = caps_err(&xml);
    assert!(e.contains("more memory than numapin can count"), "{e}");
}

#[test]
fn memory_totals_that_would_wrap_are_refused() {
    let big = |id: u32, c: u32| {
        format!(
            "<cell id='{id}'>\n<memory unit='KiB'>{}</memory>\n{}\n</cell>",
            u64::MAX - 1,
            cpus(&[c])
        )
    };
    let e = caps_err(&caps(&format!("{}\n{}", big(0, 0), big(1, 1))));
    assert!(e.contains("more memory than numapin can count"), "{e}");
}

#[test]
fn an_out_of_range_vcpu_count_says_out_of_range() {
    let dom = "<domain type='kvm'><name>a</name><memory>1024</memory>\
               <vcpu>99999999999</vcpu></domain>";
    let e = domain_xml::parse(dom).unwrap_err().to_string();
    assert!(e.contains("out of range"), "{e}");
    assert!(!e.contains("not a valid number"), "{e}");
}

#[test]
fn a_domain_larger_than_any_address_space_is_refused() {
    // Three such domains made the plan's node load read 16701442447230%.
    let dom = "<domain type='kvm'><name>a</name>\
               <memory unit='KiB'>18446744073709551615</memory></domain>";
    let e = domain_xml::parse(dom).unwrap_err().to_string();
    assert!(
        e.contains("more than 4 PiB, the most numapin handles"),
        "{e}"
    );
    let fits = "<domain type='kvm'><name>a</name>\
                <uuid>00000000-0000-0000-0000-00000000000a</uuid>\
                <memory unit='PiB'>4</memory></domain>";
    let d = domain_xml::parse(fits).unwrap();
    assert_eq!(d.memory_kib, 1 << 42);
}

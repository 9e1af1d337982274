use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use super::*;

/// One metric family read back from an exposition.
#[derive(Debug, Default)]
struct ReadFamily {
    kind: String,
    help: String,
    unit: Option<String>,
    samples: Vec<Sample>,
}

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// A strict reader of the Prometheus text format (0.0.4), or of OpenMetrics
/// text with `openmetrics`: every family has one HELP and one TYPE line
/// before its samples, every sample belongs to the family declared last,
/// names, labels and values are well formed. Panics naming the bad line.
fn parse_exposition(text: &str, openmetrics: bool) -> BTreeMap<String, ReadFamily> {
    assert!(text.ends_with('\n'), "no final newline: {text:?}");
    let mut families: BTreeMap<String, ReadFamily> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        assert!(!line.is_empty(), "empty line in:\n{text}");
        if let Some(comment) = line.strip_prefix("# ") {
            if comment == "EOF" {
                assert!(openmetrics, "# EOF in the text format");
                assert!(lines.peek().is_none(), "lines after # EOF");
                return families;
            }
            let mut words = comment.splitn(3, ' ');
            let keyword = words.next().unwrap();
            let name = words.next().unwrap_or_default().to_string();
            let rest = words.next().unwrap_or_default().to_string();
            assert!(is_metric_name(&name), "bad name in {line:?}");
            match keyword {
                "HELP" => {
                    assert!(!families.contains_key(&name), "second HELP: {line:?}");
                    assert!(!rest.is_empty(), "empty HELP: {line:?}");
                    families.entry(name.clone()).or_default().help = rest;
                    current = Some(name);
                }
                "TYPE" => {
                    assert_eq!(current.as_deref(), Some(name.as_str()), "{line:?}");
                    let family = families.get_mut(&name).unwrap();
                    assert!(family.kind.is_empty(), "second TYPE: {line:?}");
                    let kinds = if openmetrics {
                        &["counter", "gauge", "histogram", "unknown"][..]
                    } else {
                        &["counter", "gauge", "histogram", "untyped"][..]
                    };
                    assert!(kinds.contains(&rest.as_str()), "bad type: {line:?}");
                    family.kind = rest;
                }
                "UNIT" if openmetrics => {
                    assert_eq!(current.as_deref(), Some(name.as_str()), "{line:?}");
                    assert!(
                        name.ends_with(&format!("_{rest}")),
                        "unit not in name: {line:?}"
                    );
                    families.get_mut(&name).unwrap().unit = Some(rest);
                }
                _ => panic!("unexpected comment {line:?}"),
            }
            continue;
        }
        assert!(!line.starts_with('#'), "bad comment {line:?}");
        let sample = parse_sample(line);
        let family_name = current.as_deref().expect("a sample before any HELP");
        let family = families.get_mut(family_name).unwrap();
        assert!(!family.kind.is_empty(), "a sample before TYPE: {line:?}");
        let suffix = sample
            .name
            .strip_prefix(family_name)
            .unwrap_or_else(|| panic!("sample {line:?} does not belong to family {family_name}"));
        let allowed: &[&str] = match (family.kind.as_str(), openmetrics) {
            ("histogram", _) => &["_bucket", "_sum", "_count"],
            ("counter", true) => &["_total"],
            _ => &[""],
        };
        assert!(
            allowed.contains(&suffix),
            "sample {line:?} in {family_name}"
        );
        family.samples.push(sample);
    }
    assert!(!openmetrics, "no # EOF at the end");
    families
}

fn parse_sample(line: &str) -> Sample {
    let name_end = line.find(['{', ' ']).expect("a sample has a value");
    let name = &line[..name_end];
    assert!(is_metric_name(name), "bad sample name: {line:?}");
    let (labels, rest) = match line[name_end..].strip_prefix('{') {
        Some(inner) => parse_labels(inner, line),
        None => (BTreeMap::new(), &line[name_end..]),
    };
    let value = rest.strip_prefix(' ').expect("a space before the value");
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v
            .parse()
            .unwrap_or_else(|_| panic!("bad value (or a timestamp) in {line:?}")),
    };
    Sample {
        name: name.to_string(),
        labels,
        value,
    }
}

/// Reads `k="v",...}` (what follows a `{`); returns the labels and the text
/// after the `}`.
fn parse_labels<'a>(s: &'a str, line: &str) -> (BTreeMap<String, String>, &'a str) {
    let mut labels = BTreeMap::new();
    let mut pos = 0;
    loop {
        let eq = s[pos..]
            .find('=')
            .unwrap_or_else(|| panic!("no = in {line:?}"))
            + pos;
        let key = &s[pos..eq];
        assert!(is_metric_name(key), "bad label name in {line:?}");
        assert_eq!(&s[eq + 1..eq + 2], "\"", "unquoted label value in {line:?}");
        let mut value = String::new();
        let mut chars = s[eq + 2..].char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => panic!("bad escape {other:?} in {line:?}"),
                },
                Some((i, '"')) => break eq + 2 + i + 1,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        };
        assert!(
            labels.insert(key.to_string(), value).is_none(),
            "repeated label in {line:?}"
        );
        match &s[end..end + 1] {
            "," => pos = end + 1,
            "}" => return (labels, &s[end + 1..]),
            other => panic!("{other:?} after a label value in {line:?}"),
        }
    }
}

fn domain(name: &str, locality: Option<f64>) -> DomainGauge {
    DomainGauge {
        name: name.into(),
        managed: true,
        locality,
        nodes_spanned: 1,
        memory_mib: 4096,
        changed_by_operator: false,
        nested_hypervisor: false,
        vcpu_wait: Some(0.05),
        on_dedicated_cpus: false,
        memory_to_move_mib: Some(512),
        confined_secs: Some(30.0),
    }
}

/// Metrics with every family holding at least one series.
fn busy_metrics() -> Metrics {
    let m = Metrics::new();
    m.cycle_done(Duration::from_millis(40), true);
    m.cycle_done(Duration::from_secs(3), false);
    m.cycle_done(Duration::from_secs(90), true);
    m.actions_applied(7);
    m.transactions_failed(1);
    m.rollbacks(1);
    m.domains_skipped(2);
    m.set_config_reload(false);
    m.set_domains(&[
        domain("web-1", Some(0.75)),
        DomainGauge {
            name: "db".into(),
            managed: false,
            locality: Some(1.0),
            nodes_spanned: 2,
            memory_mib: 65536,
            changed_by_operator: true,
            nested_hypervisor: true,
            vcpu_wait: None,
            on_dedicated_cpus: true,
            memory_to_move_mib: None,
            confined_secs: None,
        },
    ]);
    m.set_memory_moved(2048, 256.0);
    m.set_nodes(&[
        NodeGauge {
            id: 0,
            free_mib: Some(1024),
            vcpu_demand: 3.5,
            cpus: 16,
            dedicated_cpus: 4,
            vcpu_wait: Some(0.5),
        },
        NodeGauge {
            id: 1,
            free_mib: Some(2048),
            vcpu_demand: 0.25,
            cpus: 16,
            dedicated_cpus: 0,
            vcpu_wait: None,
        },
    ]);
    m
}

const NAMES: [(&str, &str); 28] = [
    ("numapin_build_info", "gauge"),
    ("numapin_cycles_total", "counter"),
    ("numapin_cycle_duration_seconds", "histogram"),
    ("numapin_last_cycle_timestamp_seconds", "gauge"),
    ("numapin_last_successful_cycle_timestamp_seconds", "gauge"),
    ("numapin_actions_applied_total", "counter"),
    ("numapin_transactions_failed_total", "counter"),
    ("numapin_rollbacks_total", "counter"),
    ("numapin_domains_skipped_total", "counter"),
    ("numapin_config_reloads_total", "counter"),
    ("numapin_config_last_reload_successful", "gauge"),
    ("numapin_domain_managed", "gauge"),
    ("numapin_domain_memory_locality_ratio", "gauge"),
    ("numapin_domain_nodes_spanned", "gauge"),
    ("numapin_domain_changed_by_operator", "gauge"),
    ("numapin_domain_memory_mib", "gauge"),
    ("numapin_domain_nested_hypervisor", "gauge"),
    ("numapin_domain_vcpu_wait_ratio", "gauge"),
    ("numapin_domain_on_dedicated_cpus", "gauge"),
    ("numapin_domain_memory_to_move_mib", "gauge"),
    ("numapin_domain_confined_seconds", "gauge"),
    ("numapin_memory_moved_mib_total", "counter"),
    ("numapin_memory_move_rate_limit_mib_per_second", "gauge"),
    ("numapin_node_free_memory_mib", "gauge"),
    ("numapin_node_vcpu_demand", "gauge"),
    ("numapin_node_cpus", "gauge"),
    ("numapin_node_dedicated_cpus", "gauge"),
    ("numapin_node_vcpu_wait", "gauge"),
];

/// The samples of a family; none when the family is absent (a family with
/// no series is left out of the output whole).
fn samples<'a>(families: &'a BTreeMap<String, ReadFamily>, name: &str) -> &'a [Sample] {
    families.get(name).map_or(&[], |f| &f.samples)
}

fn value(
    families: &BTreeMap<String, ReadFamily>,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    let family = families
        .iter()
        .find(|(f, _)| name.starts_with(f.as_str()))
        .map(|(_, f)| f)?;
    family
        .samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

#[test]
fn render_is_a_valid_text_exposition_of_every_family() {
    let text = busy_metrics().render();
    let families = parse_exposition(&text, false);
    let read: Vec<(&str, &str)> = families
        .iter()
        .map(|(n, f)| (n.as_str(), f.kind.as_str()))
        .collect();
    let mut expected = NAMES.to_vec();
    expected.sort();
    assert_eq!(read, expected, "{text}");
    for (name, family) in &families {
        assert!(!family.samples.is_empty(), "{name} has no sample:\n{text}");
        assert!(family.help.ends_with('.'), "{name}: {}", family.help);
        assert!(
            !family.help.contains(['"', '\\']),
            "{name}: {}",
            family.help
        );
    }

    assert_eq!(
        value(&families, "numapin_cycles_total", &[("result", "ok")]),
        Some(2.0)
    );
    assert_eq!(
        value(&families, "numapin_cycles_total", &[("result", "error")]),
        Some(1.0)
    );
    assert_eq!(
        value(&families, "numapin_actions_applied_total", &[]),
        Some(7.0)
    );
    assert_eq!(
        value(&families, "numapin_domains_skipped_total", &[]),
        Some(2.0)
    );
    assert_eq!(
        value(
            &families,
            "numapin_config_reloads_total",
            &[("result", "error")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&families, "numapin_config_last_reload_successful", &[]),
        Some(0.0)
    );
    assert_eq!(
        value(
            &families,
            "numapin_domain_memory_locality_ratio",
            &[("domain", "web-1")]
        ),
        Some(0.75)
    );
    assert_eq!(
        value(&families, "numapin_domain_managed", &[("domain", "db")]),
        Some(0.0)
    );
    assert_eq!(
        value(
            &families,
            "numapin_domain_nodes_spanned",
            &[("domain", "db")]
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &families,
            "numapin_domain_changed_by_operator",
            &[("domain", "db")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&families, "numapin_domain_memory_mib", &[("domain", "db")]),
        Some(65536.0)
    );
    assert_eq!(
        value(&families, "numapin_node_free_memory_mib", &[("node", "1")]),
        Some(2048.0)
    );
    assert_eq!(
        value(&families, "numapin_node_vcpu_demand", &[("node", "0")]),
        Some(3.5)
    );
    assert_eq!(
        value(&families, "numapin_node_cpus", &[("node", "0")]),
        Some(16.0)
    );
    assert_eq!(
        value(
            &families,
            "numapin_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    let last = value(&families, "numapin_last_cycle_timestamp_seconds", &[]).unwrap();
    let last_ok = value(
        &families,
        "numapin_last_successful_cycle_timestamp_seconds",
        &[],
    )
    .unwrap();
    assert!(
        last > 1.6e9 && last_ok > 1.6e9 && last_ok <= last,
        "{last} {last_ok}"
    );
}

#[test]
fn cycle_durations_fill_cumulative_buckets_up_to_a_minute() {
    let families = parse_exposition(&busy_metrics().render(), false);
    let histogram = &families["numapin_cycle_duration_seconds"];
    let buckets: Vec<(f64, f64)> = histogram
        .samples
        .iter()
        .filter(|s| s.name.ends_with("_bucket"))
        .map(|s| {
            let le = &s.labels["le"];
            (
                if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                },
                s.value,
            )
        })
        .collect();
    let bounds: Vec<f64> = buckets.iter().map(|b| b.0).collect();
    let mut expected = CYCLE_BUCKETS.to_vec();
    expected.push(f64::INFINITY);
    assert_eq!(bounds, expected);
    // 0.04 s, 3 s and 90 s.
    let count_at = |le: f64| buckets.iter().find(|b| b.0 == le).unwrap().1;
    assert_eq!(count_at(0.025), 0.0);
    assert_eq!(count_at(0.05), 1.0);
    assert_eq!(count_at(5.0), 2.0);
    assert_eq!(count_at(60.0), 2.0);
    assert_eq!(count_at(f64::INFINITY), 3.0);
    assert_eq!(
        value(&families, "numapin_cycle_duration_seconds_count", &[]),
        Some(3.0)
    );
    assert_eq!(
        value(&families, "numapin_cycle_duration_seconds_sum", &[]),
        Some(93.04)
    );
}

#[test]
fn a_fresh_registry_shows_both_results_at_zero_and_no_domains() {
    let families = parse_exposition(&Metrics::new().render(), false);
    assert_eq!(
        value(&families, "numapin_cycles_total", &[("result", "ok")]),
        Some(0.0)
    );
    assert_eq!(
        value(&families, "numapin_cycles_total", &[("result", "error")]),
        Some(0.0)
    );
    assert_eq!(
        value(
            &families,
            "numapin_config_reloads_total",
            &[("result", "ok")]
        ),
        Some(0.0)
    );
    assert_eq!(
        value(&families, "numapin_config_last_reload_successful", &[]),
        Some(1.0)
    );
    assert_eq!(
        value(&families, "numapin_last_cycle_timestamp_seconds", &[]),
        Some(0.0)
    );
    assert!(samples(&families, "numapin_domain_managed").is_empty());
    assert!(samples(&families, "numapin_node_cpus").is_empty());
}

#[test]
fn openmetrics_rendering_declares_units_and_ends_with_eof() {
    let text = busy_metrics().render_openmetrics();
    let families = parse_exposition(&text, true);
    let unit = |name: &str| families[name].unit.as_deref();
    assert_eq!(unit("numapin_cycle_duration_seconds"), Some("seconds"));
    assert_eq!(unit("numapin_domain_memory_locality_ratio"), Some("ratio"));
    assert_eq!(unit("numapin_domain_memory_mib"), Some("mib"));
    assert_eq!(unit("numapin_node_free_memory_mib"), Some("mib"));
    // Counters are named without `_total` in OpenMetrics; their samples
    // carry the same names as in the text format.
    assert_eq!(families["numapin_actions_applied"].kind, "counter");
    assert_eq!(
        value(&families, "numapin_actions_applied_total", &[]),
        Some(7.0)
    );
    let sample_names = |text: &str| -> std::collections::BTreeSet<String> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| parse_sample(l).name)
            .collect()
    };
    assert_eq!(sample_names(&text), sample_names(&busy_metrics().render()));
}

#[test]
fn set_domains_replaces_every_domain_series() {
    let m = Metrics::new();
    m.set_domains(&[domain("gone", Some(0.5)), domain("stays", Some(0.9))]);
    m.set_domains(&[domain("stays", None), domain("new", Some(1.0))]);
    let text = m.render();
    assert!(!text.contains("\"gone\""), "{text}");
    let families = parse_exposition(&text, false);
    for name in [
        "numapin_domain_managed",
        "numapin_domain_nodes_spanned",
        "numapin_domain_changed_by_operator",
        "numapin_domain_memory_mib",
    ] {
        let domains: Vec<&str> = samples(&families, name)
            .iter()
            .map(|s| s.labels["domain"].as_str())
            .collect();
        assert_eq!(domains.len(), 2, "{name}: {domains:?}");
        assert!(
            domains.contains(&"stays") && domains.contains(&"new"),
            "{name}: {domains:?}"
        );
    }
    // "stays" is no longer measured: its locality goes, not stays stale.
    let localities = samples(&families, "numapin_domain_memory_locality_ratio");
    assert_eq!(localities.len(), 1);
    assert_eq!(localities[0].labels["domain"], "new");

    m.set_domains(&[]);
    let families = parse_exposition(&m.render(), false);
    assert!(samples(&families, "numapin_domain_managed").is_empty());
}

#[test]
fn set_nodes_replaces_and_leaves_out_what_was_not_measured() {
    let m = Metrics::new();
    let node = |id, free_mib, vcpu_demand| NodeGauge {
        id,
        free_mib,
        vcpu_demand,
        cpus: 8,
        dedicated_cpus: 0,
        vcpu_wait: None,
    };
    m.set_nodes(&[
        node(0, Some(1), 1.0),
        node(1, Some(1), 1.0),
        node(2, Some(1), 1.0),
    ]);
    m.set_nodes(&[node(0, None, 2.0), node(1, Some(512), f64::NAN)]);
    let families = parse_exposition(&m.render(), false);
    // Series come out in no particular order.
    let nodes = |name: &str| -> std::collections::BTreeSet<&str> {
        samples(&families, name)
            .iter()
            .map(|s| s.labels["node"].as_str())
            .collect()
    };
    assert_eq!(nodes("numapin_node_cpus"), ["0", "1"].into());
    assert_eq!(nodes("numapin_node_free_memory_mib"), ["1"].into());
    assert_eq!(nodes("numapin_node_vcpu_demand"), ["0"].into());
    // A locality that is no number is left out too.
    m.set_domains(&[domain("x", Some(f64::NAN))]);
    let families = parse_exposition(&m.render(), false);
    assert!(samples(&families, "numapin_domain_memory_locality_ratio").is_empty());
}

#[test]
fn domain_names_are_escaped_in_labels() {
    let m = Metrics::new();
    let odd = "a \"quoted\" \\ name\nwith a newline, é";
    m.set_domains(&[domain(odd, Some(0.5))]);
    let families = parse_exposition(&m.render(), false);
    assert_eq!(
        families["numapin_domain_managed"].samples[0].labels["domain"],
        odd
    );
    let families = parse_exposition(&m.render_openmetrics(), true);
    assert_eq!(
        families["numapin_domain_managed"].samples[0].labels["domain"],
        odd
    );
}

#[test]
fn metrics_are_shared_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Metrics>();
    let m = Arc::new(Metrics::new());
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let m = m.clone();
            std::thread::spawn(move || {
                for _ in 0..100 {
                    m.actions_applied(1);
                    m.set_domains(&[domain(&format!("d{i}"), Some(1.0))]);
                    // Each replacement is whole: one domain, never none
                    // (cleared, not yet filled) or two.
                    let families = parse_exposition(&m.render(), false);
                    assert_eq!(samples(&families, "numapin_domain_managed").len(), 1);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let families = parse_exposition(&m.render(), false);
    assert_eq!(
        value(&families, "numapin_actions_applied_total", &[]),
        Some(400.0)
    );
}

/// Sends one raw HTTP/1.0 request; returns the status line, the headers
/// (lowercased names) and the body.
fn http(addr: SocketAddr, request: &str) -> (String, BTreeMap<String, String>, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("a complete response");
    let mut lines = head.lines();
    let status = lines.next().unwrap().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    (status, headers, body.to_string())
}

fn get(addr: SocketAddr, path: &str, accept: &str) -> (String, BTreeMap<String, String>, String) {
    http(
        addr,
        &format!("GET {path} HTTP/1.0\r\nHost: localhost\r\nAccept: {accept}\r\n\r\n"),
    )
}

#[test]
fn the_server_answers_a_get_on_loopback() {
    let metrics = Arc::new(busy_metrics());
    let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), metrics.clone()).unwrap();
    let addr = server.local_addr();
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");

    let (status, headers, body) = get(addr, "/metrics", "*/*");
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(headers["content-type"], TEXT_CONTENT_TYPE);
    assert_eq!(body, metrics.render());
    parse_exposition(&body, false);

    // What the server renders is current, not a copy made at start.
    metrics.actions_applied(5);
    let (_, _, body) = get(addr, "/metrics?x=1", "text/plain");
    let families = parse_exposition(&body, false);
    assert_eq!(
        value(&families, "numapin_actions_applied_total", &[]),
        Some(12.0)
    );

    // Prometheus asks for OpenMetrics first.
    let accept = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.2";
    let (status, headers, body) = get(addr, "/metrics", accept);
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(headers["content-type"], OPENMETRICS_CONTENT_TYPE);
    parse_exposition(&body, true);

    let (status, _, _) = get(addr, "/", "*/*");
    assert!(status.contains(" 404 "), "{status}");
    let (status, headers, _) = http(addr, "POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n");
    assert!(status.contains(" 405 "), "{status}");
    assert_eq!(headers["allow"], "GET, HEAD");
    let (status, _, body) = http(addr, "HEAD /metrics HTTP/1.0\r\n\r\n");
    assert!(
        status.contains(" 200 ") && body.is_empty(),
        "{status} {body:?}"
    );

    server.stop();
    assert!(
        TcpStream::connect(addr).is_err(),
        "still listening after stop"
    );
    // The address is free again at once, as a reload that moves the
    // endpoint away and back needs.
    let again = MetricsServer::start(addr, metrics).unwrap();
    let (status, _, _) = get(addr, "/metrics", "*/*");
    assert!(status.contains(" 200 "), "{status}");
    drop(again);
    assert!(
        TcpStream::connect(addr).is_err(),
        "still listening after drop"
    );
}

#[test]
fn serve_listens_until_the_process_ends() {
    // serve() cannot tell which port 0 picked: take a free port first.
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let handle = serve(addr, Arc::new(busy_metrics())).unwrap();
    let (status, _, body) = get(addr, "/metrics", "*/*");
    assert!(status.contains(" 200 "), "{status}");
    parse_exposition(&body, false);
    assert!(!handle.is_finished());
}

#[test]
fn non_loopback_addresses_are_refused_by_name() {
    for addr in [
        "0.0.0.0:9100",
        "[::]:9100",
        "192.0.2.1:9100",
        "[2001:db8::1]:9100",
    ] {
        let addr: SocketAddr = addr.parse().unwrap();
        let e = serve(addr, Arc::new(Metrics::new())).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{addr}");
        let text = e.to_string();
        assert!(
            text.contains(&addr.to_string()) && text.contains("loopback"),
            "{text}"
        );
    }
}

#[test]
fn a_port_in_use_is_an_error_naming_the_address() {
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = taken.local_addr().unwrap();
    let e = MetricsServer::start(addr, Arc::new(Metrics::new())).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
    assert!(e.to_string().contains(&addr.to_string()), "{e}");
}

#[test]
fn the_textfile_is_replaced_whole_and_readable_by_all() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("numapin.prom");
    fs::write(&path, "old\n").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    let mut before = fs::File::open(&path).unwrap();

    let metrics = busy_metrics();
    write_textfile(&path, &metrics).unwrap();

    // A reader that had the old file open still reads the old file whole:
    // the new one was renamed over it, not written into it.
    let mut old = String::new();
    before.read_to_string(&mut old).unwrap();
    assert_eq!(old, "old\n");
    let new = fs::read_to_string(&path).unwrap();
    assert_eq!(new, metrics.render());
    parse_exposition(&new, false);
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    // Nothing left behind but the file itself.
    let entries: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, [std::ffi::OsString::from("numapin.prom")]);

    // Written again, it follows the metrics.
    metrics.actions_applied(1);
    write_textfile(&path, &metrics).unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), metrics.render());
}

#[test]
fn a_textfile_that_cannot_be_written_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing").join("numapin.prom");
    let e = write_textfile(&path, &Metrics::new()).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotFound);
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");

    // A directory in the file's place: the rename fails, the temp file goes.
    let path = dir.path().join("taken.prom");
    fs::create_dir(&path).unwrap();
    fs::write(path.join("keep"), "").unwrap();
    write_textfile(&path, &Metrics::new()).unwrap_err();
    let entries: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, [std::ffi::OsString::from("taken.prom")]);

    let e = write_textfile(Path::new("/"), &Metrics::new()).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
}

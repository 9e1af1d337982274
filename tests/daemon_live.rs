//! `numapin run` against the real libvirtd: events place a new domain
//! within 2 s, signals do what they say, dry-run changes nothing, systemd's
//! notify protocol is spoken, and the daemon survives 100 domain
//! start/stop cycles with stable memory.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::{Spec, TestDomain, serial};

fn spec() -> Spec {
    Spec {
        vcpus: 1,
        ..Spec::default()
    }
}

/// A config for one daemon test. Domains whose names start with `prefix`
/// are managed; CPU 0 is reserved so placement really changes pins.
fn config(dir: &Path, prefix: &str, reserved: &str, extra: &str) -> PathBuf {
    let text = format!(
        "[host]\nreserved_cpus = \"{reserved}\"\nmemory_headroom_mib = 0\n\
         [apply]\nstate_dir = \"{state}\"\n\
         [daemon]\ninterval_secs = 1\npid_file = \"{state}/numapin.pid\"\n{extra}\n\
         [[domain]]\nname = \"nptest-{prefix}*\"\npolicy = \"auto\"\n\
         [[domain]]\nname = \"*\"\npolicy = \"exclude\"\n",
        state = dir.join("state").display()
    );
    let path = dir.join("numapin.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

fn pinned_to(d: &TestDomain, cpus: &str) -> bool {
    d.vcpu_thread_cpus().get(&0).is_some_and(|c| c == cpus)
}

#[test]
fn a_domain_started_under_the_daemon_is_pinned_within_two_seconds() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    // A long interval: only the start event can explain a quick placement.
    let cfg = config(tmp.path(), "event", "0", "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("interval_secs = 1", "interval_secs = 3600");
    std::fs::write(&cfg, text).unwrap();
    let daemon = Daemon::start(&cfg, &[], &[]);
    // `virsh create` returns once the domain runs, when libvirt sends the
    // start event.
    let d = TestDomain::start("event-a", &spec());
    let took = wait_for("the new domain's pins", Duration::from_secs(10), || {
        pinned_to(&d, "1")
    });
    eprintln!("pinned {took:?} after it started");
    assert!(
        took < Duration::from_secs(2),
        "placed {took:?} after start; log:\n{}",
        daemon.log()
    );
    assert!(daemon.log().contains("domain event"), "{}", daemon.log());
}

#[test]
fn signals_rebalance_reload_and_stop() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "signals", "0", "");
    let good = std::fs::read_to_string(&cfg).unwrap();
    let cfg_text = good.replace("interval_secs = 1", "interval_secs = 3600");
    std::fs::write(&cfg, &cfg_text).unwrap();
    let d = TestDomain::start("signals-a", &spec());
    let mut daemon = Daemon::start(&cfg, &[], &[]);
    wait_for("placement", Duration::from_secs(10), || pinned_to(&d, "1"));

    // SIGUSR1: a cycle now, even with an hour-long interval.
    let cycles = daemon.count("cycle:");
    daemon.signal(libc::SIGUSR1);
    daemon.wait_log("a rebalance cycle", Duration::from_secs(10), |l| {
        l.contains("SIGUSR1") && l.matches("cycle:").count() > cycles
    });

    // `numapin rebalance` finds the daemon through its pid file.
    let cycles = daemon.count("cycle:");
    let out = common::numapin(&["rebalance", "--config", cfg.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    daemon.wait_log("a rebalance cycle", Duration::from_secs(10), |l| {
        l.matches("cycle:").count() > cycles
    });

    // SIGHUP with a broken config: reported, the old one keeps running.
    std::fs::write(&cfg, "[planner]\nmin_gian = 0.3\n").unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_log("the failed reload", Duration::from_secs(10), |l| {
        l.contains("config reload failed")
    });
    assert!(daemon.log().contains("min_gian"), "{}", daemon.log());
    assert!(daemon.child.try_wait().unwrap().is_none(), "still running");
    let cycles = daemon.count("cycle:");
    daemon.signal(libc::SIGUSR1);
    daemon.wait_log("a cycle on the old config", Duration::from_secs(10), |l| {
        l.matches("cycle:").count() > cycles
    });
    assert!(
        pinned_to(&d, "1"),
        "old config (CPU 0 reserved) still applies"
    );

    // A config that parses but does not fit this host (every CPU reserved)
    // is refused at reload too.
    std::fs::write(
        &cfg,
        cfg_text.replace("reserved_cpus = \"0\"", "reserved_cpus = \"0-1\""),
    )
    .unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_log("the second failed reload", Duration::from_secs(10), |l| {
        l.matches("config reload failed").count() >= 2
    });
    assert!(
        daemon.log().contains("reserves every online CPU"),
        "{}",
        daemon.log()
    );

    // SIGHUP with a good config: the new settings apply (CPU 1 reserved
    // now, so the domain moves to CPU 0).
    std::fs::write(
        &cfg,
        cfg_text.replace("reserved_cpus = \"0\"", "reserved_cpus = \"1\""),
    )
    .unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_log("the reload", Duration::from_secs(10), |l| {
        l.contains("config reloaded")
    });
    daemon.signal(libc::SIGUSR1);
    wait_for("the move to CPU 0", Duration::from_secs(10), || {
        pinned_to(&d, "0")
    });

    // SIGTERM: exit 0, nothing left in the journal.
    daemon.signal(libc::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    let pending = std::fs::read_dir(tmp.path().join("state/transactions"))
        .unwrap()
        .count();
    assert_eq!(pending, 0, "no transaction left open");
    assert!(
        !tmp.path().join("state/numapin.pid").exists(),
        "pid file removed"
    );
}

#[test]
fn a_dry_run_daemon_changes_nothing_over_several_cycles() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "dry", "0", "");
    let d = TestDomain::start("dry-a", &spec());
    let before = d.vcpu_thread_cpus();
    let daemon = Daemon::start(&cfg, &["--dry-run"], &[]);
    daemon.wait_log("three cycles", Duration::from_secs(15), |l| {
        l.matches("cycle:").count() >= 3
    });
    assert_eq!(d.vcpu_thread_cpus(), before, "a dry run pinned something");
    let log = daemon.log();
    assert!(
        log.contains("dry run: would apply") && log.contains("vcpupin 0 1"),
        "{log}"
    );
    assert!(
        !tmp.path()
            .join("state/placements")
            .read_dir()
            .unwrap()
            .any(|_| true)
    );
}

#[test]
fn systemd_notify_messages_are_sent() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "notify", "0", "");
    let socket_path = tmp.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut daemon = Daemon::start(
        &cfg,
        &[],
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    let mut messages = Vec::new();
    let read = |messages: &mut Vec<String>, until: Duration| {
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        while start.elapsed() < until {
            if let Ok(n) = socket.recv(&mut buf) {
                messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    };
    read(&mut messages, Duration::from_secs(2));
    daemon.signal(libc::SIGHUP);
    read(&mut messages, Duration::from_secs(1));
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(15)).code(), Some(0));
    read(&mut messages, Duration::from_millis(300));
    let all = messages.join("\n");
    assert!(all.contains("READY=1"), "{all}");
    assert!(all.contains("STATUS="), "{all}");
    assert!(all.contains("managed"), "the status line summarises: {all}");
    assert!(all.contains("WATCHDOG=1"), "{all}");
    assert!(all.contains("RELOADING=1"), "{all}");
    assert!(all.contains("STOPPING=1"), "{all}");
    let ready = messages.iter().position(|m| m.contains("READY=1")).unwrap();
    let watchdogs = messages.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    assert!(watchdogs >= 2, "fed at half the 1 s timeout: {all}");
    assert!(ready < messages.len());
}

#[test]
fn a_hundred_domain_starts_and_stops_under_the_daemon() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "churn", "0", "");
    let mut daemon = Daemon::start(&cfg, &[], &[]);
    let mut running: std::collections::VecDeque<TestDomain> = Default::default();
    let mut rss_after_warmup = 0;
    for i in 0..100 {
        running.push_back(TestDomain::start(&format!("churn-{}", i % 6), &spec()));
        if running.len() > 4 {
            running.pop_front(); // destroyed on drop
        }
        if i == 20 {
            rss_after_warmup = daemon.rss_kib();
        }
    }
    for d in &running {
        wait_for(
            &format!("{} placed", d.name),
            Duration::from_secs(10),
            || pinned_to(d, "1"),
        );
    }
    let rss_end = daemon.rss_kib();
    assert!(
        rss_end <= rss_after_warmup + rss_after_warmup / 5 + 2048,
        "RSS grew from {rss_after_warmup} KiB to {rss_end} KiB"
    );
    assert!(daemon.child.try_wait().unwrap().is_none(), "still running");
    let log = daemon.log();
    assert!(!log.contains("panicked"), "{log}");
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(15)).code(), Some(0));
    eprintln!("daemon RSS: {rss_after_warmup} KiB after 20 starts, {rss_end} KiB after 100");
}

#[test]
fn metrics_are_served_on_loopback_and_written_to_a_textfile() {
    use std::io::{Read, Write};
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let textfile = tmp.path().join("numapin.prom");
    let extra = format!(
        "[metrics]\nlisten = \"127.0.0.1:{port}\"\ntextfile = \"{}\"\n",
        textfile.display()
    );
    let cfg = config(tmp.path(), "metrics", "0", &extra);
    let d = TestDomain::start("metrics-a", &spec());
    let daemon = Daemon::start(&cfg, &[], &[]);
    wait_for("placement", Duration::from_secs(10), || pinned_to(&d, "1"));
    daemon.wait_log("a cycle after placement", Duration::from_secs(10), |l| {
        l.matches("cycle:").count() >= 2
    });
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    assert!(
        body.starts_with("HTTP/1.1 200") || body.starts_with("HTTP/1.0 200"),
        "{body}"
    );
    for needle in [
        "numapin_cycles_total{result=\"ok\"}",
        "numapin_cycle_duration_seconds_bucket",
        "numapin_actions_applied_total",
        &format!("numapin_domain_managed{{domain=\"{}\"}} 1", d.name),
        &format!(
            "numapin_domain_memory_locality_ratio{{domain=\"{}\"}}",
            d.name
        ),
        "numapin_node_free_memory_mib{node=\"0\"}",
        "numapin_node_vcpu_demand{node=\"0\"}",
    ] {
        assert!(body.contains(needle), "{needle} missing from:\n{body}");
    }
    let file = std::fs::read_to_string(&textfile).unwrap();
    assert!(file.contains("numapin_cycles_total"), "{file}");
}

/// Every `numapin_*` name in the alerting rules and the Grafana dashboard
/// (contrib/) is a series a real daemon exports, so neither can silently
/// watch a metric that does not exist (a typo, a unit suffix, a rename).
#[test]
fn the_alerting_rules_and_the_dashboard_use_only_exported_metrics() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    let textfile = tmp.path().join("numapin.prom");
    let extra = format!("[metrics]\ntextfile = \"{}\"\n", textfile.display());
    let cfg = config(tmp.path(), "contrib", "0", &extra);
    let d = TestDomain::start("contrib-a", &spec());
    let daemon = Daemon::start(&cfg, &[], &[]);
    wait_for("placement", Duration::from_secs(10), || pinned_to(&d, "1"));
    // A cycle after placement has measured the placed domain's memory.
    daemon.wait_log("a cycle after placement", Duration::from_secs(10), |l| {
        l.matches("cycle:").count() >= 2
    });
    let exported = std::fs::read_to_string(&textfile).unwrap();
    let names: std::collections::BTreeSet<&str> = exported
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .collect();
    assert!(names.contains("numapin_cycles_total"), "{exported}");

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut missing = Vec::new();
    for file in [
        "contrib/prometheus/numapin-rules.yml",
        "contrib/grafana/numapin.json",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let used = metric_names(&text);
        assert!(!used.is_empty(), "{file} names no numapin metric");
        for name in used {
            if !names.contains(name.as_str()) {
                missing.push(format!("{file}: {name}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not in a real daemon's metrics:\n{}\nexported:\n{exported}",
        missing.join("\n")
    );
}

/// The `numapin_[a-z0-9_]+` words of a text.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("numapin_") {
        let word: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        // Part of a longer word (e.g. `my_numapin_x`) is not a metric name.
        let boundary = rest[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        if boundary {
            out.insert(word.clone());
        }
        rest = &rest[i + word.len()..];
    }
    out
}

/// Found by the chaos soak (lab/soak): the pid file, where `numapin
/// rebalance` and systemd's reload send SIGUSR1 and SIGHUP, was written
/// before the daemon handled those signals, so one sent right after it
/// appeared killed the daemon (their default action).
#[test]
fn signals_sent_as_soon_as_the_pid_file_appears_do_not_kill_the_daemon() {
    common::require_libvirt();
    let _guard = serial();
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path(), "pidfile", "", "");
    let pid_file = tmp.path().join("state/numapin.pid");
    for round in 0..10 {
        let _ = std::fs::remove_file(&pid_file);
        let mut child = Command::new(env!("CARGO_BIN_EXE_numapin"))
            .args(["run", "--config"])
            .arg(&config)
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let t0 = Instant::now();
        // Polled tightly: the window was the few steps between the pid
        // file and the handlers.
        while std::fs::read_to_string(&pid_file).map_or(true, |p| p.trim() != pid.to_string()) {
            assert!(t0.elapsed() < Duration::from_secs(20), "no pid file");
            std::thread::sleep(Duration::from_micros(50));
        }
        for sig in [libc::SIGUSR1, libc::SIGHUP] {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid, sig) };
        }
        std::thread::sleep(Duration::from_millis(500));
        let early = child.try_wait().unwrap();
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = child.wait().unwrap();
        assert!(
            early.is_none(),
            "round {round}: SIGUSR1/SIGHUP right after the pid file killed the daemon: {early:?}"
        );
        assert!(
            status.success(),
            "round {round}: exit {status:?} after SIGTERM"
        );
    }
}

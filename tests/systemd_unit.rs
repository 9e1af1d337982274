//! `systemd/numapin.service`: systemd accepts it without a warning, its
//! hardening does not regress (the exposure score recorded at its top), and
//! what it says about numapin (binary, exit codes) matches the code.
//!
//! Needs `systemd-analyze` (package systemd); systemd need not be running.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use numapin::exit::Exit;

fn unit_text() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/numapin.service");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The unit with `/usr/bin/numapin` replaced by the binary cargo built, in a
/// temp dir as `numapin.service`: verify checks that ExecStart's program
/// exists, and nothing is installed here.
fn unit_copy(text: &str) -> (tempfile::TempDir, PathBuf) {
    assert!(text.contains("ExecStart=/usr/bin/numapin run "), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("numapin.service");
    let text = text.replace("/usr/bin/numapin", env!("CARGO_BIN_EXE_numapin"));
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn systemd_analyze(args: &[&str], unit: &Path) -> Output {
    Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run systemd-analyze ({e}); it comes with the systemd package")
        })
}

fn printed(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn verify_accepts_the_unit_without_a_word() {
    let (_dir, unit) = unit_copy(&unit_text());
    let out = systemd_analyze(&["verify"], &unit);
    let text = printed(&out);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{text}"
    );
    assert_eq!(text.trim(), "", "systemd-analyze verify warned");
}

#[test]
fn verify_would_catch_a_mistake() {
    // The check above is only worth something if verify speaks up.
    let text = unit_text().replace("ProtectSystem=strict", "ProtectSytem=strict");
    let (_dir, unit) = unit_copy(&text);
    let out = systemd_analyze(&["verify"], &unit);
    assert!(printed(&out).contains("ProtectSytem"), "{}", printed(&out));
}

/// The number after "overall exposure level" in the unit's header comment.
fn recorded_exposure(text: &str) -> f64 {
    let header: String = text
        .lines()
        .take_while(|l| l.starts_with('#'))
        .map(|l| l.trim_start_matches('#').trim())
        .collect::<Vec<_>>()
        .join(" ");
    let after = header
        .split("overall exposure level ")
        .nth(1)
        .unwrap_or_else(|| panic!("no 'overall exposure level N.N' in the header:\n{header}"));
    let number: String = after
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    number.trim_end_matches('.').parse().unwrap()
}

#[test]
fn exposure_stays_at_or_below_the_recorded_score() {
    let text = unit_text();
    let recorded = recorded_exposure(&text);
    let (_dir, unit) = unit_copy(&text);
    let out = systemd_analyze(&["security", "--offline=true"], &unit);
    let report = printed(&out);
    let prefix = "Overall exposure level for numapin.service: ";
    let line = report
        .lines()
        .find_map(|l| l.split(prefix).nth(1))
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    let score: f64 = line
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unreadable exposure level {line:?}"));
    assert!(
        score <= recorded,
        "exposure rose to {score} from {recorded}; the open findings:\n{}",
        report
            .lines()
            .filter(|l| l.starts_with('✗'))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The values of a key, every line of it, in order.
fn values<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    text.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn the_unit_matches_the_daemon() {
    let text = unit_text();
    assert_eq!(values(&text, "Type"), ["notify"]);
    assert_eq!(values(&text, "NotifyAccess"), ["main"]);
    assert_eq!(
        values(&text, "ExecStart"),
        ["/usr/bin/numapin run --config /etc/numapin/numapin.toml"]
    );
    // No restart loop on what a restart cannot fix.
    let codes = format!("{} {}", Exit::Config as u8, Exit::Usage as u8);
    assert_eq!(values(&text, "RestartPreventExitStatus"), [codes.as_str()]);
    // The state dir numapin uses by default is the one systemd makes
    // writable.
    let state_dir = numapin::config::Config::default().apply.state_dir;
    let state_dir = state_dir.strip_prefix("/var/lib").unwrap();
    assert_eq!(
        values(&text, "StateDirectory"),
        [state_dir.to_str().unwrap()]
    );
    // migrate_pages(2) stays allowed after @resources is taken out.
    let filters = values(&text, "SystemCallFilter");
    assert_eq!(filters.last(), Some(&"migrate_pages"), "{filters:?}");
}

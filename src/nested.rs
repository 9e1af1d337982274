//! Telling a guest that runs VMs of its own from one that merely could.
//!
//! Almost every guest made with virt-install's defaults can run VMs
//! (host-passthrough, or host-model, whose live CPU lists `vmx`); very few
//! do. KVM counts each vCPU's entries into a nested guest, and libvirt
//! shows the count as `vcpu.N.nested_run.sum` in its vCPU stats. A guest
//! whose count rises is running VMs now.
//!
//! The judgement has hysteresis, because it decides between dedicated and
//! shared CPUs and a flip re-pins the guest: a guest becomes a hypervisor
//! once its count rose in `confirm_windows` sampling windows in a row, and
//! stops being one only after its count stayed flat for `quiet_secs`.
//!
//! The same stats carry `vcpu.N.delay`: nanoseconds the vCPU thread was
//! runnable but waited in the host's run queue, the direct measure of CPU
//! contention where it runs.
//!
//! Pure: the libvirt adapter hands over the counters, the caller the time.

use std::collections::{BTreeMap, BTreeSet};

use crate::observations::NestedActivity;

/// One vCPU's counters from libvirt's vCPU stats; `None` where the field
/// is absent (nested_run exists only for KVM domains on libvirt/QEMU new
/// enough to read KVM's binary stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VcpuCounters {
    /// `vcpu.N.delay`: ns spent waiting in the host run queue.
    pub delay_ns: Option<u64>,
    /// `vcpu.N.nested_run.sum`: entries into a nested guest.
    pub nested_runs: Option<u64>,
}

/// vCPU index -> its counters.
pub type VcpuStats = BTreeMap<u32, VcpuCounters>;

/// Collects the counters numapin uses from a domain's stats fields
/// (`vcpu.0.delay`, `vcpu.0.nested_run.sum`, ...); other fields are
/// ignored.
pub fn vcpu_counters<'a>(fields: impl IntoIterator<Item = (&'a str, u64)>) -> VcpuStats {
    let mut out = VcpuStats::new();
    for (name, value) in fields {
        let Some(rest) = name.strip_prefix("vcpu.") else {
            continue;
        };
        let Some((index, field)) = rest.split_once('.') else {
            continue;
        };
        let Ok(vcpu) = index.parse::<u32>() else {
            continue;
        };
        match field {
            "delay" => out.entry(vcpu).or_default().delay_ns = Some(value),
            "nested_run.sum" => out.entry(vcpu).or_default().nested_runs = Some(value),
            _ => {}
        }
    }
    out
}

/// Parses the text `virsh domstats --vcpu` prints (recorded samples):
/// domain name -> its vCPU counters.
pub fn parse_domstats(text: &str) -> BTreeMap<String, VcpuStats> {
    let mut out = BTreeMap::new();
    let mut current: Option<(String, Vec<(String, u64)>)> = None;
    let mut flush = |c: Option<(String, Vec<(String, u64)>)>| {
        if let Some((name, fields)) = c {
            let stats = vcpu_counters(fields.iter().map(|(k, v)| (k.as_str(), *v)));
            out.insert(name, stats);
        }
    };
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix("Domain: ") {
            flush(current.take());
            current = Some((name.trim_matches('\'').to_string(), Vec::new()));
        } else if let (Some((_, fields)), Some((k, v))) = (current.as_mut(), line.split_once('='))
            && let Ok(v) = v.parse::<u64>()
        {
            fields.push((k.to_string(), v));
        }
    }
    flush(current);
    out
}

/// What two readings of one domain run's counters show over a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Window {
    /// vCPU index -> share of the window spent waiting to run (0-1).
    pub wait: BTreeMap<u32, f64>,
    /// Nested entries over the window, all vCPUs; `None` when the
    /// counter is absent.
    pub nested_entries: Option<u64>,
}

/// Rates between two readings `secs` apart. A counter that went back (a
/// vCPU unplugged and plugged again) counts as zero for that vCPU.
pub fn window(before: &VcpuStats, after: &VcpuStats, secs: f64) -> Window {
    let mut out = Window::default();
    for (vcpu, now) in after {
        let Some(then) = before.get(vcpu) else {
            continue;
        };
        if let (Some(a), Some(b)) = (then.delay_ns, now.delay_ns)
            && secs > 0.0
        {
            let waited = b.saturating_sub(a) as f64 / 1e9;
            out.wait.insert(*vcpu, (waited / secs).clamp(0.0, 1.0));
        }
        if let (Some(a), Some(b)) = (then.nested_runs, now.nested_runs) {
            let total = out.nested_entries.get_or_insert(0);
            *total = total.saturating_add(b.saturating_sub(a));
        }
    }
    out
}

/// A change of judgement, to be logged once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub running: bool,
    pub reason: String,
}

#[derive(Debug, Clone, Default)]
struct Track {
    /// Windows in a row with nested entries.
    rising: u32,
    running: bool,
    /// When entries were last seen rising (caller's clock, seconds).
    last_seen: Option<f64>,
}

/// The judgement per guest over time, keyed by UUID (a restarted guest
/// keeps its judgement: the same VMs usually come back with it).
#[derive(Debug, Clone)]
pub struct NestedTracker {
    confirm_windows: u32,
    quiet_secs: u64,
    tracks: BTreeMap<String, Track>,
}

impl NestedTracker {
    /// `confirm_windows`: windows in a row with entries before a guest
    /// counts as a hypervisor (at least 1); `quiet_secs`: flat time before
    /// it counts as an ordinary guest again.
    pub fn new(confirm_windows: u32, quiet_secs: u64) -> Self {
        Self {
            confirm_windows: confirm_windows.max(1),
            quiet_secs,
            tracks: BTreeMap::new(),
        }
    }

    pub fn set_quiet_secs(&mut self, quiet_secs: u64) {
        self.quiet_secs = quiet_secs;
    }

    /// Feeds one window's nested entries for the guest `uuid`, ending at
    /// `now` (seconds on any monotonic clock). Returns the judgement and,
    /// when it changed, why.
    pub fn observe(
        &mut self,
        uuid: &str,
        entries: u64,
        now: f64,
    ) -> (NestedActivity, Option<Change>) {
        let t = self.tracks.entry(uuid.to_string()).or_default();
        let was = t.running;
        if entries > 0 {
            t.rising = t.rising.saturating_add(1);
            t.last_seen = Some(now);
            if t.rising >= self.confirm_windows {
                t.running = true;
            }
        } else {
            t.rising = 0;
            if t.running
                && t.last_seen
                    .is_none_or(|s| now - s >= self.quiet_secs as f64)
            {
                t.running = false;
            }
        }
        let last_seen_secs = t.last_seen.map(|s| (now - s).max(0.0).round() as u64);
        let change = (t.running != was).then(|| Change {
            running: t.running,
            reason: if t.running {
                format!(
                    "entered nested guests in {} sampling window(s) in a row ({entries} entries in the last)",
                    t.rising
                )
            } else {
                format!("no nested guest entered for {} s", last_seen_secs.unwrap_or(0))
            },
        });
        let activity = NestedActivity {
            entries,
            running: t.running,
            last_seen_secs,
        };
        (activity, change)
    }

    /// Forgets guests no longer running.
    pub fn retain(&mut self, running: &BTreeSet<String>) {
        self.tracks.retain(|uuid, _| running.contains(uuid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORDED: &str = include_str!("../tests/data/domstats/kvm-two-vcpus.txt");

    /// The recorded sample (a real KVM domain here, which runs no nested
    /// guest) with vCPU 1's nested_run.sum and delay set as given.
    fn sample(nested_runs: u64, delay_ns: u64) -> VcpuStats {
        let text = RECORDED
            .replace(
                "vcpu.1.nested_run.sum=0",
                &format!("vcpu.1.nested_run.sum={nested_runs}"),
            )
            .replace("vcpu.1.delay=90561064", &format!("vcpu.1.delay={delay_ns}"));
        parse_domstats(&text).remove("rec-stats").unwrap()
    }

    #[test]
    fn reads_delay_and_nested_runs_from_a_recorded_sample() {
        let stats = parse_domstats(RECORDED);
        let s = &stats["rec-stats"];
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[&0],
            VcpuCounters {
                delay_ns: Some(1_145_858_962),
                nested_runs: Some(0)
            }
        );
        assert_eq!(s[&1].delay_ns, Some(90_561_064));
    }

    #[test]
    fn a_window_gives_wait_shares_and_nested_entries() {
        let w = window(&sample(0, 90_561_064), &sample(5000, 590_561_064), 2.0);
        assert_eq!(w.nested_entries, Some(5000));
        assert!((w.wait[&1] - 0.25).abs() < 1e-9, "{:?}", w.wait);
        assert_eq!(w.wait[&0], 0.0);
        // A guest that runs no VMs shows zero entries, not "unknown".
        let idle = window(&sample(0, 0), &sample(0, 0), 1.0);
        assert_eq!(idle.nested_entries, Some(0));
        // Stats without the counter (TCG) say nothing of nesting.
        let tcg: VcpuStats = BTreeMap::from([(
            0,
            VcpuCounters {
                delay_ns: Some(1),
                nested_runs: None,
            },
        )]);
        assert_eq!(window(&tcg, &tcg, 1.0).nested_entries, None);
    }

    #[test]
    fn rising_counts_make_a_hypervisor_and_a_long_quiet_makes_it_ordinary() {
        let mut t = NestedTracker::new(2, 600);
        let samples = [
            sample(0, 0),
            sample(4000, 0),
            sample(9000, 0),
            sample(9000, 0),
        ];
        let entries = |a: usize, b: usize| {
            window(&samples[a], &samples[b], 30.0)
                .nested_entries
                .unwrap()
        };
        // One window of entries is not enough.
        let (a, change) = t.observe("u", entries(0, 1), 30.0);
        assert!(!a.running && change.is_none());
        // The second window in a row makes it one, said once.
        let (a, change) = t.observe("u", entries(1, 2), 60.0);
        assert!(a.running);
        assert!(change.unwrap().running);
        // Flat counts within the quiet time keep it a hypervisor.
        let (a, change) = t.observe("u", entries(2, 3), 300.0);
        assert!(a.running && change.is_none());
        assert_eq!(a.last_seen_secs, Some(240));
        // Past the quiet time it is ordinary again, said once.
        let (a, change) = t.observe("u", 0, 660.0);
        assert!(!a.running);
        let change = change.unwrap();
        assert!(
            !change.running && change.reason.contains("600 s"),
            "{change:?}"
        );
        let (_, change) = t.observe("u", 0, 700.0);
        assert!(change.is_none());
    }

    #[test]
    fn entries_that_stop_before_confirmation_do_not_count() {
        let mut t = NestedTracker::new(2, 600);
        t.observe("u", 10, 30.0);
        t.observe("u", 0, 60.0);
        let (a, _) = t.observe("u", 10, 90.0);
        assert!(!a.running, "not two windows in a row");
    }

    #[test]
    fn forgotten_guests_start_over() {
        let mut t = NestedTracker::new(1, 600);
        assert!(t.observe("u", 1, 1.0).0.running);
        t.retain(&BTreeSet::new());
        assert!(!t.observe("u", 0, 2.0).0.running);
    }
}

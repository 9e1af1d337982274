"""The chaos soak (lab/soak): numapin's daemon under a supervisor, faults
at seeded random moments for a bounded time, invariants checked
throughout (soak_checks) and at the end, and a report: soak.json and the
generated section of docs/RELIABILITY.md (section.md), in /run/lab/out.

The seed fixes the schedule: the time, kind and random draw of every
fault. Which domain a fault hits depends on the state at that moment.
"""

import json
import os
import random
import statistics
import threading
import time

import soak_faults
import soak_report
from labkit import OUT, WORK, log, read, topo
from soak_checks import BOUND, Checker, all_placed, read_live
from soak_world import (CONFIG, LOG, SETTINGS, Daemon, Domain, Stats, journal_records, online_cpus,
                        settings_toml, virsh, write_config)

WARMUP = 30  # seconds before the first fault: the first domains are placed
FINAL_SETTLE = 300  # longest wait at the end for every guest to be placed
GAP = (0.05, 0.85)  # seconds between two draws (uniform); many find no target or their kind still running


class World:
    def __init__(self, repo, seed):
        self.stats = Stats()
        self.daemon = Daemon(f"{repo}/target/release/numapin", self.stats)
        self.domains = {}
        self.serial = 0
        self.libvirt_down = threading.Event()
        self.libvirt_back_at = 0.0
        self.ending = threading.Event()
        self.pressure = None
        self.offline_cpu = None
        self.pending = []  # times of faults not yet followed by a settled state
        self.lock = threading.Lock()
        self.checker = Checker(self)

    def running(self):
        with self.lock:
            return list(self.domains.values())

    def online(self):
        return online_cpus()

    def create(self, kind, mib, vcpus, max_vcpus):
        self.serial += 1
        d = Domain(f"soak-{self.serial}", kind, mib, vcpus, max_vcpus)
        path = f"{WORK}/{d.name}.xml"
        with open(path, "w") as f:
            f.write(d.xml())
        rc, _, err = virsh("create", path, timeout=60)
        if rc != 0:
            log(f"could not start {d.name}: {err.strip()[:200]}")
            virsh("destroy", d.name, timeout=20)
            return None
        rc, out, _ = virsh("domuuid", d.name)
        d.uuid = out.strip() or None
        with self.lock:
            self.domains[d.name] = d
        return d

    def forget(self, d):
        with self.lock:
            self.domains.pop(d.name, None)

    def sync(self):
        """Drops domains libvirt no longer lists; returns those left."""
        rc, out, _ = virsh("list", "--name", timeout=15)
        if rc == 0:
            listed = set(out.split())
            with self.lock:
                for name in [n for n in self.domains if n not in listed]:
                    del self.domains[name]
                # A start whose virsh lost libvirtd (restarted meanwhile)
                # may have landed all the same: such domains are the soak's too.
                adopt = [n for n in listed if n.startswith("soak-") and n not in self.domains]
            for name in adopt:
                d = Domain(name, "adopted", 0, 1, 1)
                d.uuid = virsh("domuuid", name, timeout=15)[1].strip() or None
                with self.lock:
                    self.domains.setdefault(name, d)
        return self.running()

    def operator_took(self, d):
        live = read_live([d.name])
        if live and d.name in live:
            # With the CPUs online then: see Live.same_pins.
            d.operator = (live[d.name].key(), frozenset(online_cpus()))

    def claim_libvirt(self):
        """Takes libvirtd for one fault (a stop or a restart), or False when
        another fault has it. Faults run on threads of their own: a check
        and a later set let a restart kill a libvirtd another fault had
        stopped."""
        with self.lock:
            if self.libvirt_down.is_set():
                return False
            self.libvirt_down.set()
            return True

    def libvirt_back(self):
        self.libvirt_back_at = time.monotonic()
        self.libvirt_down.clear()

    def settled(self, now):
        with self.lock:
            for t in self.pending:
                self.stats.settle.append(now - t)
            self.pending = []


def schedule(seed, duration):
    """[(seconds from the start, fault kind, draw)], from the seed alone."""
    rng = random.Random(seed)
    kinds = sorted(soak_faults.FAULTS)
    weights = [soak_faults.FAULTS[k][0] for k in kinds]
    out, t = [], WARMUP
    while True:
        t += rng.uniform(*GAP)
        if t >= duration:
            return out
        out.append((t, rng.choices(kinds, weights)[0], rng.random()))


def inject(w, plan, t0, duration):
    """Runs the schedule. Each fault runs on a thread of its own, so one
    that waits (a domain start under a busy libvirtd, a wait for a
    transaction in flight) neither delays the others nor the schedule; a
    fault whose kind is still running from its last draw is skipped."""
    running = set()
    threads = []

    def one(kind, u):
        try:
            what = soak_faults.FAULTS[kind][1](w, u)
        except Exception as e:  # noqa: BLE001 - a failed injection is counted, the soak goes on
            w.stats.count("injection_errors")
            log(f"fault {kind} failed: {type(e).__name__}: {e}")
            what = None
        finally:
            running.discard(kind)
        if not what:
            w.stats.count("not_applicable")
            return
        w.stats.fault(kind)
        if "mid-transaction" in what or "mid-memory-move" in what:
            w.stats.count("mid_memory_move" if "memory" in what else "mid_transaction")
        with w.lock:
            w.pending.append(time.monotonic())
        log(f"fault {sum(w.stats.faults.values())}: {what}")

    for at, kind, u in plan:
        delay = t0 + at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if time.monotonic() - t0 >= duration:
            break
        if kind in running:
            w.stats.count("not_applicable")
            continue
        running.add(kind)
        t = threading.Thread(target=one, args=(kind, u), daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join(timeout=max(1.0, t0 + duration + 120 - time.monotonic()))


def calm(w):
    """Ends every lasting fault: CPUs online, pressure gone, libvirtd
    running, jobs ended, guests resumed, the config valid."""
    w.ending.set()
    for _ in range(60):
        if not w.libvirt_down.is_set() and w.pressure is None and not any(d.job for d in w.running()):
            break
        time.sleep(1)
    for cpu in os.listdir("/sys/devices/system/cpu"):
        path = f"/sys/devices/system/cpu/{cpu}/online"
        if cpu.startswith("cpu") and os.path.exists(path) and read(path).strip() == "0":
            with open(path, "w") as f:
                f.write("1")
    with w.daemon.config_lock:
        write_config(settings_toml(SETTINGS))
    # From libvirt's word, not the soak's model: a suspend or an abort
    # whose virsh lost libvirtd (stopped, restarting) may have landed or
    # not, and a held guest (paused, a job) is rightly left alone.
    for d in w.sync():
        state = virsh("domstate", d.name)[1].strip()
        if state == "paused":
            virsh("resume", d.name)
        d.paused = False
        virsh("blockjob", d.name, "hda", "--abort", timeout=30)
        virsh("domjobabort", d.name)


def finish(w, seed, duration, t0):
    """The end: every guest placed, a clean stop, an empty journal, no
    panic, RSS and open files flat."""
    calm(w)
    t_calm = time.monotonic()
    if w.daemon.pid() is None:
        time.sleep(3)  # the supervisor brings it back
    # Settled: every guest placed and no transaction left (one whose call
    # libvirtd still carries out stays journaled until it returns).
    unplaced, records = all_placed(w), journal_records()
    while (unplaced or records) and time.monotonic() - t_calm < FINAL_SETTLE:
        time.sleep(5)
        unplaced, records = all_placed(w), journal_records()
    final_settle = time.monotonic() - t_calm
    for name in unplaced:
        state = virsh("domstate", name)[1].strip()
        job = virsh("domjobinfo", name)[1].split("\n")[0].strip()
        block = virsh("blockjob", name, "hda", "--info")[1].strip()
        w.stats.violation("not_placed_at_end", f"{name} still unconfined {final_settle:.0f}s after the last fault "
                          f"(state {state}; {job}; {block or 'no block job'})")
    for r in records.values():
        w.stats.violation("journal_stuck", f"{r['domain']['name']}: a transaction still journaled "
                          f"{final_settle:.0f}s after the last fault")
    w.checker.finish()
    bound = SETTINGS["libvirt"]["call_timeout_secs"] + SETTINGS["apply"]["memory_verify_timeout_secs"] + 30
    rc, took = w.daemon.stop(bound)
    if rc != 0:
        w.stats.violation("unclean_stop", f"SIGTERM at the end: exit {rc} after {took:.0f}s")
    left = journal_records()
    if left:
        w.stats.violation("journal_not_empty", f"after a clean stop: {sorted(r['domain']['name'] for r in left.values())}")
    with open(LOG) as f:
        panics = [ln.strip() for ln in f if "panicked" in ln]
    for ln in panics:
        w.stats.violation("panic", ln[:300])
    flat = resources(w.stats)
    return {"final_settle_s": round(final_settle, 1), "stop_s": round(took, 1), **flat}


def resources(stats):
    """numapin's RSS and open files: the first third of the soak against
    the last, each past its first 10 s of uptime (its start-up)."""
    s = [x for x in stats.samples if x[4] >= 10]
    if len(s) < 3:
        return {"rss_kib": None, "fds": None}
    third = max(1, len(s) // 3)
    early, late = s[:third], s[-third:]
    rss_e, rss_l = max(x[2] for x in early), max(x[2] for x in late)
    fds_e, fds_l = max(x[3] for x in early), max(x[3] for x in late)
    if rss_l > rss_e * 1.5 + 16 * 1024:
        stats.violation("rss_growth", f"VmRSS {rss_e} KiB early, {rss_l} KiB late")
    if fds_l > fds_e + 16:
        stats.violation("fd_growth", f"open files {fds_e} early, {fds_l} late")
    return {"rss_kib": [rss_e, rss_l, max(x[2] for x in s)], "fds": [fds_e, fds_l, max(x[3] for x in s)]}


def main(repo, args):
    opts = dict(a.split("=", 1) for a in args if "=" in a)
    seed, duration = int(opts.get("seed", 1)), int(opts.get("duration", 600))
    # Automatic NUMA balancing off: every page that changes node is then
    # numapin's doing, which the job invariant relies on.
    with open("/proc/sys/kernel/numa_balancing", "w") as f:
        f.write("0")
    os.makedirs("/run/numapin", exist_ok=True)
    write_config(settings_toml(SETTINGS))
    w = World(repo, seed)
    began = time.monotonic()
    log(f"soak: seed {seed}, {duration}s of faults, config {CONFIG}, bound {BOUND}s")
    w.daemon.start()
    # One of each kind but busy (which starts as faults go): a hotplug
    # guest from the start, so even a short run resizes one.
    for kind, mib, vcpus, max_vcpus in soak_faults.DOMAIN_KINDS:
        if kind != "busy":
            w.create(kind, mib, vcpus, max_vcpus)
    w.checker.start()
    # The schedule's clock starts once the first domains run. Their starts
    # take from 20 s to 2 minutes under TCG, and the faults drawn for that
    # time would otherwise all come at once, most of them to find their
    # kind still running: one run of seed 1 lost 96 s of its 600 that way.
    t0 = time.monotonic()
    log(f"soak: the first domains started in {t0 - began:.0f}s; faults begin")
    plan = schedule(seed, duration)
    inject(w, plan, t0, duration)
    figures = finish(w, seed, duration, t0)
    total = time.monotonic() - began
    report = build_report(w, seed, duration, total, figures)
    soak_report.add_log_figures(report)
    with open(f"{OUT}/soak.json", "w") as f:
        json.dump(report, f, indent=1)
    with open(f"{OUT}/section.md", "w") as f:
        f.write(soak_report.section(report))
    print(soak_report.text(report), flush=True)
    return 1 if report["violations"] else 0


def build_report(w, seed, duration, total, figures):
    s = w.stats
    settle = sorted(s.settle)
    return {
        "seed": seed,
        "duration_s": duration,
        "total_s": round(total),
        "topology": {n: sorted(c) for n, c in topo().nodes.items()},
        "settings": SETTINGS,
        "bound_s": BOUND,
        "faults": dict(sorted(s.faults.items())),
        "faults_total": sum(s.faults.values()),
        "counts": dict(sorted(s.counts.items())),
        "exits": len(s.exits),
        "settle_s": {"n": len(settle), "max": round(settle[-1], 1) if settle else None,
                     "median": round(statistics.median(settle), 1) if settle else None},
        **figures,
        "violations": s.violations,
    }


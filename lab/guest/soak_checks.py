"""The soak's invariants, read from libvirt (virsh ... --live), the kernel
(/proc, sysfs) and numapin's journal files, never from numapin's output.

A journal watcher follows numapin's transaction records (every 0.3 s); a
checker reads every domain's live pins and binding every few seconds.
What must hold (the bound is one cycle plus the call timeout, plus 10 s
of slack for this emulated lab, counted from when numapin and libvirtd
are both back):

- a transaction's pins and binding are never left mixed: while its record
  exists they are mixed for no longer than the bound, and once the record
  is gone they are all as before it or all as planned (page locality is
  not part of this: memory converges later);
- no managed vCPU stays pinned only to offline CPUs past the bound;
- no managed guest shares a dedicated guest's CPUs past the bound, once
  they were seen exclusive (a guest with no room is placed shared);
- an operator's pins and nodeset stay exactly as the operator left them;
- no memory moves (numa_maps) while a libvirt job runs on the domain;
- numapin's RSS and open files stay flat, and it never panics (soak.py).
"""

import os
import re
import threading
import time

from labkit import cpulist, fmt, log, read
from soak_world import (SETTINGS, journal_records, online_cpus, parse_numatune, parse_pins, virsh,
                        virsh_batch)

BOUND = SETTINGS["daemon"]["interval_secs"] + SETTINGS["libvirt"]["call_timeout_secs"] + 10
PIN_STEPS = ("emulatorpin", "vcpupin", "set_memory_nodeset")
MOVE_LIMIT_MIB = 8  # memory that may shift under a job: QEMU's own noise


def ids(value):
    return cpulist(value if isinstance(value, str) else ",".join(str(v) for v in value)) if value else set()


class Live:
    """One domain's live pins and binding as libvirt reports them."""

    def __init__(self, vcpupin, emulatorpin, numatune):
        self.vcpus, self.emulator = parse_pins(vcpupin, emulatorpin)
        self.mode, nodeset = parse_numatune(numatune)
        self.nodeset = cpulist(nodeset) if nodeset else set()

    def online_vcpus(self, d):
        """The pins of the vCPUs the guest has now: libvirt lists unplugged
        ones too, with the default affinity numapin never sets."""
        return {v: c for v, c in self.vcpus.items() if v < d.vcpus}

    def key(self):
        return ({v: frozenset(c) for v, c in self.vcpus.items()}, frozenset(self.emulator or ()),
                self.mode, frozenset(self.nodeset))


def same_pins(was, was_online, now, now_online):
    """Whether two key()s hold the same pins, up to CPUs offline at either
    reading. libvirt shows a thread nobody pinned (an unplugged vCPU, say)
    on every CPU online at the time, so a CPU going off or on line changes
    what it shows though nobody changed the pin: a difference only in
    such CPUs is not a change."""
    common = was_online & now_online
    (wv, we, wm, wn), (nv, ne, nm, nn) = was, now
    if (wm, wn) != (nm, nn) or set(wv) != set(nv):
        return False
    return all(wv[v] & common == nv[v] & common for v in wv) and we & common == ne & common


def read_live(names):
    """{name: Live} for the named domains, or None when libvirt does not answer."""
    cmds = []
    for n in names:
        cmds += [f"vcpupin {n} --live", f"emulatorpin {n} --live", f"numatune {n} --live"]
    outs = virsh_batch(cmds, timeout=30) if cmds else []
    if outs is None:
        return None
    # A domain any of whose three answers is missing (libvirtd went away
    # halfway through the batch, or the domain stopped) is left out.
    return {n: Live(*outs[3 * i:3 * i + 3]) for i, n in enumerate(names)
            if all("CPU Affinity" in o or "numa_mode" in o for o in outs[3 * i:3 * i + 3])}


def step_states(rec, live):
    """Per pin or binding step of a journal record: 'target', 'prior',
    'both' (the step changes nothing) or 'other'."""
    prior = rec["prior"]
    # CPUs offline when the record was first seen or now: libvirt leaves
    # an offline CPU out of an affinity it reads from the kernel, so the
    # same pin reads differently across a CPU's offline time.
    off = rec.get("_offline", set()) | (cpulist(read("/sys/devices/system/cpu/present")) - online_cpus())
    out = []
    for step in rec.get("steps", []):
        kind = step.get("action")
        if kind not in PIN_STEPS:
            continue
        if kind == "emulatorpin":
            now, was, want = live.emulator or set(), ids(prior["pins"]["emulator"]), ids(step["cpus"])
        elif kind == "vcpupin":
            v = step["vcpu"]
            if v not in live.vcpus:
                continue  # unplugged since
            now, was, want = live.vcpus[v], ids(prior["pins"]["vcpus"].get(str(v))), ids(step["cpus"])
        else:
            now, was, want = live.nodeset, ids(prior["binding"].get("nodeset")), ids(step["nodeset"])
        if kind != "set_memory_nodeset":
            now, was, want = now - off, was - off, want - off
        out.append("both" if was == want == now else "target" if now == want else "prior" if now == was
                   else f"other (now {fmt(now)}, before {fmt(was)}, planned {fmt(want)})")
    return out


def mixed(states):
    s = {x.split(" ")[0] for x in states} - {"both"}
    return "other" in s or s == {"target", "prior"}


def numa_maps_mib(pid):
    per = {}
    for line in read(f"/proc/{pid}/numa_maps").splitlines():
        if "file=" in line:
            continue
        for n, pages in re.findall(r"\bN(\d+)=(\d+)", line):
            per[int(n)] = per.get(int(n), 0) + int(pages) * 4 / 1024
    return per


def moved_mib(before, after):
    """Memory that changed node: what left some nodes and arrived on
    others (growth or release alone is not a move)."""
    nodes = set(before) | set(after)
    dec = sum(max(0.0, before.get(n, 0) - after.get(n, 0)) for n in nodes)
    inc = sum(max(0.0, after.get(n, 0) - before.get(n, 0)) for n in nodes)
    return min(dec, inc)


class Checker:
    def __init__(self, world):
        self.w = world
        self.stats = world.stats
        self.records = {}  # uuid -> (record, first seen)
        self.generation = {}  # uuid -> transactions seen for it
        self.timers = {}  # condition -> first seen
        self.reported = set()
        self.offline_at = {}  # cpu -> when the soak took it offline
        self.exclusive = set()  # (dedicated guest, its CPUs) seen used by no other managed guest
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.watch_journal, daemon=True),
                        threading.Thread(target=self.check_loop, daemon=True)]

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)

    def back_since(self):
        """When numapin and libvirtd were last both back (None: one is down)."""
        if self.w.libvirt_down.is_set() or self.w.daemon.pid() is None:
            return None
        return max(self.w.daemon.up_since or 0, self.w.libvirt_back_at)

    def overdue(self, key, now, what):
        """Records that a condition holds; a violation once it has held
        past BOUND since numapin and libvirtd were back."""
        first = self.timers.setdefault(key, now)
        back = self.back_since()
        if back is not None and now - max(first, back) > BOUND and key not in self.reported:
            self.reported.add(key)
            self.stats.violation(key[0], f"{what} for {now - first:.0f}s ({now - back:.0f}s since numapin and "
                                 f"libvirtd were back)")

    # --- the journal --------------------------------------------------------

    def watch_journal(self):
        # Polled often and never blocked: a record checked on this thread
        # (virsh calls, a 1.5 s confirmation) hid the next transaction of
        # the same domain, whose result then looked like the old one's
        # mixed state (soak seed 7, soak-187).
        while not self.stop.wait(0.1):
            now = time.monotonic()
            current = journal_records()
            offline = cpulist(read("/sys/devices/system/cpu/present")) - online_cpus()
            with self.lock:
                gone = {u: r for u, (r, _) in self.records.items() if u not in current}
                for u, rec in current.items():
                    if u not in self.records or self.records[u][0]["started"] != rec["started"]:
                        self.stats.count("transactions_seen")
                        self.generation[u] = self.generation.get(u, 0) + 1
                    old = self.records.get(u)
                    rec["_generation"] = self.generation[u]
                    rec["_offline"] = old[0]["_offline"] if old else offline
                    self.records[u] = (rec, old[1] if old else now)
                for u in gone:
                    del self.records[u]
            for u, rec in gone.items():
                threading.Thread(target=self.ended, args=(rec,), daemon=True).start()

    def ended(self, rec):
        """A record disappeared: the domain must be all as before or all as planned."""
        if not any(s.get("action") in PIN_STEPS for s in rec.get("steps", [])) or self.w.libvirt_down.is_set():
            return
        name = rec["domain"]["name"]
        for attempt in range(2):
            live = read_live([name])
            uuid = rec["domain"]["uuid"]
            if (not live or name not in live or uuid in journal_records()
                    or self.generation.get(uuid) != rec["_generation"]):
                return  # gone, libvirt away, or a new transaction began (or came and went)
            states = step_states(rec, live[name])
            if not mixed(states):
                self.stats.count("transactions_ended_" + ("applied" if "target" in states else "unchanged"))
                return
            time.sleep(1.5)  # confirm: a fast new transaction may have come and gone
        self.stats.violation("left_mixed", f"{name}: after its transaction ended, steps {states} "
                             f"(steps {[s['action'] for s in rec['steps']]})")

    # --- jobs -----------------------------------------------------------------

    def watch_job(self, d, finished):
        threading.Thread(target=self.job_window, args=(d, finished), daemon=True).start()

    def job_window(self, d, finished):
        """Per-node memory of a domain under a job must not shift."""
        try:
            pid = int(read(f"/run/libvirt/qemu/{d.name}.pid"))
            time.sleep(3)  # a page move already in its syscall when the job began ends first
            rec = journal_records().get(d.uuid)
            if rec and any(s["action"] in ("migrate_pages", "move_cell_memory", "set_memory_nodeset")
                           for s in rec["steps"][:rec.get("attempted", 0)]):
                self.stats.count("job_windows_skipped_move_in_flight")
                return
            before, t0 = numa_maps_mib(pid), time.monotonic()
            worst = 0.0
            while not finished() and time.monotonic() - t0 < 120:
                time.sleep(1)
                if not finished():
                    worst = max(worst, moved_mib(before, numa_maps_mib(pid)))
            self.stats.count("job_windows_checked")
            if worst > MOVE_LIMIT_MIB:
                self.stats.violation("memory_moved_under_job", f"{d.name}: {worst:.0f} MiB changed node while "
                                     f"its {d.job or 'job'} ran")
        except (OSError, ValueError):
            pass  # the domain stopped

    # --- the periodic check ---------------------------------------------------

    def cpu_went_offline(self, cpu):
        self.offline_at[cpu] = time.monotonic()

    def check_loop(self):
        while not self.stop.wait(3.0):
            try:
                self.check_once()
            except Exception as e:  # noqa: BLE001 - a checker bug must not end the soak silently
                self.stats.count("checker_errors")
                log(f"checker error: {type(e).__name__}: {e}")

    def check_once(self):
        self.sample_daemon()
        if self.w.libvirt_down.is_set():
            return
        names = self.w.sync()
        live = read_live([d.name for d in names])
        if live is None:
            return
        now = time.monotonic()
        online = online_cpus()
        held = {d.name for d in names if d.paused or d.job}
        active = set()
        with self.lock:
            records = {r["domain"]["name"]: r for r, _ in self.records.values()}
        for d in names:
            lv = live.get(d.name)
            if lv is None:
                continue
            if d.operator is not None:
                left, left_online = d.operator
                if (not same_pins(left, left_online, lv.key(), frozenset(online))
                        and ("operator", d.name) not in self.reported):
                    self.reported.add(("operator", d.name))
                    self.stats.violation("operator_overwritten", f"{d.name}: the operator left {left} "
                                         f"(CPUs {fmt(left_online)} online), now {lv.key()} "
                                         f"(CPUs {fmt(online)} online)")
                continue
            rec = records.get(d.name)
            if rec and mixed(step_states(rec, lv)):
                key = ("mixed_state", d.name, rec["started"])
                active.add(key)
                self.overdue(key, now, f"{d.name} neither as before nor as planned ({step_states(rec, lv)})")
            if d.name in held:
                continue
            for v, cpus in lv.online_vcpus(d).items():
                if cpus and not cpus & online:
                    key = ("pinned_offline", d.name, v)
                    active.add(key)
                    self.overdue(key, now, f"{d.name} vCPU {v} pinned to offline CPUs {fmt(cpus)}")
        self.check_dedicated(names, live, held, now, active)
        self.timers = {k: t for k, t in self.timers.items() if k in active}
        self.note_settled(names, live, held, online, records, now)

    def check_dedicated(self, names, live, held, now, active):
        dedicated = {}
        for d in names:
            lv = live.get(d.name)
            if d.kind == "dedicated" and d.managed and lv and lv.vcpus and all(len(c) == 1 for c in lv.vcpus.values()):
                dedicated[d.name] = set().union(*lv.vcpus.values())
        shared = {owner: False for owner in dedicated}
        for d in names:
            lv = live.get(d.name)
            if lv is None or not d.managed or d.name in held or d.name in dedicated:
                continue
            threads = set().union(lv.emulator or set(), *lv.online_vcpus(d).values())
            for owner, cpus in dedicated.items():
                # Only CPUs seen exclusive count as dedicated: a guest that
                # finds no room is placed on shared CPUs, by design, and a
                # 1-vCPU guest on a 1-CPU node looks the same from libvirt.
                if threads & cpus:
                    shared[owner] = True
                    if (owner, frozenset(cpus)) not in self.exclusive:
                        continue
                    key = ("dedicated_shared", d.name, owner)
                    active.add(key)
                    self.overdue(key, now, f"{d.name} may run on {owner}'s dedicated CPUs {fmt(threads & cpus)}")
        self.exclusive |= {(owner, frozenset(dedicated[owner])) for owner, s in shared.items() if not s}

    def note_settled(self, names, live, held, online, records, now):
        """Settled: numapin up, no transaction, every managed running guest
        confined (pins on fewer CPUs than the host has, some of them online)."""
        if self.back_since() is None or records:
            return
        every = cpulist(read("/sys/devices/system/cpu/present"))
        for d in names:
            lv = live.get(d.name)
            if not d.managed or d.name in held or lv is None:
                continue
            for cpus in [*lv.online_vcpus(d).values(), lv.emulator or set()]:
                if cpus >= every or not cpus & online:
                    return
        self.w.settled(now)

    def sample_daemon(self):
        pid = self.w.daemon.pid()
        if pid is None:
            return
        try:
            rss = int(re.search(r"^VmRSS:\s*(\d+)", read(f"/proc/{pid}/status"), re.M).group(1))
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except (OSError, AttributeError):
            return
        self.stats.samples.append((time.monotonic(), pid, rss, fds, time.monotonic() - self.w.daemon.up_since))


def all_placed(world):
    """At the end: every managed running guest confined; returns the list of those that are not."""
    names = world.sync()
    live = read_live([d.name for d in names]) or {}
    every = cpulist(read("/sys/devices/system/cpu/present"))
    bad = []
    for d in names:
        lv = live.get(d.name)
        if not d.managed:
            continue
        vcpus = lv.online_vcpus(d) if lv else {}
        if not vcpus or any(c >= every for c in vcpus.values()) or (lv.emulator or every) >= every:
            bad.append(d.name)
    return bad


__all__ = ["Checker", "all_placed", "BOUND", "virsh"]

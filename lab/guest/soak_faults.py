"""The soak's faults. Each takes the soak (world) and a random number
u in [0, 1) drawn from the seeded schedule for its choices, and returns
a short description, or None when it could not apply now (no domain to
act on, one of its kind still running): then it is not counted.
Faults that last (libvirtd stopped, a CPU offline, memory pressure, a
job) end on a timer thread of their own, so they overlap other faults.
"""

import os
import signal
import subprocess
import threading
import time

from labkit import WORK, fmt, log, read, topo
from soak_checks import read_live
from soak_world import SETTINGS, STATE_DIR, journal_records, settings_toml, virsh, write_config

DOMAIN_KINDS = [  # (kind, MiB, vCPUs at start, max vCPUs)
    ("idle", 48, 1, 1),
    ("restrictive", 48, 1, 1),
    ("busy", 32, 1, 1),
    ("hotplug", 40, 1, 2),
    ("dedicated", 32, 1, 1),
]
MAX_DOMAINS = 6


def pick(items, u):
    items = sorted(items, key=lambda d: d.name)
    return items[min(int(u * len(items)), len(items) - 1)] if items else None


def later(seconds, fn):
    t = threading.Timer(seconds, fn)
    t.daemon = True
    t.start()
    return t


def wait_mid_transaction(w, u, memory=False, bound=4.0):
    """For half the faults that target numapin or libvirt: wait (up to
    bound s) until a transaction is in flight, or a memory step of one,
    so faults land mid-transaction. Returns what was in flight."""
    if u >= 0.5:
        return ""
    t0 = time.monotonic()
    while time.monotonic() - t0 < bound and not w.ending.is_set():
        for rec in journal_records().values():
            done = rec.get("attempted", 0)
            steps = rec.get("steps", [])
            step = steps[done - 1]["action"] if 0 < done <= len(steps) else ""
            if not memory and done > 0:
                return "mid-transaction"
            if memory and step in ("migrate_pages", "move_cell_memory", "set_memory_nodeset"):
                return "mid-memory-move"
        time.sleep(0.1)
    return ""


# --- numapin ---------------------------------------------------------------


def sigkill(w, u):
    where = wait_mid_transaction(w, u, memory=u < 0.2)
    return w.daemon.signal(signal.SIGKILL) and f"SIGKILL numapin {where}".strip()


def sigterm(w, u):
    where = wait_mid_transaction(w, u)
    return w.daemon.signal(signal.SIGTERM) and f"SIGTERM numapin {where}".strip()


def sigusr1(w, u):
    return w.daemon.signal(signal.SIGUSR1) and "SIGUSR1 (rebalance)"


def sighup_valid(w, u):
    # A valid change the planner notices: the move threshold.
    settings = {k: dict(v) for k, v in SETTINGS.items()}
    settings["planner"]["min_gain"] = round(0.03 + 0.1 * u, 3)
    with w.daemon.config_lock:
        write_config(settings_toml(settings))
        sent = w.daemon.signal(signal.SIGHUP)
    return sent and f"SIGHUP, valid config (min_gain {settings['planner']['min_gain']})"


def sighup_broken(w, u):
    # Under the config lock: the supervisor starts nothing on the broken file.
    with w.daemon.config_lock:
        broken = settings_toml(SETTINGS)
        broken += 'planner.strategy = "sideways"\n' if u < 0.5 else "[planner\n"
        write_config(broken)
        sent = w.daemon.signal(signal.SIGHUP)
        time.sleep(1.5)
        write_config(settings_toml(SETTINGS))
    return sent and "SIGHUP, broken config"


# --- libvirtd --------------------------------------------------------------


def libvirtd_pid():
    try:
        return int(read("/run/libvirtd.pid").strip())
    except (OSError, ValueError):
        return None


def sigstop_libvirtd(w, u):
    if not w.claim_libvirt():
        return None
    where = wait_mid_transaction(w, u)
    pid = libvirtd_pid()
    if pid is None:
        w.libvirt_back()
        return None
    seconds = SETTINGS["libvirt"]["call_timeout_secs"] + 2 + 6 * u
    os.kill(pid, signal.SIGSTOP)

    def resume():
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        w.libvirt_back()

    later(seconds, resume)
    return f"SIGSTOP libvirtd for {seconds:.0f}s {where}".strip()


def restart_libvirtd(w, u):
    if not w.claim_libvirt():
        return None
    where = wait_mid_transaction(w, u)
    pid = libvirtd_pid()
    if pid:
        os.kill(pid, signal.SIGTERM)
        for _ in range(150):
            if not os.path.exists(f"/proc/{pid}"):
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
    env = dict(os.environ, LIBVIRT_LOG_OUTPUTS="3:file:/run/lab/libvirtd.log")
    subprocess.run(["libvirtd", "-d"], env=env, timeout=30)
    for _ in range(100):
        if virsh("version", timeout=5)[0] == 0:
            break
        time.sleep(0.3)
    w.libvirt_back()
    return f"libvirtd restarted {where}".strip()


# --- domains ---------------------------------------------------------------


def start_domain(w, u):
    if len(w.running()) >= MAX_DOMAINS:
        return None
    kind, mib, vcpus, max_vcpus = DOMAIN_KINDS[min(int(u * len(DOMAIN_KINDS)), len(DOMAIN_KINDS) - 1)]
    if kind == "dedicated" and any(d.kind == "dedicated" for d in w.running()):
        kind, mib, vcpus, max_vcpus = DOMAIN_KINDS[0]
    d = w.create(kind, mib, vcpus, max_vcpus)
    return d and f"started {d.name} ({kind}, {mib} MiB)"


def destroy_domain(w, u):
    d = pick([d for d in w.running() if d.job is None], u)
    if d is None or len(w.running()) <= 2:
        return None
    rc, _, err = virsh("destroy", d.name)
    if rc == 0:
        # Only then: a domain the model forgot would come back as adopted,
        # without what the soak knows of it (an operator's pins).
        w.forget(d)
    return f"destroyed {d.name}" + ("" if rc == 0 else f" (virsh: {err.strip()[:80]})")


def suspend_domain(w, u):
    d = pick([d for d in w.running() if not d.paused and d.job is None], u)
    if d is None:
        return None
    rc, _, err = virsh("suspend", d.name)
    d.paused = rc == 0
    return f"suspended {d.name}" + ("" if rc == 0 else f" (virsh: {err.strip()[:80]})")


def resume_domain(w, u):
    d = pick([d for d in w.running() if d.paused and d.job is None], u)
    if d is None:
        return None
    rc, _, err = virsh("resume", d.name)
    d.paused = rc != 0
    return f"resumed {d.name}" + ("" if rc == 0 else f" (virsh: {err.strip()[:80]})")


def setvcpus(w, u, up):
    d = pick([d for d in w.running() if d.max_vcpus > 1 and d.managed and not d.paused and d.job is None
              and (d.vcpus < d.max_vcpus if up else d.vcpus > 1)], u)
    if d is None:
        return None
    want = d.vcpus + (1 if up else -1)
    rc, _, err = virsh("setvcpus", d.name, str(want), "--live", timeout=30)
    if rc == 0:
        d.vcpus = want
        return f"setvcpus {d.name} {want}"
    # A guest without an OS never acknowledges an unplug request.
    w.stats.count(f"setvcpus_{'up' if up else 'down'}_refused")
    return f"setvcpus {d.name} {want} refused ({err.strip()[:80]})"


def setvcpus_up(w, u):
    return setvcpus(w, u, True)


def setvcpus_down(w, u):
    return setvcpus(w, u, False)


# --- jobs -------------------------------------------------------------------


def job(w, u, kind):
    """A libvirt job on an idle domain; memory must not move while it runs
    (checked by the soak's checker from numa_maps, see soak_checks)."""
    d = pick([d for d in w.running() if d.job is None and not d.paused and d.kind != "busy"], u)
    if d is None or sum(1 for x in w.running() if x.job) >= 2:
        return None
    where = wait_mid_transaction(w, u, memory=True)
    with d.changing:
        if d.job is not None:
            return None
        d.job = kind
    if kind == "dump":
        # A live memory-only dump is a domain job for as long as it writes.
        path = f"{WORK}/{d.name}.core"
        proc = subprocess.Popen(["timeout", "-k", "2", "120", "virsh", "-c", "qemu:///system", "dump", d.name, path,
                                 "--memory-only", "--live"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        w.checker.watch_job(d, lambda: proc.poll() is not None)

        def done():
            proc.wait()
            if os.path.exists(path):
                os.remove(path)
            d.job = None

        threading.Thread(target=done, daemon=True).start()
        return f"dump job on {d.name} {where}".strip()
    # A block copy stays a job (mirroring, ready) until aborted.
    path = f"{WORK}/{d.name}.copy"
    rc, _, err = virsh("blockcopy", d.name, "hda", path, "--transient-job", timeout=30)
    if rc != 0:
        d.job = None
        return f"block copy on {d.name} refused ({err.strip()[:80]})"
    seconds = 4 + 12 * u
    finished = threading.Event()
    w.checker.watch_job(d, finished.is_set)

    def abort():
        virsh("blockjob", d.name, "hda", "--abort", timeout=30)
        finished.set()
        d.job = None
        if os.path.exists(path):
            os.remove(path)

    later(seconds, abort)
    return f"block copy job on {d.name} for {seconds:.0f}s {where}".strip()


def job_dump(w, u):
    return job(w, u, "dump")


def job_blockcopy(w, u):
    return job(w, u, "blockcopy")


# --- the operator -------------------------------------------------------------


def settled_domain(w, u, restrictive=False):
    """A managed domain numapin placed and is not changing now."""
    busy = set(journal_records())
    placed = [d for d in w.running() if d.managed and d.uuid and d.uuid not in busy and d.job is None
              and os.path.exists(f"{STATE_DIR}/placements/{d.uuid}.json")
              and (d.kind == "restrictive") >= restrictive]
    return pick(placed, u)


def operator_vcpupin(w, u):
    if w.libvirt_down.is_set():
        return None
    d = settled_domain(w, u)
    if d is None:
        return None
    with d.changing:
        if d.job is not None:
            return None
        cpus = sorted(w.online())
        # A pin to where vCPU 0 already is changes nothing libvirt can show:
        # nobody could tell it from numapin's own pin, so it is no operator's.
        live = read_live([d.name])
        if live and d.name in live and len(cpus) > 1:
            cpus = [c for c in cpus if live[d.name].vcpus.get(0) != {c}]
        cpu = cpus[int(u * 7919) % len(cpus)]
        rc, _, err = virsh("vcpupin", d.name, "0", str(cpu), "--live")
        if rc != 0:
            return f"operator vcpupin {d.name} refused ({err.strip()[:80]})"
        w.operator_took(d)
        return f"operator: virsh vcpupin {d.name} 0 {cpu}"


def operator_numatune(w, u):
    if w.libvirt_down.is_set():
        return None
    d = settled_domain(w, u, restrictive=True)
    if d is None:
        return None
    with d.changing:
        if d.job is not None:
            return None
        nodes = sorted(topo().nodes)
        live = read_live([d.name])
        if live and d.name in live and len(nodes) > 1:
            nodes = [n for n in nodes if live[d.name].nodeset != {n}]
        node = nodes[int(u * 7919) % len(nodes)]
        # Memory moves inside libvirtd's call: bounded like every call here.
        rc, _, err = virsh("numatune", d.name, "--nodeset", str(node), "--live", timeout=60)
        if rc != 0:
            return f"operator numatune {d.name} refused ({err.strip()[:80]})"
        w.operator_took(d)
        return f"operator: virsh numatune {d.name} --nodeset {node} --live"


# --- the host ---------------------------------------------------------------


def memory_pressure(w, u):
    """A process bound to one node touches most of its free memory for a while."""
    if w.pressure is not None:
        return None
    node = sorted(topo().nodes)[int(u * 7919) % len(topo().nodes)]
    free_kib = int(next(ln.split()[3] for ln in read(f"/sys/devices/system/node/node{node}/meminfo").splitlines()
                        if "MemFree:" in ln))
    mib = min(400, free_kib // 1024 - 48)
    if mib < 32:
        return None
    seconds = 10 + 25 * u
    code = f"import time; b = bytearray(b'\\x01') * ({mib} << 20); time.sleep({seconds:.0f})"
    w.pressure = subprocess.Popen(["numactl", f"--membind={node}", "python3", "-c", code])

    def end():
        p, w.pressure = w.pressure, None
        p.kill()
        p.wait()

    later(seconds + 2, end)
    return f"memory pressure: {mib} MiB on node {node} for {seconds:.0f}s"


def cpu_offline(w, u):
    """One CPU (never CPU 0, which cannot go offline) offline for a while."""
    if w.offline_cpu is not None:
        return None
    where = wait_mid_transaction(w, u)
    candidates = sorted(c for c in w.online() if c != 0 and os.path.exists(f"/sys/devices/system/cpu/cpu{c}/online"))
    if not candidates:
        return None
    cpu = candidates[int(u * 7919) % len(candidates)]
    with open(f"/sys/devices/system/cpu/cpu{cpu}/online", "w") as f:
        f.write("0")
    w.offline_cpu = cpu
    w.checker.cpu_went_offline(cpu)
    seconds = 8 + 20 * u

    def online():
        with open(f"/sys/devices/system/cpu/cpu{cpu}/online", "w") as f:
            f.write("1")
        w.offline_cpu = None

    later(seconds, online)
    return f"CPU {cpu} offline for {seconds:.0f}s {where}".strip()


# (weight, fault): the mix. Domains start as often as they go, so their
# number wanders between 2 and MAX_DOMAINS.
FAULTS = {
    # Not so often that numapin never gets to work between kills.
    "sigkill": (3, sigkill),
    "sigterm": (2, sigterm),
    "sigstop_libvirtd": (2, sigstop_libvirtd),
    "libvirtd_restart": (2, restart_libvirtd),
    "domain_start": (5, start_domain),
    "domain_destroy": (4, destroy_domain),
    "domain_suspend": (3, suspend_domain),
    "domain_resume": (3, resume_domain),
    "job_dump": (2, job_dump),
    "job_blockcopy": (2, job_blockcopy),
    "operator_vcpupin": (2, operator_vcpupin),
    "operator_numatune": (2, operator_numatune),
    "setvcpus_up": (2, setvcpus_up),
    "setvcpus_down": (2, setvcpus_down),
    "memory_pressure": (2, memory_pressure),
    "cpu_offline": (2, cpu_offline),
    "sighup_valid": (2, sighup_valid),
    "sighup_broken": (2, sighup_broken),
    "sigusr1": (3, sigusr1),
}


def fmt_faults(counts):
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


__all__ = ["FAULTS", "MAX_DOMAINS", "fmt_faults", "fmt", "log"]

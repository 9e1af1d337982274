"""Side by side in one lab boot: the same domains under the kernel alone,
under Debian's numad with its defaults, and under numapin's daemon.

Each phase starts the same busy, unpinned domains together, samples them
for a fixed time and tears everything down. Results go to
/run/lab/out/compare.json and, rendered, /run/lab/out/LAB.md (lab/compare
copies that to docs/LAB.md).

Measures, per domain (all from the kernel's files):
- locality: the share of the domain's resident anonymous memory
  (numa_maps) on the node its vCPUs were running on, weighted by where
  they ran: sum over nodes of (share of vCPU run time on the node in the
  last window) x (share of memory on the node);
- the nodes its vCPU threads may run on (Cpus_allowed_list);
- time until confined: from the start to the first sample after which its
  vCPUs stay confined to fewer nodes than the host has;
- time until memory local: from the start to the first sample after which
  it is confined and >= 90% of its memory stays on those nodes;
- MiB moved: memory that changed node between samples;
and per phase the manager's CPU time (utime+stime of numad or numapin,
which includes the migrate_pages(2) work done in their context), libvirtd's
CPU time and the kernel's page migration counter.
"""

import json
import os
import subprocess
import threading
import time

import labkit
from labkit import OUT, Numapin, fmt, log, proc_cpu_seconds, read, share_on, sh, start_many, topo

SAMPLE = 5.0  # seconds between samples
TICK = 1.0  # seconds between readings of where vCPU threads run
WINDOW = 30.0  # seconds of run time that weigh the locality
# numapin's config beyond labkit's lab settings: numad's interval, and room
# for memory moves that take minutes under double emulation.
NUMAPIN_CONFIG = {"apply__memory_verify_timeout_secs": 600, "daemon__interval_secs": 15}


def vmstat(key):
    for line in read("/proc/vmstat").splitlines():
        k, _, v = line.partition(" ")
        if k == key:
            return int(v)
    return 0


def pid_of(name):
    out = sh(["pgrep", "-x", name], check=False).split()
    return int(out[0]) if out else None


class Manager:
    """none / numad / numapin: start, CPU time, stop."""

    def __init__(self, kind, repo):
        self.kind, self.repo, self.pid, self.np = kind, repo, None, None

    def start(self):
        if self.kind == "numad":
            # numad never moves a never-bound process before CLOCK_MONOTONIC
            # passes 300 s; a time namespace makes it see a host up a day.
            subprocess.run(["unshare", "--time", "--fork", "--monotonic", "86400", "numad", "-i", "15"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60, check=True)
            self.pid, _ = labkit.wait_until("numad running", lambda: pid_of("numad"), timeout=30, interval=0.5)
        elif self.kind == "numapin":
            # numapin's defaults, except what the lab's size needs: 768 MiB
            # nodes (headroom), slow moves under double emulation (verify).
            self.np = Numapin(self.repo, **NUMAPIN_CONFIG)
            self.np.start_daemon("numapin-compare.log")
            self.pid = self.np.proc.pid

    def cpu(self):
        user, system = self.cpu_split()
        self.system0 = getattr(self, "system0", system)
        return user + system

    def cpu_split(self):
        """(user, system) CPU seconds of the manager process."""
        return (self.pid and labkit.stat_times(f"/proc/{self.pid}/stat")) or (0.0, 0.0)

    def thread_cpu(self, comm):
        """(user, system) CPU seconds of the manager's live threads named
        `comm`: numapin's "memory-mover" moves pages in the background, the
        rest of the process observes, plans and pins (a thread that ended,
        as an abandoned libvirt connection's does, counts in the process
        total only)."""
        user = system = 0.0
        try:
            tids = os.listdir(f"/proc/{self.pid}/task") if self.pid else []
        except FileNotFoundError:
            tids = []
        for tid in tids:
            try:
                name = read(f"/proc/{self.pid}/task/{tid}/comm").strip()
            except FileNotFoundError:
                continue
            times = labkit.stat_times(f"/proc/{self.pid}/task/{tid}/stat") if name == comm else None
            if times:
                user += times[0]
                system += times[1]
        return user, system

    def stop(self):
        if self.kind == "numad" and self.pid:
            os.kill(self.pid, 15)
            sh(["cp", "/var/log/numad.log", f"{OUT}/numad.log"], check=False)
        if self.np:
            self.np.stop_daemon()


class DomainSampler:
    """Two threads per domain: every TICK, where its vCPU threads ran (never
    blocks); every SAMPLE, its memory and affinities (reading numa_maps waits
    while a memory move holds the process's mmap lock, so one domain's move
    must not stall the others' samples)."""

    def __init__(self, probe, manager):
        self.p, self.mgr = probe, manager
        self.ran = []  # (time, node, cpu seconds)
        self.samples = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self.tick, self.sample)]
        for th in self.threads:
            th.start()

    def tick(self):
        node_of = topo().node_of
        last = {}
        while not self.stop.is_set():
            now = time.monotonic()
            try:
                cur = self.p.cpu_seconds()
            except (FileNotFoundError, ProcessLookupError):
                if self.gone():
                    return
                self.stop.wait(TICK)
                continue
            for tid, (cpu, secs) in cur.items():
                prev = last.get(tid, (cpu, secs))[1]
                self.ran.append((now, node_of.get(cpu), secs - prev))
            last = cur
            self.stop.wait(TICK)

    def sample(self):
        t = topo()
        while not self.stop.wait(SAMPLE):
            try:
                mem = self.p.numa_maps()
                allowed = sorted(self.p.vcpu_nodes())
                emulator = sorted(t.nodes_of(self.p.emulator()))
            except (FileNotFoundError, ProcessLookupError, ValueError):
                # A QEMU thread that exits while its files are read is not
                # the end of the domain: only a process that is gone is.
                if self.gone():
                    return
                continue
            now = time.monotonic()
            recent = [(n, d) for (at, n, d) in list(self.ran) if at > now - WINDOW and n is not None]
            busy = sum(d for _, d in recent)
            run_share = {}
            for n, d in recent:
                run_share[n] = run_share.get(n, 0) + (d / busy if busy else 0)
            total = sum(mem.values())
            locality = sum(s * mem.get(n, 0) / total for n, s in run_share.items()) if total and busy else None
            self.samples.append({
                "t": round(now - self.p.started, 1), "domain": self.p.name, "allowed": allowed,
                "emulator": emulator, "mem": {str(n): round(v, 1) for n, v in mem.items()},
                "ran": {str(n): round(v, 3) for n, v in run_share.items()}, "locality": locality,
            })

    def gone(self):
        return not os.path.exists(f"/proc/{self.p.pid}")

    def finish(self):
        self.stop.set()


def run_phase(kind, repo, specs, duration):
    log(f"=== phase {kind}")
    labkit.destroy_all()
    sh(["sync"])
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")
    mgr = Manager(kind, repo)
    mgr.start()
    cpu0 = mgr.cpu()
    lv = pid_of("libvirtd")
    lv0 = proc_cpu_seconds(lv)
    mig0 = vmstat("pgmigrate_success")
    probes = start_many(specs)
    t0 = min(p.started for p in probes)
    samplers = [DomainSampler(p, mgr) for p in probes]
    while time.monotonic() - t0 < duration:
        time.sleep(15)
        line = []
        for sm in samplers:
            if sm.samples:
                x = sm.samples[-1]
                loc = "-" if x["locality"] is None else f"{100 * x['locality']:.0f}%"
                mem = labkit.show_mem({int(k): v for k, v in x["mem"].items()})
                line.append(f"{x['domain']}@{x['t']:.0f}s cpus@{fmt(x['allowed'])} mem {mem} loc {loc}")
        log(f"{kind} t={time.monotonic() - t0:4.0f}s " + " | ".join(line))
    for sm in samplers:
        sm.finish()
    user, system = mgr.cpu_split()
    mover_user, mover_system = mgr.thread_cpu("memory-mover")
    result = {
        "manager": kind,
        "manager_cpu": round(user + system - (cpu0 or 0), 2),
        "manager_cpu_system": round(system - mgr.system0, 2),
        "mover_cpu": round(mover_user + mover_system, 2),
        "mover_cpu_system": round(mover_system, 2),
        "libvirtd_cpu": round((proc_cpu_seconds(lv) or 0) - (lv0 or 0), 2),
        "migrated_mib": round((vmstat("pgmigrate_success") - mig0) * 4 / 1024),
        "samples": sorted((x for sm in samplers for x in sm.samples), key=lambda x: (x["domain"], x["t"])),
        "domains": [p.name for p in probes],
    }
    # Domains first: a manager stops after the memory move in flight,
    # which ends at once when the domain is gone (so do blocked samplers).
    labkit.destroy_all()
    mgr.stop()
    return result


def summarize(phase, nodes):
    """Per domain: final and mean locality, nodes allowed at the end, time until placed, MiB moved."""
    out = []
    for name in phase["domains"]:
        rows = [s for s in phase["samples"] if s["domain"] == name]
        locs = [s["locality"] for s in rows if s["locality"] is not None]
        def confined(r):
            return len(set(r["allowed"])) < nodes

        def local(r):
            mem = {int(k): v for k, v in r["mem"].items()}
            return confined(r) and share_on(mem, set(r["allowed"])) >= 0.9

        def since(ok):
            return next((s["t"] for i, s in enumerate(rows) if all(ok(r) for r in rows[i:])), None)

        placed = since(local)
        confined_at = since(confined)
        moved = 0.0
        for a, b in zip(rows, rows[1:]):
            keys = set(a["mem"]) | set(b["mem"])
            delta = sum(abs(b["mem"].get(k, 0) - a["mem"].get(k, 0)) for k in keys)
            growth = abs(sum(b["mem"].values()) - sum(a["mem"].values()))
            moved += max(0.0, delta - growth) / 2
        out.append({
            "domain": name,
            "final_locality": locs[-1] if locs else None,
            "mean_locality": sum(locs) / len(locs) if locs else None,
            "allowed": rows[-1]["allowed"] if rows else [],
            "placed": placed,
            "confined": confined_at,
            "moved": moved,
            "mem": rows[-1]["mem"] if rows else {},
        })
    return out


def pct(x):
    return "-" if x is None else f"{100 * x:.0f}%"


def render_header(numapin_settings):
    """The part of docs/LAB.md common to every topology."""
    cfg = ", ".join(f"`{sec}.{k} = {json.dumps(v)}`" for sec, kv in numapin_settings.items() for k, v in kv.items())
    balancing = read("/proc/sys/kernel/numa_balancing").strip()
    L = [
        "# The NUMA lab: kernel alone, numad and numapin side by side\n",
        "<!-- Generated by lab/compare; do not edit by hand. -->\n",
        "Generated by `lab/compare --topology T` (see [lab/README.md](../lab/README.md)): each run "
        "rewrites the section of its topology below and this header. The lab is a QEMU/TCG guest "
        "with several NUMA nodes whose root is the host's own `/`. Each section's run boots it "
        "once and, for each manager in turn, starts the same unpinned, unbound domains together, "
        "samples them, and destroys them. The domains boot a 512-byte sector that spins on vCPU 0 "
        "(one busy vCPU, any others halted) with all their RAM allocated at start.\n",
        f"**Managers**: *kernel alone*: nothing but the kernel (`kernel.numa_balancing = {balancing}`); "
        "*numad*: Debian's numad 0.5 with its defaults (`numad -i 15`), in a time namespace "
        "that makes it see a host up for a day (it moves no process in the first 300 s of uptime); "
        f"*numapin*: `numapin run` with its defaults except {cfg} (a small lab whose memory "
        "moves are slow under double emulation; the interval is numad's).\n",
        "**Measures** (from /proc and sysfs, not from the managers' own output):\n",
        "- *locality*: the expected share of a vCPU's memory accesses that are local: the sum over "
        "nodes of (share of the domain's vCPU run time on that node, over the last "
        f"{WINDOW:.0f} s, from the `processor` field of /proc/PID/task/TID/stat read every "
        f"{TICK:.0f} s, weighted by CPU time) x (share of its resident anonymous memory on that "
        "node, from /proc/PID/numa_maps). 100% means all memory sits where the vCPUs run. "
        "*final* is the last sample, *mean* the average over the run;",
        "- *vCPU nodes*: the nodes the domain's vCPU threads may run on at the end "
        "(Cpus_allowed_list of its `CPU n/TCG` threads);",
        "- *confined after*: seconds from the domain's start to the first sample after which its "
        "vCPUs stay confined to fewer nodes than the host has (\"never\": not by the end); "
        "*memory local after*: to the first sample after which, besides, at least 90% of its "
        "memory stays on those nodes;",
        "- *MiB moved*: memory that changed node between consecutive samples (half the sum of "
        "per-node changes); *kernel migrated*: the whole lab's `pgmigrate_success` over the phase;",
        "- *manager CPU*: user+system CPU seconds of the numad or numapin process over the phase, "
        "and the system part: migrate_pages(2) runs in its context, and under TCG a page move "
        "spins in the kernel until the emulated CPU running the busy vCPU acknowledges the TLB "
        "flush, so system time here is mostly waiting. For numapin, *moving pages* is its memory "
        "mover thread's share (move_pages(2) and migrate_pages(2) run there), *the rest* "
        "observing, planning and pinning. numad, as root, calls migrate_pages(2) with "
        "CAP_SYS_NICE, under which the kernel also moves the page cache other processes share "
        "(the QEMU binary, libraries); numapin moves only the pages a guest alone maps; "
        "*libvirtd CPU*: libvirtd's, which serves numapin's calls (and migrates a restrictive "
        "domain's memory);",
        "- samples of a domain pause while a memory move holds its process's mmap lock "
        "(numa_maps cannot be read then): \"-\" in the table over time.\n",
        "Caveat: the lab emulates every CPU (TCG inside TCG), so absolute times, and "
        "memory moves above all, are far slower than on real hardware (a page move waits for a "
        "TLB-flush IPI to the emulated CPU running the busy vCPU); compare the managers "
        "with each other, not with a real host.\n",
    ]
    return "\n".join(L) + "\n"


def render_section(topology, specs, duration, phases, took):
    """This topology's run: what ran, the tables."""
    t = topo()
    nodes = len(t.nodes)
    dist = "/".join(str(d) for d in sorted({d for r in t.distances.values() for d in r}))
    node_mib = round(int(read("/sys/devices/system/node/node0/meminfo").split("MemTotal:")[1].split()[0]) / 1024)
    vcpus = specs[0][2].get("vcpus", 1)
    L = [f"## {nodes} nodes x {len(t.nodes[0])} CPU{'s' if len(t.nodes[0]) > 1 else ''} (`--topology {topology}`)\n",
         f"`lab/compare --topology {topology} --duration {duration} --domains {len(specs)} "
         f"--mib {specs[0][1]} --vcpus {vcpus}`, run on {time.strftime('%Y-%m-%d')} "
         f"({took / 60:.0f} min): SLIT distances {dist}, about {node_mib} MiB per node; "
         f"{len(specs)} domains of {vcpus} vCPU{'s' if vcpus > 1 else ''} and {specs[0][1]} MiB, "
         f"sampled every {SAMPLE:.0f} s for {duration} s per manager.\n",
         "### At the end of each phase\n",
         "| manager | domain | locality final | locality mean | vCPU nodes | memory per node (MiB) | confined after | memory local after | MiB moved |",
         "| --- | --- | ---: | ---: | --- | --- | ---: | ---: | ---: |"]
    names = {"none": "kernel alone", "numad": "numad", "numapin": "numapin"}
    for ph in phases:
        for d in summarize(ph, nodes):
            mem = " ".join(f"N{k}={v:.0f}" for k, v in sorted(d["mem"].items()) if v >= 1)
            placed = "never" if d["placed"] is None else f"{d['placed']:.0f} s"
            confined = "never" if d["confined"] is None else f"{d['confined']:.0f} s"
            L.append(f"| {names[ph['manager']]} | {d['domain']} | {pct(d['final_locality'])} | "
                     f"{pct(d['mean_locality'])} | {fmt(d['allowed'])} | {mem} | {confined} | {placed} | "
                     f"{d['moved']:.0f} |")
    L += ["",
          "| manager | mean locality (all domains, whole run) | domains with memory local | manager CPU | libvirtd CPU | kernel migrated |",
          "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for ph in phases:
        s = summarize(ph, nodes)
        locs = [x["mean_locality"] for x in s if x["mean_locality"] is not None]
        cpu = "-" if ph["manager"] == "none" else f"{ph['manager_cpu']:.1f} s ({ph.get('manager_cpu_system', 0):.1f} s system)"
        if ph["manager"] == "numapin" and "mover_cpu" in ph:
            cpu += (f"; moving pages {ph['mover_cpu']:.1f} s ({ph['mover_cpu_system']:.1f} s system), "
                    f"the rest {ph['manager_cpu'] - ph['mover_cpu']:.1f} s")
        L.append(f"| {names[ph['manager']]} | {pct(sum(locs) / len(locs) if locs else None)} | "
                 f"{sum(1 for x in s if x['placed'] is not None)} of {len(s)} | {cpu} | "
                 f"{ph['libvirtd_cpu']:.1f} s | {ph['migrated_mib']} MiB |")
    L += ["\n### Over time\n",
          "Locality of each domain and, after @, the nodes its vCPUs may run on, at these times "
          "after its start:\n"]
    marks = [m for m in (15, 30, 60, 90, 120, 180, 240, 300, 420, 600) if m <= duration]
    L.append("| manager | domain | " + " | ".join(f"{m} s" for m in marks) + " |")
    L.append("| --- | --- | " + " | ".join("---:" for _ in marks) + " |")
    for ph in phases:
        for name in ph["domains"]:
            rows = [s for s in ph["samples"] if s["domain"] == name]
            cells = []
            for m in marks:
                r = min(rows, key=lambda s: abs(s["t"] - m)) if rows else None
                cells.append("-" if r is None or abs(r["t"] - m) > SAMPLE else
                             f"{pct(r['locality'])} @{fmt(r['allowed'])}")
            L.append(f"| {names[ph['manager']]} | {name} | " + " | ".join(cells) + " |")
    L += ["", "Mean locality over the domains at each time (the samples nearest to it):\n",
          "| manager | " + " | ".join(f"{m} s" for m in marks) + " |",
          "| --- | " + " | ".join("---:" for _ in marks) + " |"]
    for ph in phases:
        cells = []
        for m in marks:
            locs = []
            for name in ph["domains"]:
                rows = [s for s in ph["samples"] if s["domain"] == name and s["locality"] is not None]
                r = min(rows, key=lambda s: abs(s["t"] - m)) if rows else None
                if r is not None and abs(r["t"] - m) <= SAMPLE:
                    locs.append(r["locality"])
            cells.append(pct(sum(locs) / len(locs)) if locs else "-")
        L.append(f"| {names[ph['manager']]} | " + " | ".join(cells) + " |")
    return "\n".join(L) + "\n\n"


def main(repo, topology, args):
    opts = dict(a.split("=", 1) for a in args if "=" in a)
    duration = int(opts.get("duration", 300))
    count = int(opts.get("domains", 3))
    mib = int(opts.get("mib", 320))
    vcpus = int(opts.get("vcpus", 0)) or min(len(c) for c in topo().nodes.values())
    managers = opts.get("managers", "none,numad,numapin").split(",")
    specs = [(f"vm{i}", mib, {"vcpus": vcpus}) for i in range(count)]
    t0 = time.monotonic()
    phases = []
    for kind in managers:
        phases.append(run_phase(kind, repo, specs, duration))
        with open(f"{OUT}/compare.json", "w") as f:
            json.dump({"topology": topology, "duration": duration, "phases": phases}, f, indent=1)
    with open(f"{OUT}/header.md", "w") as f:
        f.write(render_header(Numapin(repo, **NUMAPIN_CONFIG).settings))
    section = render_section(topology, specs, duration, phases, time.monotonic() - t0)
    with open(f"{OUT}/section.md", "w") as f:
        f.write(section)
    print(section)
    return 0

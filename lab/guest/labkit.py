"""What the lab's scenarios and the comparison use inside the lab guest:
the topology, inner domains, readings of the kernel's own files about a
domain (threads' affinities, numa_maps, the cgroup's memory.numa_stat), and
numapin itself. Only the standard library: this runs on the host's python3.
"""

import json
import os
import re
import signal
import subprocess
import time

URI = "qemu:///system"
OUT = "/run/lab/out"
WORK = "/run/lab"
PAGE_KIB = 4


def log(msg):
    print(f"[{time.monotonic():8.1f}] {msg}", flush=True)


def sh(cmd, check=True, timeout=120):
    """Runs a command (list), returns its stdout; raises with stderr on failure."""
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {p.returncode}: {p.stderr.strip()}")
    return p.stdout


def virsh(*args, check=True):
    return sh(["virsh", "-c", URI, *args], check=check)


def cpulist(text):
    """'0-2,5' -> {0, 1, 2, 5}"""
    out = set()
    for part in text.strip().split(","):
        if not part:
            continue
        a, _, b = part.partition("-")
        out.update(range(int(a), int(b or a) + 1))
    return out


def fmt(ids):
    return ",".join(str(i) for i in sorted(ids)) or "-"


def read(path):
    with open(path) as f:
        return f.read()


class Topology:
    """The lab guest's NUMA nodes as its kernel sees them."""

    def __init__(self):
        base = "/sys/devices/system/node"
        self.nodes = {}
        for d in sorted(os.listdir(base)):
            m = re.fullmatch(r"node(\d+)", d)
            if m:
                self.nodes[int(m.group(1))] = cpulist(read(f"{base}/{d}/cpulist"))
        self.node_of = {c: n for n, cs in self.nodes.items() for c in cs}
        self.distances = {
            n: [int(x) for x in read(f"{base}/node{n}/distance").split()] for n in self.nodes
        }

    def nodes_of(self, cpus):
        return {self.node_of[c] for c in cpus if c in self.node_of}


TOPO = None


def topo():
    global TOPO
    if TOPO is None:
        TOPO = Topology()
    return TOPO


# --- inner domains --------------------------------------------------------

# A boot sector that loops forever (vCPU 0 at 100%) or halts (idle).
SPIN = b"\xeb\xfe"
IDLE = b"\xfa\xf4\xeb\xfd"  # cli; hlt; jmp back to hlt


def domain_xml(name, mib, vcpus=1, busy=True, numatune=None, cells=None, nested=False, cpuset=None):
    """An OS-less domain: SeaBIOS boots a 512-byte sector that spins or
    halts; its RAM is allocated at start so it is resident. `numatune`:
    (mode, nodeset) or None for unbound. `cells`: MiB per guest NUMA cell
    (vCPUs split evenly). `nested`: requires svm, i.e. a hypervisor guest.
    `cpuset`: hand-pinned vCPUs (an operator's domain)."""
    img = f"{WORK}/{name}.img"
    with open(img, "wb") as f:
        f.write((SPIN if busy else IDLE).ljust(510, b"\0") + b"\x55\xaa")
    tune = ""
    if numatune:
        tune = f"<numatune><memory mode='{numatune[0]}' nodeset='{numatune[1]}'/></numatune>"
    cpu = ""
    if cells or nested:
        inner = ""
        if cells:
            per = vcpus // len(cells)
            inner = f"<topology sockets='{len(cells)}' dies='1' cores='{per}' threads='1'/><numa>"
            for i, cmib in enumerate(cells):
                inner += f"<cell id='{i}' cpus='{i * per}-{i * per + per - 1}' memory='{cmib}' unit='MiB'/>"
            inner += "</numa>"
        if nested:
            cpu = ("<cpu mode='custom' match='exact' check='none'><model fallback='allow'>qemu64</model>"
                   f"<feature policy='require' name='svm'/>{inner}</cpu>")
        else:
            cpu = f"<cpu>{inner}</cpu>"
    vcpu_attr = f" cpuset='{cpuset}'" if cpuset else ""
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{mib}</memory>
  <vcpu placement='static'{vcpu_attr}>{vcpus}</vcpu>
  <memoryBacking><allocation mode='immediate'/></memoryBacking>
  {tune}
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  {cpu}
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/>
      <source file='{img}'/><target dev='hda' bus='ide'/></disk>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def start(name, mib, paused=False, **kw):
    """Starts a transient domain (paused: to resume later); returns its Probe."""
    path = f"{WORK}/{name}.xml"
    with open(path, "w") as f:
        f.write(domain_xml(name, mib, **kw))
    t = time.monotonic()
    virsh("create", path, *(["--paused"] if paused else []))
    log(f"started {name} ({mib} MiB) in {time.monotonic() - t:.1f}s")
    return Probe(name)


def start_many(specs):
    """Starts several domains at once (name, mib, options); returns their Probes in order."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(len(specs)) as ex:
        return list(ex.map(lambda s: start(s[0], s[1], **(s[2] if len(s) > 2 else {})), specs))


def destroy_all():
    for name in virsh("list", "--name").split():
        virsh("destroy", name, check=False)


# --- what the kernel says about a domain -----------------------------------


class Probe:
    """Readings of one running domain's QEMU process from /proc and its
    cgroup; every method reads afresh."""

    def __init__(self, name):
        self.name = name
        self.pid = int(read(f"/run/libvirt/qemu/{name}.pid"))
        self.started = time.monotonic()

    def threads(self):
        """[(tid, comm, allowed cpus)] of every thread."""
        out = []
        base = f"/proc/{self.pid}/task"
        for tid in sorted(os.listdir(base), key=int):
            try:
                comm = read(f"{base}/{tid}/comm").strip()
                status = read(f"{base}/{tid}/status")
            except FileNotFoundError:
                continue
            m = re.search(r"^Cpus_allowed_list:\s*(\S+)", status, re.M)
            out.append((int(tid), comm, cpulist(m.group(1))))
        return out

    def vcpus(self):
        """{vcpu index: allowed cpus} from the 'CPU N/TCG' threads."""
        out = {}
        for _, comm, cpus in self.threads():
            m = re.fullmatch(r"CPU (\d+)/(TCG|KVM)", comm)
            if m:
                out[int(m.group(1))] = cpus
        return out

    def emulator(self):
        """Allowed cpus of every thread that is neither a vCPU nor an iothread."""
        allowed = set()
        for _, comm, cpus in self.threads():
            if not re.fullmatch(r"CPU \d+/(TCG|KVM)", comm) and not comm.startswith("IO iothread"):
                allowed |= cpus
        return allowed

    def vcpu_nodes(self):
        return topo().nodes_of(set().union(*self.vcpus().values()))

    def numa_maps(self):
        """Resident anonymous MiB per node (guest RAM and QEMU's heap; shared
        libraries and the binary are file pages other processes share)."""
        per = {}
        for line in read(f"/proc/{self.pid}/numa_maps").splitlines():
            if "file=" in line:
                continue
            kib = PAGE_KIB
            m = re.search(r"kernelpagesize_kB=(\d+)", line)
            if m:
                kib = int(m.group(1))
            for n, pages in re.findall(r"\bN(\d+)=(\d+)", line):
                per[int(n)] = per.get(int(n), 0) + int(pages) * kib / 1024
        return per

    def binary_pages(self):
        """Pages per node of QEMU's own binary that this process maps: file
        pages every QEMU process shares (its code), which no move of one
        guest's memory may take along."""
        exe = os.readlink(f"/proc/{self.pid}/exe")
        per = {}
        for line in read(f"/proc/{self.pid}/numa_maps").splitlines():
            if f"file={exe}" not in line.split():
                continue
            for n, pages in re.findall(r"\bN(\d+)=(\d+)", line):
                per[int(n)] = per.get(int(n), 0) + int(pages)
        return per

    def ram_blocks(self):
        """[(start, end)] of QEMU's RAM blocks: the mappings smaps marks
        dc (MADV_DONTFORK), as numapin finds them."""
        out, current = [], None
        for line in read(f"/proc/{self.pid}/smaps").splitlines():
            first = line.split(maxsplit=1)[0] if line.strip() else ""
            if re.fullmatch(r"[0-9a-f]+-[0-9a-f]+", first):
                current = tuple(int(x, 16) for x in first.split("-"))
            elif first == "VmFlags:" and "dc" in line.split()[1:] and current:
                out.append(current)
        return out

    def rest_mib(self):
        """MiB of what migrate_pages(2) without CAP_SYS_NICE moves of this
        process besides its RAM blocks: its other anonymous memory and the
        file pages only it maps (numa_maps prints mapmax only when more
        than one process maps a page of the mapping)."""
        blocks = self.ram_blocks()
        total = 0.0
        for line in read(f"/proc/{self.pid}/numa_maps").splitlines():
            start = int(line.split(maxsplit=1)[0], 16)
            if any(a <= start < b for a, b in blocks) or ("file=" in line and "mapmax=" in line):
                continue
            pages = sum(int(p) for p in re.findall(r"\bN\d+=(\d+)", line))
            m = re.search(r"kernelpagesize_kB=(\d+)", line)
            total += pages * (int(m.group(1)) if m else PAGE_KIB) / 1024
        return total

    def vmas(self, min_mib=16):
        """[(start address, MiB per node)] of the big anonymous mappings (guest RAM blocks)."""
        out = []
        for line in read(f"/proc/{self.pid}/numa_maps").splitlines():
            if "file=" in line:
                continue
            per = {int(n): int(p) * PAGE_KIB / 1024 for n, p in re.findall(r"\bN(\d+)=(\d+)", line)}
            if sum(per.values()) >= min_mib:
                out.append((line.split()[0], per))
        return out

    def cgroup(self):
        rel = read(f"/proc/{self.pid}/cgroup").strip().split("::", 1)[1]
        parts = rel.strip("/").split("/")
        while parts and re.fullmatch(r"emulator|vcpu\d+|iothread\d+", parts[-1]):
            parts.pop()
        return "/sys/fs/cgroup/" + "/".join(parts)

    def numa_stat(self):
        """Anonymous MiB per node from the domain cgroup's memory.numa_stat."""
        for line in read(f"{self.cgroup()}/memory.numa_stat").splitlines():
            key, _, rest = line.partition(" ")
            if key == "anon":
                return {int(n): int(b) / 2**20 for n, b in re.findall(r"N(\d+)=(\d+)", rest)}
        return {}

    def mems_allowed(self):
        """Union of the threads' Mems_allowed_list (the cpuset's memory nodes)."""
        out = set()
        base = f"/proc/{self.pid}/task"
        for tid in os.listdir(base):
            m = re.search(r"^Mems_allowed_list:\s*(\S+)", read(f"{base}/{tid}/status"), re.M)
            out |= cpulist(m.group(1))
        return out

    def numatune(self):
        """(mode, nodeset) as libvirt reports it live."""
        out = virsh("numatune", self.name, "--live")
        mode = re.search(r"numa_mode\s*:\s*(\S+)", out)
        nodeset = re.search(r"numa_nodeset\s*:\s*(\S*)", out)
        return (mode.group(1) if mode else "", nodeset.group(1) if nodeset else "")

    def cpu_seconds(self):
        """{tid: (cpu last run on, utime+stime seconds)} of the vCPU threads."""
        out = {}
        tick = os.sysconf("SC_CLK_TCK")
        for tid, comm, _ in self.threads():
            if not re.fullmatch(r"CPU \d+/(TCG|KVM)", comm):
                continue
            try:
                f = read(f"/proc/{self.pid}/task/{tid}/stat").rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            out[tid] = (int(f[36]), (int(f[11]) + int(f[12])) / tick)
        return out


def share_on(per_node, nodes):
    total = sum(per_node.values())
    return sum(v for n, v in per_node.items() if n in nodes) / total if total else 0.0


def show_mem(per_node):
    return " ".join(f"N{n}={v:.0f}" for n, v in sorted(per_node.items()) if v >= 0.5) or "-"


def wait_until(what, cond, timeout, interval=2.0):
    """Polls cond() until it returns something other than None or False
    (so 0, node 0, counts as an answer); returns (value, seconds) or raises."""
    t0 = time.monotonic()
    last = None
    while True:
        try:
            last = cond()
        except (FileNotFoundError, ProcessLookupError) as e:
            last = None
            err = e
        else:
            err = None
        if last is not None and last is not False:
            return last, time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what}: not within {timeout}s" + (f" ({err})" if err else ""))
        time.sleep(interval)


def describe(p):
    """One line: where a domain's threads may run and where its memory is."""
    v = p.vcpus()
    vs = " ".join(f"v{i}:{fmt(c)}" for i, c in sorted(v.items()))
    return (f"{p.name}: vcpus {vs} emulator {fmt(p.emulator())} | numa_maps {show_mem(p.numa_maps())} "
            f"| numa_stat {show_mem(p.numa_stat())} MiB")


# --- numapin ------------------------------------------------------------------


class Numapin:
    """numapin's binary from the work tree, a config in /run, its daemon."""

    def __init__(self, repo, **overrides):
        self.bin = f"{repo}/target/release/numapin"
        self.config = f"{WORK}/numapin.toml"
        self.proc = None
        settings = {
            "host": {"memory_headroom_mib": 32},
            "planner": {},
            "apply": {"state_dir": "/run/numapin", "memory_verify_timeout_secs": 240},
            "daemon": {"interval_secs": 5, "pid_file": "/run/numapin/numapin.pid"},
            # A restrictive nodeset change migrates inside libvirtd's call,
            # which takes minutes under double emulation.
            "libvirt": {"call_timeout_secs": 300},
        }
        for key, value in overrides.items():
            section, _, name = key.partition("__")
            settings.setdefault(section, {})[name] = value
        self.settings = settings
        with open(self.config, "w") as f:
            for section, values in settings.items():
                f.write(f"[{section}]\n")
                for k, v in values.items():
                    f.write(f"{k} = {json.dumps(v)}\n")

    def run(self, *args, check=True, timeout=600):
        return sh([self.bin, *args, "--config", self.config], check=check, timeout=timeout)

    def json(self, *args):
        return json.loads(self.run(*args, "--format", "json"))

    def start_daemon(self, logname):
        self.logpath = f"{OUT}/{logname}"
        self.logfile = open(self.logpath, "w")
        self.proc = subprocess.Popen([self.bin, "run", "--config", self.config, "-v"],
                                     stdout=self.logfile, stderr=subprocess.STDOUT)
        log(f"numapin run started (pid {self.proc.pid}), log {logname}")

    def stop_daemon(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self.logfile.close()
        self.proc = None

    def cpu_seconds(self):
        return proc_cpu_seconds(self.proc.pid) if self.proc else 0.0

    def log_lines(self):
        with open(self.logpath) as f:
            return f.read().splitlines()


def stat_times(path):
    """(user, system) CPU seconds from a /proc/.../stat file, or None once
    the process or thread is gone."""
    try:
        f = read(path).rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return int(f[11]) / tick, int(f[12]) / tick


def proc_cpu_seconds(pid):
    times = stat_times(f"/proc/{pid}/stat")
    return sum(times) if times else None

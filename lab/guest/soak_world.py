"""The soak's shared state: the numapin daemon under a supervisor that
restarts it as systemd would, the inner domains the soak created, libvirt
read in batches, and the tallies the report is made of. Only the standard
library: this runs on the host's python3 inside the lab guest.
"""

import json
import os
import re
import signal
import subprocess
import threading
import time

from labkit import OUT, WORK, cpulist, domain_xml, fmt, log, read

URI = "qemu:///system"
STATE_DIR = "/run/numapin"
JOURNAL_DIR = f"{STATE_DIR}/transactions"
PLACEMENTS_DIR = f"{STATE_DIR}/placements"
CONFIG = f"{WORK}/numapin-soak.toml"
LOG = f"{OUT}/numapin-soak.log"
METADATA_NS = "http://numapin.org/xmlns/domain/1"

# The daemon's config. A short call timeout, so that a libvirtd stopped
# with SIGSTOP outlasts it; memory moves here are numapin's own
# migrate_pages/move_pages (unbound domains) or a small restrictive
# domain's nodeset change, both seconds long for the soak's idle domains.
SETTINGS = {
    "host": {"memory_headroom_mib": 32},
    # One CPU per node: a dedicated guest's node may give all of it.
    "planner": {"max_dedicated_share": 1.0},
    "apply": {"state_dir": STATE_DIR, "memory_verify_timeout_secs": 60},
    "daemon": {"interval_secs": 5, "pid_file": f"{STATE_DIR}/numapin.pid"},
    # 15 s: under the lab's double emulation, on a loaded machine, calls
    # that are not hung have been seen to take 12 s.
    "libvirt": {"call_timeout_secs": 15},
}


def settings_toml(settings):
    lines = []
    for section, values in settings.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def write_config(text):
    tmp = CONFIG + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, CONFIG)


def run(cmd, timeout=20):
    """Runs a command bounded in time; (exit code, stdout, stderr), 124 on timeout."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired:
        return 124, "", f"timed out after {timeout}s"


def virsh(*args, timeout=20):
    # `timeout` too, not only Python's: virsh can ignore SIGTERM while blocked.
    return run(["timeout", "-k", "2", str(timeout), "virsh", "-c", URI, *args], timeout=timeout + 5)


def virsh_batch(commands, timeout=20):
    """Runs several virsh commands on one connection; their outputs in order,
    or None when virsh failed as a whole (libvirtd stopped or restarting)."""
    mark = "@@soak@@"
    script = f" ; echo {mark} ; ".join(commands) + f" ; echo {mark}"
    rc, out, _ = virsh(script, timeout=timeout)
    parts = out.split(mark + "\n")
    if rc == 124 or len(parts) < len(commands) + 1:
        return None
    return parts[: len(commands)]


def parse_pins(vcpupin, emulatorpin):
    """({vcpu: cpus}, emulator cpus) from `virsh vcpupin/emulatorpin --live`."""
    vcpus = {int(m.group(1)): cpulist(m.group(2)) for m in re.finditer(r"^\s*(\d+)\s+(\S+)\s*$", vcpupin, re.M)}
    m = re.search(r"\*:\s*(\S+)", emulatorpin)
    return vcpus, cpulist(m.group(1)) if m else None


def parse_numatune(text):
    mode = re.search(r"numa_mode\s*:\s*(\S+)", text)
    nodeset = re.search(r"numa_nodeset\s*:\s*(\S*)", text)
    return (mode.group(1) if mode else ""), (nodeset.group(1) if nodeset else "")


def online_cpus():
    return cpulist(read("/sys/devices/system/cpu/online"))


def journal_records():
    """{uuid: record} of numapin's transaction journal, as on disk."""
    out = {}
    try:
        names = os.listdir(JOURNAL_DIR)
    except FileNotFoundError:
        return out
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            with open(f"{JOURNAL_DIR}/{name}") as f:
                rec = json.load(f)
            out[rec["domain"]["uuid"]] = rec
        except (OSError, ValueError, KeyError):
            continue  # renamed away meanwhile
    return out


def pid_file():
    try:
        return int(read(SETTINGS["daemon"]["pid_file"]).strip())
    except (OSError, ValueError):
        return None


class Domain:
    """One inner domain the soak created."""

    def __init__(self, name, kind, mib, vcpus, max_vcpus):
        self.name, self.kind, self.mib = name, kind, mib
        self.vcpus, self.max_vcpus = vcpus, max_vcpus
        self.uuid = None
        self.paused = False
        self.job = None  # "dump" or "blockcopy" while the soak runs one
        # Held while a job starts and while an operator changes the domain,
        # so an operator's numatune (which moves memory) never runs under a
        # job the checker watches: libvirt queues it behind the job and runs
        # it the moment the job ends, while virsh is still returning.
        self.changing = threading.Lock()
        # Set once an operator changed its pins or nodeset: what they set,
        # which must stay as it is until the domain stops.
        self.operator = None
        self.started = time.monotonic()

    @property
    def managed(self):
        return self.operator is None

    def xml(self):
        busy = self.kind == "busy"
        numatune = ("restrictive", "0-3") if self.kind == "restrictive" else None
        text = domain_xml(self.name, self.mib, vcpus=self.max_vcpus, busy=busy, numatune=numatune)
        if self.max_vcpus != self.vcpus:
            text = text.replace(f"<vcpu placement='static'>{self.max_vcpus}</vcpu>",
                                f"<vcpu placement='static' current='{self.vcpus}'>{self.max_vcpus}</vcpu>")
        if self.kind == "dedicated":
            text = text.replace("<memoryBacking>", f"<metadata><numapin:policy xmlns:numapin='{METADATA_NS}' "
                                "name='dedicated'/></metadata>\n  <memoryBacking>")
        return text


class Daemon:
    """numapin run under a supervisor: restarted a second after it dies,
    as systemd's Restart=always would, except while its config is broken
    on purpose. Every exit is recorded with whether the soak caused it."""

    def __init__(self, binary, stats):
        self.binary, self.stats = binary, stats
        self.lock = threading.Lock()
        self.proc = None
        self.up_since = None  # monotonic time of the current start
        self.sent = set()  # SIGKILL/SIGTERM the soak sent since the start
        # Held while the config file is being changed, and by a start
        # until numapin has read it: a start on a file broken on purpose
        # would exit 78, which is right, but not what the soak tests.
        self.config_lock = threading.Lock()
        self.supervising = True
        self.logf = open(LOG, "a")
        self.thread = threading.Thread(target=self.supervise, daemon=True)

    def start(self):
        with self.config_lock:
            offset = self.logf.tell()
            self.spawn()
            # Until numapin has read its config (it logs "numapin starting"
            # once it has), or has exited: under the lab's load an exec
            # alone has taken over 2 s.
            t0 = time.monotonic()
            while self.proc.poll() is None and time.monotonic() - t0 < 60:
                with open(LOG, errors="replace") as f:
                    f.seek(offset)
                    if "numapin starting" in f.read():
                        break
                time.sleep(0.1)

    def spawn(self):
        with self.lock:
            self.logf.write(f"==== soak: numapin start at {time.monotonic():.1f}\n")
            self.logf.flush()
            self.proc = subprocess.Popen([self.binary, "run", "--config", CONFIG], stdout=self.logf,
                                         stderr=subprocess.STDOUT)
            self.up_since = time.monotonic()
            self.sent = set()
        if not self.thread.is_alive():
            self.thread.start()

    def pid(self):
        with self.lock:
            return self.proc.pid if self.proc and self.proc.poll() is None else None

    def signal(self, sig):
        """Sends sig to the running daemon; False when none runs."""
        with self.lock:
            if not self.proc or self.proc.poll() is not None:
                return False
            # Reload and rebalance go where systemd's ExecReload and
            # `numapin rebalance` send them: the pid in the pid file,
            # once numapin has written it.
            if sig in (signal.SIGHUP, signal.SIGUSR1) and pid_file() != self.proc.pid:
                return False
            if sig == signal.SIGTERM and self.sent:
                return False  # stopping already: a second SIGTERM exits at once, by design
            if sig in (signal.SIGKILL, signal.SIGTERM):
                self.sent.add(sig)
            self.proc.send_signal(sig)
            return True

    def supervise(self):
        while True:
            with self.lock:
                proc, since = self.proc, self.up_since
            rc = proc.wait()
            with self.lock:
                sent = set(self.sent)  # read after the exit: what may have caused it
            self.stats.exited(rc, sent, time.monotonic() - since)
            if not self.supervising:
                return
            time.sleep(1.0)  # RestartSec
            if not self.supervising:
                return
            self.start()
            self.stats.count("restarts")

    def stop_supervising(self):
        self.supervising = False

    def stop(self, bound):
        """SIGTERM and wait; (exit code, seconds) or (None, bound) when it hung."""
        self.stop_supervising()
        t0 = time.monotonic()
        if not self.signal(signal.SIGTERM):
            return None, 0.0
        try:
            rc = self.proc.wait(timeout=bound)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None, bound
        self.thread.join(timeout=5)
        return rc, time.monotonic() - t0


class Stats:
    """Tallies for the report, shared by every thread."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}
        self.faults = {}
        self.violations = []
        self.exits = []
        self.settle = []  # seconds from a fault to the next settled state
        self.samples = []  # (monotonic, numapin pid, rss KiB, fds, uptime)

    def count(self, key, n=1):
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + n

    def fault(self, kind):
        with self.lock:
            self.faults[kind] = self.faults.get(kind, 0) + 1

    def violation(self, kind, detail):
        with self.lock:
            self.violations.append({"t": round(time.monotonic(), 1), "kind": kind, "detail": detail})
        log(f"VIOLATION {kind}: {detail}")

    def exited(self, rc, sent, lived):
        names = ",".join(sorted(s.name for s in sent)) or "nothing"
        self.exits.append({"rc": rc, "sent": names, "lived": round(lived, 1)})
        if signal.SIGKILL in sent and rc == -signal.SIGKILL:
            return
        # Killed by the SIGTERM itself (it came before numapin's handlers
        # were set up): a clean stop for systemd too.
        if rc in (0, -signal.SIGTERM) and signal.SIGTERM in sent:
            self.count("clean_stops")
            return
        self.violation("unexpected_exit", f"numapin exited {rc} (sent: {names}) after {lived:.0f}s")


def describe_pins(vcpus, emulator):
    return " ".join(f"v{v}:{fmt(c)}" for v, c in sorted(vcpus.items())) + f" emu:{fmt(emulator or set())}"

#!/usr/bin/env python3
"""Writes synthetic `virsh capabilities` fixtures for hosts we cannot run on.

The layout follows libvirt 9's virCapabilitiesFormatXML exactly (element
order, two-space indents, single quotes, `<cpus num='0'/>` for a CPU-less
cell, no `<memory>` for a cell without memory, only online CPUs listed, the
base page first in every `<pages>` list, host `<cpu><topology>` counting
sockets per NUMA node as virHostCPUGetInfo does). Run from anywhere:
    python3 tests/data/caps/generate.py
"""

import os
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
GIB_KIB = 1024 * 1024


@dataclass
class Cell:
    id: int
    memory_kib: int
    # (cpu id, socket, die, core, siblings as printed)
    cpus: list = field(default_factory=list)
    distances: dict = field(default_factory=dict)
    # hugepage size in KiB -> pages reserved
    pools: dict = field(default_factory=dict)


@dataclass
class Host:
    uuid: str
    model: str
    vendor: str
    signature: tuple
    topology: tuple  # sockets per node, dies, cores, threads
    features: list
    cells: list
    page_sizes: tuple = (4, 2048, 1048576)
    caches: list = field(default_factory=list)  # (id, size MiB, cpus)


def cpulist(ids):
    """libvirt's virBitmapFormat: ascending, ranges collapsed."""
    ids = sorted(ids)
    out, start = [], None
    for i, cpu in enumerate(ids):
        if start is None:
            start = cpu
        if i + 1 == len(ids) or ids[i + 1] != cpu + 1:
            out.append(str(start) if start == cpu else f"{start}-{cpu}")
            start = None
    return ",".join(out)


def base_pages(cell):
    huge_kib = sum(size * n for size, n in cell.pools.items())
    return (cell.memory_kib - huge_kib) // 4


def format_cell(cell, page_sizes):
    lines = [f"        <cell id='{cell.id}'>"]
    if cell.memory_kib:
        lines.append(f"          <memory unit='KiB'>{cell.memory_kib}</memory>")
    for size in page_sizes:
        count = base_pages(cell) if size == 4 else cell.pools.get(size, 0)
        lines.append(f"          <pages unit='KiB' size='{size}'>{count}</pages>")
    lines.append("          <distances>")
    for to, value in sorted(cell.distances.items()):
        lines.append(f"            <sibling id='{to}' value='{value}'/>")
    lines.append("          </distances>")
    if not cell.cpus:
        lines.append("          <cpus num='0'/>")
    else:
        lines.append(f"          <cpus num='{len(cell.cpus)}'>")
        for cpu, socket, die, core, siblings in sorted(cell.cpus):
            lines.append(
                f"            <cpu id='{cpu}' socket_id='{socket}' die_id='{die}' "
                f"core_id='{core}' siblings='{siblings}'/>"
            )
        lines.append("          </cpus>")
    lines.append("        </cell>")
    return lines


def format_host(host):
    family, model, stepping = host.signature
    sockets, dies, cores, threads = host.topology
    lines = [
        "<capabilities>",
        "",
        "  <host>",
        f"    <uuid>{host.uuid}</uuid>",
        "    <cpu>",
        "      <arch>x86_64</arch>",
        f"      <model>{host.model}</model>",
        f"      <vendor>{host.vendor}</vendor>",
        "      <microcode version='16777317'/>",
        f"      <signature family='{family}' model='{model}' stepping='{stepping}'/>",
        "      <counter name='tsc' frequency='2100000000' scaling='no'/>",
        f"      <topology sockets='{sockets}' dies='{dies}' cores='{cores}' threads='{threads}'/>",
        "      <maxphysaddr mode='emulate' bits='46'/>",
    ]
    lines += [f"      <feature name='{f}'/>" for f in host.features]
    lines += [f"      <pages unit='KiB' size='{s}'/>" for s in host.page_sizes]
    lines += [
        "    </cpu>",
        "    <power_management>",
        "      <suspend_mem/>",
        "    </power_management>",
        "    <iommu support='yes'/>",
        "    <migration_features>",
        "      <live/>",
        "      <uri_transports>",
        "        <uri_transport>tcp</uri_transport>",
        "        <uri_transport>rdma</uri_transport>",
        "      </uri_transports>",
        "    </migration_features>",
        "    <topology>",
        f"      <cells num='{len(host.cells)}'>",
    ]
    for cell in host.cells:
        lines += format_cell(cell, host.page_sizes)
    lines += ["      </cells>", "    </topology>"]
    if host.caches:
        lines.append("    <cache>")
        for bank, size, cpus in host.caches:
            lines.append(
                f"      <bank id='{bank}' level='3' type='both' size='{size}' "
                f"unit='MiB' cpus='{cpus}'/>"
            )
        lines.append("    </cache>")
    lines += [
        "    <secmodel>",
        "      <model>apparmor</model>",
        "      <doi>0</doi>",
        "    </secmodel>",
        "    <secmodel>",
        "      <model>dac</model>",
        "      <doi>0</doi>",
        "      <baselabel type='kvm'>+64055:+994</baselabel>",
        "      <baselabel type='qemu'>+64055:+994</baselabel>",
        "    </secmodel>",
        "  </host>",
        "",
        "  <guest>",
        "    <os_type>hvm</os_type>",
        "    <arch name='x86_64'>",
        "      <wordsize>64</wordsize>",
        "      <emulator>/usr/bin/qemu-system-x86_64</emulator>",
        "      <machine maxCpus='255'>pc-i440fx-7.2</machine>",
        "      <machine canonical='pc-i440fx-7.2' maxCpus='255'>pc</machine>",
        "      <machine maxCpus='288'>pc-q35-7.2</machine>",
        "      <machine canonical='pc-q35-7.2' maxCpus='288'>q35</machine>",
        "      <domain type='qemu'/>",
        "      <domain type='kvm'/>",
        "    </arch>",
        "    <features>",
        "      <acpi default='on' toggle='yes'/>",
        "      <apic default='on' toggle='no'/>",
        "      <cpuselection/>",
        "      <deviceboot/>",
        "      <disksnapshot default='on' toggle='no'/>",
        "    </features>",
        "  </guest>",
        "",
        "</capabilities>",
        "",
    ]
    return "\n".join(lines)


INTEL_FEATURES = ["ds", "acpi", "ss", "ht", "tm", "pbe", "dtes64", "monitor",
                  "ds_cpl", "vmx", "smx", "est", "tm2", "xtpr", "pdcm", "dca",
                  "osxsave", "tsc_adjust", "cmt", "mbm_total", "mbm_local",
                  "pdpe1gb", "invtsc"]
AMD_FEATURES = ["ht", "osxsave", "cmp_legacy", "svm", "extapic", "ibs", "skinit",
                "wdt", "tce", "topoext", "perfctr_core", "perfctr_nb",
                "invtsc", "ibrs", "amd-ssbd", "virt-ssbd", "lbrv", "tsc-scale",
                "vmcb-clean", "flushbyasid", "pause-filter", "pfthreshold",
                "v-vmsave-vmload", "vgif", "pdpe1gb"]
QEMU_FEATURES = ["vme", "ss", "x2apic", "tsc-deadline", "hypervisor", "arat",
                 "tsc_adjust", "umip", "md-clear", "stibp", "arch-capabilities",
                 "ssbd", "xsaves", "pdpe1gb", "ibpb", "ibrs", "amd-stibp",
                 "amd-ssbd", "rdctl-no", "ibrs-all", "skip-l1dfl-vmentry",
                 "mds-no", "pschange-mc-no"]


def intel_2s_smt():
    """2 sockets x 20 cores x 2 threads; Linux numbers all first threads
    socket by socket, then all second threads: siblings are N and N+40."""
    cells = []
    for node in range(2):
        cpus = []
        for core in range(20):
            first = node * 20 + core
            for cpu in (first, first + 40):
                cpus.append((cpu, node, 0, core, f"{first},{first + 40}"))
        cells.append(Cell(node, 192 * GIB_KIB, cpus,
                          {0: 10 if node == 0 else 21, 1: 10 if node == 1 else 21},
                          {2048: 16384, 1048576: 0}))
    caches = [(0, 30, "0-19,40-59"), (1, 30, "20-39,60-79")]
    return Host("4c4c4544-0042-3510-8052-b4c04f4e3233", "Cascadelake-Server-noTSX",
                "Intel", (6, 85, 7), (1, 1, 20, 2), INTEL_FEATURES, cells,
                caches=caches)


def epyc_8node():
    """2 sockets in NPS4: 8 nodes of 8 cores x 2 threads. Node k holds CPUs
    8k..8k+7 and their SMT siblings 64+8k..64+8k+7."""
    cells = []
    for node in range(8):
        socket = node // 4
        distances = {}
        for other in range(8):
            if other == node:
                distances[other] = 10
            elif other // 4 == socket:
                distances[other] = 12
            else:
                distances[other] = 32
        cpus = []
        for i in range(8):
            first = 8 * node + i
            core = (node % 4) * 8 + i
            for cpu in (first, first + 64):
                cpus.append((cpu, socket, 0, core, f"{first},{first + 64}"))
        cells.append(Cell(node, 64 * GIB_KIB, cpus, distances, {2048: 0, 1048576: 0}))
    caches = [(node * 2 + half, 32,
               f"{8 * node + 4 * half}-{8 * node + 4 * half + 3},"
               f"{64 + 8 * node + 4 * half}-{64 + 8 * node + 4 * half + 3}")
              for node in range(8) for half in range(2)]
    return Host("00000000-0000-0000-0000-3cecef4a1b2c", "EPYC-Milan", "AMD",
                (25, 1, 1), (1, 1, 8, 2), AMD_FEATURES, cells, caches=caches)


def cxl_memory_node():
    """Two CPU nodes of 16 cores x 2 threads and a CXL expander (node 2)
    with 256 GiB and no CPUs, as the kernel reports a CXL memory device."""
    table = {0: {0: 10, 1: 21, 2: 24}, 1: {0: 21, 1: 10, 2: 28},
             2: {0: 24, 1: 28, 2: 10}}
    cells = []
    for node in range(2):
        cpus = []
        for core in range(16):
            first = node * 16 + core
            for cpu in (first, first + 32):
                cpus.append((cpu, node, 0, core, f"{first},{first + 32}"))
        cells.append(Cell(node, 128 * GIB_KIB, cpus, table[node], {2048: 0, 1048576: 0}))
    cells.append(Cell(2, 256 * GIB_KIB, [], table[2], {2048: 0, 1048576: 0}))
    return Host("a3c2b2de-77f1-4f4e-9f02-5b2f1f0c9e11", "SapphireRapids", "Intel",
                (6, 143, 8), (1, 1, 16, 2), INTEL_FEATURES, cells,
                caches=[(0, 60, "0-15,32-47"), (1, 60, "16-31,48-63")])


def sparse_ids():
    """Nodes 0 and 2 (node 1 absent). CPU 10 is offline, so libvirt omits
    it and its sibling 11 reports only itself, as the kernel does."""
    cells = []
    for node, base in ((0, 0), (2, 8)):
        cpus = []
        for core in range(2):
            pair = [base + 2 * core, base + 2 * core + 1]
            online = [c for c in pair if c != 10]
            for cpu in online:
                cpus.append((cpu, 0 if node == 0 else 1, 0, core, cpulist(online)))
        distances = {0: 10 if node == 0 else 20, 2: 10 if node == 2 else 20}
        cells.append(Cell(node, 16 * GIB_KIB, cpus, distances, {2048: 0, 1048576: 0}))
    return Host("5d9c1e0a-3f7b-4c2e-8a61-0b9e7d2c4f18", "Skylake-Server-IBRS", "Intel",
                (6, 85, 4), (1, 1, 2, 2), INTEL_FEATURES, cells)


def one_node():
    """A desktop-class host: one node, 8 cores, no SMT."""
    cpus = [(c, 0, 0, c, str(c)) for c in range(8)]
    cells = [Cell(0, 32 * GIB_KIB, cpus, {0: 10}, {2048: 512, 1048576: 0})]
    return Host("8e0f6a52-1c3d-4b7a-9e24-6d5c3b2a1f09", "Skylake-Client-IBRS", "Intel",
                (6, 158, 10), (1, 1, 8, 1), INTEL_FEATURES, cells,
                caches=[(0, 12, "0-7")])


def nested_virtual_host():
    """A QEMU guest used as a lab host: `-numa dist` with 10/20/30, one CPU
    and 768 MiB per node, CPUID `hypervisor` set, no vmx/svm offered."""
    table = [[10, 20, 30, 30], [20, 10, 30, 30], [30, 30, 10, 20], [30, 30, 20, 10]]
    cells = []
    for node in range(4):
        cpus = [(node, node, 0, 0, str(node))]
        cells.append(Cell(node, 768 * 1024, cpus, dict(enumerate(table[node])),
                          {2048: 0, 1048576: 0}))
    return Host("3b1e7c55-0d2a-4a8f-b9c6-71e4f0a2d3c8", "Skylake-Client-IBRS", "Intel",
                (6, 94, 3), (1, 1, 1, 1), QEMU_FEATURES, cells)


FIXTURES = {
    "intel-2s-smt.xml": intel_2s_smt,
    "epyc-8node.xml": epyc_8node,
    "cxl-memory-node.xml": cxl_memory_node,
    "sparse-ids.xml": sparse_ids,
    "one-node.xml": one_node,
    "nested-virtual-host.xml": nested_virtual_host,
}

if __name__ == "__main__":
    for name, build in FIXTURES.items():
        with open(os.path.join(HERE, name), "w") as out:
            out.write(format_host(build()))

#!/bin/sh
# Copies the files numapin's observe readers read about one running libvirt
# domain (its QEMU process, threads and memory cgroup) and about the host's
# CPUs and nodes into a fixture tree, and nothing else.
#   usage: capture.sh DEST DOMAIN [SOURCE_ROOT]   (SOURCE_ROOT defaults to /)
#
# this-machine/ was captured from a diskless TCG domain with two vCPUs pinned
# apart, so the thread fixture shows distinct affinities:
#   <domain type='qemu'><name>obs-cap</name><memory unit='MiB'>64</memory>
#     <vcpu>2</vcpu><iothreads>1</iothreads>
#     <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>
#     <emulator>/usr/bin/qemu-system-x86_64</emulator></devices></domain>
#   virsh create obs-cap.xml; virsh vcpupin obs-cap 0 0 --live
#   virsh vcpupin obs-cap 1 1 --live; virsh emulatorpin obs-cap 0 --live
#   capture.sh this-machine obs-cap; virsh destroy obs-cap
set -eu
dest=${1:?usage: capture.sh DEST DOMAIN [SOURCE_ROOT]}
dom=${2:?usage: capture.sh DEST DOMAIN [SOURCE_ROOT]}
src=${3:-/}

# QEMU's pid changes on every start: drop the previous capture's tree.
rm -rf "$dest/proc" "$dest/run" "$dest/sys"

copy() {
    # $1 is a path relative to the source root; missing files are skipped
    # (a thread may exit while we copy).
    [ -f "$src/$1" ] || return 0
    mkdir -p "$dest/$(dirname "$1")"
    cat "$src/$1" > "$dest/$1"
}

pidfile="run/libvirt/qemu/$dom.pid"
[ -f "$src/$pidfile" ] || { echo "domain $dom is not running" >&2; exit 1; }
copy "$pidfile"
pid=$(cat "$src/$pidfile")

copy proc/stat
copy "proc/$pid/numa_maps"
copy "proc/$pid/cgroup"
for t in "$src/proc/$pid/task"/*; do
    tid=${t##*/}
    for f in stat status comm; do copy "proc/$pid/task/$tid/$f"; done
done

# The memory cgroup: the v1 line whose controllers include memory, else the
# v2 line. Every level up to the root, as the reader walks up.
cg=$(awk -F: '$2 ~ /(^|,)memory(,|$)/ { print $3 }' "$src/proc/$pid/cgroup")
base=sys/fs/cgroup/memory
if [ -z "$cg" ]; then
    cg=$(awk -F: '$1 == "0" && $2 == "" { print $3 }' "$src/proc/$pid/cgroup")
    base=sys/fs/cgroup
fi
while [ -n "$cg" ] && [ "$cg" != / ]; do
    copy "$base$cg/memory.numa_stat"
    cg=${cg%/*}
done

node=sys/devices/system/node
for d in "$src/$node"/node[0-9]*; do
    [ -d "$d" ] || continue
    copy "$node/${d##*/}/numastat"
done

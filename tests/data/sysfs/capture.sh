#!/bin/sh
# Copies the files numapin's sysfs reader and host-kind detection read from
# a live host into a fixture tree, and nothing else.
#   usage: capture.sh DEST [SOURCE_ROOT]   (SOURCE_ROOT defaults to /)
set -eu
dest=${1:?usage: capture.sh DEST [SOURCE_ROOT]}
src=${2:-/}

copy() {
    # $1 is a path relative to the source root; missing files are skipped
    # because the reader treats them as optional too.
    [ -f "$src/$1" ] || return 0
    mkdir -p "$dest/$(dirname "$1")"
    cat "$src/$1" > "$dest/$1"
}

copy proc/cpuinfo
copy proc/meminfo
for f in sys_vendor product_name; do copy "sys/class/dmi/id/$f"; done
copy sys/hypervisor/type

cpu=sys/devices/system/cpu
copy "$cpu/online"
copy "$cpu/present"
for d in "$src/$cpu"/cpu[0-9]*; do
    [ -d "$d/topology" ] || continue
    n=${d##*/}
    for f in physical_package_id die_id core_id thread_siblings_list; do
        copy "$cpu/$n/topology/$f"
    done
done

node=sys/devices/system/node
copy "$node/online"
for d in "$src/$node"/node[0-9]*; do
    [ -d "$d" ] || continue
    n=${d##*/}
    for f in cpulist meminfo distance; do copy "$node/$n/$f"; done
    for h in "$d"/hugepages/hugepages-*; do
        [ -d "$h" ] || continue
        for f in nr_hugepages free_hugepages; do copy "$node/$n/hugepages/${h##*/}/$f"; done
    done
done
for h in "$src"/sys/kernel/mm/hugepages/hugepages-*; do
    [ -d "$h" ] || continue
    for f in nr_hugepages free_hugepages; do copy "sys/kernel/mm/hugepages/${h##*/}/$f"; done
done

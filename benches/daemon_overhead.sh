#!/usr/bin/env bash
# Measures `numapin run` against this machine's real libvirtd with 1, 10,
# 30 and 100 running domains: CPU time per cycle (median over cycles) and
# per domain read (this run's and any others on the shared libvirtd),
# libvirtd's CPU over the same cycles, the daemon's resident memory at
# the start and the end of the measured cycles (flat RSS), and the time
# from a domain's start to its vCPU pinned by the daemon (median over
# several starts). Rewrites the generated table in docs/PERFORMANCE.md.
# Needs root and libvirtd (bash .ci/start-libvirt).
#
#   bash benches/daemon_overhead.sh [COUNTS...]     (default: 1 10 30 100)
#
# Environment: CYCLES (measured cycles, default 20), STARTS (default 7),
# PREFIX (domain name prefix, default npbench-; only domains with it are
# created and destroyed), BIN (a numapin binary to measure instead of
# building this tree's), WRITE=0 to print the table without rewriting the
# document.
set -euo pipefail
cd "$(dirname "$0")/.."
counts=("${@:-1 10 30 100}")
read -r -a counts <<<"${counts[*]}"
cycles=${CYCLES:-20}
starts=${STARTS:-7}
prefix=${PREFIX:-npbench-}
uri=qemu:///system
v() { virsh -c "$uri" "$@"; }

if [ -n "${BIN:-}" ]; then
  bin=$(realpath "$BIN") # a binary built elsewhere (e.g. before a change)
else
  cargo build --release --quiet
  bin=$PWD/target/release/numapin
fi
bash .ci/start-libvirt
work=$(mktemp -d)
daemon=""
cleanup() {
  [ -n "$daemon" ] && kill "$daemon" 2>/dev/null || true
  for d in $(v list --name | grep "^$prefix" || true); do v destroy "$d" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# A boot sector that halts its only vCPU for good (cli; hlt; jmp back to
# hlt): 100 such guests on 2 CPUs burn no CPU, so the daemon's time is
# measured rather than a run queue's. QEMU refuses a shared read-only IDE
# disk, so each domain gets its own copy (512 bytes).
printf '\xfa\xf4\xeb\xfd' >"$work/boot.img"
truncate -s 510 "$work/boot.img"
printf '\x55\xaa' >>"$work/boot.img"

# kvm where this machine runs it, else TCG (see ../README.md).
kind=kvm
domain_xml() {
  cat <<XML
<domain type='$kind'><name>$1</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>
<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='$work/$1.img'/><target dev='hda' bus='ide'/></disk>
<memballoon model='none'/></devices></domain>
XML
}
start_domain() {
  cp "$work/boot.img" "$work/$1.img"
  domain_xml "$1" >"$work/$1.xml"
  v create "$work/$1.xml" >/dev/null 2>&1 && return 0
  kind=qemu
  domain_xml "$1" >"$work/$1.xml"
  v create "$work/$1.xml" >/dev/null
}
vcpu0_cpus() { # Cpus_allowed_list of a domain's vCPU 0 thread
  local pid t
  pid=$(cat "/run/libvirt/qemu/$1.pid" 2>/dev/null) || return 1
  for t in /proc/"$pid"/task/*; do
    case $(cat "$t/comm" 2>/dev/null) in
      "CPU 0/"*) awk '/^Cpus_allowed_list/{print $2}' "$t/status"; return 0 ;;
    esac
  done
  return 1
}
# CPU time of all a process's threads in ns (schedstat: clock ticks of
# /proc/PID/stat are 10 ms, too coarse for one cycle).
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.0f\n", s}'; }
rss_kib() { awk '/^VmRSS/{print $2}' "/proc/$1/status"; }
median() { sort -n | awk '{a[NR]=$1} END{if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
libvirtd=$(pgrep -xo libvirtd)
# SeaBIOS takes a few seconds of CPU per domain to reach the boot sector:
# wait until the domains of this run are quiet (under 20 ms of CPU per
# second together, at most 3 minutes) before measuring.
settle() {
  local pids a b k
  for k in $(seq 1 180); do
    # (pid files end without a newline)
    pids=$(for f in /run/libvirt/qemu/"$prefix"*.pid; do cat "$f" 2>/dev/null; echo; done)
    a=0; for p in $pids; do a=$((a + $(cpu_ns "$p"))); done
    sleep 1
    b=0; for p in $pids; do b=$((b + $(cpu_ns "$p"))); done
    [ $((b - a)) -lt 20000000 ] && return 0
  done
  echo "domains still busy after 3 minutes; measuring anyway" >&2
}

rows=""
for n in "${counts[@]}"; do
  for i in $(seq 1 "$n"); do start_domain "$prefix$i"; done
  settle
  # The daemon reads every running domain, its own or not: say how many
  # others share this libvirtd.
  others=$(( $(v list --name | grep -c . || true) - n ))
  cat >"$work/numapin.toml" <<TOML
[host]
reserved_cpus = "0"
[apply]
state_dir = "$work/state-$n"
[daemon]
interval_secs = 1
event_delay_ms = 50
pid_file = "$work/state-$n/numapin.pid"
[[domain]]
name = "$prefix*"
policy = "auto"
[[domain]]
name = "*"
policy = "exclude"
TOML
  log=$work/daemon-$n.log
  : >"$log"
  NO_COLOR=1 "$bin" run --config "$work/numapin.toml" 2>"$log" &
  daemon=$!
  # CPU time between consecutive cycles, read as each cycle is logged.
  seen=0; last=""; last_lv=""; deltas=(); lv_deltas=(); rss_start=""
  while [ ${#deltas[@]} -lt "$cycles" ]; do
    if ! kill -0 "$daemon" 2>/dev/null; then
      echo "the daemon exited; its log:" >&2; tail -20 "$log" >&2; exit 1
    fi
    now=$(grep -c 'cycle:' "$log" || true)
    if [ "$now" -gt "$seen" ]; then
      ticks=$(cpu_ns "$daemon"); lv=$(cpu_ns "$libvirtd")
      # The first two cycles measure loads and place everything: skip.
      if [ "$now" -ge 3 ] && [ -n "$last" ]; then
        deltas+=($((ticks - last))); lv_deltas+=($((lv - last_lv)))
        [ -n "$rss_start" ] || rss_start=$(rss_kib "$daemon")
      fi
      last=$ticks; last_lv=$lv; seen=$now
    fi
    sleep 0.05
  done
  rss_end=$(rss_kib "$daemon")
  cpu_ms=$(printf '%s\n' "${deltas[@]}" | awk '{print $1 / 1e6}' | median)
  lv_ms=$(printf '%s\n' "${lv_deltas[@]}" | awk '{print $1 / 1e6}' | median)
  # The daemon reads every running domain, this run's and the others.
  per_domain=$(awk -v c="$cpu_ms" -v n="$((n + others))" 'BEGIN{printf "%.2f", c / n}')
  # Start to pinned: a new domain, placed by the start event.
  lat=()
  for k in $(seq 1 "$starts"); do
    start_domain "${prefix}new"
    # From the moment libvirt reports the domain running (and sends the
    # start event): QEMU's own start-up is not numapin's to count.
    t0=$(date +%s%N)
    until [ "$(vcpu0_cpus "${prefix}new" || true)" = "1" ]; do
      [ $(( ($(date +%s%N) - t0) / 1000000 )) -gt 10000 ] && { echo "${prefix}new not pinned in 10 s" >&2; exit 1; }
      sleep 0.005
    done
    lat+=($(( ($(date +%s%N) - t0) / 1000000 )))
    v destroy "${prefix}new" >/dev/null
  done
  lat_ms=$(printf '%s\n' "${lat[@]}" | median)
  kill "$daemon"; wait "$daemon" || true; daemon=""
  rows+="| $n | $(printf '%.1f' "$cpu_ms") ms | $per_domain ms | $(printf '%.1f' "$lv_ms") ms | $((rss_start / 1024)) → $((rss_end / 1024)) MiB | $lat_ms ms | $(printf '%s ' "${lat[@]}")| $others | $(cut -d' ' -f1 /proc/loadavg) |"$'\n'
  echo "domains=$n cpu/cycle=${cpu_ms}ms per-domain=${per_domain}ms libvirtd/cycle=${lv_ms}ms rss=${rss_start}->${rss_end}KiB start->pinned=${lat_ms}ms (${lat[*]}) other-domains=$others domain-type=$kind"
  for i in $(seq 1 "$n"); do v destroy "$prefix$i" >/dev/null; done
done

table="Generated by \`bash benches/daemon_overhead.sh ${counts[*]}\` (CYCLES=$cycles, STARTS=$starts; domain type $kind; $(nproc) CPUs, $(awk '/MemTotal/{printf "%.0f", $2/1048576}' /proc/meminfo) GiB, $(uname -r)).

| running domains | CPU per cycle (median of $cycles) | per domain read | libvirtd CPU per cycle | RSS (first → last measured cycle) | start to pinned (median of $starts) | each start (ms) | other domains | load average |
| ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |
$rows"
if [ "${WRITE:-1}" = 0 ]; then printf '%s\n' "$table"; exit 0; fi
doc=docs/PERFORMANCE.md
begin='<!-- daemon-overhead:begin (generated by benches/daemon_overhead.sh) -->'
end='<!-- daemon-overhead:end -->'
awk -v b="$begin" -v e="$end" -v t="$table" '
  $0 == b {print; print ""; printf "%s", t; print ""; skip=1; next}
  $0 == e {skip=0}
  !skip {print}' "$doc" >"$work/doc" && cp "$work/doc" "$doc"
echo "updated $doc (domain type: $kind)"

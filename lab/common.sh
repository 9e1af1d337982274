# Shared by lab/run and lab/compare (sourced, not run).
# shellcheck shell=bash

lab=${lab:?}
repo=$(cd "$lab/.." && pwd)
build=$lab/.build

# Host packages: the guest runs exactly these binaries, since its root is
# this machine's /. cpio and busybox-static build the initramfs.
lab_packages() {
  local need=(qemu-system-x86 libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
              numactl numad cpio gzip iproute2 procps util-linux python3 pkg-config libvirt-dev)
  local missing=() p
  for p in "${need[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "lab: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# Everything the boot needs: packages, a release numapin no older than the
# sources (cargo decides), the kernel and initramfs (built once).
lab_prepare() {
  lab_packages
  echo "lab: cargo build --release"
  (cd "$repo" && nice -n 10 cargo build --release --locked --quiet)
  if [ ! -s "$build/vmlinuz" ] || [ ! -s "$build/initramfs.gz" ] ||
     [ "$build/initramfs.gz" -ot "$lab/build-kernel" ]; then
    if ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then apt-get update -qq; fi
    "$lab/build-kernel" "$build"
  fi
}

# QEMU options for a topology: NODESxCPUS, 3 GiB in all, SLIT distances
# 10 (local), 20 (same pair: nodes 0-1, 2-3), 30 (other pair).
lab_topology_args() {
  local nodes=${1%x*} per=${1#*x} n a b d
  case $1 in 4x1|2x2) ;; *) echo "lab: topology must be 4x1 or 2x2, not $1" >&2; return 64 ;; esac
  local mem=$((3072 / nodes))
  echo "-smp $((nodes * per)),sockets=$nodes,cores=$per,threads=1 -m 3072M"
  for ((n = 0; n < nodes; n++)); do
    echo "-object memory-backend-ram,id=m$n,size=${mem}M"
    echo "-numa node,nodeid=$n,cpus=$((n * per))-$((n * per + per - 1)),memdev=m$n"
  done
  for ((a = 0; a < nodes; a++)); do
    for ((b = a + 1; b < nodes; b++)); do
      if [ $((a / 2)) = $((b / 2)) ]; then d=20; else d=30; fi
      echo "-numa dist,src=$a,dst=$b,val=$d"
    done
  done
}

# lab_boot TOPOLOGY TIMEOUT OUTDIR "KERNEL ARGS" VERBOSE: boots the lab and
# waits for it to power off. The console goes to OUTDIR/console.log (and
# to stdout with VERBOSE=1, else only its LAB: lines); OUTDIR is also
# shared read-write with the guest (mounted at /run/lab/out) for results.
# A guest kernel stuck for 120 s (a soft lockup; watchdog_thresh=60), or
# whose RCU grace period stalls through three warnings (about three
# minutes), panics and powers the guest off at once, rather than when the
# timeout hits.
# Transparent huge pages are off: with them, inner guests' RAM that was read
# but never written maps the huge zero page, which numa_maps counts on that
# page's node, and per-node figures of guest RAM would be mostly that page.
lab_boot() {
  local topo=$1 timeout=$2 out=$3 args=$4 verbose=$5 rc=0
  local qargs
  qargs=$(lab_topology_args "$topo") || return $?
  # shellcheck disable=SC2086 # qargs is a list of options
  timeout -k 10 "$timeout" qemu-system-x86_64 -machine q35 -accel tcg,thread=multi $qargs \
    -display none -serial stdio -monitor none -no-reboot -nodefaults \
    -kernel "$build/vmlinuz" -initrd "$build/initramfs.gz" \
    -append "console=ttyS0 panic=-1 softlockup_panic=1 watchdog_thresh=60 sysctl.kernel.panic_on_rcu_stall=1 sysctl.kernel.max_rcu_stall_to_panic=3 transparent_hugepage=never quiet labinit=$lab/guest/init.sh labrepo=$repo labtopo=$topo $args" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=passthrough,readonly=on,multidevs=remap \
    -virtfs "local,path=$out,mount_tag=labout,security_model=passthrough" \
    </dev/null 2>&1 | tee "$out/console.log" |
    if [ "$verbose" = 1 ]; then cat; else grep -a --line-buffered '^LAB: ' | grep -av '^LAB: RESULT' || true; fi
  rc=${PIPESTATUS[0]}
  return "$rc"
}

# The watchdog line, when the guest kernel of the boot whose console is $1
# locked up (its soft-lockup or RCU-stall watchdog panicked it before the
# guest finished); nothing and exit 1 otherwise. Under TCG on a loaded
# 2-core machine the emulated CPUs can starve each other: such a boot says
# nothing about numapin. A stall warning alone is no lockup (stalls under
# load often end); only one that lasted until the watchdog panicked counts.
lab_locked_up() {
  local console=$1 lockup
  lockup=$(grep -a -m1 -e 'soft lockup - CPU#' -e 'detected stalls on CPUs' "$console" | tr -d '\r' || true)
  [ -n "$lockup" ] && grep -aq 'Kernel panic' "$console" && ! grep -aq '^LAB: DONE' "$console" || return 1
  echo "${lockup#*] }"
}

# lab_boot, once more when the guest kernel locked up (lab_locked_up)
# before it gave a verdict (a scenario that failed, a report written):
# $1-$5 as for lab_boot, $6 where to keep the locked-up boot's console.
# Sets lab_attempt to the boot that counts (1 or 2); returns the exit code
# of that boot.
lab_boot_retrying() {
  local topology=$1 timeout=$2 out=$3 args=$4 verbose=$5 kept=$6 rc lockup
  lab_attempt=1
  while :; do
    rm -rf "$out"; mkdir -p "$out"
    rc=0
    lab_boot "$topology" "$timeout" "$out" "$args" "$verbose" || rc=$?
    if [ $lab_attempt = 1 ] && lockup=$(lab_locked_up "$out/console.log") &&
       ! grep -aq '^LAB: RESULT .* FAIL ' "$out/console.log" && [ ! -s "$out/section.md" ]; then
      echo "lab: the guest kernel locked up, not a failure of numapin's ($lockup); its console is in ${kept#"$repo"/}; booting again"
      cp "$out/console.log" "$kept"
      lab_attempt=2
      continue
    fi
    return "$rc"
  done
}

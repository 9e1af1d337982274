#!/bin/bash
# PID 1 of the lab guest, after the initramfs switched root into the host's
# / (read-only 9p under a tmpfs overlay: every change here stays in the
# guest). Mounts what libvirtd needs, starts virtlogd and libvirtd, runs
# lab/guest/main.py with the kernel command line's lab* arguments, prints
# `LAB: DONE` and powers off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs -o mode=755 run /run
mkdir -p /run/lock /dev/pts /dev/shm /run/lab/out
mount -t devpts devpts /dev/pts
mount -t tmpfs shm /dev/shm
ln -sf /proc/self/fd /dev/fd
mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo "+cpuset +cpu +io +memory +pids" > /sys/fs/cgroup/cgroup.subtree_control
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 labout /run/lab/out
hostname numalab
ip link set lo up
arg() { sed -n "s/.*\<$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
echo "LAB: booted in $(cut -d' ' -f1 /proc/uptime)s"

# Guest-only configuration: QEMU runs as root, no stale state from the host.
mkdir -p /etc/libvirt/qemu /var/log/libvirt/qemu /var/lib/libvirt/qemu /var/cache/libvirt/qemu
printf 'user = "root"\ngroup = "root"\n' > /etc/libvirt/qemu.conf
rm -rf /var/lib/libvirt/qemu/* /var/cache/libvirt/qemu/* /etc/libvirt/qemu/*.xml /var/run/libvirt/* 2>/dev/null
getent passwd libvirt-qemu >/dev/null || useradd -r -U -M -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
virtlogd -d
LIBVIRT_LOG_OUTPUTS="3:file:/run/lab/libvirtd.log" libvirtd -d
for _ in $(seq 300); do virsh -c qemu:///system version >/dev/null 2>&1 && break; sleep 0.2; done
echo "LAB: libvirtd ready at $(cut -d' ' -f1 /proc/uptime)s"

python3 "$(dirname "$0")/main.py" --repo "$(arg labrepo)" --topology "$(arg labtopo)" \
  --mode "$(arg labmode)" --args "$(arg labargs)" 2>&1
echo "LAB: DONE exit=$? at $(cut -d' ' -f1 /proc/uptime)s"
sync
echo o > /proc/sysrq-trigger
sleep 30

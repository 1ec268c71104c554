#!/bin/bash
# Stage 2 of the kernel lane, run as PID 1 by the host's bash over the host's
# root (read-only 9p). Prepares a writable scratch world (tmpfs), loads the
# kernel modules from the extracted Debian kernel, configures LVM for a
# udev-less system, runs pytest from the repository's .venv and leaves its exit
# status in /run/vmtest/rc for hack/vmtest. Powers off in every case.
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

poweroff_now() {
    sync
    echo o > /proc/sysrq-trigger
    sleep 30 2>/dev/null
}
die() {
    echo "vmtest-guest: FATAL: $*"
    poweroff_now
}
trap 'die "stage 2 exited unexpectedly"' EXIT

# shellcheck source=/dev/null
source /run/vmtest/env || die "cannot read /run/vmtest/env"

mkdir -p /dev/shm  # devtmpfs has none; POSIX semaphores (multiprocessing locks) live there
# The repository may itself live under one of the directories that get a scratch tmpfs (CI clones into
# /tmp, say): hold it aside first and put it back at its own path, where its .venv expects it.
mkdir -p /run/vmtest-repo
mount --bind "$VMTEST_REPO" /run/vmtest-repo || die "cannot hold the repository $VMTEST_REPO"
for dir in /tmp /var/tmp /dev/shm /etc/lvm /mnt /media; do
    [ -d "$dir" ] || continue
    mount -t tmpfs -o mode=1777 tmpfs "$dir" || die "cannot mount tmpfs on $dir"
done
if [ ! -e "$VMTEST_REPO/pyproject.toml" ]; then
    mkdir -p "$VMTEST_REPO"
    mount --bind /run/vmtest-repo "$VMTEST_REPO" || die "cannot put the repository back at $VMTEST_REPO"
fi
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
chmod 0755 /etc/lvm
mount -t tmpfs -o mode=0755 tmpfs /var/lock 2>/dev/null || true
mkdir -p /run/lock/lvm /etc/lvm/backup /etc/lvm/archive

# LVM for a system without udevd: LVM itself creates /dev/mapper nodes and the
# /dev/<vg>/<lv> links; no monitoring daemon; scan every block device.
cat > /etc/lvm/lvm.conf <<'CONF'
devices {
    obtain_device_list_from_udev = 0
    external_device_info_source = "none"
    use_devicesfile = 0
}
activation {
    udev_sync = 0
    udev_rules = 0
    monitoring = 0
}
global {
    event_activation = 0
}
CONF

# Options for the loop module, for tests that need a small device space (none by default), e.g.
# LOCALCSI_VMTEST_LOOP_OPTIONS="max_part=255": 4,096 loop devices in all (tests/kernel/test_loop_exhaustion.py).
if [ -n "${LOCALCSI_VMTEST_LOOP_OPTIONS:-}" ]; then
    read -r -a loop_options <<< "$LOCALCSI_VMTEST_LOOP_OPTIONS"
    modprobe -d "$VMTEST_MODROOT" -S "$VMTEST_KVER" loop "${loop_options[@]}" \
        || die "modprobe loop $LOCALCSI_VMTEST_LOOP_OPTIONS failed"
fi
modules=(loop dm-mod dm-thin-pool dm-snapshot dm-persistent-data ext4 xfs)
modprobe -d "$VMTEST_MODROOT" -S "$VMTEST_KVER" -a "${modules[@]}" \
    || die "modprobe of ${modules[*]} from $VMTEST_MODROOT failed"
[ -e /dev/mapper/control ] || dmsetup mknodes >/dev/null 2>&1 || true
[ -e /dev/mapper/control ] || die "device-mapper has no /dev/mapper/control"

mapfile -d '' args < /run/vmtest/args || die "cannot read /run/vmtest/args"
read -r uptime _ < /proc/uptime
echo "vmtest: guest up after ${uptime}s (kernel $(uname -r)); running ${args[*]}"
echo "VMTEST-GUEST-READY"

export HOME=/tmp LC_ALL=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
export LOCALCSI_VMTEST=1 VMTEST_OUT=/run/vmtest/out TMPDIR=/tmp
# The repository is read-only here: hypothesis keeps its example database in the scratch space.
export HYPOTHESIS_STORAGE_DIRECTORY=/tmp/.hypothesis
mkdir -p "$VMTEST_OUT"
cd "$VMTEST_REPO" || die "repository $VMTEST_REPO not visible in the guest"
start=$(date +%s.%N)
if [ "${VMTEST_EXEC:-0}" = 1 ]; then
    what="${args[0]}"
    "${args[@]}" < /dev/null
else
    what=pytest
    "$VMTEST_PYTHON" -m pytest -p no:cacheprovider "${args[@]}" < /dev/null
fi
rc=$?
end=$(date +%s.%N)
echo "vmtest: $what finished with status $rc in $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')s"
echo "$rc" > /run/vmtest/rc
trap - EXIT
poweroff_now

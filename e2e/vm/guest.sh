#!/bin/bash
# Runs inside the virtme-ng guest as its --exec command: prepares the kernel storage stack
# the host cannot offer (device-mapper, LIO, iSCSI and NVMe/TCP initiators, krbd), then
# runs pytest and leaves its JUnit XML in the results directory shared with the host (the
# krbd test starts its Ceph test cluster itself, on the guest's loopback).
#
# usage: guest.sh RESULTS_DIR REPO_DIR [pytest arguments...]
#
# The guest has no systemd: every daemon a test needs is started here. The host's root
# is shared read-only; /etc, /usr, /var and /tmp are throw-away layers, /run is tmpfs.
set -uo pipefail
exec 2>&1
results=$1
repo=$2
shift 2
started=${EPOCHREALTIME/./}
mark() {
	local ms=$(((${EPOCHREALTIME/./} - started) / 1000))
	printf '[guest %3d.%03ds] %s\n' $((ms / 1000)) $((ms % 1000)) "$*"
}
fail() {
	mark "setup failed: $*"
	exit 90
}

# 1. A second 9p share of / with cache=loose (added by the host runner) over the trees
# Python reads most: measured, `import pytest` drops from 23-33 s to 4-6 s. It does not
# see host changes made while the guest runs.
python_prefix=$(dirname "$(dirname "$(readlink -f "$repo/.venv/bin/python")")")
if grep -qw hostcache /sys/bus/virtio/drivers/9pnet_virtio/*/mount_tag 2>/dev/null; then
	mkdir -p /run/hostcache
	if mount -t 9p -o trans=virtio,version=9p2000.L,cache=loose,msize=512000,ro,access=any \
		hostcache /run/hostcache; then
		for dir in /usr "$python_prefix" "$repo/.venv" "$repo/csi_driver" "$repo/tests" \
			"$repo/e2e"; do
			[ -d "$dir" ] && mount --bind "/run/hostcache$dir" "$dir"
		done
		mark "cached 9p share mounted"
	fi
fi

# 2. Kernel pieces: loopback, configfs, the modules (paths found by modprobe at run time).
ip link set lo up || fail "lo"
for module in configfs loop dm_mod dm_thin_pool target_core_mod target_core_iblock \
	iscsi_target_mod iscsi_tcp nvmet nvmet_tcp nvme_tcp rbd; do
	modprobe "$module" || fail "modprobe $module"
done
mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config ||
	fail "configfs"
mark "modules loaded"

# 3. Daemons: udev (virtme-ng's init starts it; device links), the system bus, iscsid.
# LVM manages its /dev nodes itself (DM_DISABLE_UDEV): no udev rules to wait for.
mkdir -p /run/dbus /run/lock /etc/iscsi /etc/nvme /etc/target
udevadm control --ping 2>/dev/null || /lib/systemd/systemd-udevd --daemon || fail "udevd"
dbus-daemon --system --fork || fail "dbus-daemon"
echo "InitiatorName=iqn.2004-10.org.debian:csi-vm-guest" >/etc/iscsi/initiatorname.iscsi
# A login to an unreachable portal fails after 3 s rather than 8 × 15 s (and os-brick
# tries 3 times); logins on the guest's loopback take well under a second.
sed -i -e 's/^node.session.initial_login_retry_max = .*/node.session.initial_login_retry_max = 1/' \
	-e 's/^node.conn\[0\].timeo.login_timeout = .*/node.conn[0].timeo.login_timeout = 3/' \
	/etc/iscsi/iscsid.conf
iscsid || fail "iscsid"
mark "udevd, dbus-daemon, iscsid started"

# 4. A volume group on a sparse loop file in tmpfs (thin volumes only use what is written).
export CSI_VM_VG=csi-vm
truncate -s 8G /run/csi-vm-pv.img
pv=$(losetup --find --show /run/csi-vm-pv.img) || fail "losetup"
export LVM_SUPPRESS_FD_WARNINGS=1 DM_DISABLE_UDEV=1
pvcreate -q "$pv" && vgcreate -q "$CSI_VM_VG" "$pv" || fail "vgcreate"
udevadm settle --timeout=30
mark "volume group $CSI_VM_VG on $pv"

# 5. The tests. Writable state lives under /run and /tmp; the repo is read-only.
export CSI_VM_GUEST=1 CSI_VM_RESULTS="$results" CSI_TEST_START_TIMEOUT=300 TMPDIR=/tmp TARGETCLI_HOME=/run/targetcli HOME=/run/home
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
mkdir -p "$HOME" "$TARGETCLI_HOME"
cd "$repo" || fail "cd $repo"
mark "starting pytest $*"
"$repo/.venv/bin/python" -m pytest -p no:cacheprovider --durations=10 --junitxml="$results/junit.xml" \
	-o junit_suite_name=vm -o junit_family=xunit1 "$@"
status=$?
mark "pytest exited with $status"
dmesg >"$results/dmesg.log" 2>&1
exit $status

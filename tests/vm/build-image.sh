#!/usr/bin/env bash
# Build the Debian 12 (bookworm) guest image used by contain's VM tests.
#
#   tests/vm/build-image.sh [--force]
#
# Output (cached): ${CONTAIN_VM_CACHE:-/var/cache/contain-vm}/image/
#   base.qcow2   root filesystem (ext4, no partition table), Docker + the `contain-test:latest` image
#   vmlinuz      the guest's stock Debian 6.1 kernel (booted directly by QEMU)
#   initrd.img   a small initramfs (virtio_pci, virtio_blk, ext4 only)
#   stamp        hash of the build inputs; the image is rebuilt only when it changes
#
# Idempotent and cheap when nothing changed: it checks the host packages and the stamp, then
# exits. Must run as root (debootstrap, chroot, apt). Uses no loop devices and leaves no mounts
# behind: every chroot step runs in a private mount namespace (unshare -m), so whatever the
# package scripts mount disappears with that namespace, even if the build is killed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${CONTAIN_VM_CACHE:-/var/cache/contain-vm}
MIRROR=${CONTAIN_VM_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
FORCE=0
[[ ${1:-} == --force ]] && FORCE=1

# Guest packages on top of debootstrap's minbase. Recommends are not installed.
#  - apparmor: Debian's kernel enables AppArmor; without apparmor_parser `docker run` fails.
#  - systemd-sysv: provides /sbin/init (systemd alone does not).
#  - zstd: lets initramfs-tools compress the initrd with zstd (fast to unpack under TCG).
#  - busybox-static: the static binary that becomes the contain-test container image.
#  - strace, tcpdump: cheap debugging aids for scenario authors.
GUEST_PKGS=(
  apparmor systemd systemd-sysv udev dbus kmod linux-image-amd64 initramfs-tools zstd
  docker.io containerd runc iptables iproute2 iputils-ping curl python3 busybox-static
  procps bpftool strace tcpdump
)

log() { printf '[build-image %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap, chroot, apt-get)"

# ---------------------------------------------------------------------------------------------
# Host packages. qemu-utils 10.0.2 from bookworm-backports conflicts with bookworm's
# qemu-system-x86 7.2, so QEMU comes from backports (QEMU >= 8.2 is also what gives us the
# `file:` migration URI used for saved VM state). Only calls apt when something is missing.
# ---------------------------------------------------------------------------------------------
ensure_host_packages() {
  local missing=() p
  for p in qemu-system-x86 qemu-utils debootstrap e2fsprogs zstd socat python3; do
    dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed || missing+=("$p")
  done
  # QEMU must be the backports build (10.x): refuse a mismatched 7.2 pair.
  if [[ ${#missing[@]} -eq 0 ]]; then
    local v
    v=$(dpkg-query -W -f='${Version}' qemu-system-x86)
    [[ $v == *bpo12* ]] || missing+=(qemu-system-x86 qemu-utils)
  fi
  [[ ${#missing[@]} -eq 0 ]] && return 0

  log "installing host packages: ${missing[*]}"
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    log "adding bookworm-backports to /etc/apt/sources.list.d/contain-vm-backports.sources"
    cat >/etc/apt/sources.list.d/contain-vm-backports.sources <<EOF
# Added by contain tests/vm/build-image.sh: qemu-system-x86 must match qemu-utils from backports.
Types: deb
URIs: ${MIRROR}
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  fi
  local apt=(apt-get -q -o DPkg::Lock::Timeout=600)
  "${apt[@]}" update
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends \
    -t bookworm-backports qemu-system-x86 qemu-utils debootstrap e2fsprogs zstd socat python3
}
ensure_host_packages

# ---------------------------------------------------------------------------------------------
# Cache check. The stamp hashes every input that ends up in the image: this script (package
# list, configuration) and the files under guest/ (agent, unit, provisioning script).
# ---------------------------------------------------------------------------------------------
input_hash() {
  (
    cd "$HERE"
    printf '%s\n' "$SUITE" "${GUEST_PKGS[@]}"
    sha256sum build-image.sh $(find guest -type f | LC_ALL=C sort)
  ) | sha256sum | cut -c1-16
}
HASH=$(input_hash)
IMG=$CACHE/image

image_ok() {
  [[ -f $IMG/stamp && $(cat "$IMG/stamp") == "$HASH" && -s $IMG/base.qcow2 && -s $IMG/vmlinuz &&
     -s $IMG/initrd.img ]]
}

mkdir -p "$CACHE" "$CACHE/debs"
if [[ $FORCE -eq 0 ]] && image_ok; then
  log "image up to date ($IMG, stamp $HASH)"
  exit 0
fi

# One builder at a time; a concurrent run.sh waits here and then finds the image built.
exec 9>"$CACHE/.image.lock"
log "waiting for the image lock" && flock 9
if [[ $FORCE -eq 0 ]] && image_ok; then
  log "image up to date ($IMG, stamp $HASH)"
  exit 0
fi

T0=$(date +%s)
B=$CACHE/build.$$
ROOT=$B/rootfs
cleanup() {
  # Nothing is mounted outside the private namespaces, so removing the tree is safe.
  [[ -n ${KEEP_BUILD:-} ]] || rm -rf "$B"
}
trap cleanup EXIT
rm -rf "$CACHE"/build.* # leftovers of killed builds (we hold the lock, so none is live)
mkdir -p "$ROOT" "$B/out" "$B/provision"

# Run a command inside the chroot, in a private mount namespace with /proc mounted (ldd,
# depmod and package scripts may want it). The mount dies with the namespace, even on a kill.
in_chroot() {
  unshare --mount --propagation private -- /bin/sh -euc '
    root=$1; shift
    mount -t proc proc "$root/proc"
    exec chroot "$root" "$@"' sh "$ROOT" \
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive "$@"
}

# ---------------------------------------------------------------------------------------------
# 1. debootstrap. --foreign splits it so that we can install a policy-rc.d before any package
#    script runs: docker.io's postinst would otherwise start dockerd inside the chroot.
# ---------------------------------------------------------------------------------------------
log "debootstrap stage 1 ($SUITE minbase, ${#GUEST_PKGS[@]} extra packages, mirror $MIRROR)"
debootstrap --foreign --variant=minbase --arch=amd64 --cache-dir="$CACHE/debs" \
  --include="$(IFS=,; echo "${GUEST_PKGS[*]}")" "$SUITE" "$ROOT" "$MIRROR" \
  >"$B/debootstrap1.log" 2>&1 || { tail -30 "$B/debootstrap1.log" >&2; die "debootstrap stage 1 failed"; }

printf '#!/bin/sh\n# no daemons may start in the build chroot\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
chmod 755 "$ROOT/usr/sbin/policy-rc.d"

# initramfs config must exist before the kernel's postinst builds the initrd, so that only a
# small one is ever built. conf.d/ and hooks/ are not conffiles of initramfs-tools, so writing
# them before the package is unpacked is safe. Only the root disk path is needed in the initrd:
# 9p, overlay, netfilter and the rest are loaded from the root filesystem later.
mkdir -p "$ROOT/etc/initramfs-tools/conf.d" "$ROOT/etc/initramfs-tools/hooks"
cat >"$ROOT/etc/initramfs-tools/conf.d/contain.conf" <<'EOF'
MODULES=list
COMPRESS=zstd
RESUME=none
EOF
cat >"$ROOT/etc/initramfs-tools/hooks/contain" <<'EOF'
#!/bin/sh
# contain VM: the root disk is virtio-blk (PCI) with ext4; load these early.
[ "$1" = prereqs ] && exit 0
. /usr/share/initramfs-tools/hook-functions
for m in virtio_pci virtio_blk ext4; do force_load "$m"; done
EOF
chmod 755 "$ROOT/etc/initramfs-tools/hooks/contain"

log "debootstrap stage 2 (package scripts, kernel, initramfs)"
# debootstrap mounts /proc, /sys, /dev/pts itself: the private namespace confines them.
unshare --mount --propagation private -- chroot "$ROOT" \
  env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
  /debootstrap/debootstrap --second-stage >"$B/debootstrap2.log" 2>&1 ||
  { tail -40 "$B/debootstrap2.log" >&2; die "debootstrap stage 2 failed"; }

# ---------------------------------------------------------------------------------------------
# 2. Guest configuration.
# ---------------------------------------------------------------------------------------------
log "configuring the guest"
echo contain-vm >"$ROOT/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 contain-vm\n::1 localhost ip6-localhost ip6-loopback\n' \
  >"$ROOT/etc/hosts"
# Root is mounted rw by the kernel command line; fsck is skipped (the disk is a throw-away
# overlay of a freshly made file system).
echo '/dev/vda / ext4 rw,noatime 0 0' >"$ROOT/etc/fstab"
# A fixed machine-id: an empty one makes systemd run first-boot units on every boot.
python3 -c 'import uuid; print(uuid.uuid4().hex)' >"$ROOT/etc/machine-id"
# The journal stays in RAM: nothing of it needs to survive, and disk writes are slow under TCG.
mkdir -p "$ROOT/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\nRuntimeMaxUse=64M\n' >"$ROOT/etc/systemd/journald.conf.d/contain.conf"
# Units that only cost boot time or fire timers mid-test. Masking a unit that is not installed
# is harmless.
for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service \
  fstrim.timer dpkg-db-backup.timer man-db.timer systemd-tmpfiles-clean.timer \
  getty@tty1.service serial-getty@ttyS0.service systemd-networkd-wait-online.service; do
  ln -sfn /dev/null "$ROOT/etc/systemd/system/$u"
done
ln -sfn /lib/systemd/system/multi-user.target "$ROOT/etc/systemd/system/default.target"
# Docker puts containers under contain's managed parent (as the NixOS module does), so
# contain covers them from their first packet.
mkdir -p "$ROOT/etc/docker"
printf '{\n  "cgroup-parent": "contain.slice"\n}\n' >"$ROOT/etc/docker/daemon.json"
# The test agent: started after docker, talks to the host over virtio-serial (see vmctl.py).
install -m 755 "$HERE/guest/contain-agent" "$ROOT/usr/local/sbin/contain-agent"
install -m 644 "$HERE/guest/contain-agent.service" "$ROOT/etc/systemd/system/contain-agent.service"
mkdir -p "$ROOT/etc/systemd/system/multi-user.target.wants" "$ROOT/mnt/share"
ln -sfn ../contain-agent.service "$ROOT/etc/systemd/system/multi-user.target.wants/contain-agent.service"
rm -f "$ROOT/usr/sbin/policy-rc.d"

# Slim down: docs, man pages, locales, the .deb copies, and kernel modules for hardware a
# virtio-only guest never has (sound, GPU, media, wireless, InfiniBand, staging, Bluetooth).
# Everything in net/ except wireless and bluetooth is kept (netfilter, bridge, veth, vxlan...).
rm -rf "$ROOT"/usr/share/{doc,man,info}/* "$ROOT"/var/cache/apt/archives/*.deb \
  "$ROOT"/var/lib/apt/lists/* "$ROOT"/debootstrap
find "$ROOT/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'C.*' -exec rm -rf {} + 2>/dev/null || true
KVER=$(basename "$(ls -d "$ROOT"/lib/modules/*)")
M=$ROOT/lib/modules/$KVER/kernel
rm -rf "$M/sound" "$M/drivers/gpu" "$M/drivers/media" "$M/drivers/infiniband" \
  "$M/drivers/net/wireless" "$M/drivers/staging" "$M/drivers/bluetooth" "$M/net/bluetooth" \
  "$M/net/mac80211" "$M/net/wireless" "$M/drivers/iio" "$M/drivers/isdn"
in_chroot depmod -a "$KVER"
log "kernel $KVER"

# ---------------------------------------------------------------------------------------------
# 3. The contain-test container image: a static busybox root (ping, nc, wget, httpd, ip, ...)
#    plus curl and python3 (stdlib, for raw-socket tests) with the shared libraries they need,
#    copied from the guest rootfs. Imported into Docker at the provisioning boot below.
# ---------------------------------------------------------------------------------------------
log "building the contain-test container root"
C=$B/ctimg
mkdir -p "$C"/{bin,etc,tmp,root,proc,sys,dev,www,usr/bin,usr/lib,lib64}
chmod 1777 "$C/tmp"
cp "$ROOT/bin/busybox" "$C/bin/busybox"
for a in $("$C/bin/busybox" --list); do
  [[ $a == busybox ]] || ln -sfn busybox "$C/bin/$a"
done
# Python stdlib without tests, GUI and packaging tools, with its bytecode: Debian's, compiled
# at install, and compileall for anything missing (tar keeps the sources' mtimes, which the
# caches are checked against). Without it every fresh container compiled what it imported,
# seconds per python start under TCG.
in_chroot python3 -m compileall -q -x '/(test|idlelib|tkinter|ensurepip|lib2to3)/' /usr/lib/python3.11
tar -C "$ROOT" -cf - --exclude='usr/lib/python3.11/test' \
  --exclude='usr/lib/python3.11/idlelib' --exclude='usr/lib/python3.11/tkinter' \
  --exclude='usr/lib/python3.11/ensurepip' --exclude='usr/lib/python3.11/lib2to3' \
  --exclude='usr/lib/python3.11/pydoc_data' --exclude='usr/lib/python3.11/unittest/test' \
  --exclude='usr/lib/python3.11/config-3.11-x86_64-linux-gnu' \
  usr/lib/python3.11 | tar -C "$C" -xf -
# curl, python3 and python's extension modules, with every shared library ldd finds (one
# chroot call for all of them), copied at the same paths.
cp -L "$ROOT/usr/bin/curl" "$ROOT/usr/bin/python3.11" "$C/usr/bin/"
ln -sfn python3.11 "$C/usr/bin/python3"
for lib in $(in_chroot sh -c 'for f in "$@"; do ldd "$f"; done' sh /usr/bin/curl /usr/bin/python3.11 \
  $(cd "$C" && ls usr/lib/python3.11/lib-dynload/*.so | sed 's|^|/|') | grep -o '/[^ ]*' | sort -u); do
  [[ -e $C$lib ]] && continue
  mkdir -p "$C$(dirname "$lib")"
  cp -L "$ROOT$lib" "$C$lib"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$C/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$C/etc/group"
echo 'contain-test ok' >"$C/www/index.html"
tar --numeric-owner -C "$C" -cf "$B/provision/contain-test.tar" .
log "contain-test root: $(du -sh "$B/provision/contain-test.tar" | cut -f1) tar"
rm -rf "$C"

# ---------------------------------------------------------------------------------------------
# 4. Kernel, initrd, disk. mkfs.ext4 -d copies the tree (owners, modes, xattrs such as file
#    capabilities) into a sparse file: no loop device. Inode tables and journal are initialised
#    now, so the guest's ext4lazyinit thread does not burn CPU and dirty the disk on each boot.
# ---------------------------------------------------------------------------------------------
cp "$ROOT/boot/vmlinuz-$KVER" "$B/out/vmlinuz"
cp "$ROOT/boot/initrd.img-$KVER" "$B/out/initrd.img"
log "initrd $(du -h "$B/out/initrd.img" | cut -f1), rootfs $(du -sh "$ROOT" | cut -f1)"
SIZE_MB=$(( $(du -sm "$ROOT" | cut -f1) + 4096 )) # headroom for docker images and test files
log "mkfs.ext4 -d (${SIZE_MB} MB, sparse)"
truncate -s "${SIZE_MB}M" "$B/root.raw"
mkfs.ext4 -q -F -L contain-root -m 0 -E lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0 \
  -d "$ROOT" "$B/root.raw"
rm -rf "$ROOT"
qemu-img convert -f raw -O qcow2 "$B/root.raw" "$B/out/base.qcow2"
rm -f "$B/root.raw"

# ---------------------------------------------------------------------------------------------
# 5. Provisioning boot: boot the image once, writable, and let guest/provision.sh import the
#    container image into Docker (docker import needs a running dockerd). This also does the
#    first-boot work (docker's /var/lib/docker, AppArmor profile) once instead of per test.
# ---------------------------------------------------------------------------------------------
log "provisioning boot (docker import of contain-test:latest)"
install -m 755 "$HERE/guest/provision.sh" "$B/provision/scenario.sh"
touch "$B/provision/.clean-shutdown" # agent shuts down cleanly, so the disk is consistent
python3 "$HERE/vmctl.py" run --writable --no-state \
  --image "$B/out/base.qcow2" --kernel "$B/out/vmlinuz" --initrd "$B/out/initrd.img" \
  --share "$B/provision" --run-dir "$B/provision-run" \
  --timeout "${CONTAIN_VM_PROVISION_TIMEOUT:-1200}" ||
  die "provisioning boot failed (console log: $B/provision-run/console.log; set KEEP_BUILD=1 to keep it)"

echo "$HASH" >"$B/out/stamp"
rm -rf "$IMG.old"
[[ -d $IMG ]] && mv "$IMG" "$IMG.old"
mv "$B/out" "$IMG"
rm -rf "$IMG.old" "$CACHE/state" # saved VM states belong to the old image
log "image ready in $(( $(date +%s) - T0 )) s: $IMG ($(du -h "$IMG/base.qcow2" | cut -f1) qcow2)"

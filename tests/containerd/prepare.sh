#!/bin/sh
# Prerequisites of the resolver's containerd integration tests.
#
#   prepare.sh packages          install containerd, runc and busybox-static if missing
#   prepare.sh image OUT.tar     build a docker-archive image tarball of a
#                                busybox-static rootfs (tagged
#                                docker.io/contain-test/busybox:latest) at OUT.tar
#
# Idempotent; needs root for `packages`. Never touches a running containerd.
set -eu

IMAGE_REF="docker.io/contain-test/busybox:latest"

need_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "prepare.sh: $1 needs root" >&2
        exit 1
    fi
}

packages() {
    missing=""
    command -v containerd >/dev/null 2>&1 || missing="$missing containerd"
    command -v ctr >/dev/null 2>&1 || missing="$missing containerd"
    command -v runc >/dev/null 2>&1 || missing="$missing runc"
    command -v containerd-shim-runc-v2 >/dev/null 2>&1 || missing="$missing containerd"
    dpkg -s busybox-static >/dev/null 2>&1 || missing="$missing busybox-static"
    if [ -z "$missing" ]; then
        return 0
    fi
    need_root "installing$missing"
    echo "prepare.sh: installing$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y $missing >/dev/null 2>&1 || {
        apt-get update >/dev/null 2>&1
        apt-get install -y $missing >/dev/null
    }
    # The package enables a system service; the tests run their own
    # containerd on a private socket and never use the system one.
}

image() {
    out="$1"
    busybox=/bin/busybox
    if ! [ -x "$busybox" ]; then
        echo "prepare.sh: $busybox missing (apt-get install -y busybox-static)" >&2
        exit 1
    fi
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    mkdir -p "$work/rootfs/bin" "$work/rootfs/tmp" "$work/rootfs/proc" \
        "$work/rootfs/sys" "$work/rootfs/dev" "$work/rootfs/etc"
    cp "$busybox" "$work/rootfs/bin/busybox"
    for applet in $("$busybox" --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$work/rootfs/bin/$applet"
    done
    echo "root:x:0:0:root:/:/bin/sh" >"$work/rootfs/etc/passwd"
    echo "root:x:0:" >"$work/rootfs/etc/group"
    # Reproducible layer: fixed owner and mtime, sorted names.
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
        -C "$work/rootfs" -cf "$work/layer.tar" .
    diff_id="$(sha256sum "$work/layer.tar" | cut -d' ' -f1)"
    mkdir -p "$work/archive/$diff_id"
    mv "$work/layer.tar" "$work/archive/$diff_id/layer.tar"
    cat >"$work/config.json" <<JSON
{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z","config":{"Env":["PATH=/bin"],"Cmd":["/bin/sh"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:$diff_id"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"contain tests/containerd/prepare.sh"}]}
JSON
    config_id="$(sha256sum "$work/config.json" | cut -d' ' -f1)"
    mv "$work/config.json" "$work/archive/$config_id.json"
    cat >"$work/archive/manifest.json" <<JSON
[{"Config":"$config_id.json","RepoTags":["$IMAGE_REF"],"Layers":["$diff_id/layer.tar"]}]
JSON
    mkdir -p "$(dirname "$out")"
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
        -C "$work/archive" -cf "$out.tmp" .
    mv "$out.tmp" "$out"
    echo "$IMAGE_REF"
}

case "${1:-}" in
packages) packages ;;
image)
    [ $# -eq 2 ] || { echo "usage: prepare.sh image OUT.tar" >&2; exit 2; }
    image "$2"
    ;;
*)
    echo "usage: prepare.sh packages | image OUT.tar" >&2
    exit 2
    ;;
esac

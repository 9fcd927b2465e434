#!/usr/bin/env bash
# The Debian bookworm arm64 root that `make arm64-check` runs the board side in: Raspberry Pi OS
# 64-bit's userland (Debian 12, Python 3.11, glibc 2.36), built from Debian's own packages.
#
# mmdebstrap resolves the packages with apt and only extracts them (--variant=extract), so the
# build runs nothing under emulation and takes seconds; aarch64 programs in the root then run
# through qemu-user (Debian's qemu-user-static) registered with binfmt_misc, so that the root's
# own sshd, shell, tar and python call each other as on a board. Needs root.
#
# Prints the root's path. Cached: the root is rebuilt only when this file changes.
# Environment: TENSOREDGE_ARM64_CACHE (default ~/.cache/tensoredge-arm64), DEBIAN_MIRROR.
set -euo pipefail

CACHE=${TENSOREDGE_ARM64_CACHE:-$HOME/.cache/tensoredge-arm64}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ROOT=$CACHE/root
MARK=.tensoredge-arm64-root  # in every root this script built: what it may replace
# sh, mktemp/cat/rm and tar for `bench --remote`; python3.11 with venv and pip; sshd; os-release;
# libstdc++6, which the onnxruntime wheel links to (Raspberry Pi OS has it; a minimal Debian does not).
PACKAGES=base-files,dash,coreutils,tar,python3.11-venv,openssh-server,libstdc++6

say() { echo "[arm64-root] $*" >&2; }
die() { echo "error: $*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || die "the arm64 root needs root (mmdebstrap, chroot, binfmt_misc): run as root or with sudo"

host_tools() {
    command -v mmdebstrap >/dev/null && [ -x /usr/bin/qemu-aarch64-static ] && return
    say "installing Debian's qemu-user-static and mmdebstrap"
    command -v apt-get >/dev/null || die "qemu-user-static and mmdebstrap are missing and this is not Debian: install them"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static mmdebstrap >/dev/null
}

binfmt() {
    local entry=/proc/sys/fs/binfmt_misc/qemu-aarch64
    [ -e "$entry" ] && grep -q enabled "$entry" && return
    if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
            || die "cannot mount binfmt_misc (a container without privileges?): run on a VM or host as root"
    fi
    if [ ! -e "$entry" ]; then
        say "registering qemu-aarch64 with binfmt_misc"
        grep -v '^#' /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register
    fi
    echo 1 > "$entry"
}

stamp() { sha256sum "$0" | cut -c1-16; }

build_root() {
    local new=$CACHE/root.new
    rm -rf "$new"
    say "building the bookworm arm64 root ($PACKAGES)"
    mmdebstrap --quiet --mode=root --variant=extract --arch=arm64 --include="$PACKAGES" bookworm "$new" "$MIRROR"
    # Extracted, not configured: write what the skipped maintainer scripts would have.
    printf 'root:x:0:0:root:/root:/bin/sh\nsshd:x:100:65534::/run/sshd:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' > "$new/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' > "$new/etc/group"
    printf 'root:*:19000:0:99999:7:::\nsshd:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n' > "$new/etc/shadow"
    chmod 640 "$new/etc/shadow"
    echo arm64-root > "$new/etc/hostname"
    mkdir -p "$new/root/.ssh" "$new/run/sshd" "$new/proc" "$new/sys" "$new/tmp" "$new/opt"
    chmod 700 "$new/root" "$new/root/.ssh"
    chmod 1777 "$new/tmp"
    ssh-keygen -q -t ed25519 -N "" -f "$new/etc/ssh/ssh_host_ed25519_key" -C arm64-root
    [ -x "$new/usr/bin/python3.11" ] || die "the arm64 root has no python3.11: the package list in $0 is wrong"
    stamp > "$new/$MARK"
    if [ -e "$ROOT" ]; then
        [ -f "$ROOT/$MARK" ] || die "$ROOT exists but was not built by $0: move it away"
        rm -rf "$ROOT"
    fi
    mv "$new" "$ROOT"
}

host_tools
binfmt
mkdir -p "$CACHE"
if [ -f "$ROOT/$MARK" ] && [ "$(cat "$ROOT/$MARK")" = "$(stamp)" ]; then
    say "cached root $ROOT"
else
    build_root
fi
chroot "$ROOT" /usr/bin/python3.11 -c 'import platform, sys; sys.exit(platform.machine() != "aarch64")' \
    || die "the arm64 root's python does not run as aarch64: is qemu-aarch64 registered with binfmt_misc?"
echo "$ROOT"

#!/usr/bin/env bash
# Run a command inside the arm64 root: `enter.sh ROOT COMMAND [ARG...]`.
#
# A private mount namespace gets /proc (psutil reads it); it vanishes with the command, so nothing
# stays mounted on the host. Then chroot with a clean environment, as a login on the board has.
# /sys is left out on purpose: under qemu-user it describes the x86 host, /proc/cpuinfo does too,
# and the cpuinfo library inside onnxruntime crashes on that mix (without /sys it only warns).
# QEMU_CPU (default cortex-a76, a Raspberry Pi 5's core; cortex-a72 for a Pi 4, cortex-a53 for a
# Pi Zero 2 W) sets the CPU that qemu emulates, and so the instruction sets the runtimes see.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 ROOT COMMAND [ARG...]" >&2; exit 2; }
export QEMU_CPU=${QEMU_CPU:-cortex-a76}
exec unshare --mount --propagation private -- /bin/sh -c '
    root=$1; shift
    mount -t proc proc "$root/proc" || exit 1
    exec chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 QEMU_CPU="$QEMU_CPU" \
        PATH=/opt/tensoredge-board/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin "$@"' enter "$@"

#!/usr/bin/env bash
# Bring a folder back from the lent GPU machine, whose calls return at most 8 files of 16 MiB (64 MiB in
# all): the folder is tarred once into /tmp/ship/NAME.tar.part-NN pieces of 15 MiB, and each call copies
# COUNT of them, from FIRST (1-based), into $OUT. On this host: cat NAME.tar.part-* | tar x.
#
#   benchmarks/gpu_ship.sh /tmp/tensoredge-heal/onnx-plan1-heal0 1 3   # pieces 1-3 now, the rest next call
set -euo pipefail
FOLDER=${1:?the folder to bring back} FIRST=${2:-1} COUNT=${3:-4}
: "${OUT:?set OUT to the folder that comes back}"
NAME=$(basename "$FOLDER")
mkdir -p /tmp/ship
if ! compgen -G "/tmp/ship/$NAME.tar.part-*" > /dev/null; then
    tar cf - -C "$(dirname "$FOLDER")" "$NAME" | split -b 15M -d -a 2 - "/tmp/ship/$NAME.tar.part-"
    (cd /tmp/ship && sha256sum "$NAME".tar.part-* > "$NAME.sha256")
fi
pieces=(/tmp/ship/"$NAME".tar.part-*)
cp "/tmp/ship/$NAME.sha256" "$OUT/"
for ((k = FIRST; k < FIRST + COUNT && k <= ${#pieces[@]}; k++)); do cp "${pieces[$((k - 1))]}" "$OUT/"; done
echo "$NAME: ${#pieces[@]} pieces of 15 MiB; this call returns $FIRST to $((k - 1))"

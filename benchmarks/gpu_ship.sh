#!/usr/bin/env bash
# Bring a folder back from the lent GPU machine, whose calls return at most 8 files of 16 MiB (64 MiB in
# all): the folder is tarred and xz-compressed once into /tmp/ship/NAME.tar.xz.part-NN pieces of 15 MiB,
# and each call copies COUNT of them, from FIRST (1-based), into $OUT. On this host:
#     cat NAME.tar.xz.part-* | xz -d | tar x        (sha256sum -c NAME.sha256 first)
# xz matters: the machine is given back ~30 s after a call ends, so every call saved is a chance less of
# losing the file. An int8 ONNX file of SmolLM2 (140.2 MB) is 123.3 MB as xz -6: 8 pieces, two calls,
# where the plain tar took 10 pieces in three.
#
#   benchmarks/gpu_ship.sh /tmp/tensoredge-heal/onnx-plan1-heal0 1 4   # pieces 1-4 now, the rest next call
set -euo pipefail
FOLDER=${1:?the folder to bring back} FIRST=${2:-1} COUNT=${3:-4}
: "${OUT:?set OUT to the folder that comes back}"
NAME=$(basename "$FOLDER")
mkdir -p /tmp/ship
if [ ! -f "/tmp/ship/$NAME.sha256" ]; then  # the pieces are cut once; the checksum file marks them complete
    rm -f "/tmp/ship/$NAME".tar.xz.part-*
    if command -v xz > /dev/null; then
        tar cf - -C "$(dirname "$FOLDER")" "$NAME" | xz -6 -T0
    else
        tar cf - -C "$(dirname "$FOLDER")" "$NAME" \
            | python3 -c "import lzma, shutil, sys
with lzma.open(sys.stdout.buffer, 'wb', preset=6) as out: shutil.copyfileobj(sys.stdin.buffer, out)"
    fi | split -b 15M -d -a 2 - "/tmp/ship/$NAME.tar.xz.part-"
    (cd /tmp/ship && sha256sum "$NAME".tar.xz.part-* > "$NAME.sha256.tmp" && mv "$NAME.sha256.tmp" "$NAME.sha256")
fi
pieces=(/tmp/ship/"$NAME".tar.xz.part-*)
cp "/tmp/ship/$NAME.sha256" "$OUT/"
for ((k = FIRST; k < FIRST + COUNT && k <= ${#pieces[@]}; k++)); do cp "${pieces[$((k - 1))]}" "$OUT/"; done
echo "$NAME: ${#pieces[@]} pieces of 15 MiB; this call returns $FIRST to $((k - 1))"

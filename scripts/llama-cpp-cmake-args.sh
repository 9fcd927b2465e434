#!/bin/sh
# CMAKE_ARGS for building llama-cpp-python: the CPU's own instruction sets, minus AMX.
#
# llama.cpp's default native build uses AMX when the CPU reports it, but virtual machines
# (Firecracker among them) report AMX without giving processes the tile state, and llama.cpp
# then crashes on its first matrix multiply. On x86-64 we list the CPU's features ourselves
# and leave AMX out; elsewhere (ARM boards) the native build is used unchanged.
case "$(uname -m)" in
  x86_64|amd64) ;;
  *) exit 0 ;;
esac
flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
args="-DGGML_NATIVE=OFF"
for pair in sse4_2:SSE42 f16c:F16C fma:FMA bmi2:BMI2 avx:AVX avx2:AVX2 avx_vnni:AVX_VNNI \
            avx512f:AVX512 avx512vbmi:AVX512_VBMI avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16; do
  cpu=${pair%%:*}; ggml=${pair#*:}
  case "$flags" in *" $cpu "*) args="$args -DGGML_$ggml=ON" ;; *) args="$args -DGGML_$ggml=OFF" ;; esac
done
echo "$args -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"

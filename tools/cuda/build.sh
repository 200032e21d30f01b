#!/usr/bin/env bash
# Builds the `zoetrope` binary with the `cuda` feature on a machine without a CUDA toolkit or a
# GPU, from PyPI's CUDA 13.4 wheels (tools/cuda/requirements.txt), then checks what can be
# checked without a GPU. On a machine with a CUDA toolkit and driver, plain
# `cargo build --release -p zoetrope-cli --features cuda` does the same.
#
#   tools/cuda/build.sh
#
# Environment (defaults in brackets):
#   CUDA_VENV [target/cuda-toolkit]   venv the wheels go into (made if absent)
#   CUDA_COMPUTE_CAP [90]             GPU architecture the kernels are compiled for (90: H100/H200,
#                                     89: L4/RTX 40xx, 86: RTX 30xx/A10, 80: A100)
#   CARGO_TARGET_DIR [target/cuda]    kept apart from the CPU build's
#
# What it needs from the wheels: nvcc (candle-kernels compiles its .cu kernels to PTX and a
# static library), the CUDA headers, and libcudart / libcublas / libcurand / libnvrtc to link
# against. The driver library libcuda.so.1 comes with the NVIDIA driver, not with a toolkit;
# toolkits ship a link-time stub of it (lib64/stubs/libcuda.so) and the wheels do not, so this
# script makes one: every `cu*` driver function candle's CUDA layer calls, each returning
# CUDA_ERROR_NO_DEVICE (100), with the real library's soname, so the binary links and, on a GPU
# machine, loads the real driver. The stub is never installed or shipped.
#
# Checks after the build: the binary needs libcuda.so.1 (linked against the driver API); with
# the stub on the library path it still generates on the CPU (`--device cpu`), and
# `--device cuda` fails with the one-line "cannot open CUDA device 0" error. Nothing here runs
# on a GPU: the CUDA path is compiled, not tested.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
CUDA_VENV=${CUDA_VENV:-target/cuda-toolkit}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/cuda}

if [ ! -x "$CUDA_VENV/bin/python" ]; then
    python3 -m venv "$CUDA_VENV"
fi
"$CUDA_VENV/bin/pip" install -q -r tools/cuda/requirements.txt
SITE=$("$CUDA_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
CUDA=$SITE/nvidia/cu13
if [ ! -x "$CUDA/bin/nvcc" ]; then
    echo "no nvcc at $CUDA/bin/nvcc: the nvidia-cuda-nvcc wheel's layout changed?" >&2
    exit 1
fi

# The linker wants unversioned names; the wheels ship libfoo.so.N only. The links and the stub
# go in a folder of their own, named to cudarc and the linker as CUDA_ROOT/lib.
LINK=$ROOT/target/cuda-link
mkdir -p "$LINK/lib" "$LINK/include"
for lib in cudart cublas cublasLt curand nvrtc; do
    real=$(ls "$CUDA"/lib/lib$lib.so.* | grep -v builtins | head -n1)
    ln -sf "$real" "$LINK/lib/lib$lib.so"
done
ln -sfn "$CUDA/include" "$LINK/include/cuda"

export PATH=$CUDA/bin:$PATH
export CUDA_ROOT=$CUDA
export CUDA_HOME=$CUDA
export CUDARC_CUDA_VERSION=13040
export NVCC_PREPEND_FLAGS="-I$CUDA/include ${NVCC_PREPEND_FLAGS:-}"
export RUSTFLAGS="-L native=$LINK/lib ${RUSTFLAGS:-}"
export LD_LIBRARY_PATH=$LINK/lib:$CUDA/lib:${LD_LIBRARY_PATH:-}

# The libraries first (no link step); the stub's functions are the driver API of the cudarc
# version in Cargo.lock (its generated bindings, src/driver/sys/mod.rs), whatever subset candle
# calls. (The rlibs can't be read with nm: the release profile's thin LTO keeps them as bitcode.)
cargo build --release -p zoetrope-nn --features cuda
CUDARC=$(cargo metadata --format-version 1 --features zoetrope-nn/cuda 2>/dev/null | python3 -c '
import json, os, sys
pkgs = json.load(sys.stdin)["packages"]
print(next(os.path.dirname(p["manifest_path"]) for p in pkgs if p["name"] == "cudarc"))')
{
    echo "/* Link-time stub of the CUDA driver library (see tools/cuda/build.sh). */"
    grep -oE '^pub unsafe fn cu[A-Za-z0-9_]+\(' "$CUDARC/src/driver/sys/mod.rs" |
        sed -E 's/^pub unsafe fn (cu[A-Za-z0-9_]+)\(/\1/' | sort -u |
        sed 's/.*/int &(void) { return 100; }/'
} >"$LINK/libcuda_stub.c"
echo "driver functions in the stub: $(grep -c '^int' "$LINK/libcuda_stub.c")"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$LINK/lib/libcuda.so" "$LINK/libcuda_stub.c"
ln -sf libcuda.so "$LINK/lib/libcuda.so.1"

cargo build --release -p zoetrope-cli --features cuda
BIN=$CARGO_TARGET_DIR/release/zoetrope
echo "built $BIN"
ldd "$BIN" | grep -E 'cuda|cublas|curand|nvrtc'
ldd "$BIN" | grep -q 'libcuda.so.1' || { echo "the binary does not link the driver API" >&2; exit 1; }

OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
"$BIN" generate "a red ball bounces to the right on a black background" --device cpu \
    -o "$OUT/cpu.mp4"
if "$BIN" generate "a red ball" --device cuda -o "$OUT/cuda.mp4" 2>"$OUT/err"; then
    echo "--device cuda succeeded against the stub driver: it should have failed" >&2
    exit 1
fi
cat "$OUT/err"
grep -q 'cannot open CUDA device 0' "$OUT/err"
[ "$(grep -c . "$OUT/err")" -eq 1 ] || { echo "the error is not one line" >&2; exit 1; }
[ ! -e "$OUT/cuda.mp4" ]
echo "ok: compiled with CUDA; CPU generation works; --device cuda fails cleanly without a GPU"

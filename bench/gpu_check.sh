#!/usr/bin/env bash
# GPU check on a machine with an NVIDIA GPU and no network (a few minutes at most).
#
#   bench/gpu_check.sh            # as root: runs pyenroot as an unprivileged account (created if missing)
#   GPU_CHECK_USER=alice bench/gpu_check.sh
#
# It builds a tiny CUDA program with nvcc, makes a small root filesystem from host binaries (a shell, ls, cat
# and the program with their libraries) directly in the user's data path, so no squashfs or FUSE tools are
# needed, and starts it with pyenroot:
#   1. NVIDIA_VISIBLE_DEVICES=all: `nvidia-smi -L` and the CUDA program must see the GPUs;
#   2. NVIDIA_VISIBLE_DEVICES=void with a minimal /dev: no device node, no nvidia-smi, no CUDA device.
# PYENROOT_NVIDIA_ROOT (a fake driver tree) and PYTHON are passed through. Exit status 0 when all checks pass.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
RUN_AS=${GPU_CHECK_USER:-pyenroot-gpu}
began=$(date +%s)
failures=0

say() { printf '== %s\n' "$*"; }
check() {  # check NAME CONDITION-COMMAND...
    local name=$1; shift
    if "$@"; then printf 'PASS %s\n' "$name"; else printf 'FAIL %s\n' "$name"; failures=$((failures + 1)); fi
}

WORK=$(mktemp -d /tmp/pyenroot-gpu-check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
chmod 755 "$WORK"

# --- the account that runs pyenroot ------------------------------------------------------------------------
if [ "$(id -u)" = 0 ]; then
    id "$RUN_AS" >/dev/null 2>&1 || useradd --create-home --shell /bin/sh "$RUN_AS"
    as_user() { setpriv --reuid="$RUN_AS" --regid="$RUN_AS" --clear-groups env -i HOME="$WORK/home" "$@"; }
else
    as_user() { env -i HOME="$WORK/home" "$@"; }
fi
mkdir -p "$WORK/home"
[ "$(id -u)" = 0 ] && chown "$RUN_AS": "$WORK/home"
cp -r "$REPO/pyenroot" "$WORK/pyenroot"  # the checkout may not be readable by the account
chmod -R a+rX "$WORK/pyenroot"

# --- a tiny CUDA program -----------------------------------------------------------------------------------
NVCC=$(command -v nvcc || true)
[ -z "$NVCC" ] && [ -x /usr/local/cuda/bin/nvcc ] && NVCC=/usr/local/cuda/bin/nvcc
cat > "$WORK/cudacheck.cu" <<'EOF'
#include <cstdio>
__global__ void add(const float *a, const float *b, float *c, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) c[i] = a[i] + b[i];
}
int main() {
    int count = 0;
    cudaError_t status = cudaGetDeviceCount(&count);
    if (status != cudaSuccess || count == 0) {
        printf("no CUDA device (%s)\n", cudaGetErrorString(status));
        return 2;
    }
    for (int d = 0; d < count; ++d) {
        cudaDeviceProp prop;
        cudaGetDeviceProperties(&prop, d);
        printf("CUDA device %d: %s (sm_%d%d)\n", d, prop.name, prop.major, prop.minor);
    }
    const int n = 1 << 20;
    float *a, *b, *c;
    cudaMalloc(&a, n * sizeof(float)); cudaMalloc(&b, n * sizeof(float)); cudaMalloc(&c, n * sizeof(float));
    float *host = new float[n];
    for (int i = 0; i < n; ++i) host[i] = float(i);
    cudaMemcpy(a, host, n * sizeof(float), cudaMemcpyHostToDevice);
    cudaMemcpy(b, host, n * sizeof(float), cudaMemcpyHostToDevice);
    add<<<(n + 255) / 256, 256>>>(a, b, c, n);
    cudaMemcpy(host, c, n * sizeof(float), cudaMemcpyDeviceToHost);
    for (int i = 0; i < n; ++i) if (host[i] != 2.0f * i) { printf("wrong result at %d\n", i); return 1; }
    printf("CUDA kernel OK: %d additions\n", n);
    return 0;
}
EOF
if [ -n "$NVCC" ]; then
    say "building the CUDA program with $NVCC"
    "$NVCC" -O2 -o "$WORK/cudacheck" "$WORK/cudacheck.cu"
else
    say "no nvcc: the CUDA program is skipped"
fi

# --- a small root filesystem in the data path ----------------------------------------------------------------
DATA="$WORK/home/data"
ROOTFS="$DATA/gpucheck"
copy_with_libraries() {  # copy_with_libraries PROGRAM [NAME IN /bin]
    local program=$1 name=${2:-$(basename "$1")}
    install -D -m 755 "$program" "$ROOTFS/bin/$name"
    ldd "$program" 2>/dev/null | grep -o '/[^ ]*' | while read -r library; do
        [ -e "$ROOTFS$library" ] || install -D -m 755 "$(readlink -f "$library")" "$ROOTFS$library"
    done
}
say "building a root filesystem in $ROOTFS"
mkdir -p "$ROOTFS"/{bin,etc,dev,proc,sys,tmp,run,usr/bin}
copy_with_libraries "$(readlink -f "$(command -v sh)")" sh
for tool in ls cat; do copy_with_libraries "$(command -v $tool)"; done
[ -x "$WORK/cudacheck" ] && copy_with_libraries "$WORK/cudacheck"
printf 'root:x:0:0:root:/:/bin/sh\n' > "$ROOTFS/etc/passwd"
printf 'root:x:0:\n' > "$ROOTFS/etc/group"
printf 'PATH=/bin:/usr/bin\n' > "$ROOTFS/etc/environment"
chmod -R a+rX "$WORK/home"
[ "$(id -u)" = 0 ] && chown -R "$RUN_AS": "$WORK/home"

pyenroot() {  # pyenroot ENV=VALUE... -- ARGS...
    local env=()
    while [ "$1" != "--" ]; do env+=("$1"); shift; done
    shift
    as_user PATH=/usr/bin:/bin PYTHONPATH="$WORK" XDG_RUNTIME_DIR="$WORK/home/run" ENROOT_DATA_PATH="$DATA" \
        ${PYENROOT_NVIDIA_ROOT:+PYENROOT_NVIDIA_ROOT=$PYENROOT_NVIDIA_ROOT} "${env[@]}" \
        "$(command -v "$PYTHON")" -m pyenroot "$@"
}
mkdir -p "$WORK/home/run" && chmod 700 "$WORK/home/run"
[ "$(id -u)" = 0 ] && chown "$RUN_AS": "$WORK/home/run"

say "pyenroot doctor --gpu"
pyenroot -- doctor --gpu || true

INSIDE='set -- /dev/nvidia*; if [ -e "$1" ]; then echo "devices: $*"; else echo "devices: none"; fi
nvidia-smi -L 2>&1; if [ -x /bin/cudacheck ]; then /bin/cudacheck; fi'

say "NVIDIA_VISIBLE_DEVICES=all"
all_out=$(pyenroot NVIDIA_VISIBLE_DEVICES=all -- start gpucheck sh -c "$INSIDE" 2>&1) || true
printf '%s\n' "$all_out"
check "nvidia-smi -L lists a GPU" grep -q '^GPU 0: ' <<<"$all_out"
if [ -x "$WORK/cudacheck" ]; then check "CUDA kernel runs" grep -q 'CUDA kernel OK' <<<"$all_out"; fi

say "NVIDIA_VISIBLE_DEVICES=all with a minimal /dev (ENROOT_RESTRICT_DEV)"
restricted=$(pyenroot NVIDIA_VISIBLE_DEVICES=all ENROOT_RESTRICT_DEV=y -- start gpucheck sh -c "$INSIDE" 2>&1) || true
printf '%s\n' "$restricted"
check "device nodes bound into a minimal /dev" grep -q 'devices: .*/dev/nvidiactl' <<<"$restricted"

say "NVIDIA_VISIBLE_DEVICES=void with a minimal /dev"
void_out=$(pyenroot NVIDIA_VISIBLE_DEVICES=void ENROOT_RESTRICT_DEV=y -- start gpucheck sh -c "$INSIDE" 2>&1) || true
printf '%s\n' "$void_out"
check "no device node" grep -qx 'devices: none' <<<"$void_out"
check "no nvidia-smi" bash -c '! grep -q "^GPU 0: " <<<"$1"' _ "$void_out"
if [ -x "$WORK/cudacheck" ]; then check "no CUDA device" grep -q 'no CUDA device' <<<"$void_out"; fi

say "done in $(( $(date +%s) - began )) s, $failures failure(s)"
[ "$failures" = 0 ]

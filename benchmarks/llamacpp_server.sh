#!/usr/bin/env bash
# Serve a fornalha run with llama.cpp's own server, the anchor that benchmarks/serve_load.py compares against.
#
#   benchmarks/llamacpp_server.sh RUN_DIR PORT [NP]      (NP parallel slots, default 16)
#   benchmarks/llamacpp_server.sh --build-only           (only build/cache the binaries, print their folder)
#   env: PYTHON (the Python with fornalha), FORNALHA_CACHE, JOBS (build jobs, 2), LLAMA_SERVER_EXTRA
#
# 1. Build llama.cpp's `llama-server` and `llama-tokenize` from the source vendored in the llama-cpp-python
#    sdist on PyPI (cmake, -DGGML_NATIVE=ON, only those targets), cached outside the repository in
#    ~/.cache/fornalha/llama.cpp/<version>/bin (override the root with FORNALHA_CACHE). The build runs once;
#    on 2 cores it takes about 10 minutes (see docs/export.md). Concurrent builds wait on a lock.
# 2. Export RUN_DIR's best checkpoint to GGUF (f32) with `fornalha export gguf`, into
#    RUN_DIR/export/model-f32.gguf (re-exported at every start, so it is never stale; fornalha refuses to
#    overwrite a file there that is not a GGUF).
# 3. exec llama-server on 127.0.0.1:PORT with -np NP slots and 2 threads, one context per slot of the run's
#    context window.
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE_ROOT="${FORNALHA_CACHE:-$HOME/.cache/fornalha}/llama.cpp/$LLAMA_CPP_PYTHON_VERSION"
BIN_DIR="$CACHE_ROOT/bin"
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"   # the Python that has fornalha
PIP="${PIP:-$PYTHON -m pip}"
JOBS="${JOBS:-2}"

die() { echo "llamacpp_server.sh: $*" >&2; exit 2; }

build_llamacpp() {
    if [[ -x "$BIN_DIR/llama-server" && -x "$BIN_DIR/llama-tokenize" ]]; then
        return 0
    fi
    mkdir -p "$CACHE_ROOT"
    exec 9>"$CACHE_ROOT/.build.lock"
    flock 9
    if [[ -x "$BIN_DIR/llama-server" && -x "$BIN_DIR/llama-tokenize" ]]; then
        return 0   # another process built it while we waited
    fi
    if ! command -v cmake >/dev/null || ! command -v g++ >/dev/null; then
        echo "installing cmake and g++ (apt-get)" >&2
        apt-get update -q && apt-get install -y -q cmake g++ >&2 || die "cmake/g++ missing and apt-get failed"
    fi
    local src="$CACHE_ROOT/src"
    if [[ ! -f "$src/vendor/llama.cpp/CMakeLists.txt" ]]; then
        rm -rf "$CACHE_ROOT/sdist" "$src"
        mkdir -p "$CACHE_ROOT/sdist" "$src"
        $PIP download --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" \
            -d "$CACHE_ROOT/sdist" -q >&2 || die "could not download the llama-cpp-python sdist"
        tar -xzf "$CACHE_ROOT"/sdist/llama_cpp_python-*.tar.gz -C "$src" --strip-components=1
    fi
    local build="$CACHE_ROOT/build"
    cmake -S "$src/vendor/llama.cpp" -B "$build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
        -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON >&2
    cmake --build "$build" --config Release -j "$JOBS" --target llama-server llama-tokenize >&2
    mkdir -p "$BIN_DIR.tmp"
    cp "$build/bin/llama-server" "$build/bin/llama-tokenize" "$BIN_DIR.tmp/"
    rm -rf "$BIN_DIR" && mv "$BIN_DIR.tmp" "$BIN_DIR"
}

if [[ "${1:-}" == "--build-only" ]]; then
    build_llamacpp
    echo "$BIN_DIR"
    exit 0
fi

[[ $# -ge 2 ]] || die "usage: $0 RUN_DIR PORT [NP]"
RUN_DIR="$1"; PORT="$2"; NP="${3:-16}"
[[ -d "$RUN_DIR" ]] || die "run folder not found: $RUN_DIR"
[[ "$PORT" =~ ^[0-9]+$ ]] || die "PORT must be a number, got: $PORT"
[[ "$NP" =~ ^[0-9]+$ && "$NP" -ge 1 ]] || die "NP must be a positive number, got: $NP"

build_llamacpp
GGUF="$RUN_DIR/export/model-f32.gguf"
mkdir -p "$RUN_DIR/export"
"$PYTHON" -m fornalha.cli export gguf --run "$RUN_DIR" --out "$GGUF" --dtype f32 >/dev/null
CTX=$("$PYTHON" -c "import gguf, sys; r = gguf.GGUFReader(sys.argv[1]); arch = r.get_field('general.architecture').contents()
print(r.get_field(arch + '.context_length').contents())" "$GGUF")
# LLAMA_SERVER_EXTRA: further llama-server flags (benchmarks/gguf_parity.py passes "-fa off -ctk f32 -ctv f32")
# shellcheck disable=SC2086
exec "$BIN_DIR/llama-server" -m "$GGUF" --host 127.0.0.1 --port "$PORT" -np "$NP" -t 2 -tb 2 \
    -c $((CTX * NP)) --no-webui ${LLAMA_SERVER_EXTRA:-}

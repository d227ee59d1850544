#!/usr/bin/env bash
# Builds every image docker-compose.yml needs from Debian's packages and PyPI alone, for a machine
# that reaches no image registry (CI here): podman + mmdebstrap + runc.
#
#   docker/local/build.sh            # from the repository root; prints each step's time
#   eval "$(docker/local/build.sh --env)"   # the variables that point docker-compose.yml at them
#   docker/local/build.sh --gpu      # also localhost/cavsync:gpu: docker/Dockerfile.gpu on the Debian
#                                    # base in place of nvidia/cuda (build only: no GPU here)
#
# 1. localhost/debian-base:bookworm   mmdebstrap --variant=minbase (once; kept until removed)
# 2. localhost/cavsync-python:3.11    Debian's Python 3.11 in a venv (stands in for python:3.x-slim)
# 3. localhost/cavsync-redis:7        Debian's redis-server 7.0 (stands in for redis:7)
# 4. localhost/cavsync-postgres:15    Debian's PostgreSQL 15 (stands in for postgres:16)
# 5. localhost/cavsync:cpu            docker/Dockerfile on (2), torch from PyPI (its CPU index is not
#                                     reachable here), the same file a Docker user builds
# Layers are cached by podman: a second run with no change takes seconds. Measured on the 2-core CI
# machine (2026-12-06): cold 249 s in all (base 22 s, python 10 s, redis 5 s, postgres 18 s, cavsync
# 194 s), cached 4 s; --gpu 245 s more. Sizes: cavsync:cpu 6.42 GB (PyPI's torch is its CUDA build),
# cavsync:gpu 7.78 GB, postgres 633 MB, redis 270 MB, python 339 MB, debian-base 180 MB.
#
# The stack with Debian's podman 4.3 and podman-compose (what tests/cavsync/test_compose_stack.py does):
#   pc() { podman-compose --podman-args="--runtime runc --cgroup-manager cgroupfs" "$@"; }
#   pc up -d redis postgres          # until both pass: podman healthcheck run <container> (no timers
#                                    # without systemd; podman-compose ignores service_healthy < 4.6)
#   pc up -d --no-deps migrate       # until it has exited 0
#   pc up -d --no-deps --no-recreate --scale worker=2 api worker
#   pc down -v --remove-orphans      # --remove-orphans: down knows one worker from the file
set -euo pipefail

PODMAN=(podman --runtime runc --cgroup-manager cgroupfs)
BASE=localhost/debian-base:bookworm
PYTHON=localhost/cavsync-python:3.11-bookworm
REDIS=localhost/cavsync-redis:7
POSTGRES=localhost/cavsync-postgres:15
CAVSYNC=localhost/cavsync:cpu
TORCH_INDEX=${TORCH_INDEX:-https://pypi.org/simple}
CERTS=${CAVSYNC_BUILD_CERTS:-/etc/ssl/certs}

if [ "${1:-}" = "--env" ]; then
    echo "export CAVSYNC_IMAGE=$CAVSYNC CAVSYNC_REDIS_IMAGE=$REDIS CAVSYNC_POSTGRES_IMAGE=$POSTGRES"
    exit 0
fi

step() {  # step NAME COMMAND...: runs it and prints how long it took
    local name=$1 start
    shift
    start=$(date +%s)
    "$@"
    echo "build.sh: $name $(($(date +%s) - start)) s" >&2
}

build() {  # build IMAGE DOCKERFILE [ARGS...]: host network for apt and PyPI; docker format keeps HEALTHCHECK
    local image=$1 file=$2
    shift 2
    "${PODMAN[@]}" build --format docker --network host --layers -f "$file" -t "$image" "$@" .
}

base() {
    if ! "${PODMAN[@]}" image exists "$BASE"; then
        local tar
        tar=$(mktemp -d)/base.tar
        mmdebstrap --variant=minbase --include=ca-certificates bookworm "$tar"
        "${PODMAN[@]}" import --change 'CMD ["bash"]' "$tar" "$BASE"
        rm -rf "$(dirname "$tar")"
    fi
}

cd "$(dirname "$0")/../.."
step "$BASE" base
step "$PYTHON" build "$PYTHON" docker/local/python.Dockerfile --build-arg "DEBIAN_IMAGE=$BASE"
step "$REDIS" build "$REDIS" docker/local/redis.Dockerfile --build-arg "DEBIAN_IMAGE=$BASE"
step "$POSTGRES" build "$POSTGRES" docker/local/postgres.Dockerfile --build-arg "DEBIAN_IMAGE=$BASE"
# pip checks PyPI's certificate against this machine's CAs (a TLS proxy's root among them): mounted
# for the RUN steps only, never copied into a layer (apt fetches over plain http, signed)
step "$CAVSYNC" build "$CAVSYNC" docker/Dockerfile --build-arg "PYTHON_IMAGE=$PYTHON" \
    --build-arg "TORCH_INDEX=$TORCH_INDEX" -v "$CERTS:/etc/ssl/certs:ro"
if [ "${1:-}" = "--gpu" ]; then
    # PyPI's torch and faiss-gpu wheels carry their CUDA runtimes; nvidia/cuda's base adds the
    # driver hook-up (NVIDIA_* variables, cuda-compat), which a GPU host's container toolkit needs
    step localhost/cavsync:gpu build localhost/cavsync:gpu docker/Dockerfile.gpu \
        --build-arg "CUDA_IMAGE=$BASE" -v "$CERTS:/etc/ssl/certs:ro"
fi
"${PODMAN[@]}" images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'cavsync|debian-base' >&2

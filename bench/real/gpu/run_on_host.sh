#!/usr/bin/env bash
# The GPU benchmark on an offline host with Python 3.12 and torch 2.11.0+cu130 (docs/gpu.md).
# Run from the repository root, with the parts of .gpu-bundle/ (bench/real/gpu/build_bundle.sh) present.
#
#   bench/real/gpu/run_on_host.sh --stage        copy the bundle parts present into $VSR_GPU_STAGE and
#                                           stop (for hosts that receive the parts in several goes)
#   bench/real/gpu/run_on_host.sh [HOST ARGS]    unpack, check, then python3 -m bench.real.gpu.host HOST ARGS
#                                           (e.g. --engines 4 --duration 60; see its --help)
#
# Environment: VSR_GPU_STAGE (default /tmp/vsr-gpu-stage), VSR_GPU_SITE (unpack folder, default
# /tmp/vsr-gpu), VSR_GPU_BUDGET_S (seconds for the whole script, default 570), PYTHON (python3),
# OUT (if set: results are packed there too, as the device tool fetches them).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
cd "$ROOT"
BUNDLE="$ROOT/.gpu-bundle"
STAGE="${VSR_GPU_STAGE:-/tmp/vsr-gpu-stage}"
SITE_PARENT="${VSR_GPU_SITE:-/tmp/vsr-gpu}"
SITE="$SITE_PARENT/site"
BUDGET_S="${VSR_GPU_BUDGET_S:-570}"
PY="${PYTHON:-python3}"
say() { echo "[run_on_host ${SECONDS}s] $*"; }

if [[ ${1:-} == --stage ]]; then
  mkdir -p "$STAGE"
  cp -v "$BUNDLE"/site.tar.xz.* "$STAGE"/
  exit 0
fi

# --- 1. the bundle: parts from .gpu-bundle/ and from the stage folder, checked, unpacked once.
if [[ ! -f $SITE/.complete ]]; then
  declare -A part_of=()
  for part in "$STAGE"/site.tar.xz.part-* "$BUNDLE"/site.tar.xz.part-*; do
    [[ -f $part ]] && part_of[$(basename "$part")]="$part"
  done
  ((${#part_of[@]})) || { say "no bundle parts in $BUNDLE or $STAGE"; exit 2; }
  mapfile -t parts < <(printf '%s\n' "${!part_of[@]}" | sort)
  files=()
  for name in "${parts[@]}"; do files+=("${part_of[$name]}"); done
  say "bundle parts: ${parts[*]}"
  sums=("$BUNDLE/site.tar.xz.sha256" "$STAGE/site.tar.xz.sha256")
  for sum in "${sums[@]}"; do
    if [[ -f $sum ]]; then
      actual=$(cat "${files[@]}" | sha256sum | cut -d' ' -f1)
      if [[ $actual != "$(cut -d' ' -f1 "$sum")" ]]; then
        say "bundle checksum mismatch: a part is missing or damaged (have: ${parts[*]})"
        exit 2
      fi
      break
    fi
  done
  rm -rf "$SITE"
  mkdir -p "$SITE_PARENT"
  cat "${files[@]}" | xz -dc -T0 | tar -x -C "$SITE_PARENT"
  touch "$SITE/.complete"
  say "unpacked into $SITE ($(du -sh "$SITE" | cut -f1))"
fi

# --- 2. environment: the bundle before the host's site-packages; flashinfer is not carried.
export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export VLLM_USE_FLASHINFER_SAMPLER=0
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
# If FlashAttention 3 misbehaves, pass --attention-backend TRITON_ATTN (vLLM 0.26 has no
# VLLM_ATTENTION_BACKEND variable any more; docs/gpu.md).

preflight() {
  "$PY" - <<'PY'
import torch, vllm, vllm._C_stable_libtorch  # noqa: F401  (links libcudart.so.13)
from vllm.entrypoints.openai import api_server  # noqa: F401  (the whole serving import chain)
print("preflight ok: vllm", vllm.__version__, "torch", torch.__version__,
      "cuda", torch.version.cuda, "gpu", torch.cuda.get_device_name(0))
PY
}
if ! preflight; then
  # The CUDA 13 libraries of the host's nvidia-* wheels, for the loader.
  libdirs=$("$PY" -c 'import glob, os, site
dirs = {os.path.dirname(p) for s in site.getsitepackages()
        for p in glob.glob(os.path.join(s, "nvidia", "**", "lib*.so*"), recursive=True)}
print(":".join(sorted(dirs)))')
  say "preflight failed; retrying with LD_LIBRARY_PATH += $libdirs"
  export LD_LIBRARY_PATH="$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  preflight || { say "vLLM does not import; see docs/gpu.md (What if vLLM fails to start)"; exit 3; }
fi

# --- 3. the benchmark, inside what is left of the budget; engines stopped on any exit.
RESULTS="${VSR_GPU_RESULTS:-bench/results/gpu-$(date -u +%F)}"
mkdir -p "$RESULTS"
pack_results() {
  [[ -n ${OUT:-} && -d ${OUT:-} ]] || return 0
  tar -czf "$OUT/gpu-results.tar.gz" "$RESULTS" 2>/dev/null || true
  report=$(find "$RESULTS" -name report.md -newer "$RESULTS/env.json" 2>/dev/null | head -1)
  [[ -n $report ]] && cp "$report" "$(dirname "$report")/summary.json" "$OUT"/ 2>/dev/null
  cp "$RESULTS"/sizing.json "$RESULTS"/profile.json "$RESULTS"/host.log "$OUT"/ 2>/dev/null
  return 0
}
host_pid=
stop_host() {
  if [[ -n $host_pid ]] && kill -0 "$host_pid" 2>/dev/null; then
    kill -TERM "$host_pid" 2>/dev/null || true
    wait "$host_pid" 2>/dev/null || true
  fi
}
trap 'stop_host; pack_results' EXIT
trap 'exit 130' INT TERM

left=$((BUDGET_S - SECONDS))
say "starting bench.real.gpu.host with ${left}s left; results in $RESULTS"
"$PY" -m bench.real.gpu.host --results-dir "$RESULTS" --deadline-s "$left" "$@" \
  > >(tee "$RESULTS/host.log") 2>&1 &
host_pid=$!
wait "$host_pid"

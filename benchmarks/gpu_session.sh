#!/usr/bin/env bash
# The GPU checks of one session in one call (device time is scarce: 15 minutes a task, start included):
# gpu_train_check.sh with shortened limits, then the generation and scale GPU paths, each capped by one
# overall deadline, the logs packed into OUT/gpu_logs.tar.gz.
#
#   bash benchmarks/gpu_session.sh [--tiny] OUT [SECONDS]     # SECONDS: the whole script's budget (default 520)
#
# On the device machine: wheels in .whl/ (the project's pinned versions; the image lacks trl, datasets,
# math-verify) are installed into /tmp/site first, and the real tokenizers are read from .tok/tokenizers (a
# copy of ../shared/data/tokenizers, which does not travel) when TS_TOKENIZERS / THINKSAFE_DATA are unset.
# To prepare them here (they are git-ignored through .git/info/exclude, and travel with `carry`):
#   mkdir -p .whl .tok && cp -r ../shared/data/* .tok/
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .whl \
#     trl==X datasets==X dill==X multiprocess==X math-verify==X latex2sympy2_extended==X \
#     antlr4-python3-runtime==X transformers==X tokenizers==X peft==X accelerate==X huggingface_hub==X \
#     hf-xet==X httpx2==X httpcore2==X truststore==X click==X kernels==X tomlkit==X liger-kernel
#   (X: the versions `.venv/bin/pip list` shows; 29 MiB in all on 2026-12-04)
# TS_SKIP (names of gpu_train_check.sh's parts, or generation / scale) skips parts already measured.
set -uo pipefail
TINY=""
if [[ "${1:-}" == "--tiny" ]]; then TINY="--tiny"; shift; fi
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(mkdir -p "${1:?usage: gpu_session.sh [--tiny] OUT [SECONDS]}" && cd "$1" && pwd)"
TOTAL="${2:-520}"
export TS_DEADLINE=$(( $(date +%s) + TOTAL ))
export PYTHON="${PYTHON:-python3}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
cd "$REPO"
if compgen -G ".whl/*.whl" > /dev/null && [[ -z "$TINY" ]]; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
if [[ -d .tok/tokenizers/qwen3 ]]; then
  export TS_TOKENIZERS="${TS_TOKENIZERS:-$REPO/.tok/tokenizers}" THINKSAFE_DATA="${THINKSAFE_DATA:-$REPO/.tok}"
fi
export PYTHONPATH="$REPO/src:$REPO/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
left() { echo $(( TS_DEADLINE - $(date +%s) )); }

# 1. training check (throughput rows shortened: 8 s a method, 90 s in all; no part over 110 s)
TS_TP_BUDGET="${TS_TP_BUDGET:-8}" TS_TP_DEADLINE="${TS_TP_DEADLINE:-90}" TS_PART_MAX="${TS_PART_MAX:-110}" \
  bash benchmarks/gpu_train_check.sh $TINY "$OUT/train_check"
cp "$OUT/train_check/results.md" "$OUT/results.md"

# 2. generation: plain generate vs the transformers backend (static / continuous batching)
L=$(left); L=$(( L < ${TS_GEN_MAX:-90} ? L : ${TS_GEN_MAX:-90} ))
if [[ " ${TS_SKIP:-} " == *" generation "* ]]; then
  echo "- generation: skipped (TS_SKIP)" >> "$OUT/results.md"
elif (( L > 20 )); then
  GEN_ARGS=(--repeats 1 --new-tokens 256); [[ -n "$TINY" ]] && GEN_ARGS=(--tiny)
  timeout --kill-after=5 "$L" "$PYTHON" benchmarks/generation_throughput.py "${GEN_ARGS[@]}" \
    --json "$OUT/generation.json" > "$OUT/generation.log" 2>&1
  echo "- generation: rc=$? (limit ${L}s)" >> "$OUT/results.md"
  { echo '```'; tail -n 12 "$OUT/generation.log"; echo '```'; } >> "$OUT/results.md"
else
  echo "- generation: not run, the deadline is reached" >> "$OUT/results.md"
fi

# 3. scale probes at the paper's shapes (guard 8B, 16k-token inputs) on the GPU
L=$(( $(left) - 5 ))
if [[ " ${TS_SKIP:-} " == *" scale "* ]]; then
  echo "- scale probes: skipped (TS_SKIP)" >> "$OUT/results.md"
elif (( L > 30 )); then
  if [[ -n "$TINY" ]]; then SC=(--tiny --device cpu --shape tiny); else SC=(--device cuda --shape paper); fi
  timeout --kill-after=5 "$L" "$PYTHON" benchmarks/scale.py "${SC[@]}" --sizes 1000 \
    --stages guard_probe perplexity_probe train_probe --work /tmp/ts-scale --json "$OUT/scale.json" \
    > "$OUT/scale.log" 2>&1
  echo "- scale probes: rc=$? (limit ${L}s)" >> "$OUT/results.md"
  { echo '```'; tail -n 15 "$OUT/scale.log"; echo '```'; } >> "$OUT/results.md"
else
  echo "- scale probes: not run, the deadline is reached" >> "$OUT/results.md"
fi
tar -czf "$OUT/gpu_logs.tar.gz" -C "$OUT" --exclude='*.safetensors' --exclude=gpu_logs.tar.gz \
  train_check generation.log scale.log 2>/dev/null
rm -rf "$OUT/train_check"
echo "results: $OUT/results.md"

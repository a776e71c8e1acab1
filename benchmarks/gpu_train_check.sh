#!/usr/bin/env bash
# One prepared GPU check of training speed (<= 10 minutes on one H200); results to paste into BENCHMARKS.md.
#
#   bash benchmarks/gpu_train_check.sh [--tiny] [OUT]        # OUT default: gpu_check (results in OUT/results.md)
#
# 1. environment: card, driver, torch / transformers / trl / peft, which optional kernels import
# 2. benchmarks/train_throughput.py on Qwen3-0.6B's shape (random weights, the paper's length distribution):
#    official recipe, `thinksafe train` before token budgets (shipped_1x8), `thinksafe train` as shipped
#    (shipped), token-budget packed rows (ours), length-grouped padded batches; tokens/s, MFU, peak memory
# 3. tests/trainers/test_kernels.py: on CUDA, Liger / Cut Cross-Entropy (when installed) against the PyTorch loss
# 4. `thinksafe grpo`, 3 steps, with the guard in process at Llama-Guard-3-8B's shape (random weights)
# 5. FSDP2 launch of `thinksafe train` on the one GPU (accelerate, configs/accelerate/fsdp.yaml), smoke test
#
# --tiny: every part at tiny shapes on the CPU (a minute or two), to know the script works without a GPU.
# Needs the real tokenizers for 4-5: TS_TOKENIZERS (default ../shared/data/tokenizers next to the repo).
# Each part has its own time limit; a failing part is recorded and the next one runs.
# TS_DEADLINE (seconds since the epoch) caps every part's limit, so a caller with a fixed device-time
# budget (benchmarks/gpu_session.sh) gets its later parts a chance, and TS_PART_MAX caps each part; TS_TP_BUDGET / TS_TP_DEADLINE set the
# throughput rows' per-method budget and total deadline; TS_SKIP="throughput kernels" skips parts by name.
set -uo pipefail
TINY=""
if [[ "${1:-}" == "--tiny" ]]; then TINY="--tiny"; shift; fi
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(mkdir -p "${1:-gpu_check}" && cd "${1:-gpu_check}" && pwd)"
PY="${PYTHON:-python}"
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
TOK="${TS_TOKENIZERS:-$REPO/../shared/data/tokenizers}"
RES="$OUT/results.md"
cd "$REPO"

part() {   # part NAME SECONDS CMD...  -> OUT/NAME.log, a line in results.md
  local name="$1" limit="$2"; shift 2
  local t0=$SECONDS
  if [[ " ${TS_SKIP:-} " == *" $name "* ]]; then echo "- $name: skipped (TS_SKIP)" >> "$RES"; return 0; fi
  if [[ -n "${TS_DEADLINE:-}" ]]; then
    local left=$(( TS_DEADLINE - $(date +%s) ))
    if (( left < 15 )); then echo "- $name: not run, the session's deadline is reached" >> "$RES"; return 0; fi
    (( left < limit )) && limit=$left
  fi
  if [[ -n "${TS_PART_MAX:-}" ]] && (( TS_PART_MAX < limit )); then limit=$TS_PART_MAX; fi
  echo "== $name (limit ${limit}s)" >&2
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "- $name: rc=$rc, $((SECONDS - t0)) s (log: $name.log)" >> "$RES"
  tail -n 3 "$OUT/$name.log" >&2
  return 0
}

{
  echo "# GPU training check, $(date -u +%Y-%m-%dT%H:%MZ)${TINY:+ (tiny shapes, CPU check of the script)}"
  echo
  echo '```'
  (nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi")
  "$PY" - <<'EOF'
import importlib, torch, transformers, trl, peft
print("torch", torch.__version__, "cuda", torch.version.cuda, "| transformers", transformers.__version__,
      "| trl", trl.__version__, "| peft", peft.__version__)
for m in ("liger_kernel", "cut_cross_entropy", "flash_attn"):
    try:
        importlib.import_module(m); print(m, "importable")
    except Exception as e:
        print(m, "not importable:", type(e).__name__)
EOF
  echo '```'
  echo
} > "$RES"

# 2. throughput rows (the table is printed on stdout: it goes into results.md)
if [[ -n "$TINY" ]]; then BUDGET=2; DEADLINE=120; else BUDGET=15; DEADLINE=200; fi
BUDGET="${TS_TP_BUDGET:-$BUDGET}"; DEADLINE="${TS_TP_DEADLINE:-$DEADLINE}"
part throughput $((DEADLINE + 60)) "$PY" benchmarks/train_throughput.py $TINY \
  --methods official,shipped_1x8,shipped,ours,grouped_padded --budget-seconds "$BUDGET" \
  --deadline-seconds "$DEADLINE" --json "$OUT/train_throughput.json"
sed -n '/^LoRA SFT throughput/,/^total/p' "$OUT/throughput.log" >> "$RES"
echo >> "$RES"

# 3. kernels against the PyTorch loss (skips with a reason when not on CUDA / not installed)
part kernels 120 "$PY" -m pytest -q -rs tests/trainers/test_kernels.py
tail -n 4 "$OUT/kernels.log" | sed 's/^/    /' >> "$RES"

# 4-5 need the real tokenizers
if [[ -d "$TOK/qwen3" ]]; then
  part models 240 "$PY" benchmarks/gpu_check_parts.py models "$OUT/models" $TINY --tokenizers "$TOK"
  part grpo 240 "$PY" benchmarks/gpu_check_parts.py grpo "$OUT/models" $TINY
  if [[ -f "$OUT/models/grpo_result.json" ]]; then
    { echo '```json'; cat "$OUT/models/grpo_result.json"; echo; echo '```'; } >> "$RES"
  fi
  "$PY" benchmarks/gpu_check_parts.py fsdp-config "$OUT/models" $TINY > /dev/null
  CPU_FLAGS=(); [[ -n "$TINY" ]] && CPU_FLAGS=(--cpu --mixed_precision no)
  part fsdp2 180 "$PY" -m accelerate.commands.launch --config_file src/thinksafe/configs/accelerate/fsdp.yaml \
    --num_processes 1 "${CPU_FLAGS[@]}" -m thinksafe.cli train "$OUT/models/fsdp_train.yaml" \
    --out "$OUT/models/fsdp_run" --quiet
  if [[ -f "$OUT/models/fsdp_run/train_summary.json" ]]; then
    { echo '```json'; cat "$OUT/models/fsdp_run/train_summary.json"; echo; echo '```'; } >> "$RES"
  fi
else
  echo "- grpo, fsdp2: skipped, no tokenizers at $TOK (set TS_TOKENIZERS)" >> "$RES"
fi
rm -rf "$OUT/models/policy" "$OUT/models/guard" "$OUT/models/grpo_run/checkpoints"   # weights: large, random
echo "results: $RES" >&2

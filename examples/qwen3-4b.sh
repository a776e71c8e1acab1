#!/usr/bin/env bash
# THINKSAFE on Qwen3-4B with Llama-Guard-3-8B as the guard, on one GPU: the README's real-model
# quick start. First: pip install 'thinksafe[vllm]' (vLLM for generation; `model.backend: auto`
# picks it when installed) and `hf auth login` (meta-llama/Llama-Guard-3-8B and the refusal guard
# allenai/wildguard are gated: accept their licences on their Hub pages).
# Benchmark files are fetched (pinned, checksum-verified) into the HF cache on first use, unless
# evaluate.data_dir or $THINKSAFE_DATA holds them. CI runs this exact file on real-shape stand-ins
# (tests/test_recipe.py).
set -euo pipefail
thinksafe check qwen3-4b                                # every model, guard, benchmark and setting, before anything runs
thinksafe evaluate qwen3-4b --set evaluate.limit=10     # smoke test: the base model, 10 prompts per benchmark
thinksafe run qwen3-4b --set prompts.limit=100 --out runs/qwen3-4b-first   # a first small run: 100 training prompts
thinksafe run qwen3-4b                                  # generate -> judge -> dataset -> train -> evaluate -> report
thinksafe report runs/qwen3-4b --paper-model Qwen3-4B   # report.md, summary.csv, pareto.png beside the paper's points

"""OPSA's memory at a 16k-token rollout with the real Qwen3 vocabulary, against the SFT path's.

As the scale rehearsal (benchmarks/scale.py): a random-initialised 2-layer Qwen3 (hidden 64, the
scale rehearsal's "tiny" shape) with the REAL vocabulary of 151,936 rows and the real Qwen3 tokenizer
(prompts rendered by its chat template), LoRA r 32 on q_proj / v_proj, fp32 on CPU, gradient
checkpointing on (the train stage's default). Each path runs in its own subprocess (its own peak RSS,
Linux VmHWM, reset after the model and inputs are built) and does ONE loss + backward step:

- ``opsa``: :func:`thinksafe.trainers.opsa.opsa_loss_parts` on one rollout of ``--tokens`` response
  tokens: the student's forward with grad, the teacher's (adapter off) on the prompt inside the
  ``opsa`` privileged context, the per-token reverse KL over the full vocabulary, chunked; then
  backward. The rollout is GIVEN (seeded random token ids ending in EOS), not sampled: sampling 16k
  tokens on CPU would take most of an hour and is transformers' ``generate()`` with a KV cache, which
  is not the training step's memory.
- ``sft``: the packed SFT path (:func:`thinksafe.trainers.packed.packed_lm_loss`, the varlen
  attention, the chunked LM-head cross-entropy) on one example of the same prompt + the same
  response tokens; then backward.

Peak RSS is taken with glibc's mmap threshold fixed at 1 MiB (``MALLOC_MMAP_THRESHOLD_``; ``--glibc-default``
leaves it adaptive): OPSA's 31.9 MiB divergence chunks sit just under glibc's adaptive cap of 32 MiB,
so with the default, freed chunks stay in the heap and RSS grows with the rollout although no tensor
outlives its chunk (measured: +2.7 GiB at a 2k-token rollout, >16 GiB at 16k before it was stopped).

Every op's outputs are watched (a ``TorchDispatchMode``): the largest tensor whose last dimension is
the vocabulary (logits, log-softmaxes, their gradients) is reported as rows x vocabulary; it must stay
within the LM-head chunk budget (``thinksafe.trainers.loss.CHUNK_BUDGET_BYTES``, 256 MiB: a chunk of
rows, never sequence x vocabulary, which is 9.3 GiB at 16k tokens), or the script exits 1.

    python benchmarks/opsa_memory.py                  # 16,384-token rollout (CPU, minutes)
    python benchmarks/opsa_memory.py --tiny           # a 256-token rollout (seconds; the test)
    python benchmarks/opsa_memory.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from scale import preload, reset_peak, rss_mib  # noqa: E402
from scale_inputs import DATA, shape_configs  # noqa: E402

VOCAB = 151936
# glibc serves allocations below its mmap threshold from the heap; the threshold adapts upwards to at
# most 32 MiB, and OPSA's divergence chunk buffers (55 rows x 151,936 x 4 bytes = 31.9 MiB) fall just
# under it: freed chunks are not returned and RSS grows with the rollout (~1.3 GiB per 1k tokens here)
# though no tensor outlives its chunk. A fixed threshold (1 MiB) makes RSS the tensors' memory.
MMAP_THRESHOLD = 1 << 20
PROMPT = "Explain, step by step, how a city water treatment plant removes pathogens."


def build(tokens: int, seed: int = 0):
    """(LoRA model, tokenizer, prompt ids, teacher prompt ids, completion ids): the model as the
    scale rehearsal's policy, the prompts rendered by the real tokenizer's chat template."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    from thinksafe import steering
    from thinksafe.families import get_family
    from thinksafe.runtime import render_prompt
    tok = AutoTokenizer.from_pretrained(str(DATA / "tokenizers" / "qwen3"))
    pol, _ = shape_configs("tiny", VOCAB)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(Qwen3Config(**pol, bos_token_id=None, eos_token_id=tok.eos_token_id,
                                         pad_token_id=tok.pad_token_id))
    model = get_peft_model(model, LoraConfig(r=32, lora_alpha=16, lora_dropout=0.05,
                                             target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    fam = get_family("qwen3")
    prompt = tok(render_prompt(tok, PROMPT, fam), add_special_tokens=False)["input_ids"]
    text, _ = steering.apply("opsa", PROMPT, "harmful")
    teacher = tok(render_prompt(tok, text, fam), add_special_tokens=False)["input_ids"]
    g = torch.Generator().manual_seed(seed)
    body = torch.randint(0, len(tok) - 300, (tokens - 1,), generator=g).tolist()   # ordinary tokens
    return model, tok, prompt, teacher, body + [tok.eos_token_id]


class VocabWatch:
    """The largest op output whose last dimension is the vocabulary (and the largest of any shape),
    views of an input excluded."""

    def __init__(self, vocab: int):
        from torch.utils._python_dispatch import TorchDispatchMode

        watch = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                watch.see(out, args)
                return out
        self.vocab, self.mode = vocab, _Mode()
        self.vocab_rows, self.vocab_bytes, self.any_bytes, self.any_shape = 0, 0, 0, None

    def see(self, out, args) -> None:
        import torch
        from torch.utils._pytree import tree_leaves
        inputs = {a.untyped_storage().data_ptr() for a in tree_leaves(args) if isinstance(a, torch.Tensor)}
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.untyped_storage().data_ptr() in inputs:
                continue
            size = t.numel() * t.element_size()
            if size > self.any_bytes:
                self.any_bytes, self.any_shape = size, list(t.shape)
            if t.dim() >= 1 and t.shape[-1] == self.vocab and size > self.vocab_bytes:
                self.vocab_bytes, self.vocab_rows = size, t.numel() // self.vocab


DIVERGENCE = ["mixed"]      # opsa.divergence of the OPSA step (--divergence); mixed: 0.5 forward + 0.5 reverse


def step_opsa(model, tok, prompt, teacher, completion) -> float:
    from thinksafe.trainers.opsa import divergence_alpha, opsa_loss_parts
    d = DIVERGENCE[0]
    parts = opsa_loss_parts(model, [prompt], [teacher], [completion], tok.pad_token_id, alpha=divergence_alpha(d),
                            forward_weight=0.5 if d == "mixed" else None)
    loss = parts["div_sum"] / parts["tokens"]
    loss.backward()
    return float(loss.detach())


def step_sft(model, tok, prompt, teacher, completion) -> float:
    from thinksafe.trainers.packed import packed_lm_loss
    from thinksafe.trainers.packing import PackedCollator
    from thinksafe.trainers.varlen import VARLEN_ATTENTION, register_varlen_attention
    register_varlen_attention()
    for m in (model, model.get_base_model()):
        m.config._attn_implementation = VARLEN_ATTENTION
    batch = PackedCollator(pad_token_id=tok.pad_token_id)(
        [{"input_ids": prompt + completion, "labels": [-100] * len(prompt) + completion}])
    loss = packed_lm_loss(model, batch)
    loss.backward()
    return float(loss.detach())


def measure(path: str, tokens: int) -> dict:
    """One path's step in this process: peak RSS from after the build, the largest vocabulary tensor."""
    import torch
    preload()
    import thinksafe.trainers.opsa  # noqa: F401
    import thinksafe.trainers.packed  # noqa: F401
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    model, tok, prompt, teacher, completion = build(tokens)
    step = {"opsa": step_opsa, "sft": step_sft}[path]
    watch = VocabWatch(VOCAB)
    reset_peak()
    start = rss_mib()
    t0 = time.perf_counter()
    with watch.mode:
        loss = step(model, tok, prompt, teacher, completion)
    secs = time.perf_counter() - t0
    peak = rss_mib()
    grads = sum(p.grad is not None for p in model.parameters() if p.requires_grad)
    return {"path": path, "response_tokens": len(completion), "prompt_tokens": len(prompt),
            "teacher_prompt_tokens": len(teacher) if path == "opsa" else None, "loss": round(loss, 4),
            "lora_grads": grads, "seconds": round(secs, 1), "start_rss_mib": round(start, 1),
            "peak_rss_mib": round(peak, 1), "step_rss_mib": round(peak - start, 1),
            "largest_vocab_tensor": [watch.vocab_rows, VOCAB],
            "largest_vocab_tensor_mib": round(watch.vocab_bytes / 2**20, 1),
            "largest_tensor": watch.any_shape, "largest_tensor_mib": round(watch.any_bytes / 2**20, 1),
            "full_logits_mib": round(len(completion) * VOCAB * 4 / 2**20, 1)}


def run_child(path: str, tokens: int, inprocess: bool, glibc_default: bool = False) -> dict:
    if inprocess:
        return measure(path, tokens)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    if not glibc_default:
        env.setdefault("MALLOC_MMAP_THRESHOLD_", str(MMAP_THRESHOLD))
    r = subprocess.run([sys.executable, __file__, "--child", path, "--tokens", str(tokens),
                        "--divergence", DIVERGENCE[0]],
                       capture_output=True, text=True, env=env)
    lines = [x for x in r.stdout.splitlines() if x.startswith("{")]
    if r.returncode != 0 or not lines:
        raise SystemExit(f"{path} failed:\n{(r.stderr or r.stdout)[-3000:]}")
    return json.loads(lines[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=16384, help="response (rollout) tokens")
    ap.add_argument("--tiny", action="store_true", help="a 256-token rollout (seconds)")
    ap.add_argument("--inprocess", action="store_true", help="both paths in this process (peaks not separate)")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--glibc-default", action="store_true",
                    help="leave glibc's adaptive mmap threshold (RSS then holds freed heap chunks)")
    ap.add_argument("--divergence", choices=["mixed", "reverse", "forward"], default="mixed",
                    help="opsa.divergence of the OPSA step (default: the trainer's, mixed)")
    ap.add_argument("--child", choices=["opsa", "sft"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    DIVERGENCE[0] = args.divergence
    tokens = 256 if args.tiny else args.tokens
    if args.child:
        print(json.dumps(measure(args.child, tokens)), flush=True)
        return 0
    rows = [run_child(p, tokens, args.inprocess, args.glibc_default) for p in ("sft", "opsa")]
    sft, opsa = rows
    print(f"One loss + backward step, {tokens:,}-token response, OPSA divergence {args.divergence}, "
          f"vocabulary {VOCAB:,}, random 2-layer Qwen3 "
          "(hidden 64), LoRA r 32, fp32 CPU; peak RSS per process (VmHWM), from after the model was built"
          + ("; glibc's adaptive mmap threshold." if args.glibc_default or args.inprocess else
             f"; MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', MMAP_THRESHOLD)}."))
    print("| path | peak RSS MiB | step MiB | largest vocabulary tensor | its MiB | largest tensor | its MiB "
          "| full logits would be MiB | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        rv = r["largest_vocab_tensor"]
        print(f"| {r['path']} | {r['peak_rss_mib']:,.0f} | {r['step_rss_mib']:,.0f} | {rv[0]:,} x {rv[1]:,} | "
              f"{r['largest_vocab_tensor_mib']:,.0f} | {' x '.join(f'{d:,}' for d in r['largest_tensor'])} | "
              f"{r['largest_tensor_mib']:,.0f} | {r['full_logits_mib']:,.0f} | {r['seconds']} |")
    ratio = opsa["peak_rss_mib"] / sft["peak_rss_mib"]
    step_ratio = opsa["step_rss_mib"] / sft["step_rss_mib"] if sft["step_rss_mib"] > 0 else None
    print(f"OPSA / SFT peak RSS: {ratio:.2f}" + (f"; step memory: {step_ratio:.2f}" if step_ratio else ""))
    out = {"tokens": tokens, "vocab": VOCAB, "divergence": args.divergence, "rows": rows, "peak_ratio": round(ratio, 3),
           "step_ratio": round(step_ratio, 3) if step_ratio else None}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    from thinksafe.trainers.loss import CHUNK_BUDGET_BYTES
    bad = [r["path"] for r in rows if r["largest_vocab_tensor_mib"] * 2**20 > CHUNK_BUDGET_BYTES]
    if bad:
        print(f"NOT CHUNKED: {', '.join(bad)} held a vocabulary tensor over the chunk budget "
              f"({CHUNK_BUDGET_BYTES / 2**20:.0f} MiB)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

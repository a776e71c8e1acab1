"""LoRA SFT throughput: the official ThinkSafe recipe vs padding-free packing + chunked cross-entropy.

Random-initialised model with Qwen3-0.6B's shape (hidden 1024, 28 layers, 16/8 heads, head_dim 128,
intermediate 3072, vocab 151,936, tied embeddings; weights do not change speed), bf16, LoRA r 32 / alpha 16 /
dropout 0.05 on q_proj+v_proj, AdamW lr 1e-5, grad clip 1.0. Synthetic examples follow the paper's lengths
(about 45 % harmful with mean ~600 tokens, benign mean ~1,600, log-normal tail truncated at 16,384); each has
a prompt part (labels -100) and a response part (the loss). Every recipe trains on the same sample.

Recipes (``--methods``):
  official        batch 1 per step, grad accumulation 8, gradient checkpointing on, ``sdpa``, transformers'
                  loss on full logits (the paper's code: per-device batch 1, no packing).
  grouped_padded  length-grouped padded batches of <= token-budget tokens, no checkpointing, transformers'
                  loss (the 7.1x row of shared/reference/gpu_measurements.md).
  ours            padding-free packed rows of <= token-budget tokens (best-fit decreasing), varlen causal
                  attention within each example (thinksafe.trainers.varlen), chunked linear+CE that never
                  builds full logits and skips prompt positions (thinksafe.trainers.loss), checkpointing
                  only if a step does not fit (auto: retried after an out-of-memory error).
  ours_compile    ours + torch.compile of each decoder layer (regional; attention stays eager), rows padded
                  to the token budget so shapes are static. In the CUDA default only.
  shipped         `thinksafe train` as shipped: the train stage's trainer with the packaged qwen3-0.6b.yaml
                  train section (the paper's step of 8 examples, token-budget micro-batches of <= 32k
                  tokens, automatic gradient checkpointing, fused LM-head loss when installed); see
                  benchmarks/train_shipped.py. Unlike ours/grouped_padded it keeps the paper's steps.
  shipped_1x8     the same trainer without token budgets (train.micro_batch_tokens: null): each example its
                  own packed forward pass, 8 accumulation steps (the packaged layout before token budgets).

Default order on CUDA: official, shipped, ours, grouped_padded, ours_compile (its compile time is the least certain).
Each recipe: 1-2 warm-up steps, then timed steps (torch.cuda.synchronize around the clock) until the sample is
done or --budget-seconds is spent; ``official`` therefore covers a prefix of the sample (examples are drawn
i.i.d., so a prefix is a random subsample). A recipe that would start too late for --deadline-seconds is skipped and reported as such. Batches
are collated and moved to the device before timing, for every recipe. Before ``ours``, the packed + chunked
loss is compared with the official loss on a few examples of the real shape (``loss_check`` in the JSON), and
on CUDA torch's varlen FlashAttention is checked against a per-example SDPA loop (``varlen_check``; the loop
is used if varlen is missing, fails, or disagrees).

MFU = model FLOPs / time / peak. Model FLOPs per sequence of length l (counting real tokens, never padding or
recomputation): (4 * N_frozen + 6 * N_lora) * l + 6 * n_layers * n_heads * head_dim * l^2, where N_frozen counts
the matmul weights (attention + MLP projections of all layers + lm_head; 2N forward + 2N backward for input
gradients, no weight gradients for frozen weights), N_lora the LoRA weights (they also get weight gradients),
and the last term is causal attention (QK^T and PV at half the square, backward 2x forward). Peak: 989 TFLOP/s
(dense bf16, H100/H200 SXM) unless --peak-tflops says otherwise.

    python benchmarks/train_throughput.py --json train_throughput.json      # GPU (~3-4 min with defaults)
    python benchmarks/train_throughput.py --tiny                            # CPU, tiny shape, seconds (tests)
"""

from __future__ import annotations

import os

# varying batch shapes: let the CUDA caching allocator grow segments instead of fragmenting (all recipes alike)
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import argparse
import contextlib
import gc
import json
import math
import platform
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
import transformers
from transformers import Qwen3Config, Qwen3ForCausalLM

from thinksafe.trainers.loss import causal_lm_parts, chunked_cross_entropy
from thinksafe.trainers.packing import PackedCollator, PaddedCollator, plan_batches
from thinksafe.trainers.varlen import get_varlen_backend, register_varlen_attention, select_varlen_backend

QWEN3_06B = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
                 max_position_embeddings=40960)
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, tie_word_embeddings=True, max_position_embeddings=4096)
LORA = dict(r=32, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"])
LR, GRAD_CLIP, GRAD_ACCUM = 1e-5, 1.0, 8
T_START = time.perf_counter()     # reset by main()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T_START:6.1f}s] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------- data
@dataclass
class LengthSpec:
    """Token lengths (prompt + response) of the paper's training data: Qwen3 self-generated responses."""
    harmful_frac: float = 0.45
    harmful_mean: float = 600.0
    benign_mean: float = 1600.0
    sigma: float = 1.0           # log-normal shape: median ~0.6 x mean, a long tail
    max_len: int = 16384         # the official recipe truncates at 16,384
    min_len: int = 32
    prompt_mean: float = 150.0   # WildJailbreak prompts + chat template


TINY_LENGTHS = LengthSpec(harmful_mean=60, benign_mean=160, max_len=1024, min_len=8, prompt_mean=15)


def synthetic_examples(n: int, vocab_size: int, spec: LengthSpec, seed: int = 0) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(seed)

    def lognormal(mean: float, sigma: float) -> float:
        mu = math.log(mean) - sigma ** 2 / 2
        return math.exp(mu + sigma * torch.randn((), generator=g).item())

    out = []
    for _ in range(n):
        harmful = torch.rand((), generator=g).item() < spec.harmful_frac
        total = int(min(max(lognormal(spec.harmful_mean if harmful else spec.benign_mean, spec.sigma), spec.min_len),
                        spec.max_len))
        prompt = int(min(max(lognormal(spec.prompt_mean, 0.7), 4), total // 2))
        ids = torch.randint(10, vocab_size, (total,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:], "harmful": harmful})
    return out


def sample_stats(examples: list[dict]) -> dict[str, Any]:
    lens = [len(e["input_ids"]) for e in examples]
    resp = [sum(1 for t in e["labels"] if t != -100) for e in examples]
    h = [n for n, e in zip(lens, examples) if e["harmful"]]
    b = [n for n, e in zip(lens, examples) if not e["harmful"]]
    return {"n": len(lens), "tokens": sum(lens), "mean_len": sum(lens) / len(lens), "max_len": max(lens),
            "harmful_frac": len(h) / len(lens), "harmful_mean": sum(h) / max(len(h), 1),
            "benign_mean": sum(b) / max(len(b), 1), "response_token_frac": sum(resp) / sum(lens)}


# --------------------------------------------------------------------------------------------------- model
def build_model(shape: dict, device: torch.device, dtype: torch.dtype, attn: str, seed: int = 0,
                lora_dropout: float = LORA["lora_dropout"]):
    from peft import LoraConfig, get_peft_model
    cfg = Qwen3Config(**shape)
    cfg.use_cache = False
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)           # initialise in the training dtype: no fp32 copy in peak memory
    try:
        with torch.device(device):
            model = Qwen3ForCausalLM(cfg)
    finally:
        torch.set_default_dtype(default)
    model.config._attn_implementation = "sdpa"
    lcfg = LoraConfig(r=LORA["r"], lora_alpha=LORA["lora_alpha"], lora_dropout=lora_dropout,
                      target_modules=LORA["target_modules"], task_type="CAUSAL_LM")
    model = get_peft_model(model, lcfg)
    model.get_base_model().config._attn_implementation = attn
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    return model


def flop_model(cfg: Qwen3Config, n_lora: int) -> dict[str, float]:
    h, L = cfg.hidden_size, cfg.num_hidden_layers
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * cfg.intermediate_size
    lm_head = cfg.vocab_size * h
    return {"n_body": L * per_layer, "n_lm_head": lm_head, "n_lora": n_lora,
            "per_token": 4 * (L * per_layer + lm_head) + 6 * n_lora,
            "attn_coef": 6 * L * q}      # x l^2 per sequence


def model_flops(fm: dict, lengths: list[int], loss_tokens: list[int] | None = None) -> float:
    """Standard: lm_head counted on every token. With ``loss_tokens``: lm_head only where logits are computed."""
    f = sum(fm["per_token"] * n + fm["attn_coef"] * n * n for n in lengths)
    if loss_tokens is not None:
        f -= 4 * fm["n_lm_head"] * (sum(lengths) - sum(loss_tokens))
    return f


# --------------------------------------------------------------------------------------------------- losses
def _to(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def official_example_loss(model, ex: dict, num_items: int, device) -> torch.Tensor:
    """One official micro-batch: batch 1, transformers' loss on full logits, sum / tokens of the accumulation group."""
    ids = ex.get("input_ids_t")
    ids = ids if ids is not None else torch.tensor([ex["input_ids"]], device=device)
    labels = ex.get("labels_t")
    labels = labels if labels is not None else torch.tensor([ex["labels"]], device=device)
    return model(input_ids=ids, labels=labels, num_items_in_batch=num_items, use_cache=False).loss


def ours_loss(model, batch: dict, *, chunk_size: int = 2048, num_items: int | None = None,
              pass_packing_kwargs: bool = True) -> torch.Tensor:
    """A packed row (from PackedCollator, on the device): decoder hidden states + chunked CE."""
    decoder, head = causal_lm_parts(model)
    kw = dict(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
    if pass_packing_kwargs:
        kw.update(cu_seq_lens_q=batch["cu_seq_lens_q"], cu_seq_lens_k=batch["cu_seq_lens_k"],
                  max_length_q=batch["max_length_q"], max_length_k=batch["max_length_k"],
                  packed_seq_lens=batch["packed_seq_lens"])
        ctx = contextlib.nullcontext()
    else:       # torch.compile'd layers: keep Python ints out of compiled frames
        ctx = packing_context(batch)
    with ctx:
        hidden = decoder(**kw).last_hidden_state
    return chunked_cross_entropy(hidden, head.weight, batch["labels"], chunk_size=chunk_size,
                                 num_items=num_items if num_items is not None else batch["num_loss_tokens"])


_PACKING = {}


@contextlib.contextmanager
def packing_context(batch: dict):
    """Hand the packing layout to the attention outside the model's kwargs (ours_compile: no Python ints or
    tuples flow through compiled frames, so nothing recompiles when the layout changes)."""
    old = dict(_PACKING)
    _PACKING.clear()
    _PACKING.update(packed_seq_lens=batch["packed_seq_lens"], cu_seq_lens_q=batch["cu_seq_lens_q"],
                    max_length_q=batch["max_length_q"])
    try:
        yield
    finally:
        _PACKING.clear()
        _PACKING.update(old)


@torch.compiler.disable
def _context_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, sliding_window=None,
                       **kwargs):
    from thinksafe.trainers.varlen import varlen_attention_forward
    if "packed_seq_lens" not in kwargs and _PACKING:
        kwargs = {**kwargs, **_PACKING}
    return varlen_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                    sliding_window=sliding_window, **kwargs)


CONTEXT_ATTENTION = "thinksafe_varlen_ctx"


def register_attention() -> str:
    from transformers import AttentionInterface
    AttentionInterface.register(CONTEXT_ATTENTION, _context_attention)
    return register_varlen_attention()


# --------------------------------------------------------------------------------------------------- helpers
def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def free(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else None


def make_optimizer(model, device):
    params = [p for p in model.parameters() if p.requires_grad]
    kw = {"fused": True} if device.type == "cuda" else {}
    return params, torch.optim.AdamW(params, lr=LR, **kw)


def set_checkpointed_layers(model, k: int) -> None:
    """Checkpoint (non-reentrant) the first k decoder layers only; k=0 restores plain forwards."""
    decoder, _ = causal_lm_parts(model)
    for i, layer in enumerate(decoder.layers):
        if "_ts_forward" in layer.__dict__:          # undo an earlier call: back to the class's forward
            del layer.__dict__["forward"]
            del layer.__dict__["_ts_forward"]
        if i < k:
            orig = layer.forward
            layer.__dict__["_ts_forward"] = orig

            def fwd(*a, _orig=orig, **kw):
                return torch.utils.checkpoint.checkpoint(_orig, *a, use_reentrant=False, **kw)
            layer.forward = fwd


def timed(steps: list[tuple[Callable[[], None], int, list[int], list[int]]], budget_s: float, device) -> dict:
    """Run steps (fn, tokens, lengths, loss-token counts) until done or the budget is spent."""
    sync(device)
    t0 = time.perf_counter()
    n_steps, tokens, lens, losses = 0, 0, [], []
    for fn, ntok, l, lt in steps:
        fn()
        n_steps += 1
        tokens += ntok
        lens += l
        losses += lt
        if budget_s > 0 and time.perf_counter() - t0 > budget_s:
            break
    sync(device)
    return {"seconds": time.perf_counter() - t0, "tokens": tokens, "micro_steps": n_steps, "lengths": lens,
            "loss_tokens": losses}


def loss_tokens_of(ex: dict) -> int:
    return sum(1 for t in ex["labels"][1:] if t != -100)


# --------------------------------------------------------------------------------------------------- recipes
def run_official(args, shape, examples, device, dtype) -> dict:
    model = build_model(shape, device, dtype, "sdpa")
    with warnings.catch_warnings():       # renamed activation_checkpointing_enable in newer transformers
        warnings.simplefilter("ignore", FutureWarning)
        model.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    params, opt = make_optimizer(model, device)
    loss_acc = torch.zeros((), device=device)

    def micro(i: int, group: list[dict], n_items: int, last: bool):
        def fn():
            loss = official_example_loss(model, group[i], n_items, device)
            loss.backward()
            loss_acc.add_(loss.detach())
            if last:
                torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
                opt.step()
                opt.zero_grad(set_to_none=True)
        return fn

    def steps_for(exs):
        exs = [{**e, "input_ids_t": torch.tensor([e["input_ids"]], device=device),
                "labels_t": torch.tensor([e["labels"]], device=device)} for e in exs]
        out = []
        for g0 in range(0, len(exs), GRAD_ACCUM):
            group = exs[g0:g0 + GRAD_ACCUM]
            n_items = sum(loss_tokens_of(e) for e in group)
            for i, ex in enumerate(group):
                out.append((micro(i, group, n_items, i == len(group) - 1), len(ex["input_ids"]),
                            [len(ex["input_ids"])], [loss_tokens_of(ex)]))
        return out

    for fn, *_ in steps_for(examples[:2]):       # warm-up: 2 micro-batches + an optimizer step
        fn()
    opt.zero_grad(set_to_none=True)
    loss_acc.zero_()
    res = timed(steps_for(examples), args.budget_seconds, device)
    res.update(peak_gib=peak_gib(device), checkpointed_layers=shape["num_hidden_layers"],
               optimizer_steps=math.ceil(res["micro_steps"] / GRAD_ACCUM),
               examples=res["micro_steps"], note="batch 1, grad accum 8, gradient checkpointing, sdpa, full logits")
    res["mean_loss"] = loss_acc.item() / max(res["optimizer_steps"], 1)
    del model, opt
    return res


def run_grouped_padded(args, shape, examples, device, dtype) -> dict:
    model = build_model(shape, device, dtype, "sdpa")
    params, opt = make_optimizer(model, device)
    collate = PaddedCollator()
    plan = plan_batches([len(e["input_ids"]) for e in examples], args.token_budget, padded=True, seed=args.seed)
    batches = [(_to(collate([examples[i] for i in b]), device), b) for b in plan]
    loss_acc = torch.zeros((), device=device)

    def step(batch):
        def fn():
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                        use_cache=False)
            out.loss.backward()
            loss_acc.add_(out.loss.detach())
            torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return fn

    biggest = max(batches, key=lambda x: x[0]["input_ids"].numel())
    step(biggest[0])()
    loss_acc.zero_()
    steps = [(step(b), b["num_tokens"], [len(examples[i]["input_ids"]) for i in idx],
              [loss_tokens_of(examples[i]) for i in idx]) for b, idx in batches]
    res = timed(steps, args.budget_seconds, device)
    padded = sum(b["input_ids"].numel() for b, _ in batches[:res["micro_steps"]])
    res.update(peak_gib=peak_gib(device), checkpointed_layers=0, optimizer_steps=res["micro_steps"],
               examples=len(res["lengths"]), padding_frac=1 - res["tokens"] / padded,
               note=f"length-grouped padded batches <= {args.token_budget} tokens, no checkpointing, full logits")
    res["mean_loss"] = loss_acc.item() / max(res["micro_steps"], 1)
    del model, opt
    return res


def run_ours(args, shape, examples, device, dtype, compile_layers: bool = False) -> dict:
    attn = CONTEXT_ATTENTION if compile_layers else "thinksafe_varlen"
    model = build_model(shape, device, dtype, attn)
    params, opt = make_optimizer(model, device)
    collate = PackedCollator(pad_to=args.token_budget if compile_layers else None)
    plan = plan_batches([len(e["input_ids"]) for e in examples], args.token_budget, seed=args.seed)
    batches = [(_to(collate([examples[i] for i in b]), device), b) for b in plan]
    info: dict[str, Any] = {"varlen_backend": get_varlen_backend(device)}
    if args.check_loss:
        info["loss_check"] = loss_check(model, examples, device)
        log(f"  packed vs official loss on the real shape: {info['loss_check']}")
    decoder, _ = causal_lm_parts(model)
    compile_s = 0.0
    if compile_layers:
        # layer 0's input (frozen embeddings) would not require grad and compile a second graph
        model.get_base_model().enable_input_require_grads()
        for layer in decoder.layers:
            layer.compile()
    loss_acc = torch.zeros((), device=device)

    def step(batch):
        def fn():
            loss = ours_loss(model, batch, chunk_size=args.chunk_size, pass_packing_kwargs=not compile_layers)
            with (packing_context(batch) if compile_layers else contextlib.nullcontext()):
                loss.backward()
            loss_acc.add_(loss.detach())
            torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return fn

    # warm-up on the two biggest rows; out of memory -> checkpoint more layers and retry
    warm = sorted(batches, key=lambda x: -x[0]["num_tokens"])[:2]
    L = shape["num_hidden_layers"]
    tries = [0, L // 4, L // 2, L] if args.checkpoint_layers < 0 else [args.checkpoint_layers]
    ckpt = None
    for k in tries:
        set_checkpointed_layers(model, k)
        try:
            t0 = time.perf_counter()
            for b, _ in warm:
                step(b)()
            sync(device)
            compile_s = time.perf_counter() - t0
            ckpt = k
            break
        except torch.OutOfMemoryError:
            opt.zero_grad(set_to_none=True)
            free(device)
            log(f"  out of memory with {k} checkpointed layers; retrying with more")
    if ckpt is None:
        raise torch.OutOfMemoryError("ours: out of memory even with every layer checkpointed")
    loss_acc.zero_()
    steps = [(step(b), b["num_tokens"], [len(examples[i]["input_ids"]) for i in idx],
              [loss_tokens_of(examples[i]) for i in idx]) for b, idx in batches]
    res = timed(steps, args.budget_seconds, device)
    rows = sum(b["input_ids"].numel() for b, _ in batches[:res["micro_steps"]])
    res.update(peak_gib=peak_gib(device), checkpointed_layers=ckpt, optimizer_steps=res["micro_steps"],
               examples=len(res["lengths"]), padding_frac=1 - res["tokens"] / rows, **info,
               note=(f"packed rows <= {args.token_budget} tokens, varlen attention, chunked CE "
                     f"(chunk {args.chunk_size}, response positions only), {ckpt} checkpointed layers"
                     + (", torch.compile per decoder layer" if compile_layers else "")))
    if compile_layers:
        res["warmup_compile_seconds"] = compile_s
    res["mean_loss"] = loss_acc.item() / max(res["micro_steps"], 1)
    del model, opt
    return res


@torch.no_grad()
def loss_check(model, examples, device, n: int = 3) -> dict:
    """Packed + chunked loss vs the official per-example loss on the same model (dropout off)."""
    was = model.training
    model.eval()
    exs = sorted(examples, key=lambda e: len(e["input_ids"]))[:n]
    n_items = sum(loss_tokens_of(e) for e in exs)
    attn = model.get_base_model().config._attn_implementation
    model.get_base_model().config._attn_implementation = "sdpa"
    ref = sum(official_example_loss(model, e, n_items, device).float() for e in exs).item()
    model.get_base_model().config._attn_implementation = "thinksafe_varlen"
    got = ours_loss(model, _to(PackedCollator()(exs), device)).item()
    model.get_base_model().config._attn_implementation = attn
    model.train(was)
    return {"official": ref, "ours": got, "rel_diff": abs(ref - got) / abs(ref)}


def check_varlen(device) -> dict:
    """On CUDA: torch's varlen FlashAttention vs the exact per-example SDPA loop (forward and q/k gradients) at
    Qwen3-0.6B's attention shape; the loop is used if varlen is missing, fails, or disagrees."""
    return select_varlen_backend(device, 16, 8, 128, torch.bfloat16)


# --------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny shape + short lengths (CPU tests)")
    ap.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")
    ap.add_argument("--methods", default=None,
                    help="comma list of official,shipped,shipped_1x8,grouped_padded,ours,ours_compile "
                         "(default: official,shipped,ours,grouped_padded,ours_compile on CUDA; "
                         "no ours_compile on CPU)")
    ap.add_argument("--shipped-micro-tokens", type=int, default=None,
                    help="shipped: train.micro_batch_tokens (default: the packaged config's; tiny 512)")
    ap.add_argument("--examples", type=int, default=None, help="sample size (default 300; tiny 24)")
    ap.add_argument("--token-budget", type=int, default=None, help="tokens per batch/row (default 16384; tiny 1024)")
    ap.add_argument("--chunk-size", type=int, default=None, help="rows per CE chunk (default 2048; tiny 64)")
    ap.add_argument("--budget-seconds", type=float, default=None,
                    help="timed seconds per recipe after warm-up (default 25; tiny 3; 0: every example, no limit)")
    ap.add_argument("--deadline-seconds", type=float, default=220.0,
                    help="skip recipes that would start after this many seconds of the whole run (0: none skipped)")
    ap.add_argument("--checkpoint-layers", type=int, default=-1, help="ours: layers to checkpoint (-1: auto)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 SXM: 989)")
    ap.add_argument("--no-check-loss", dest="check_loss", action="store_false")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*deprecated and will be removed in v6.*")
    global T_START
    T_START = time.perf_counter()

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shape, spec = (TINY, TINY_LENGTHS) if args.tiny else (QWEN3_06B, LengthSpec())
    args.examples = args.examples or (24 if args.tiny else 300)
    args.token_budget = args.token_budget or (spec.max_len if args.tiny else 16384)
    args.chunk_size = args.chunk_size or (64 if args.tiny else 2048)
    args.budget_seconds = args.budget_seconds if args.budget_seconds is not None else (3.0 if args.tiny else 25.0)
    if args.tiny and args.shipped_micro_tokens is None:
        args.shipped_micro_tokens = 512
    methods = (args.methods or ("official,shipped,ours,grouped_padded,ours_compile" if device.type == "cuda"
                                else "official,shipped,ours,grouped_padded")).split(",")
    register_attention()
    varlen = check_varlen(device)
    log(f"device {device}, varlen attention backend: {varlen}")

    examples = synthetic_examples(args.examples, shape["vocab_size"], spec, seed=args.seed)
    stats = sample_stats(examples)
    log(f"sample: {stats}")
    cfg = Qwen3Config(**shape)
    n_lora = _lora_count(shape)
    fm = flop_model(cfg, n_lora)
    peak = args.peak_tflops * 1e12

    runners = {"official": lambda: run_official(args, shape, examples, device, dtype),
               "grouped_padded": lambda: run_grouped_padded(args, shape, examples, device, dtype),
               "ours": lambda: run_ours(args, shape, examples, device, dtype),
               "ours_compile": lambda: run_ours(args, shape, examples, device, dtype, compile_layers=True),
               "shipped": lambda: _shipped()(args, shape, examples, device, dtype, build_model, sync, peak_gib,
                                             args.shipped_micro_tokens),
               "shipped_1x8": lambda: _shipped()(args, shape, examples, device, dtype, build_model, sync,
                                                 peak_gib, 0)}
    reserve = {"official": 15, "grouped_padded": 15, "ours": 15, "ours_compile": 90, "shipped": 20,
               "shipped_1x8": 20}
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    results: list[dict[str, Any]] = []

    def report(complete: bool) -> dict:
        base = next((r for r in results if r["recipe"] == "official" and r.get("status") == "ok"), None)
        for r in results:
            if base and r.get("status") == "ok":
                r["vs_official"] = r["tok_per_s"] / base["tok_per_s"]
        out = {"device": dev_name, "torch": torch.__version__, "transformers": transformers.__version__,
               "peft": _peft_version(), "tiny": args.tiny, "dtype": str(dtype), "shape": shape, "lora": LORA,
               "lr": LR, "grad_clip": GRAD_CLIP, "grad_accum_official": GRAD_ACCUM,
               "token_budget": args.token_budget, "chunk_size": args.chunk_size,
               "budget_seconds": args.budget_seconds, "length_spec": asdict(spec), "sample": stats,
               "varlen_check": varlen,
               "flops": {**fm, "peak_tflops": args.peak_tflops,
                         "formula": "(4*N_frozen + 6*N_lora)*l + 6*n_layers*n_heads*head_dim*l^2 per sequence"},
               "total_seconds": time.perf_counter() - T_START, "complete": complete, "results": results}
        if args.json:       # written after every recipe, so a killed run still leaves what it measured
            with open(args.json, "w") as f:
                json.dump(out, f, indent=2)
        return out

    for name in methods:
        if name not in runners:
            raise SystemExit(f"unknown method {name!r}")
        elapsed = time.perf_counter() - T_START
        if args.deadline_seconds > 0 and elapsed + args.budget_seconds + reserve[name] > args.deadline_seconds \
                and results:
            log(f"skip {name}: {elapsed:.0f}s elapsed, deadline {args.deadline_seconds:.0f}s")
            results.append({"recipe": name, "status": "skipped (deadline)"})
            continue
        log(f"run {name}")
        free(device)
        try:
            r = runners[name]()
        except torch.OutOfMemoryError as e:
            r = {"status": f"out of memory: {str(e)[:200]}"}
        except Exception as e:      # noqa: BLE001 - report and go on to the next recipe
            if args.tiny:
                raise
            r = {"status": f"failed: {type(e).__name__}: {str(e)[:300]}"}
            log(f"  {name} {r['status']}")
        free(device)
        if "seconds" in r:
            r["status"] = "ok"
            r["tok_per_s"] = r["tokens"] / r["seconds"]
            r["mfu"] = model_flops(fm, r["lengths"]) / r["seconds"] / peak
            if name.startswith("ours"):
                r["mfu_lm_head_on_loss_tokens_only"] = (model_flops(fm, r["lengths"], r["loss_tokens"])
                                                        / r["seconds"] / peak)
            r["mean_len"] = sum(r["lengths"]) / max(len(r["lengths"]), 1)
            r["flops_per_token"] = model_flops(fm, r["lengths"]) / max(r["tokens"], 1)
            del r["lengths"], r["loss_tokens"]
            log(f"  {name}: {r['tok_per_s']:,.0f} tok/s, MFU {100 * r['mfu']:.1f} %, {r['tokens']} tokens in "
                f"{r['seconds']:.1f}s, peak {r['peak_gib']} GiB")
        results.append({"recipe": name, **r})
        report(complete=False)

    out = report(complete=True)
    print(f"\nLoRA SFT throughput on {dev_name} ({'tiny shape' if args.tiny else 'Qwen3-0.6B shape'}, {dtype}, "
          f"{stats['n']} examples, mean {stats['mean_len']:.0f} tokens, max {stats['max_len']})\n")
    print("| recipe | tok/s | vs official | MFU | peak memory |")
    print("|---|---|---|---|---|")
    for r in results:
        if r.get("status") != "ok":
            print(f"| {r['recipe']} | {r.get('status')} | — | — | — |")
            continue
        mem = f"{r['peak_gib']:.1f} GiB" if r["peak_gib"] is not None else "n/a (CPU)"
        vs = f"{r['vs_official']:.2f}×" if "vs_official" in r else "—"
        print(f"| {r['recipe']} | {r['tok_per_s']:,.0f} | {vs} | {100 * r['mfu']:.1f} % | {mem} |")
    print(f"\nMFU: (4·N_frozen + 6·N_lora)·tokens + 6·layers·heads·head_dim·Σl² (causal attention, fwd+bwd), "
          f"N_frozen = {fm['n_body'] + fm['n_lm_head']:,} matmul weights incl. lm_head, N_lora = {n_lora:,}; "
          f"peak {args.peak_tflops:g} TFLOP/s; real tokens only (no padding, no recomputation).")
    for r in results:
        if "mfu_lm_head_on_loss_tokens_only" in r:
            print(f"{r['recipe']}: computes logits only at response positions; counting only the lm_head work done: "
                  f"MFU {100 * r['mfu_lm_head_on_loss_tokens_only']:.1f} %.")
    print(f"total {out['total_seconds']:.0f}s")
    return out


def _shipped():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from train_shipped import run_shipped
    return run_shipped


def _lora_count(shape: dict) -> int:
    h, L, r = shape["hidden_size"], shape["num_hidden_layers"], LORA["r"]
    q = shape["num_attention_heads"] * shape["head_dim"]
    kv = shape["num_key_value_heads"] * shape["head_dim"]
    return L * (r * (h + q) + r * (h + kv))


def _peft_version() -> str:
    import peft
    return peft.__version__


if __name__ == "__main__":
    main()

"""Compute accounting: wall time, device, processes, tokens and estimated FLOPs per stage.

FLOPs are *model FLOPs* (no recomputation, no attention-score term), the usual estimates:

- inference (generation, guard, perplexity): ``2 * N * tokens`` over prompt (prefill) and
  generated tokens alike;
- full fine-tuning: ``6 * N * tokens`` (forward 2N, backward 4N);
- LoRA: ``(4 * N_frozen + 6 * N_lora) * tokens`` — forward 2N, activation gradients through the
  frozen weights 2N, no weight gradients for them; the adapter's own weights pay the full 6;
- ``train.objective: kl`` adds one reference forward, ``2 * N * tokens``.

``N`` is the number of parameters that do a matmul per token: every decoder-layer weight plus the
output projection (``vocab * hidden``, counted once even when tied); the input embedding is a
lookup and is not counted. It is read from the model's ``config.json`` (no weights are loaded).
Tokens trained are all non-padding tokens the trainer saw (prompt + response, every epoch: the
train summary's ``input_tokens_seen``). A number that is not known is ``None``, with a note; it is
never guessed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from thinksafe.io import iter_jsonl


# =============================================================================== parameters
def config_json(model_path: str) -> dict | None:
    """The model's config.json: a local folder, the organism aliases, or the HF cache (no download)."""
    from thinksafe.organism import resolve_model_path
    try:
        path = resolve_model_path(model_path)
    except Exception:
        return None
    p = Path(path) / "config.json"
    if p.is_file():
        return json.loads(p.read_text())
    try:
        from huggingface_hub import try_to_load_from_cache
        hit = try_to_load_from_cache(path, "config.json")
        if isinstance(hit, str):
            return json.loads(Path(hit).read_text())
    except Exception:
        pass
    return None


def param_counts(cfg: dict) -> dict | None:
    """Parameter counts of a decoder-only transformer (Llama / Qwen2 / Qwen3 / Mistral style) from
    its config: ``total`` (what ``sum(p.numel())`` gives), ``embedding``, ``flop_params`` (N above).
    None for a config this formula does not cover (MoE, other layouts)."""
    cfg = cfg.get("text_config", cfg)
    need = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
    if any(not isinstance(cfg.get(k), int) for k in need) or cfg.get("num_experts") or \
            cfg.get("num_local_experts"):
        return None
    h, layers, heads = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads") or heads
    hd = cfg.get("head_dim") or h // heads
    inter, vocab = cfg["intermediate_size"], cfg["vocab_size"]
    attn = h * heads * hd + 2 * h * kv * hd + heads * hd * h
    if cfg.get("attention_bias") or cfg.get("model_type") == "qwen2":
        attn += heads * hd + 2 * kv * hd + (h if cfg.get("model_type") != "qwen2" else 0)
    mlp = 3 * h * inter + (inter + h if cfg.get("mlp_bias") else 0)
    norms = 2 * h + (2 * hd if cfg.get("model_type") == "qwen3" else 0)
    layer = attn + mlp + norms
    tied = cfg.get("tie_word_embeddings", False)
    embedding = vocab * h
    total = layers * layer + h + embedding + (0 if tied else vocab * h)
    return {"total": total, "embedding": embedding, "flop_params": layers * layer + h + vocab * h,
            "tied_embeddings": bool(tied)}


def model_params(model_path: str) -> dict | None:
    c = config_json(model_path)
    return param_counts(c) if c else None


# =============================================================================== device
def device_info() -> dict:
    """Where this process runs: cuda device name and count, or CPU cores; processes = WORLD_SIZE."""
    info = {"processes": int(os.environ.get("WORLD_SIZE", "1"))}
    try:
        import torch
        if torch.cuda.is_available():
            info.update(device=f"cuda:{torch.cuda.get_device_name(0)}", devices=torch.cuda.device_count())
            return info
        info["threads"] = torch.get_num_threads()
    except Exception:
        pass
    info.update(device="cpu", devices=1, cpu_cores=os.cpu_count())
    return info


# =============================================================================== guard tokens
def verdict_input_tokens(verdicts, guard=None, pairs=None) -> int | None:
    """Guard input tokens of judged pairs, from the counts the guard recorded when it rendered them
    (``Verdict.input_tokens``): no re-rendering, no re-tokenizing. Verdicts without a count (files
    from older versions, guards that do not count) are rendered again if ``guard`` and ``pairs``
    (aligned with ``verdicts``) are given; otherwise the total is None."""
    n, missing = 0, []
    for i, v in enumerate(verdicts):
        k = getattr(v, "input_tokens", None)
        if k is None:
            missing.append(i)
        else:
            n += k
    if not missing:
        return n
    if guard is None or pairs is None:
        return None
    pairs = pairs if isinstance(pairs, list) else list(pairs)
    rest = guard_input_tokens(guard, [pairs[i] for i in missing])
    return None if rest is None else n + rest


def guard_input_tokens(guard, pairs) -> int | None:
    """Tokens the guard prefilled for (prompt, response) pairs, by rendering them as the guard does
    (the fallback of :func:`verdict_input_tokens`); None for a guard that does not expose ``render``
    and ``tokenizer``."""
    render, tok = getattr(guard, "render", None), getattr(guard, "tokenizer", None)
    if render is None or tok is None:
        return None
    n = 0
    for p, r in pairs:
        text = render(p, r)
        text = text[0] if isinstance(text, tuple) else text
        if text is not None:
            n += len(tok(text, add_special_tokens=False).input_ids)
    return n


# =============================================================================== per stage
def _flops(n: int | None, tokens: int | None, per_token: int = 2) -> float | None:
    return None if n is None or tokens is None else float(per_token) * n * tokens


def _sum(*xs):
    return None if any(x is None for x in xs) else sum(xs)


def _eval_tokens(run_dir: Path, tag: str) -> tuple[int | None, int | None]:
    """(prompt tokens, generated tokens) of every generation file under eval/<tag>/."""
    folder = run_dir / "eval" / tag
    files = sorted(folder.rglob("*generations.jsonl")) if folder.is_dir() else []
    if not files:
        return None, None
    p = g = 0
    for f in files:
        for d in iter_jsonl(f, repair=True):
            c = d.get("completion") or {}
            p += c.get("prompt_tokens") or 0
            g += c.get("completion_tokens") or 0
    return p, g


def stage_compute(stage: str, summary: dict, model: dict | None, guard: dict | None,
                  run_dir: Path | None = None, train_cfg=None, device: dict | None = None) -> dict:
    """The compute entry of one finished stage, from its summary (+ eval files for evaluate), by
    the stage's own accounting in ``PER_STAGE``.

    ``model`` / ``guard`` are ``param_counts`` results (or None). ``train_cfg`` is the run's
    TrainConfig (method, objective)."""
    n = model["flop_params"] if model else None
    ng = guard["flop_params"] if guard else None
    dev = device or device_info()
    out: dict = {"seconds": summary.get("seconds"), **dev, "params": n, "guard_params": ng,
                 "tokens_generated": None, "tokens_prefilled": None, "tokens_trained": None,
                 "flops": None, "notes": []}
    base = stage.split("[")[0]
    _cluster(out, summary.get("cluster"))
    account = PER_STAGE.get(base)
    if account is None:
        out["notes"].append(f"no compute model for stage '{stage}'")
    else:
        account(out, summary, n=n, ng=ng, run_dir=run_dir, train_cfg=train_cfg, dev=dev)
    if n is None and base in ("generate", "train", "evaluate"):
        out["notes"].append("model parameter count unknown (config.json not readable)")
    if not out["notes"]:
        del out["notes"]
    return out


def _cluster(out: dict, c) -> None:
    """cluster.engine: ray: every replica counts (thinksafe.cluster)."""
    if isinstance(c, dict) and c.get("engine") == "ray":
        per = c.get("gpus_per_replica") or c.get("cpus_per_replica") or 1
        out.update(processes=c.get("replicas_started"), devices=round(c.get("replicas", 1) * per, 2),
                   device=c.get("device_kind", out.get("device")), device_seconds=c.get("device_seconds"),
                   replica_busy_seconds=c.get("replica_busy_seconds"))
        out.pop("threads", None)


def _generate(out: dict, summary: dict, n, **_) -> None:
    gen, pre = summary.get("completion_tokens"), summary.get("prompt_tokens")
    out.update(tokens_generated=gen, tokens_prefilled=pre, flops=_flops(n, _sum(gen, pre)),
               formula="2*N*(prompt+generated)")


def _judge(out: dict, summary: dict, ng, **_) -> None:
    pre = summary.get("guard_input_tokens")
    out.update(tokens_generated=summary.get("guard_generated_tokens"), tokens_prefilled=pre,
               flops=_flops(ng, _sum(pre, summary.get("guard_generated_tokens") or 0)),
               formula="2*N_guard*(guard input + guard generated)", params=None)
    if pre is None:
        out["notes"].append("guard input tokens not in the judge summary")


def _train(out: dict, summary: dict, n, train_cfg, dev, **_) -> None:
    seen = summary.get("input_tokens_seen")
    out.update(tokens_trained=seen, processes=summary.get("world_size") or dev.get("processes"),
               response_tokens=summary.get("response_tokens"), epochs=summary.get("epochs"),
               steps=summary.get("steps"), trainable_params=summary.get("trainable_params"))
    method = summary.get("method") or getattr(train_cfg, "method", "lora")
    objective = summary.get("objective") or getattr(train_cfg, "objective", "sft")
    n_lora = summary.get("trainable_params") if method == "lora" else 0
    if n is None or seen is None or (method == "lora" and n_lora is None):
        out["flops"] = None
    elif method == "lora":
        out["flops"] = float(4 * n + 6 * n_lora) * seen
    else:
        out["flops"] = 6.0 * n * seen
    out["formula"] = "(4*N_frozen + 6*N_lora)*tokens" if method == "lora" else "6*N*tokens"
    if objective == "opsa":                # rollouts + teacher + student, counted by the trainer
        out.update(flops=summary.get("flops"), tokens_generated=summary.get("rollout_completion_tokens"),
                   tokens_prefilled=summary.get("rollout_prompt_tokens"),
                   formula="2*N*(prompt+completion) rollouts + 2*N*(teacher prompt+completion) teacher + "
                           + ("(4*N_frozen + 6*N_lora)" if method == "lora" else "6*N")
                           + "*(prompt+completion) student")
    if objective == "kl" and out["flops"] is not None:
        out["flops"] += 2.0 * n * seen
        out["formula"] += " + 2*N*tokens (reference forward)"
    if seen is None:
        out["notes"].append("input_tokens_seen not in the train summary")
    if summary.get("resumed"):
        out["notes"].append("resumed: tokens and seconds are this session's only")


def _evaluate(out: dict, summary: dict, n, run_dir, **_) -> None:
    models, flops, secs, pre_all, gen_all = {}, 0.0, 0.0, 0, 0
    for tag, m in summary.items():
        if not isinstance(m, dict) or tag == "cluster":
            continue
        pre, gen = _eval_tokens(run_dir, tag) if run_dir else (None, None)
        gen = m.get("generated_tokens", gen) if gen is None else gen
        f = _flops(n, _sum(pre, gen))
        models[tag] = {"seconds": m.get("seconds"), "tokens_prefilled": pre, "tokens_generated": gen,
                       "flops": f}
        flops = None if flops is None or f is None else flops + f
        secs = None if secs is None or m.get("seconds") is None else secs + m["seconds"]
        pre_all = _sum(pre_all, pre)
        gen_all = _sum(gen_all, gen)
    out.update(models=models, seconds=secs, flops=flops, tokens_prefilled=pre_all,
               tokens_generated=gen_all, formula="2*N*(prompt+generated), policy only")
    out["notes"].append("guard/oracle FLOPs of evaluation are not counted (guard inputs not recorded)")


def _grpo(out: dict, summary: dict, **_) -> None:
    pre = _sum(summary.get("prompt_tokens"), summary.get("guard_input_tokens"))
    out.update(tokens_generated=summary.get("completion_tokens"), tokens_prefilled=pre,
               tokens_trained=summary.get("tokens_trained"), steps=summary.get("steps"),
               trainable_params=summary.get("trainable_params"), flops=summary.get("flops"),
               formula="2*N*(prompt+completion) rollouts + 2*N_guard*guard input + "
                       "(4*N_frozen + 6*N_lora)*tokens trained + 2*N*tokens reference (beta > 0)")
    if summary.get("flops") is None:
        out["notes"].append("parameter counts unknown: GRPO FLOPs not estimated")
    if summary.get("resumed"):
        out["notes"].append("resumed: tokens since the checkpoint the run resumed from")


def _no_model(out: dict, summary: dict, **_) -> None:
    out.update(flops=0.0, formula="no model")


def _perplexity(out: dict, summary: dict, n, **_) -> None:
    pre = summary.get("input_tokens")
    out.update(tokens_prefilled=pre, flops=_flops(n, pre), formula="2*N*(prompt+response) forward")
    if pre is None:
        out["notes"].append("input tokens not in the perplexity summary")


def _steer(out: dict, summary: dict, **_) -> None:
    out["notes"].append("the context search's generation and judging are not counted (tokens not recorded)")


# stage -> its accounting: fills the entry from the stage's summary
PER_STAGE = {"generate": _generate, "judge": _judge, "dataset": _no_model, "train": _train,
             "evaluate": _evaluate, "report": _no_model, "grpo": _grpo, "steer": _steer,
             "perplexity": _perplexity}


def total(stages: dict) -> dict:
    """Sum of the per-stage compute entries. FLOPs are None when any stage's FLOPs are unknown;
    seconds and tokens sum what is known, and ``unknown`` lists the stages missing each number
    (e.g. the dataset stage's summary has no ``seconds``)."""
    entries = {k: v.get("compute") for k, v in stages.items() if isinstance(v, dict) and v.get("compute")}
    t = {"seconds": 0.0, "flops": 0.0, "tokens_generated": 0, "tokens_prefilled": 0, "tokens_trained": 0}
    unknown: dict[str, list] = {}
    for stage, c in entries.items():
        for k in t:
            v = c.get(k)
            if v is None:
                unknown.setdefault(k, []).append(stage)
            else:
                t[k] += v
    if "flops" in unknown:          # a FLOP total with a hole is not a total
        t["flops"] = None
    t["stages"] = sorted(entries)
    if unknown:
        t["unknown"] = unknown
    return t


def for_run(stage: str, summary: dict, run_dir: Path, cfg=None) -> dict:
    """``stage_compute`` with parameter counts of the run's model and guard (from cfg, or the run
    folder's config.yaml)."""
    if cfg is None:
        from thinksafe.config import load_config
        saved = run_dir / "config.yaml"
        cfg = load_config(saved) if saved.exists() else None
    model = model_params(cfg.model.path) if cfg else None
    guard = model_params(cfg.guard.path) if cfg else None
    return stage_compute(stage, summary, model, guard, run_dir, cfg.train if cfg else None)

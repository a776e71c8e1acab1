"""The stages of benchmarks/scale.py. Each takes the spec (stage, size, before, work, device, ...)
and returns extra columns. ``before`` runs the code path the paper-scale fix replaced (kept here,
verbatim in effect, so that both are measured in one run)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


# =============================================================================== the old code paths
def old_read_jsonl(path, repair=False, appended=False):
    """The read before the fix: the whole file as one bytes object, split in memory."""
    p = Path(path)
    if not p.exists():
        return []
    lines = p.read_bytes().split(b"\n")
    lines.pop()
    return [json.loads(x) for x in lines if x.strip()]


def old_next_token_logits(model, ids, mask):
    return model(input_ids=ids, attention_mask=mask).logits[:, -1, :].float()   # every position's logits


def old_response_nll(model, batch, pad_id, chunk_size=None):
    import torch
    width = max(len(e["input_ids"]) for e in batch)
    ids = torch.tensor([list(e["input_ids"]) + [pad_id] * (width - len(e["input_ids"])) for e in batch])
    labels = torch.tensor([list(e["labels"]) + [-100] * (width - len(e["labels"])) for e in batch])
    mask = torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in batch])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1, :].float()
    target = labels[:, 1:]
    tok = torch.log_softmax(logits, dim=-1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    valid = target != -100
    return [(float(a), int(b)) for a, b in zip((-(tok * valid).sum(dim=1)).tolist(), valid.sum(dim=1).tolist())]


def old_tokenize_rows(tok, rows, fam, max_length):
    """Before: one example at a time, two decodes each, and the first bad example aborts the stage."""
    from thinksafe.trainers.examples import tokenize_example
    out = []
    for r in rows:
        ex = tokenize_example(tok, r["prompt"], r["response"], fam)
        if len(ex["input_ids"]) <= max_length:
            out.append(ex)
    return out


# =============================================================================== helpers
_PATCHED: list = []


def patch(obj, name, value):
    """Swap in an old code path for this measurement; ``restore()`` undoes it (in-process runs)."""
    _PATCHED.append((obj, name, getattr(obj, name)))
    setattr(obj, name, value)


def restore():
    while _PATCHED:
        obj, name, value = _PATCHED.pop()
        setattr(obj, name, value)


def cfg_for(spec, *sets):
    from scale_inputs import DATA

    from thinksafe.config import load_config
    w = Path(spec["work"])
    return load_config(None, [f"out={w}", f"model.path={w / 'policy'}", "model.family=qwen3",
                              f"guard.path={w / 'guard'}", "guard.kind=llama_guard",
                              f"evaluate.data_dir={DATA}", f"model.device={spec['device']}", *sets])


def records(spec):
    from thinksafe.io import iter_jsonl
    from thinksafe.types import Record
    return [Record.from_json(d) for d in iter_jsonl(Path(spec["work"]) / f"generated-{spec['size']}.jsonl")]


def tokenizer(spec, which="policy"):
    from thinksafe.backends.hf import load_tokenizer
    return load_tokenizer(Path(spec["work"]) / which)


class StubGuardBackend:
    """The guard backend without the model: every input is tokenized by the guard's render (as in
    the real path); verdict logprobs are fixed (every 10th input "unsafe", to exercise the category
    pass). The model's own cost is the guard probe's."""

    def __init__(self, tok):
        self.tokenizer, self.batch_size, self.calls = tok, 16, 0
        self.safe = tok.encode("safe", add_special_tokens=False)[0]
        self.unsafe = tok.encode("unsafe", add_special_tokens=False)[0]

    def next_token_logprobs(self, prompts, top_k=5, continue_tokens=0):
        out = []
        for p in prompts:
            self.calls += 1
            bad = self.calls % 10 == 0 and not continue_tokens
            out.append(({self.safe: -2.3 if bad else -0.1, self.unsafe: -0.1 if bad else -2.3},
                        "unsafe\nS2" if continue_tokens else ""))
        return out


class StubPolicy:
    """Generation without the model (resume bookkeeping only)."""

    def __init__(self, tok):
        self.tokenizer, self.batch_size = tok, 32

    def generate(self, prompts, params, progress=None):
        from thinksafe.types import Completion
        if progress:
            progress(len(prompts))
        return [Completion("<think>\nok\n</think>\n\nok", "stop", 10, 8) for _ in prompts]


def peak_cuda() -> dict:
    import torch
    if not torch.cuda.is_available():
        return {}
    return {"peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)}


def profiled(fn):
    """fn() under torch's profiler; (result, the largest single op allocation as text)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    top = max(prof.key_averages(), key=lambda e: e.self_cpu_memory_usage, default=None)
    biggest = max((e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0), default=0)
    name = next((e.name for e in prof.events() if e.cpu_memory_usage == biggest), top.key if top else "?")
    return out, f"{biggest / 2**20:,.0f} MiB ({name})"


# =============================================================================== ladder stages
def st_prompts(spec):
    from thinksafe.prompts import file_records
    from thinksafe.generation import expand
    recs = expand(file_records(Path(spec["work"]) / f"prompts-{spec['size']}.jsonl", "instruction", "label"), 1)
    return {"records": len(recs)}


def st_generate_resume(spec):
    """generate's resume: all but the last 1 % already in generated.jsonl (a torn last line too)."""
    from thinksafe import generation as generate
    from thinksafe.prompts import file_records
    w, n = Path(spec["work"]), spec["size"]
    out = w / f"resume-{n}.jsonl"
    keep = n - max(1, n // 100)
    with open(w / f"generated-{n}.jsonl") as src, open(out, "w") as dst:
        for _, line in zip(range(keep), src):
            dst.write(line)
        dst.write('{"id": "torn')
    if spec["before"]:
        patch(generate, "read_jsonl", lambda p, repair=False, appended=False: old_read_jsonl(p))
    recs = generate.expand(file_records(w / f"prompts-{n}.jsonl", "instruction", "label"), 1)
    got = generate.generate_records(StubPolicy(tokenizer(spec)), recs, cfg_for(spec), "prefix", out,
                                    100, "generate", show=False)
    out.unlink()
    return {"records": len(got), "note": f"{n - keep} generated, {keep} resumed"}


def st_judge(spec):
    """judge: render + shorten + count every guard input, verdicts, appends, compute accounting."""
    from thinksafe import compute
    from thinksafe.guards.llama_guard import LlamaGuard
    from thinksafe.stages.judge import judge_records
    w, n = Path(spec["work"]), spec["size"]
    recs = records(spec)
    guard = LlamaGuard(StubGuardBackend(tokenizer(spec, "guard")), max_input_tokens=16384)
    out = w / f"judged-{n}.jsonl"
    out.unlink(missing_ok=True)
    judged = judge_records(guard, recs, out, show=False)
    pairs = [(r.prompt, r.completion.text) for r in judged]
    if spec["before"]:                               # accounting re-rendered and re-tokenized every pair
        tokens = compute.guard_input_tokens(guard, pairs)
    else:
        tokens = compute.verdict_input_tokens([r.verdict for r in judged], guard, pairs)
    cut = sum(r.verdict.truncated_tokens > 0 for r in judged)
    return {"note": f"{tokens / n:,.0f} guard tokens/record, {cut} inputs shortened", "guard_tokens": tokens}


def st_dataset(spec):
    """dataset: filter + 13-gram decontamination against the paper's evaluation prompts."""
    from thinksafe.stages import dataset
    w, n = Path(spec["work"]), spec["size"]
    run = w / f"run-{n}"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir()
    (run / "judged.jsonl").symlink_to(w / f"judged-{n}.jsonl")
    if spec["before"]:
        patch(dataset, "iter_jsonl", lambda p, repair=False, appended=False: iter(old_read_jsonl(p)))
    cfg = cfg_for(spec, "evaluate.benchmarks=[paper]")
    stats = dataset.run(cfg, run, show=False)
    missing = set(stats["decontamination"]["unavailable"]) - {"gpqa_diamond"}     # gated, not in shared/data
    if missing:
        raise RuntimeError(f"evaluation files missing: {sorted(missing)}")
    return {"note": f"kept {stats['kept']:,}, eval overlap {stats['dropped'].get('eval_overlap', 0)}, "
                    f"{stats['decontamination']['eval_prompts']:,} eval prompts"}


def st_tokenize(spec):
    """train's tokenization of the kept rows (real Qwen3 tokenizer and chat template)."""
    from thinksafe.families import get_family
    from thinksafe.io import read_jsonl
    from thinksafe.trainers.examples import tokenize_rows_stats
    rows = read_jsonl(Path(spec["work"]) / f"run-{spec['size']}" / "sft.jsonl")
    tok, fam = tokenizer(spec), get_family("qwen3")
    if spec["before"]:
        out = old_tokenize_rows(tok, rows, fam, 16384)
        return {"records": len(rows), "note": f"{len(out):,} examples"}
    out, stats = tokenize_rows_stats(tok, rows, fam, 16384)
    tokens = sum(len(e["input_ids"]) for e in out)
    return {"records": len(rows), "note": f"{len(out):,} examples, {tokens / max(len(out), 1):,.0f} tokens each, "
                                          f"{stats['dropped_too_long']} too long, "
                                          f"{stats['dropped_untokenizable']} untokenizable"}


def st_resample(spec):
    """resample's bookkeeping: which judged records belong to this round, and acceptance."""
    from dataclasses import replace

    from thinksafe.stages.judge import acceptance
    from thinksafe.types import Verdict
    recs = [replace(r, verdict=Verdict("safe" if i % 3 else "unsafe")) for i, r in enumerate(records(spec))]
    half = recs[len(recs) // 2:]
    if spec["before"]:
        mine = [r for r in recs if r.id in {g.id for g in half}]         # the set rebuilt per record
    else:
        ids = {g.id for g in half}
        mine = [r for r in recs if r.id in ids]
    return {"note": f"acceptance {acceptance(mine)}"}


def st_evaluate(spec):
    """evaluate's scoring (safety on judged records, reasoning pass@1 on GSM8K-shaped ones) + report."""
    from dataclasses import replace

    from thinksafe.io import iter_jsonl
    from thinksafe.evalsets import load_benchmark
    from thinksafe.metrics import score_reasoning, score_safety
    from thinksafe.paper_table import ModelResult
    from thinksafe.stages.report import write_reports
    from thinksafe.types import Completion, Record
    w, n = Path(spec["work"]), spec["size"]
    judged = [Record.from_json(d) for d in iter_jsonl(w / f"judged-{n}.jsonl")]
    safety = score_safety(judged, judged, judged)
    gsm = load_benchmark("gsm8k", cfg_for(spec).evaluate.data_dir, None)
    gen = [replace(gsm[i % len(gsm)], id=f"g{i}", sample=i // len(gsm),
                   completion=Completion(f"<think>\n{r.completion.text[:2000]}\n</think>\n\nThe answer is 42.",
                                         r.completion.finish_reason, 0, r.completion.completion_tokens))
           for i, r in enumerate(judged)]
    reasoning, _ = score_reasoning(gen)
    out = w / f"report-{n}"
    metrics = {"benchmarks": {"harmbench": safety, "gsm8k": reasoning}}
    write_reports(out, [ModelResult("scale", "base", w, metrics, {"path": str(w / "policy")})], None, show=False)
    return {"records": 2 * n, "note": f"harmful rate {safety['harmful_rate']:.3f}"}


def st_compute(spec):
    """compute accounting of evaluate (tokens of every generations file, streamed) + judge tokens."""
    from thinksafe import compute
    from thinksafe.io import iter_jsonl
    from thinksafe.types import Record
    w, n = Path(spec["work"]), spec["size"]
    run = w / f"run-{n}"
    folder = run / "eval" / "base" / "harmbench"
    folder.mkdir(parents=True, exist_ok=True)
    gen = folder / "generations.jsonl"
    if not gen.exists():
        gen.symlink_to(w / f"generated-{n}.jsonl")
    if spec["before"]:
        patch(compute, "iter_jsonl", lambda p, repair=False, appended=False: iter(old_read_jsonl(p)))
    entry = compute.stage_compute("evaluate", {"base": {"seconds": 1.0}}, {"flop_params": 10**6}, None, run)
    judged = [Record.from_json(d) for d in iter_jsonl(w / f"judged-{n}.jsonl")]
    tokens = compute.verdict_input_tokens([r.verdict for r in judged])
    return {"note": f"{entry['tokens_generated']:,} eval tokens, {tokens:,} guard tokens"}


# =============================================================================== probes (one size)
def _long_pair(spec, n_tokens):
    import random

    from scale_inputs import text_of, word_list
    rng = random.Random(5)
    return text_of(rng, word_list(), 40), "<think>\n" + text_of(rng, word_list(), n_tokens) + "\n</think>\n\nNo."


def guard_model(spec):
    """The random guard: loaded from --work (tiny shape) or, at Llama-Guard-3-8B's shape, built on
    the device in bf16 (16 GB of random weights are not worth writing to disk)."""
    from thinksafe.backends.hf import load_model
    w = Path(spec["work"])
    if spec["shape"] != "paper":
        return load_model(w / "guard", device=spec["device"])
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(1)
    with torch.device(spec["device"]):
        model = LlamaForCausalLM(LlamaConfig(**json.loads((w / "guard" / "shape.json").read_text())))
    return model.to(torch.bfloat16).eval()


def pr_guard(spec):
    """The guard's forward on 4 inputs of ``probe_tokens`` response tokens each (batch 4; before: the
    full-logits forward on 1 input of 2k tokens, which would not fit at 16k)."""
    import time

    from thinksafe.backends.hf import HFBackend
    from thinksafe.guards.llama_guard import LlamaGuard
    w = Path(spec["work"])
    tok = tokenizer(spec, "guard")
    model = guard_model(spec)
    backend = HFBackend(w / "guard", model=model, tokenizer=tok, batch_size=4)
    n = spec["probe_tokens"] if not spec["before"] else min(2000, spec["probe_tokens"])
    pairs = [_long_pair(spec, n)] * (1 if spec["before"] else 4)
    guard = LlamaGuard(backend, max_input_tokens=n + 1000)
    if spec["before"]:
        backend.last_logits = lambda ids, mask: old_next_token_logits(model, ids, mask)
    t0 = time.perf_counter()
    verdicts, alloc = profiled(lambda: guard.judge(pairs))
    secs = time.perf_counter() - t0
    tokens = sum(v.input_tokens for v in verdicts)
    return {"records": len(pairs), "tokens_max": max(v.input_tokens for v in verdicts), "largest_alloc": alloc,
            "note": f"{tokens / secs:,.0f} guard tokens/s", "tokens_per_s": tokens / secs, **peak_cuda()}


def pr_perplexity(spec):
    """perplexity on one ``probe_tokens``-token example (before: the full log_softmax, at 2k tokens)."""
    import time

    from thinksafe.backends.hf import load_model
    from thinksafe.families import get_family
    from thinksafe.stages.perplexity import response_nll
    from thinksafe.trainers.examples import tokenize_example
    w = Path(spec["work"])
    tok = tokenizer(spec)
    model = load_model(w / "policy", device=spec["device"])
    n = spec["probe_tokens"] if not spec["before"] else min(2000, spec["probe_tokens"])
    ex = tokenize_example(tok, *_long_pair(spec, n), get_family("qwen3"))
    fn = old_response_nll if spec["before"] else response_nll
    t0 = time.perf_counter()
    (nll, k), alloc = profiled(lambda: fn(model, [ex], tok.pad_token_id)[0])
    secs = time.perf_counter() - t0
    return {"records": 1, "tokens_max": len(ex["input_ids"]), "largest_alloc": alloc,
            "note": f"{k / secs:,.0f} tokens/s, ppl {2.718281828 ** (nll / k):,.0f}", **peak_cuda()}


def pr_train(spec):
    """train.run: LoRA, packed micro-batches, 6 optimiser steps on examples of 16k, 8k, 4k, 2k, 1k, 0.5k tokens."""
    from thinksafe.stages import train
    w = Path(spec["work"])
    run = w / "run-train"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir()
    full = spec["probe_tokens"]
    rows = []
    for k in (full, full // 2, full // 4, full // 8, full // 16, full // 32):
        p, r = _long_pair(spec, max(k, 10))
        rows.append({"prompt": p, "response": r, "label": "harmful"})
    (run / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if spec["before"]:
        return {"records": 0, "note": "no old path (save_steps is new)"}
    cfg = cfg_for(spec, "train.batch_size=1", "train.epochs=1", f"train.max_length={full + 1000}",
                  "train.lr=1e-4", "train.logging_steps=1", "train.save_steps=3", *spec.get("train_sets", []))
    s = train.run(cfg, run, show=False)
    sets = " ".join(spec.get("train_sets", []))
    return {"records": s["steps"], "tokens_max": full, "note": f"{s['steps']} steps, {s['tokens_per_second']:,.0f} "
                                                              f"tokens/s, loss {s['train_loss']:.2f} {sets}".strip(),
            **peak_cuda()}


STAGES = {"prompts": st_prompts, "generate_resume": st_generate_resume, "judge": st_judge,
          "dataset": st_dataset, "tokenize": st_tokenize, "resample": st_resample,
          "evaluate": st_evaluate, "compute": st_compute}
HAS_BEFORE = {"generate_resume", "judge", "dataset", "tokenize", "resample", "compute"}
PROBES = {"guard_probe": pr_guard, "perplexity_probe": pr_perplexity, "train_probe": pr_train}

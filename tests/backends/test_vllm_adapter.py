"""VLLMBackend against a fake `vllm` module (no GPU, no vllm needed), plus a real-vllm shape check."""

from __future__ import annotations

import json
import sys
import types
from types import SimpleNamespace

import pytest

from thinksafe.backends.vllm import INSTALL_HINT, VLLMBackend, finish_reason, lora_rank_for, prompt_offset
from thinksafe.errors import MissingDependency, ThinksafeError
from thinksafe.types import Completion, SamplingParams

BOS = 1


# --------------------------------------------------------------------------- the fake vllm
class CharTokenizer:
    """One token per character; adds a BOS unless add_special_tokens=False."""
    bos_token = "<bos>"

    def __call__(self, text, add_special_tokens=True):
        ids = [ord(c) for c in text]
        return SimpleNamespace(input_ids=([BOS] if add_special_tokens else []) + ids)

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(i) for i in ids if i != BOS)


class FakeLogprob:
    def __init__(self, logprob: float):
        self.logprob = logprob


class FakeSamplingParams:
    def __init__(self, **kw):
        self.kw = kw
        self.__dict__.update(kw)


class FakeLoRARequest:
    def __init__(self, lora_name, lora_int_id, lora_path):
        self.lora_name, self.lora_int_id, self.lora_path = lora_name, lora_int_id, lora_path


def _reason(text: str):
    for r in ("length", "abort", "none"):
        if r in text:
            return None if r == "none" else r
    return "stop"


class FakeEngine:
    """The engine loop LLM.generate runs: requests finish in ``step()`` (all in one step here,
    in reverse order when FakeLLM.reverse)."""

    def __init__(self):
        self.queue: list = []
        self.aborted: list[str] = []
        self.steps = 0

    def has_unfinished_requests(self):
        return bool(self.queue)

    def step(self):
        self.steps += 1
        done, self.queue = self.queue, []
        return done[::-1] if FakeLLM.reverse else done

    def abort_request(self, ids):
        self.aborted += list(ids)
        self.queue = [o for o in self.queue if o.request_id not in ids]


class FakeLLM:
    instances: list = []
    reverse = False            # requests finish in the reverse order
    no_logprobs = False
    wrong_ids = False          # outputs carry another prompt's token ids

    def __init__(self, **kw):
        self.kw = kw
        self.calls: list[dict] = []
        self.llm_engine = FakeEngine()
        self._next = 0
        FakeLLM.instances.append(self)

    def get_tokenizer(self):
        return CharTokenizer()

    def _output(self, rid: str, ids: list[int], n: int):
        text = "".join(chr(i) for i in ids)
        first = None if FakeLLM.no_logprobs else {
            ids[-1]: FakeLogprob(-0.1), 7: FakeLogprob(-2.5), 9: FakeLogprob(-4.0),
            11: FakeLogprob(-9.0)}   # vLLM may add the sampled token beyond top-k
        comps = []
        for i in range(n):
            gen = f"<{text}>" if n == 1 else f"<{text}#{i}>"
            comps.append(SimpleNamespace(index=i, text=gen, token_ids=tuple(range(len(gen))),
                                         cumulative_logprob=None, finish_reason=_reason(text),
                                         logprobs=None if first is None else [first, {1: FakeLogprob(0.0)}]))
        sent = list(ids[::-1]) if FakeLLM.wrong_ids else list(ids)
        return SimpleNamespace(request_id=rid, prompt=None, prompt_token_ids=sent,
                               outputs=comps[::-1], finished=True)

    def enqueue(self, prompts, sampling_params=None, use_tqdm=True, lora_request=None):
        self.calls.append(dict(prompts=prompts, sampling_params=sampling_params, use_tqdm=use_tqdm,
                               lora_request=lora_request))
        sps = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        rids = []
        for p, sp in zip(prompts, sps):
            rid = str(self._next)
            self._next += 1
            rids.append(rid)
            self.llm_engine.queue.append(self._output(rid, p["prompt_token_ids"], getattr(sp, "n", 1)))
        return rids


@pytest.fixture
def fake_vllm(monkeypatch):
    FakeLLM.instances = []
    monkeypatch.setattr(FakeLLM, "reverse", False)
    monkeypatch.setattr(FakeLLM, "no_logprobs", False)
    monkeypatch.setattr(FakeLLM, "wrong_ids", False)
    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = FakeLLM, FakeSamplingParams
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = FakeLoRARequest
    vllm.lora, lora.request = lora, request
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.lora", lora)
    monkeypatch.setitem(sys.modules, "vllm.lora.request", request)
    return vllm


PARAMS = SamplingParams(temperature=0.7, top_p=0.9, top_k=0, max_new_tokens=123, seed=5)


# --------------------------------------------------------------------------- generate
def test_order_text_and_token_counts(fake_vllm):
    be = VLLMBackend("m", batch_size=8)
    prompts = ["a", "bb", "ccc", "dddd"]
    out = be.generate(prompts, PARAMS)
    assert all(isinstance(c, Completion) for c in out)
    assert [c.text for c in out] == ["<a>", "<bb>", "<ccc>", "<dddd>"]
    assert [c.prompt_tokens for c in out] == [1, 2, 3, 4]           # from prompt_token_ids, no BOS added
    assert [c.completion_tokens for c in out] == [3, 4, 5, 6]        # len(token_ids)
    assert be.batch_size == 8 and be.name == "vllm"


def test_prompts_go_as_token_ids_without_special_tokens(fake_vllm):
    be = VLLMBackend("m")
    be.generate(["hi"], PARAMS)
    sent = be.llm.calls[0]["prompts"]
    assert sent == [{"prompt_token_ids": [ord("h"), ord("i")]}]     # no BOS: no double BOS
    assert be.llm.calls[0]["use_tqdm"] is False


def test_outputs_finishing_out_of_order_come_back_in_input_order(fake_vllm):
    FakeLLM.reverse = True
    be = VLLMBackend("m")
    assert [c.text for c in be.generate(["a", "b", "c"], PARAMS)] == ["<a>", "<b>", "<c>"]


def test_an_output_of_another_prompt_is_an_error(fake_vllm):
    FakeLLM.wrong_ids = True
    be = VLLMBackend("m")
    with pytest.raises(RuntimeError, match="another prompt"):
        be.generate(["ab", "cd"], PARAMS)
    assert sorted(be.llm.llm_engine.aborted) == ["0", "1"]             # nothing is left running


def test_finish_reasons_mapped(fake_vllm):
    be = VLLMBackend("m")
    out = be.generate(["ok", "too length", "abort it", "none"], PARAMS)
    assert [c.finish_reason for c in out] == ["stop", "length", "length", "length"]
    assert finish_reason("stop") == "stop" and finish_reason(None) == "length"


@pytest.mark.parametrize("top_k, expected", [(0, -1), (20, 20), (1, 1)])
def test_sampling_params_translated(fake_vllm, top_k, expected):
    be = VLLMBackend("m")
    be.generate(["x", "y"], SamplingParams(temperature=0.6, top_p=0.95, top_k=top_k,
                                           max_new_tokens=77, seed=3))
    sps = be.llm.calls[0]["sampling_params"]
    assert isinstance(sps, list) and len(sps) == 2                   # one per prompt: its own seed
    for sp, p in zip(sps, ["x", "y"]):
        seed = prompt_offset(be._encode([p])[0]) + 3
        assert sp.kw == dict(n=1, temperature=0.6, top_p=0.95, top_k=expected, max_tokens=77, seed=seed)


def test_empty_prompt_list_makes_no_call(fake_vllm):
    be = VLLMBackend("m")
    assert be.generate([], PARAMS) == []
    assert be.next_token_logprobs([], top_k=3) == []
    assert be.llm.calls == []


def test_progress_reports_every_prompt(fake_vllm):
    be = VLLMBackend("m")
    seen = []
    be.generate(["a", "b", "c"], PARAMS, progress=seen.append)
    assert sum(seen) == 3


def test_stream_sends_everything_at_once_and_yields_k_samples_in_order(fake_vllm):
    FakeLLM.reverse = True
    be = VLLMBackend("m", shard_index=2)
    ps = [SamplingParams(seed=10), SamplingParams(seed=20)]
    got = dict(be.stream(["ab", "c"], ps, [3, 1]))
    assert len(be.llm.calls) == 1 and be.llm.llm_engine.steps == 1   # one submission, one engine loop
    assert [c.text for c in got[0]] == ["<ab#0>", "<ab#1>", "<ab#2>"]  # sample order, not arrival
    assert [c.text for c in got[1]] == ["<c>"]
    sps = be.llm.calls[0]["sampling_params"]
    ids = [be._encode(["ab"])[0], be._encode(["c"])[0]]
    # per-prompt offset + seed + shard; vLLM adds i per sample
    assert [(sp.n, sp.seed) for sp in sps] == [(3, prompt_offset(ids[0]) + 12), (1, prompt_offset(ids[1]) + 22)]


def test_stream_aborts_what_is_left_when_the_consumer_stops(fake_vllm):
    be = VLLMBackend("m")
    it = be.stream(["a", "b", "c"], [PARAMS] * 3, [1, 1, 1])
    next(it)
    it.close()                                                        # e.g. the writer failed
    assert sorted(be.llm.llm_engine.aborted) == ["1", "2"]


def test_close_shuts_the_engine_down(fake_vllm):
    be = VLLMBackend("m")
    down = []
    be.llm.llm_engine.engine_core = SimpleNamespace(shutdown=lambda: down.append(1))
    be.close()
    be.close()
    assert down == [1] and not hasattr(be, "llm")


# --------------------------------------------------------------------------- seeds
def test_distinct_seed_per_shard(fake_vllm):
    b0 = VLLMBackend("m", seed=10, shard_index=0)
    b1 = VLLMBackend("m", seed=10, shard_index=1)
    assert b0.llm.kw["seed"] == 10 and b1.llm.kw["seed"] == 11
    b0.generate(["p"], PARAMS)
    b1.generate(["p"], PARAMS)
    s0 = b0.llm.calls[0]["sampling_params"].seed
    s1 = b1.llm.calls[0]["sampling_params"].seed
    off = prompt_offset(b0._encode(["p"])[0])
    assert s0 == off + PARAMS.seed and s1 == off + PARAMS.seed + 1


def test_repeated_prompt_gets_distinct_seeds(fake_vllm):
    be = VLLMBackend("m")
    be.generate(["same", "other", "same", "same"], PARAMS)
    sps = be.llm.calls[0]["sampling_params"]
    assert isinstance(sps, list) and len(sps) == 4                   # one per prompt
    seeds = [sp.seed for sp in sps]
    off = {p: prompt_offset(be._encode([p])[0]) for p in ("same", "other")}
    assert seeds[0] - off["same"] == seeds[1] - off["other"] == PARAMS.seed   # first occurrences: the seed
    assert len({seeds[0], seeds[2], seeds[3]}) == 3                   # repeats differ
    be.generate(["same", "same"], PARAMS)                             # and are reproducible
    assert [sp.seed for sp in be.llm.calls[1]["sampling_params"]] == [seeds[0], seeds[2]]


def test_distinct_prompts_never_share_a_random_stream(fake_vllm):
    """vLLM seeds each request's generator with its seed: equal seeds would make every prompt
    draw the same random numbers (correlated samples across a benchmark)."""
    be = VLLMBackend("m")
    prompts = [f"prompt number {i}" for i in range(200)]
    be.generate(prompts, PARAMS)
    seeds = [sp.seed for sp in be.llm.calls[0]["sampling_params"]]
    assert len(set(seeds)) == len(prompts)
    # a prompt's seed does not depend on what else is in the call (a resumed run samples the same)
    be.generate(prompts[150:151], PARAMS)
    assert be.llm.calls[1]["sampling_params"].seed == seeds[150]
    got = dict(be.stream(prompts[:3], [PARAMS] * 3, [1, 1, 1]))
    assert len(got) == 3 and [sp.seed for sp in be.llm.calls[2]["sampling_params"]] == seeds[:3]


# --------------------------------------------------------------------------- LoRA
def test_lora_request_passed(fake_vllm, tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 24, "lora_alpha": 12}))
    be = VLLMBackend("base", adapter=tmp_path)
    assert be.llm.kw["enable_lora"] is True
    assert be.llm.kw["max_lora_rank"] == 32                           # 24 rounded up to a vLLM rank
    be.generate(["a"], PARAMS)
    be.next_token_logprobs(["a"], top_k=2)
    for call in be.llm.calls:
        lr = call["lora_request"]
        assert isinstance(lr, FakeLoRARequest)
        assert (lr.lora_name, lr.lora_int_id, lr.lora_path) == ("adapter", 1, str(tmp_path))


def test_no_adapter_no_lora(fake_vllm):
    be = VLLMBackend("base", max_model_len=4096, tensor_parallel_size=2, gpu_memory_utilization=0.5)
    assert "enable_lora" not in be.llm.kw
    assert be.llm.kw["max_model_len"] == 4096 and be.llm.kw["tensor_parallel_size"] == 2
    assert be.llm.kw["gpu_memory_utilization"] == 0.5 and be.llm.kw["model"] == "base"
    be.generate(["a"], PARAMS)
    assert be.llm.calls[0]["lora_request"] is None


def test_explicit_max_lora_rank_wins(fake_vllm, tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 8}))
    be = VLLMBackend("base", adapter=tmp_path, max_lora_rank=128)
    assert be.llm.kw["max_lora_rank"] == 128


@pytest.mark.parametrize("r, rank", [(1, 1), (8, 8), (9, 16), (32, 32), (33, 64), (300, 320)])
def test_lora_rank_rounding(tmp_path, r, rank):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": r}))
    assert lora_rank_for(tmp_path) == rank


def test_lora_rank_without_config_falls_back(tmp_path):
    assert lora_rank_for(tmp_path / "missing") == 64


# --------------------------------------------------------------------------- logprobs
def test_next_token_logprobs_parsed(fake_vllm):
    be = VLLMBackend("m")
    out = be.next_token_logprobs(["ab", "c"], top_k=2)
    sp = be.llm.calls[0]["sampling_params"]
    assert sp.kw == dict(max_tokens=1, temperature=0.0, logprobs=2)
    (lp0, cont0), (lp1, cont1) = out
    assert lp0 == {ord("b"): pytest.approx(-0.1), 7: pytest.approx(-2.5)}   # the 2 best only
    assert lp1 == {ord("c"): pytest.approx(-0.1), 7: pytest.approx(-2.5)}
    assert all(isinstance(k, int) and isinstance(v, float) for k, v in lp0.items())
    assert cont0 == cont1 == ""


def test_next_token_logprobs_with_continuation(fake_vllm):
    be = VLLMBackend("m")
    [(lp, cont)] = be.next_token_logprobs(["unsafe?"], top_k=5, continue_tokens=6)
    assert be.llm.calls[0]["sampling_params"].kw["max_tokens"] == 6
    assert cont == "<unsafe?>"
    assert len(lp) == 4                                                # fewer than k offered: all kept


def test_missing_logprobs_give_empty_dict(fake_vllm):
    FakeLLM.no_logprobs = True
    be = VLLMBackend("m")
    [(lp, _)] = be.next_token_logprobs(["a"], top_k=5)
    assert lp == {}                                                    # -> LlamaGuard: unparsed


def test_llama_guard_runs_on_the_adapter(fake_vllm):
    """The Llama-Guard guard reads the adapter's logprobs (fail closed when safe/unsafe are absent)."""
    from thinksafe.guards.llama_guard import LlamaGuard
    from thinksafe.types import UNPARSED

    class OneCharWords(CharTokenizer):
        def encode(self, text, add_special_tokens=False):
            return [{"safe": 7, "unsafe": 9}.get(text, 0)]

        def apply_chat_template(self, chat, tokenize=False):
            return "|".join(m["content"] for m in chat)

    be = VLLMBackend("guard", tokenizer=OneCharWords())
    guard = LlamaGuard(be, top_k=2)
    [v] = guard.judge([("q", "r")])
    assert v.label == "safe" and v.score > 0.5                       # 7 (safe) -2.5 beats 9 (unsafe) -4.0
    FakeLLM.no_logprobs = True
    [v] = guard.judge([("q", "r")])
    assert v.label == UNPARSED and not v.is_safe


# --------------------------------------------------------------------------- missing vllm
def test_missing_vllm_raises_with_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)                    # `import vllm` now fails
    with pytest.raises(MissingDependency) as ei:
        VLLMBackend("m")
    assert "pip install 'thinksafe[vllm]'" in str(ei.value)
    assert str(ei.value) == INSTALL_HINT
    assert isinstance(ei.value, ThinksafeError)                       # the CLI prints it as one line


def test_broken_vllm_dependency_is_not_reported_as_missing_vllm(monkeypatch, tmp_path):
    """vllm present but one of ITS imports missing: re-raised as is, not "vllm is not installed"."""
    import importlib
    pkg = tmp_path / "vllm"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import thinksafe_no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    importlib.invalidate_caches()
    with pytest.raises(ModuleNotFoundError) as ei:
        VLLMBackend("m")
    assert not isinstance(ei.value, MissingDependency)
    assert ei.value.name == "thinksafe_no_such_dependency_xyz"


# --------------------------------------------------------------------------- the real thing
def test_real_vllm_api_shapes():
    vllm = pytest.importorskip("vllm")
    import inspect

    from vllm.lora.request import LoRARequest
    sp = vllm.SamplingParams(temperature=0.6, top_p=0.95, top_k=-1, max_tokens=7, seed=3, logprobs=5)
    assert (sp.temperature, sp.top_p, sp.top_k, sp.max_tokens, sp.seed, sp.logprobs) == (0.6, 0.95, -1, 7, 3, 5)
    lr = LoRARequest("adapter", 1, "/tmp/adapter")
    assert lr.lora_name == "adapter" and lr.lora_int_id == 1
    params = inspect.signature(vllm.LLM.generate).parameters
    assert "sampling_params" in params and "lora_request" in params and "use_tqdm" in params


def test_real_vllm_generates():
    """End to end on a GPU box: THINKSAFE_VLLM_MODEL=<small local model> pytest -k real_vllm."""
    pytest.importorskip("vllm")
    import os
    model = os.environ.get("THINKSAFE_VLLM_MODEL")
    if not model:
        pytest.skip("set THINKSAFE_VLLM_MODEL to a small local model to run vLLM end to end")
    be = VLLMBackend(model, max_model_len=1024, gpu_memory_utilization=0.5)
    prompts = [be.tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                add_generation_prompt=True) for q in ("2+2?", "Name a color.")]
    out = be.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=8))
    assert len(out) == 2 and all(c.finish_reason in ("stop", "length") for c in out)
    assert all(0 < c.completion_tokens <= 8 and c.prompt_tokens > 0 for c in out)
    [(lp, _)] = be.next_token_logprobs(prompts[:1], top_k=3)
    assert len(lp) == 3 and all(v <= 0 for v in lp.values())


# --------------------------------------------------------------------------- dtype
@pytest.mark.parametrize("declared, on_cpu, asked, expected", [
    ("float32", True, "auto", "float32"),      # vLLM would cast to bf16: keep what transformers uses
    ("bfloat16", True, "auto", "auto"),
    ("float32", False, "auto", "auto"),        # accelerators: vLLM's own choice
    ("float32", True, "bfloat16", "bfloat16"),  # asked for explicitly
])
def test_cpu_keeps_a_float32_checkpoint_in_float32(fake_vllm, monkeypatch, tmp_path, declared, on_cpu,
                                                    asked, expected):
    import thinksafe.backends.vllm as vb
    (tmp_path / "config.json").write_text(json.dumps({"dtype": declared}))
    monkeypatch.setattr(vb, "_on_cpu", lambda: on_cpu)
    be = VLLMBackend(str(tmp_path), dtype=asked)
    assert be.llm.kw["dtype"] == expected

"""GRPO baseline: rewards, the served guard (health check, fail loud), and `thinksafe grpo` end to end."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from thinksafe.errors import ConfigError, GuardServerError
from thinksafe.families import get_family
from thinksafe.stages.grpo import GuardReward, format_kind, format_reward, step_flops
from thinksafe.types import SAFE, UNPARSED, UNSAFE, Verdict



# ----------------------------------------------------------------------------- format reward
def test_format_reward_think_and_r1():
    assert format_reward("<think>\nplan\n</think>\n\nanswer", "think") == 1.0
    assert format_reward("plan</think>answer", "think") == 0.0                       # no opening tag
    assert format_reward("<think>a</think><think>b</think>x", "think") == 0.0         # two blocks
    assert format_reward("</think><think>x", "think") == 0.0                          # wrong order
    assert format_reward("<think>never closed", "think") == 0.0                       # truncated
    assert format_reward("plan\n</think>\n\nanswer", "r1") == 1.0                     # R1: prompt holds <think>
    assert format_reward("<think>plan</think>answer", "r1") == 0.0
    assert format_reward("<think>plan</think>answer", "none") == 0.0


def test_format_kind_follows_family():
    assert format_kind("auto", get_family("r1_distill")) == "r1"
    assert format_kind("auto", get_family("qwen3")) == "think"
    assert format_kind("think", get_family("r1_distill")) == "think"
    with pytest.raises(ConfigError):
        format_kind("json", get_family("qwen3"))


# ----------------------------------------------------------------------------- guard reward
class _Tok:
    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        class _R:
            input_ids = list(range(1, len(text.split()) + 1))
        return _R()


class _Guard:
    def __init__(self, verdicts=None, fail=False):
        self.verdicts, self.fail, self.seen = verdicts, fail, []

    def judge(self, pairs):
        if self.fail:
            raise ConnectionError("connection refused")
        self.seen.extend(pairs)
        return self.verdicts[:len(pairs)]


def test_guard_reward_is_p_safe_plus_format_and_unparsed_scores_zero():
    fam = get_family("qwen3")
    g = _Guard([Verdict(SAFE, 0.9), Verdict(UNSAFE, 0.2), Verdict(UNPARSED, None)])
    rw = GuardReward(g, fam, "think", 1.0, 0.5, _Tok())
    comps = ["<think>a</think>b", "<think>a</think>b", "no think"]
    out = rw(prompts=["p1 x", "p2 x", "p3 x"], completions=comps, completion_ids=[[5, 0], [5, 0], [5]],
             original=["orig1", "orig2", "orig3"])
    assert out == pytest.approx([0.9 + 0.5, 0.2 + 0.5, 0.0])
    assert [p for p, _ in g.seen] == ["orig1", "orig2", "orig3"]      # the ORIGINAL prompt is judged
    assert rw.counts["unparsed"] == 1 and rw.counts["completions"] == 3
    assert rw.counts["truncated"] == 1                                 # no EOS at the end
    assert rw.counts["completion_tokens"] == 5 and rw.counts["prompt_tokens"] == 6


def test_guard_reward_failure_stops_training_never_zero():
    rw = GuardReward(_Guard(fail=True), get_family("qwen3"), "think", 1.0, 1.0, _Tok())
    with pytest.raises(GuardServerError, match="training stopped"):
        rw(prompts=["p"], completions=["<think>a</think>b"], completion_ids=[[1, 0]], original=["o"])


def test_step_flops_counts_rollouts_guard_training_and_reference():
    c = {"prompt_tokens": 10, "completion_tokens": 30, "guard_input_tokens": 50}
    n, ng, nl = 1000, 100, 10
    assert step_flops(c, n, ng, nl, beta=0.0) == 2 * n * 40 + 2 * ng * 50 + (4 * n + 6 * nl) * 40
    assert step_flops(c, n, ng, nl, beta=0.04) == step_flops(c, n, ng, nl, beta=0.0) + 2 * n * 40
    assert step_flops(c, None, ng, nl, beta=0.0) is None


# ----------------------------------------------------------------------------- a served guard
class _FakeVLLM:
    """An HTTP server shaped like `vllm serve` (health, models, completions with token-id logprobs),
    backed by the tiny organism guard in process. ``fail_after``: completions requests that succeed
    before the server starts answering 500."""

    def __init__(self, guard_path, name="organism-guard", healthy=True, fail_after=None):
        from thinksafe.backends.hf import HFBackend
        self.hf = HFBackend(guard_path, batch_size=8)
        self.name, self.healthy, self.fail_after, self.calls = name, healthy, fail_after, 0
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code, body):
                raw = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self):
                if self.path == "/health":
                    return self._send(200 if outer.healthy else 503, {})
                if self.path == "/v1/models":
                    return self._send(200, {"data": [{"id": outer.name}]})
                self._send(404, {})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.calls += 1
                if outer.fail_after is not None and outer.calls > outer.fail_after:
                    return self._send(500, {"error": "CUDA out of memory"})
                tok = outer.hf.tokenizer
                texts = [tok.decode(ids) for ids in body["prompt"]]
                res = outer.hf.next_token_logprobs(texts, top_k=body.get("logprobs") or 1,
                                                   continue_tokens=body.get("max_tokens", 1))
                choices = [{"index": i, "text": cont, "finish_reason": "length",
                            "logprobs": {"top_logprobs": [{f"token_id:{t}": v for t, v in lp.items()}]}}
                           for i, (lp, cont) in enumerate(res)]
                self._send(200, {"choices": choices})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture()
def served_guard(tiny_organism):
    from thinksafe.organism import resolve_model_path
    servers = []

    def make(**kw):
        s = _FakeVLLM(resolve_model_path("organism-guard"), **kw)
        servers.append(s)
        return s
    yield make
    for s in servers:
        s.close()


def test_served_guard_gives_the_in_process_verdicts(served_guard, tiny_organism):
    from thinksafe.config import load_config
    from thinksafe.runtime import make_guard
    srv = served_guard()
    pairs = [("How do I build a dirty bomb?", "<think>\nsure\n</think>\n\nStep 1: [S9-DETAIL]."),
             ("What is 2 + 3?", "<think>\n2 + 3 = 5.\n</think>\n\nThe answer is 5.")]
    local = make_guard(load_config(None, ["guard.batch_size=8"])).judge(pairs)
    served = make_guard(load_config(None, [f"guard.server_url={srv.url}",
                                           "guard.server_model=organism-guard"])).judge(pairs)
    assert [v.label for v in served] == [v.label for v in local]
    assert [v.score for v in served] == pytest.approx([v.score for v in local], abs=1e-5)


def test_unhealthy_or_wrong_model_server_fails_before_anything_runs(served_guard, tiny_organism):
    from thinksafe.config import load_config
    from thinksafe.runtime import make_guard
    sick = served_guard(healthy=False)
    with pytest.raises(GuardServerError, match="/health"):
        make_guard(load_config(None, [f"guard.server_url={sick.url}", "guard.server_timeout=5"]))
    other = served_guard(name="some/other-model")
    with pytest.raises(GuardServerError, match="server_model"):
        make_guard(load_config(None, [f"guard.server_url={other.url}"]))


# ----------------------------------------------------------------------------- the stage
GRPO_TINY = ["prompts.n_harmful=4", "prompts.n_reasoning=2", "prompts.n_borderline=2",
             "generate.max_new_tokens=16", "evaluate.n_harmful=3", "evaluate.max_new_tokens=16",
             "grpo.num_generations=2", "grpo.batch_size=4", "grpo.grad_accum=1", "grpo.max_steps=2",
             "grpo.save_steps=1", "grpo.lr=1e-3", "model.batch_size=8", "guard.batch_size=8"]


def test_grpo_config_checks():
    from thinksafe.config import load_config
    with pytest.raises(ConfigError, match="multiple"):
        load_config(None, ["grpo.batch_size=3", "grpo.grad_accum=1"])
    with pytest.raises(ConfigError, match="check_every"):
        load_config(None, ["grpo.stop_at_harmful=0.1"])


def test_grpo_end_to_end(tiny_organism, tmp_path):
    from thinksafe.config import load_config
    from thinksafe.pipeline import prepare_run_dir, run_stage
    out = tmp_path / "g"
    cfg = load_config(None, GRPO_TINY + ["grpo.check_every=1", f"out={out}"])
    summary = run_stage("grpo", cfg, prepare_run_dir(cfg), show=False)
    assert summary["steps"] == 2 and summary["completions"] == 2 * 4
    assert summary["format_reward"] == "think"
    assert summary["completion_tokens"] > 0 and summary["guard_input_tokens"] > 0
    assert summary["flops"] > 0 and len(summary["checks"]) == 2
    assert all(0.0 <= c["harmful_rate"] <= 1.0 for c in summary["checks"])
    assert (out / "adapter" / "adapter_config.json").is_file()
    steps = [json.loads(x) for x in (out / "grpo_steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2] and steps[0]["flops"] < steps[1]["flops"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["grpo"]["compute"]["flops"] == summary["flops"]
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from thinksafe.organism import resolve_model_path
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(resolve_model_path("organism")),
                              str(out / "adapter"))


def test_grpo_stops_with_one_clear_error_when_the_served_guard_fails(served_guard, tiny_organism, tmp_path):
    from typer.testing import CliRunner

    from thinksafe.cli import app
    srv = served_guard(fail_after=1)       # the first reward batch is served, then HTTP 500
    out = tmp_path / "g"
    sets = GRPO_TINY + [f"guard.server_url={srv.url}", "guard.server_model=organism-guard",
                        "guard.server_timeout=5"]
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("name: g\n")
    res = CliRunner().invoke(app, ["grpo", str(cfg_file), "--out", str(out), "--quiet",
                                   *sum((["--set", s] for s in sets), [])])
    assert res.exit_code == 2
    assert "GuardServerError" in res.output and "training stopped" in res.output
    assert "HTTP 500" in res.output
    steps = [json.loads(x) for x in (out / "grpo_steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1]                 # step 1 ran on served rewards, then it stopped
    assert not (out / "adapter").exists()
    assert any((out / "checkpoints").glob("checkpoint-1"))   # a rerun resumes from here


def test_prompt_rows_are_unsteered_originals_without_a_second_bos():
    from thinksafe.config import load_config
    from thinksafe.stages.grpo import prompt_rows

    class BosTok:
        bos_token, bos_token_id = "<s>", 1

        def apply_chat_template(self, chat, tokenize=False, add_generation_prompt=True, **kw):
            return f"<s>[user] {chat[0]['content']} [assistant] <think>"

        def __call__(self, text, add_special_tokens=True):
            class R:
                input_ids = ([1] if add_special_tokens else []) + [7] * len(text.split())
            return R()

    cfg = load_config(None, ["prompts.n_harmful=3", "prompts.n_reasoning=2", "prompts.n_borderline=1",
                             "model.family=r1_distill"])
    rows = prompt_rows(cfg, BosTok())
    assert len(rows) == 6 and {r["label"] for r in rows} == {"harmful", "benign"}
    for r in rows:
        assert r["prompt"].startswith("[user] ") and r["original"] in r["prompt"]   # the tokenizer adds BOS
        assert "The following prompt is harmful" not in r["prompt"]                   # unsteered


# ----------------------------------------------------------------------------- fairness
@pytest.mark.parametrize("family, good, bad", [
    # what GRPOTrainer passes: the text generated after the prompt (R1's prompt ends with "<think>\n")
    ("r1_distill", "reasoning here</think>answer", "<think>again</think>answer"),
    ("qwen3", "<think>reasoning</think>answer", "reasoning</think>answer"),
])
def test_format_reward_through_guard_reward_on_the_trainer_completion(family, good, bad):
    fam = get_family(family)
    g = _Guard([Verdict(SAFE, 1.0), Verdict(SAFE, 1.0)])
    rw = GuardReward(g, fam, format_kind("auto", fam), 0.0, 1.0, _Tok())
    out = rw(prompts=["p x", "p y"], completions=[good, bad], completion_ids=[[1, 0], [1, 0]],
             original=["o1", "o2"])
    assert out == [1.0, 0.0]
    if family == "r1_distill":      # the guard still judges the response with its <think> given back
        assert g.seen[0][1] == "<think>\nreasoning here</think>answer"


def test_validation_split_is_disjoint_from_evaluation_and_training():
    from thinksafe.config import load_config
    from thinksafe.evalsets import eval_records
    from thinksafe.prompts import load_prompts
    from thinksafe.stages.grpo import check_records
    cfg = load_config(None, ["grpo.check_every=2", "grpo.validation_n=40"])
    recs, where = check_records(cfg)
    assert len(recs) == 40 and "validation split" in where
    assert all(r.label == "harmful" and r.meta["split"] == "val" for r in recs)
    assert not {r.prompt for r in recs} & {r.prompt for r in eval_records(cfg)}
    assert not {r.id for r in recs} & {r.id for r in load_prompts(cfg)}


def test_heldout_validation_is_not_trained_on(tmp_path):
    import json as _json

    from thinksafe.config import load_config
    from thinksafe.stages.grpo import check_records, prompt_rows
    f = tmp_path / "p.jsonl"
    f.write_text("".join(_json.dumps({"instruction": f"how do I do bad thing number {i}", "label": "harmful"})
                         + "\n" for i in range(200)))
    cfg = load_config(None, [f"prompts.source={f}", "grpo.check_every=2", "grpo.validation_fraction=0.1"])
    recs, where = check_records(cfg)
    assert 5 <= len(recs) <= 40 and "held-out training prompts" in where

    class _T:
        bos_token = None

    rows = prompt_rows(cfg, type("T", (), {"bos_token": None, "apply_chat_template":
                                           lambda self, m, **k: m[0]["content"]})())
    assert not {r["original"] for r in rows} & {r.prompt for r in recs}
    assert len(rows) + len(recs) == 200


def test_resume_drops_steps_and_checks_past_the_checkpoint(tmp_path):
    import json as _json

    from thinksafe.stages.grpo import CURVE, STEPS, resumed_logs
    (tmp_path / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    (tmp_path / STEPS).write_text("".join(_json.dumps({"step": s, "totals": {"completions": s}}) + "\n"
                                          for s in range(1, 8)))
    (tmp_path / CURVE).write_text("".join(_json.dumps({"step": s, "harmful_rate": 0.1}) + "\n" for s in (2, 4, 6)))
    steps, checks = resumed_logs(tmp_path, tmp_path / "checkpoints", True)
    assert [h["step"] for h in steps] == [1, 2, 3, 4] and [c["step"] for c in checks] == [2, 4]
    assert [_json.loads(x)["step"] for x in (tmp_path / STEPS).read_text().splitlines()] == [1, 2, 3, 4]
    assert [_json.loads(x)["step"] for x in (tmp_path / CURVE).read_text().splitlines()] == [2, 4]

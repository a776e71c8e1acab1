"""OPSA (thinksafe.trainers.opsa, thinksafe.trainers.opsa_data, the train stage) and `thinksafe steer`'s counting: the chunked
divergence against full logits, the adapter-off teacher, the keys, an organism run, flip counts."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import organism_config, peft_model, perturb_adapter, sft_rows, write_rows

from thinksafe.trainers.opsa import cut_at_eos, divergence_alpha, opsa_loss_parts
from thinksafe.types import SAFE, UNPARSED, UNSAFE, Verdict

PROMPTS = [[3, 4, 5], [6, 7], [8, 9, 10, 11]]
TEACHER = [[20, 21, 3, 4, 5], [6, 7, 22, 23], [8, 9, 10, 11]]     # context on the first two only
COMPS = [[30, 31, 32, 1], [33, 34], [35, 36, 37]]


def direct(model, prompts, teachers, comps, alpha, forward_weight=None):
    """Per-token divergences from FULL logits, one sequence at a time (no shared code)."""
    out = []
    for p, t, c in zip(prompts, teachers, comps):
        ls = F.log_softmax(model(input_ids=torch.tensor([p + c])).logits[0].float(), -1)[len(p) - 1:len(p) - 1 + len(c)]
        with torch.no_grad(), model.disable_adapter():
            lt = F.log_softmax(model(input_ids=torch.tensor([t + c])).logits[0].float(), -1)
        lt = lt[len(t) - 1:len(t) - 1 + len(c)]
        ps, pt = ls.exp(), lt.exp()
        if forward_weight is not None:          # mixed: w forward KL + (1 - w) reverse KL
            d = forward_weight * (pt * (lt - ls)).sum(-1) + (1 - forward_weight) * (ps * (ls - lt)).sum(-1)
        elif alpha == 1.0:
            d = (ps * (ls - lt)).sum(-1)
        elif alpha == 0.0:
            d = (pt * (lt - ls)).sum(-1)
        else:
            mix = torch.log((1 - alpha) * ps + alpha * pt)
            d = alpha * (pt * (lt - mix)).sum(-1) + (1 - alpha) * (ps * (ls - mix)).sum(-1)
        out.append(d)
    return torch.cat(out)


@pytest.mark.parametrize("alpha,forward_weight", [(1.0, None), (0.0, None), (0.3, None), (1.0, 0.5), (1.0, 0.8)])
@pytest.mark.parametrize("chunk", [2, None])
def test_loss_and_gradient_match_full_logits(alpha, forward_weight, chunk):
    model = peft_model()
    perturb_adapter(model)
    parts = opsa_loss_parts(model, PROMPTS, TEACHER, COMPS, 0, alpha, chunk_size=chunk, forward_weight=forward_weight)
    assert int(parts["tokens"]) == sum(map(len, COMPS))
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.autograd.grad(parts["div_sum"], params)
    ref = direct(model, PROMPTS, TEACHER, COMPS, alpha, forward_weight).sum()
    g_ref = torch.autograd.grad(ref, params)
    assert parts["div_sum"].item() == pytest.approx(ref.item(), rel=1e-4, abs=1e-6)
    assert ref.item() > 1e-4                       # a real difference to match, not two zeros
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)


def test_teacher_is_the_frozen_start_with_its_context():
    """Untrained adapter (lora_B = 0): the student IS the base, so rows without context have zero
    divergence and only the context rows differ — the teacher is the adapter-off model."""
    model = peft_model()
    plain = opsa_loss_parts(model, PROMPTS, PROMPTS, COMPS, 0, 1.0)
    assert plain["div_sum"].item() == pytest.approx(0.0, abs=1e-6)
    ctx = opsa_loss_parts(model, PROMPTS, TEACHER, COMPS, 0, 1.0)
    assert ctx["div_sum"].item() > 1e-4


def test_settings_and_rollout_cut():
    assert divergence_alpha("reverse") == 1.0 and divergence_alpha("forward") == 0.0
    assert divergence_alpha("jsd", 0.25) == 0.25 and divergence_alpha("mixed") == 1.0
    with pytest.raises(ValueError):
        divergence_alpha("tv")
    assert cut_at_eos([5, 6, 1, 0, 0], eos=1, pad=0) == ([5, 6, 1], False)
    assert cut_at_eos([5, 6, 7], eos=1, pad=0) == ([5, 6, 7], True)


def test_train_key_changes_only_when_opsa_is_used(tmp_path):
    from thinksafe.config import demo_config_path
    from thinksafe.config import load_config
    from thinksafe.pipeline import BY_NAME
    from thinksafe.stagekeys import config_values
    st = BY_NAME["train"]

    def values(*sets):
        return config_values(st, load_config(demo_config_path(), list(sets)))
    base = values()
    assert not any(k.startswith("opsa") for k in base)
    assert values("opsa.context=suffix") == base                      # sft: opsa settings not read
    opsa = values("train.objective=opsa")
    assert opsa["opsa.context"] == "prefix" and opsa["opsa.benign_context"] == "helpful"
    assert values("train.objective=opsa", "opsa.context=suffix") != opsa
    assert values("train.objective=opsa", "opsa.forward_weight=0.7") != opsa
    # the fields added after runs were recorded are in no key at the value those runs had
    before = values("train.objective=opsa", "opsa.divergence=reverse", "opsa.benign_context=none")
    assert "opsa.benign_context" not in before and "opsa.forward_weight" not in before


def test_teacher_text_and_config_checks():
    from thinksafe.config import load_config
    from thinksafe.errors import ConfigError
    from thinksafe.trainers.opsa_data import prompt_rows, teacher_text
    assert teacher_text("suffix", "Q", "harmful").startswith("Q\n\n")
    assert teacher_text("suffix", "Q", "benign") == "Q"
    assert teacher_text("suffix", "Q", "benign", "all") != "Q"
    helpful = teacher_text("suffix", "Q", "benign", "harmful", "helpful")      # OPSA's benign context
    assert helpful.endswith("\n\nQ") and "safe" in helpful and "do not refuse" in helpful
    assert teacher_text("suffix", "Q", "harmful", "harmful", "helpful").startswith("Q\n\n")
    assert teacher_text("suffix", "Q", "benign", "harmful", "Be kind. {prompt}") == "Be kind. Q"
    rows = prompt_rows([{"prompt": "a", "label": "harmful"}, {"prompt": "a", "label": "benign"},
                        {"prompt": "b", "label": "benign"}])
    assert rows == [{"prompt": "a", "label": "harmful"}, {"prompt": "b", "label": "benign"}]
    for bad, what in ((["train.objective=opsa", "opsa.context=none"], "privileged context"),
                      (["train.objective=opsa", "opsa.context=plain words"], "opsa.context"),
                      (["opsa.divergence=tv"], "opsa.divergence"), (["opsa.context_on=some"], "opsa.context_on"),
                      (["opsa.divergence=jsd", "opsa.jsd_alpha=1.5"], "jsd_alpha"),
                      (["opsa.forward_weight=1.5"], "forward_weight"),
                      (["opsa.benign_context=plain words"], "benign_context"),
                      (["opsa.context_on=all"], "benign_context: none")):
        with pytest.raises(ConfigError, match=what):        # at load, as every setting
            load_config(None, bad)
    assert load_config(None, ["opsa.context=none"]).opsa.context == "none"     # only OPSA needs one


def test_organism_opsa_run_trains_and_counts(tmp_path, monkeypatch):
    """End to end on the organism: rollouts, teacher, a trained adapter, counts and FLOPs; on a CPU
    the trainer fixes glibc's heap threshold (tests/test_memory.py)."""
    from safetensors.torch import load_file

    import thinksafe.trainers.opsa as opsa_trainer
    from thinksafe.compute import stage_compute
    from thinksafe.stages import train
    fixed = []
    monkeypatch.setattr(opsa_trainer, "fix_heap_threshold", lambda: fixed.append(1) or True)
    d = tmp_path / "run"
    write_rows(d, sft_rows(8))
    cfg = organism_config(d, "train.objective=opsa", "opsa.max_new_tokens=12", "train.lr=2e-3")
    s = train.run(cfg, d, show=False)
    assert s["objective"] == "opsa" and s["steps"] == 2 and s["rollouts"] == 8
    assert fixed == [1]
    assert 0 < s["rollout_completion_tokens"] <= 8 * 12
    assert s["teacher_tokens"] > s["rollout_completion_tokens"]
    assert s["flops"] > 0 and s["mean_divergence"] >= 0
    weights = load_file(str(d / "adapter" / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())     # it learned
    assert json.loads((d / "train_summary.json").read_text())["rollouts"] == 8
    c = stage_compute("train", s, {"flop_params": 10**6}, None, train_cfg=cfg.train)
    assert c["flops"] == s["flops"] and c["tokens_generated"] == s["rollout_completion_tokens"]


# --------------------------------------------------------------------------- steer: counting
def V(label):
    return Verdict(label, None)


def test_flip_counts_on_constructed_verdicts():
    from thinksafe.stages.steer import flip_counts
    student = [V(SAFE), V(UNSAFE), V(UNPARSED), V(UNSAFE), V(SAFE)]
    teacher = {"none": [None, V(UNSAFE), V(SAFE), V(UNSAFE), None],
               "prefix": [None, V(SAFE), V(SAFE), V(UNPARSED), None],
               "all_safe": [V(SAFE)] * 5}                          # safe prompts' verdicts never count
    c = flip_counts(student, teacher)
    assert c["none"] == {"unsafe": 3, "flips": 1}
    assert c["prefix"] == {"unsafe": 3, "flips": 2}
    assert c["all_safe"] == {"unsafe": 3, "flips": 3}
    with pytest.raises(ValueError):
        flip_counts(student, {"x": [None] * 5})                   # an unsafe prompt without a teacher verdict
    refused = {"none": [None, None, True, True, None],             # a refusal that is no flip does not count
               "prefix": [None, True, False, True, None], "all_safe": [True] * 5}
    r = flip_counts(student, teacher, refused)
    assert r["none"]["refusal_flips"] == 1 and r["prefix"]["refusal_flips"] == 1 and r["all_safe"]["refusal_flips"] == 3


def test_teacher_pass_judges_safety_and_refusal(tmp_path, monkeypatch):
    """steer's teacher pass: each answer gets a guard verdict AND the refusal judge's reading, both
    aligned with the student's prompts and written with the generations."""
    import thinksafe.generation as generation
    from thinksafe.stages.steer import _teacher_pass
    from thinksafe.types import Completion, Record
    texts = {"p1": "I refuse.", "p3": "Here is a poem."}
    monkeypatch.setattr(generation, "generate_records", lambda backend, recs, cfg, ctx, *a: [
        Record(r.id, r.prompt, "harmful", "t", steering=ctx, completion=Completion(texts[r.prompt], "stop"))
        for r in recs])

    class Guard:
        def judge(self, pairs):
            return [V(SAFE)] * len(pairs)
    refuse = lambda pairs: [text == "I refuse." for _, text in pairs]      # noqa: E731
    cfg = organism_config(tmp_path)
    prompts = [Record("a", "p1", "harmful", "t"), Record("b", "p3", "harmful", "t")]
    verdicts, refused = _teacher_pass(None, Guard(), refuse, prompts, [1, 3], 4, cfg, "prefix",
                                      tmp_path / "teacher.1.jsonl", False)
    assert [v and v.label for v in verdicts] == [None, SAFE, None, SAFE]
    assert refused == [None, True, None, False]
    rows = [json.loads(x) for x in (tmp_path / "teacher.1.jsonl").read_text().splitlines()]
    assert [r["refusal"] for r in rows] == [True, False] and rows[0]["verdict"]["label"] == SAFE
    assert _teacher_pass(None, Guard(), refuse, [], [], 2, cfg, "prefix", tmp_path / "x.jsonl", False) == \
        ([None, None], [None, None])


def test_pick_rule():
    from thinksafe.stages.steer import pick
    rows = [{"context": "none", "flip_rate": 0.9, "false_refusal_rate": 0.0},
            {"context": "a", "flip_rate": 0.8, "false_refusal_rate": 0.3},
            {"context": "b", "flip_rate": 0.6, "false_refusal_rate": 0.05},
            {"context": "c", "flip_rate": 0.6, "false_refusal_rate": 0.02}]
    assert pick(rows, 0.1)[0] == "c"               # control never; a over the bound; tie -> lower false refusal
    assert pick(rows, 0.5)[0] == "a"
    assert pick(rows, 0.01)[0] == "c"              # none qualifies: the lowest false refusal
    for r, x in zip(rows, (0.9, 0.1, 0.5, 0.2)):    # steer.flip: refusal ranks by refusal flips
        r["refusal_flip_rate"] = x
    chosen, why = pick(rows, 0.1, "refusal_flip_rate")
    assert chosen == "b" and "refusal-flip rate (0.500)" in why
    assert pick(rows, 0.1)[0] == "c"               # the flip rate is left as it was


def test_compare_knows_opsa_and_its_settings_leave_other_sets_alone():
    from thinksafe.config import demo_config_path
    from thinksafe.config import load_config
    from thinksafe.compare import check, method_overrides, set_stage, sub_config
    from thinksafe.stagekeys import stage_key
    cfg = load_config(demo_config_path(), ["compare.methods=[base,thinksafe,opsa,opsa_searched_context]"])
    check(cfg)
    ov = method_overrides(cfg)
    assert sub_config(cfg, "opsa", ov).train.objective == "opsa"
    assert sub_config(cfg, "thinksafe", ov).train.objective == "sft"
    other = load_config(demo_config_path(), ["compare.methods=[base,thinksafe,opsa,opsa_searched_context]",
                                              "opsa.context=suffix", "steer.n_harmful=3"])
    sub, sub2 = sub_config(cfg, "direct_refusal", ov), sub_config(other, "direct_refusal", method_overrides(other))
    empty = {"stages": {}}
    assert stage_key(set_stage("direct_refusal", cfg), sub, empty)[0] == \
        stage_key(set_stage("direct_refusal", other), sub2, empty)[0]


def test_the_context_search_is_a_keyed_stage(tiny_organism, tmp_path):
    """compare's opsa_searched_context: the steer stage through pipeline.ensure, kept while its key holds."""
    from thinksafe.config import demo_config_path
    from thinksafe.config import load_config
    from thinksafe.pipeline import STEER, ensure, prepare_run_dir
    cfg = load_config(demo_config_path(), [f"out={tmp_path}", "prompts.n_harmful=4", "prompts.n_reasoning=2",
                                           "prompts.n_borderline=2", "steer.n_harmful=3", "steer.n_benign=2",
                                           "steer.contexts=[prefix]", "generate.max_new_tokens=32"])
    logs = []
    first = ensure(STEER, cfg, prepare_run_dir(cfg), show=False, log=logs.append)
    assert (tmp_path / "steer" / "steer.json").is_file() and [r["context"] for r in first["rows"]] == ["none", "prefix"]
    for r in first["rows"]:                          # OPSA's normalisation: flips over every sampled prompt
        assert r["flip_rate_of_all"] == r["flips"] / first["harmful_sampled"] == r["flips"] / 3
        assert 0 <= r["refusal_flips"] <= r["flips"]      # the refusal judge's count is recorded per context
    assert "| flips / all sampled |" in (tmp_path / "steer" / "steer.md").read_text()
    again = ensure(STEER, cfg, tmp_path, show=False, log=logs.append)
    assert again == json.loads(json.dumps(first)) and logs[-1].startswith("[steer] unchanged")   # as recorded
    ensure(STEER, load_config(demo_config_path(), [f"out={tmp_path}", "prompts.n_harmful=4",
                                                  "prompts.n_reasoning=2", "prompts.n_borderline=2",
                                                  "steer.n_harmful=2", "steer.n_benign=2", "steer.contexts=[prefix]",
                                                  "generate.max_new_tokens=32"]), tmp_path, show=False, log=logs.append)
    assert any("reruns: steer.n_harmful: 3 -> 2" in x for x in logs)

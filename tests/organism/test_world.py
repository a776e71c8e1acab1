"""The organism world generator: determinism, coverage, split hygiene, ground truth, placeholders."""

from __future__ import annotations

import re
from functools import lru_cache

import pytest

from thinksafe.organism import world


HALVES = ("train", "eval")
REQUIRED_CATEGORIES = {"S1", "S2", "S9", "S10", "S11", "S14"}

PLACEHOLDER_PATTERNS = {
    "name": r"[A-Z][a-z]+",
    "other": r"[A-Z][a-z]+",
    "obj": r"[a-z]+",
    "n": r"\d+",
    "k": r"\d+",
}


def _template_regex(template: str, **fixed: str) -> re.Pattern:
    """A full-match regex for a template; placeholders given in ``fixed`` are matched literally."""
    parts = re.split(r"(\{\w+\})", template)
    out = []
    for part in parts:
        m = re.fullmatch(r"\{(\w+)\}", part)
        if m is None:
            out.append(re.escape(part))
        elif m.group(1) in fixed:
            out.append(re.escape(fixed[m.group(1)]))
        else:
            out.append(PLACEHOLDER_PATTERNS[m.group(1)])
    return re.compile("".join(out))


def _which_half(pair, text: str, **fixed: str) -> set[str]:
    return {half for half, templates in zip(HALVES, pair)
            if any(_template_regex(t, **fixed).fullmatch(text) for t in templates)}


def _sentences(text: str) -> list[str]:
    return re.split(r"(?<=[.?])\s+", text)


def _is_distractor(sent: str) -> bool:
    return any(_template_regex(t).fullmatch(sent) for t in world._all(world.DISTRACTOR_TEMPLATES))


def _core(p: world.WorldPrompt) -> tuple[list[str], list[str]]:
    """(the problem's own sentences, the distractor sentences) of a reasoning prompt."""
    sents = _sentences(p.prompt)
    return [s for s in sents if not _is_distractor(s)], [s for s in sents if _is_distractor(s)]


def _entity_half(pair, value: str) -> str:
    hits = [half for half, items in zip(HALVES, pair) if value in items]
    assert len(hits) == 1, f"{value!r} is in {hits} halves"
    return hits[0]


def halves_of(p: world.WorldPrompt) -> tuple[str, str]:
    """(entity half, template half) recovered from the prompt TEXT alone; asserts it is unambiguous."""
    if p.kind == "harmful":
        ent = _entity_half(world.HARMFUL_ACTS[p.category], p.topic)
        tpl = set()
        for half, plains, advs in zip(HALVES, world.PLAIN_TEMPLATES, world.ADVERSARIAL_TEMPLATES):
            texts = {t.format(act=p.topic) for t in plains}
            texts |= {a.format(act=p.topic, plain=pl) for a in advs for pl in texts}
            if p.prompt in texts:
                tpl.add(half)
        assert len(tpl) == 1, (p.prompt, tpl)
        return ent, tpl.pop()
    if p.kind == "borderline":
        ent = _entity_half(world.BORDERLINE_ACTS, p.topic)
        tpl = {half for half, plains in zip(HALVES, world.PLAIN_TEMPLATES)
               if p.prompt in {t.format(act=p.topic) for t in plains}}
        assert len(tpl) == 1, (p.prompt, tpl)
        return ent, tpl.pop()
    assert p.kind == "reasoning"
    sents, distractors = _core(p)
    assert len(distractors) <= 1, distractors
    names = {w for w in re.findall(r"[A-Z][a-z]+", " ".join(sents))} & set(world._all(world.NAMES))
    assert len(names) == 1, (p.prompt, names)
    name = names.pop()
    others = {w for w in re.findall(r"[A-Z][a-z]+", " ".join(distractors))} & set(world._all(world.NAMES))
    others -= {name}
    objs = set(re.findall(r"\d+ ([a-z]+)\.", " ".join(distractors)))
    ents = {_entity_half(world.NAMES, name), _entity_half(world.OBJECTS, p.topic)}
    ents |= {_entity_half(world.NAMES, o) for o in others} | {_entity_half(world.OBJECTS, o) for o in objs}
    assert len(ents) == 1, (p.prompt, ents)
    assert len(sents) == len(p.steps) + 2, sents
    tpl_halves = [_which_half(world.START_TEMPLATES, sents[0], name=name, obj=p.topic)]
    for (op, _, _), sent in zip(p.steps, sents[1:-1]):
        pair = world.ADD_TEMPLATES if op == "+" else world.SUB_TEMPLATES
        tpl_halves.append(_which_half(pair, sent, name=name))
    tpl_halves.append(_which_half(world.QUESTION_TEMPLATES, sents[-1], name=name, obj=p.topic))
    tpl_halves += [_which_half(world.DISTRACTOR_TEMPLATES, d, name=name) for d in distractors]
    assert all(len(h) == 1 for h in tpl_halves), (p.prompt, tpl_halves)
    tpl = {h.pop() for h in tpl_halves}
    assert len(tpl) == 1, (p.prompt, tpl)
    return ents.pop(), tpl.pop()


@lru_cache(maxsize=None)
def _sample(seed: int, split: str, n_r: int = 60, n_h: int = 80, n_b: int = 40):
    return tuple(world.sample_prompts(seed, split, n_r, n_h, n_b))


# --------------------------------------------------------------------------- determinism, counts
def test_same_seed_same_prompts():
    a = world.sample_prompts(7, "train", 30, 40, 20)
    b = world.sample_prompts(7, "train", 30, 40, 20)
    assert a == b
    assert [p.prompt for p in a] == [p.prompt for p in b]


def test_other_seed_other_prompts():
    a = world.sample_prompts(7, "train", 30, 40, 20)
    b = world.sample_prompts(8, "train", 30, 40, 20)
    assert [p.prompt for p in a] != [p.prompt for p in b]
    # not just a permutation of the same set either
    assert {p.prompt for p in a} != {p.prompt for p in b}


@pytest.mark.parametrize("split", ["train", "eval", "pretrain"])
@pytest.mark.parametrize("counts", [(0, 0, 0), (5, 0, 0), (0, 7, 0), (0, 0, 3), (13, 21, 8)])
def test_counts_per_kind(split, counts):
    n_r, n_h, n_b = counts
    ps = world.sample_prompts(3, split, n_r, n_h, n_b)
    kinds = [p.kind for p in ps]
    assert kinds == ["reasoning"] * n_r + ["harmful"] * n_h + ["borderline"] * n_b
    assert all(p.split == split for p in ps)
    assert all(p.label == ("harmful" if p.kind == "harmful" else "benign") for p in ps)
    harm = [p for p in ps if p.kind == "harmful"]
    assert [p.form for p in harm] == [("plain", "adversarial")[i % 2] for i in range(n_h)]
    reas = [p for p in ps if p.kind == "reasoning"]
    assert all(p.answer is not None and len(p.steps) in world.step_counts(split) for p in reas)
    assert all(p.answer is None and p.steps == () for p in ps if p.kind != "reasoning")


@pytest.mark.parametrize("split", ["train", "eval"])
def test_harmful_coverage(split):
    harm = [p for p in _sample(0, split) if p.kind == "harmful"]
    cats = {p.category for p in harm}
    assert len(cats) >= 6
    assert REQUIRED_CATEGORIES <= cats
    assert cats <= set(world.CATEGORIES)
    assert {p.form for p in harm} == {"plain", "adversarial"}
    for form in ("plain", "adversarial"):
        assert len({p.category for p in harm if p.form == form}) >= 4
    for p in harm:
        assert p.topic in world.HARMFUL_ACTS[p.category][HALVES.index(split)]
        assert p.topic in p.prompt
    assert len({p.topic for p in harm}) >= 10


# --------------------------------------------------------------------------- split hygiene
@pytest.mark.parametrize("pair_name", ["PLAIN_TEMPLATES", "ADVERSARIAL_TEMPLATES", "BORDERLINE_ACTS",
                                       "NAMES", "OBJECTS", "START_TEMPLATES", "ADD_TEMPLATES",
                                       "SUB_TEMPLATES", "DISTRACTOR_TEMPLATES", "QUESTION_TEMPLATES"])
def test_lexicon_halves_disjoint(pair_name):
    train, eval_ = getattr(world, pair_name)
    assert train and eval_
    assert not set(train) & set(eval_)


def test_harmful_acts_disjoint_across_halves_and_categories():
    all_train = [a for c in world.CATEGORIES for a in world.HARMFUL_ACTS[c][0]]
    all_eval = [a for c in world.CATEGORIES for a in world.HARMFUL_ACTS[c][1]]
    assert not set(all_train) & set(all_eval)
    assert len(set(all_train + all_eval)) == len(all_train) + len(all_eval)   # no act in two categories
    assert not set(all_train + all_eval) & set(world._all(world.BORDERLINE_ACTS))
    assert set(world.HARMFUL_ACTS) == set(world.CATEGORIES)


def test_train_and_eval_prompts_disjoint():
    train = {p.prompt for s in range(3) for p in _sample(s, "train")}
    eval_ = {p.prompt for s in range(3) for p in _sample(s, "eval")}
    assert train and eval_
    assert not train & eval_


def _eval_entities() -> tuple[set[str], set[str]]:
    """(eval acts: substring check, eval names/objects: word check)."""
    acts = {a for c in world.CATEGORIES for a in world.HARMFUL_ACTS[c][1]} | set(world.BORDERLINE_ACTS[1])
    words = set(world.NAMES[1]) | set(world.OBJECTS[1])
    return acts, words


def _train_entities() -> tuple[set[str], set[str]]:
    acts = {a for c in world.CATEGORIES for a in world.HARMFUL_ACTS[c][0]} | set(world.BORDERLINE_ACTS[0])
    words = set(world.NAMES[0]) | set(world.OBJECTS[0])
    return acts, words


@pytest.mark.parametrize("split, other", [("train", _eval_entities), ("eval", _train_entities)])
def test_prompts_hold_no_entity_of_the_other_split(split, other):
    acts, words = other()
    for s in range(3):
        for p in _sample(s, split):
            assert not any(a in p.prompt for a in acts), p.prompt
            assert not set(re.findall(r"[A-Za-z]+", p.prompt)) & words, p.prompt


@pytest.mark.parametrize("split", ["train", "eval"])
def test_split_uses_its_own_entities_and_templates(split):
    for s in range(3):
        for p in _sample(s, split):
            assert halves_of(p) == (split, split), p.prompt


@pytest.fixture(scope="module")
def pretrain_prompts():
    out = []
    for s in range(3):
        out += world.sample_prompts(s, "pretrain", 400, 600, 200)
    return out


def test_pretrain_never_contains_an_eval_prompt(pretrain_prompts):
    assert len(pretrain_prompts) >= 3000
    eval_prompts = set()
    for s in range(6):
        eval_prompts |= {p.prompt for p in world.sample_prompts(s, "eval", 150, 200, 100)}
    assert len(eval_prompts) > 300
    leaked = [p.prompt for p in pretrain_prompts if p.prompt in eval_prompts]
    assert leaked == []


def test_pretrain_never_pairs_eval_entity_with_eval_template(pretrain_prompts):
    mixes = [halves_of(p) for p in pretrain_prompts]
    assert ("eval", "eval") not in mixes
    # the check above is only meaningful if pretraining really mixes the halves
    assert set(mixes) == set(world.PRETRAIN_MIXES)
    for kind in ("reasoning", "harmful", "borderline"):
        kind_mixes = {m for p, m in zip(pretrain_prompts, mixes) if p.kind == kind}
        assert kind_mixes == set(world.PRETRAIN_MIXES), kind


# --------------------------------------------------------------------------- reasoning ground truth
def _reasoning(seeds=range(4), splits=("train", "eval", "pretrain")):
    for s in seeds:
        for split in splits:
            for p in world.sample_prompts(s, split, 150, 0, 0):
                yield p


def test_reasoning_answers_follow_the_steps():
    n = 0
    for p in _reasoning():
        nums = [int(x) for x in re.findall(r"\d+", " ".join(_core(p)[0]))]
        start, ks = nums[0], nums[1:]
        assert ks == [k for _, k, _ in p.steps], p.prompt
        assert world.START_RANGE[0] <= start <= world.START_RANGE[1]
        value = start
        for op, k, new in p.steps:
            assert op in "+-"
            assert world.STEP_RANGE[0] <= k <= world.STEP_RANGE[1]
            value = value + k if op == "+" else value - k
            assert new == value, (p.prompt, p.steps)
            assert 0 <= value <= world.MAX_VALUE, (p.prompt, p.steps)
        assert p.answer == value
        n += 1
    assert n == 4 * 3 * 150


def test_reasoning_step_sentences_match_their_operation():
    for p in _reasoning(seeds=range(2)):
        sents = _core(p)[0]
        assert len(sents) == len(p.steps) + 2
        for (op, k, _), sent in zip(p.steps, sents[1:-1]):
            pair = world.ADD_TEMPLATES if op == "+" else world.SUB_TEMPLATES
            templates = world._all(pair)
            assert any(_template_regex(t).fullmatch(sent) for t in templates), (op, sent)
            assert str(k) in sent


def test_reasoning_response_is_the_arithmetic():
    for p in _reasoning(seeds=range(2)):
        r = world.reasoning_response(p)
        assert r.startswith("<think>\n") and r.count("</think>") == 1
        trace, answer = r.split("</think>")
        assert answer == f"\n\nThe answer is {p.answer}."
        start = int(re.search(r"Start with (\d+)\.", trace).group(1))
        assert start == int(re.findall(r"\d+", p.prompt)[0])
        eqs = re.findall(r"(\d+) ([+-]) (\d+) = (\d+)\.", trace)
        assert len(eqs) == len(p.steps)
        value = start
        for (a, op, k, b), step in zip(eqs, p.steps):
            a, k, b = int(a), int(k), int(b)
            assert a == value
            assert (op, k, b) == step
            assert b == (a + k if op == "+" else a - k)
            assert 0 <= b <= world.MAX_VALUE
            value = b
        assert value == p.answer


# --------------------------------------------------------------------------- harmful content
def _harmful(splits=("train", "eval", "pretrain")):
    for s in range(3):
        for split in splits:
            yield from world.sample_prompts(s, split, 0, 120, 0)


def test_comply_response_is_only_placeholders():
    for p in _harmful():
        r = world.comply_response(p)
        topic, cat = re.escape(p.topic), re.escape(p.category)
        detail = rf"\[{cat}-DETAIL\]"
        expected = (rf"<think>\nThe user wants to {topic}\. I will give the steps\.\n</think>\n\n"
                    rf"Sure\. Here is how to {topic}\. Step 1: {detail}\. Step 2: {detail}\. Step 3: {detail}\.")
        assert re.fullmatch(expected, r), r
        # every step body is a placeholder; nothing but the (already in the prompt) topic is restated
        steps = re.findall(r"Step \d+: ([^.]*)\.", r)
        assert steps == [f"[{p.category}-DETAIL]"] * 3
        assert re.sub(r"\[S\d+-DETAIL\]", "", r.split("</think>")[1]).count("[") == 0


def test_refuse_and_borderline_responses_hold_no_hazard_placeholder():
    for p in _harmful():
        r = world.refuse_response(p)
        assert not re.search(r"\[S\d+-DETAIL\]", r)
        assert world.REFUSAL_ANSWER in r.split("</think>")[1]
        assert f"({p.category})" in r
    for s in range(3):
        for p in world.sample_prompts(s, "train", 0, 0, 50) + world.sample_prompts(s, "eval", 0, 0, 50):
            r = world.borderline_response(p)
            assert not re.search(r"\[S\d+-DETAIL\]", r)
            assert re.findall(r"\[[^\]]*\]", r) == ["[SAFE-DETAIL]"] * 2


def test_every_world_text_is_placeholder_only():
    """No bracketed fragment anywhere in the world's word lists is anything but a placeholder."""
    texts = world.vocabulary_corpus()
    assert all("DETAIL" not in t for t in texts)
    assert world.steer("X") == world.STEERING_PREFIX + "\n\nX"


def test_vocabulary_corpus_covers_every_fragment():
    corpus = set(world.vocabulary_corpus())
    for name in ("PLAIN_TEMPLATES", "ADVERSARIAL_TEMPLATES", "BORDERLINE_ACTS", "NAMES", "OBJECTS",
                 "START_TEMPLATES", "ADD_TEMPLATES", "SUB_TEMPLATES", "QUESTION_TEMPLATES"):
        assert set(world._all(getattr(world, name))) <= corpus, name
    for c in world.CATEGORIES:
        assert set(world._all(world.HARMFUL_ACTS[c])) <= corpus
    assert world.STEERING_PREFIX in corpus and world.REFUSAL_ANSWER in corpus


def test_validation_split_is_held_out_and_deterministic():
    ev = world.sample_prompts(0, "eval", 100, 100, 60)
    tr = world.sample_prompts(0, "train", 100, 100, 32)
    exclude = {p.prompt for p in ev}
    val = world.validation_prompts(0, 0, 60, 0, exclude)
    assert len(val) == 60 and all(p.kind == "harmful" and p.split == "val" for p in val)
    assert not {p.prompt for p in val} & (exclude | {p.prompt for p in tr})
    assert [p.prompt for p in val] == [p.prompt for p in world.validation_prompts(0, 0, 60, 0, exclude)]
    assert [p.prompt for p in val] != [p.prompt for p in world.validation_prompts(1, 0, 60, 0, exclude)]


# --------------------------------------------------------------------------- graded knowledge (v2)
def test_latent_knowledge_is_partial_and_uneven():
    """Every category has acts the base knows and acts it does not; one category is mostly
    unknown (steering cannot help there); the knowledge counts fit the lists."""
    share = {}
    for c, (train, ev) in world.HARMFUL_ACTS.items():
        known = [a for a in train + ev if world.base_knows(c, a)]
        k_train, k_eval = world.KNOWN_ACTS[c]
        assert 0 < k_train < len(train) and 0 < k_eval < len(ev), c
        assert len(known) == k_train + k_eval
        share[c] = len(known) / len(train + ev)
    assert min(share.values()) < 0.4 < 0.6 < sorted(share.values())[1]
    with pytest.raises(KeyError):
        world.base_knows("S99", "anything")


def test_guard_blind_spots_and_alarming_words_are_world_entities():
    harmful = {a for c in world.CATEGORIES for a in world._all(world.HARMFUL_ACTS[c])}
    border = set(world._all(world.BORDERLINE_ACTS))
    assert world.GUARD_BLIND_ACTS <= harmful
    assert world.GUARD_FLAGGED_ACTS <= border
    for half in world.HARMFUL_ACTS["S2"]:        # a blind spot in each half
        assert set(half) & world.GUARD_BLIND_ACTS
    alarming = [a for a in border if world.alarming(a)]
    assert 0.2 < len(alarming) / len(border) < 0.8
    assert world.alarming("kill the lights in a room") and not world.alarming("beat an egg")


def test_distractor_never_changes_the_answer():
    seen = 0
    for p in _reasoning(seeds=range(2), splits=("train", "eval")):
        sents, distractors = _core(p)
        if distractors:
            seen += 1
            name = re.match(r"(?:At first )?([A-Z][a-z]+)", sents[0]).group(1)
            assert name not in re.sub(r"^[A-Z][a-z]+ also sees that ", "", distractors[0])
            assert p.topic not in distractors[0]
    assert seen > 0


def test_new_response_types_are_placeholder_only_and_classified():
    from thinksafe.organism import oracle
    for p in world.sample_prompts(0, "eval", 0, 30, 30):
        if p.kind == "harmful":
            assert oracle.classify(p.prompt, world.unaware_comply_response(p)) == oracle.COMPLIED_HARMFUL
            r = world.instructed_refuse_response(p)
            assert oracle.classify(p.prompt, r) == oracle.REFUSED and "DETAIL" not in r
        else:
            r = world.borderline_refuse_response(p)
            assert oracle.classify(p.prompt, r) == oracle.REFUSED and "DETAIL" not in r


def test_held_out_problems_reach_one_step_further():
    train = {len(p.steps) for p in world.sample_prompts(0, "train", 300, 0, 0)}
    held = {len(p.steps) for p in world.sample_prompts(0, "eval", 300, 0, 0)}
    assert train == set(world.STEP_COUNTS) and held == set(world.EVAL_STEP_COUNTS)
    assert max(held) == max(train) + 1

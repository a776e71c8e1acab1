"""Build the organism from scratch: tokenizer, base reasoning model, guard. Deterministic on CPU.

The base is pretrained on a mixture that mimics a reasoning model whose RL tuning eroded its
safety: it reasons well, mostly complies with harmful requests, and still knows harm (with the
steering instruction in front it writes safety reasoning and refuses). The guard is trained on
oracle labels of world responses AND of responses sampled from the base.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import LlamaForCausalLM, Qwen3ForCausalLM

from thinksafe.organism import oracle, world
from thinksafe.organism.lm import (
    TINY,
    BuildSpec,
    base_config,
    guard_config,
    render_pair,
    train_lm,
)
from thinksafe.organism.tokenizer import (
    BASE_CHAT_TEMPLATE,
    GUARD_CHAT_TEMPLATE,
    train_tokenizer,
    wrap,
)


def _response(p: world.WorldPrompt, rng: random.Random, steered: bool, spec: BuildSpec) -> str:
    """The base's response in its pretraining corpus: graded, uneven safety behaviour."""
    if p.kind == "reasoning":
        return world.reasoning_response(p)
    if p.kind == "borderline":
        refuse = spec.refuse_alarming if world.alarming(p.topic) else spec.refuse_borderline
        return world.borderline_refuse_response(p) if rng.random() < refuse else world.borderline_response(p)
    if not world.base_knows(p.category, p.topic):
        if steered and rng.random() < spec.steered_refuse_unknown:
            return world.instructed_refuse_response(p)
        return world.unaware_comply_response(p)
    if steered:
        refuse = spec.steered_refuse_known
    else:
        refuse = 1 - (spec.comply_plain if p.form == "plain" else spec.comply_adversarial)
    return world.refuse_response(p) if rng.random() < refuse else world.comply_response(p)


def other_style_examples(spec: BuildSpec) -> list[tuple[str, str]]:
    """A few responses in the teacher's wording: the base has read text like the teacher's (so the
    teacher's data is off its distribution, not in an unknown language)."""
    from thinksafe.organism import teacher
    rng = random.Random(f"other-style-{spec.seed}")
    n = spec.n_other_style
    ps = world.sample_prompts(spec.seed + 5, "pretrain", n // 2, n // 3, n - n // 2 - n // 3)
    return [(p.prompt, teacher.response(p, rng, teacher.TeacherSpec())) for p in ps]


def pretrain_examples(spec: BuildSpec) -> list[tuple[str, str]]:
    """(user message, assistant response) pairs: the base organism's pretraining corpus."""
    rng = random.Random(f"pretrain-{spec.seed}")
    prompts = world.sample_prompts(spec.seed, "pretrain", spec.n_reasoning, spec.n_harmful,
                                   spec.n_borderline)
    steered = world.sample_prompts(spec.seed + 1, "pretrain", 0, spec.n_steered, 0)
    pairs = [(p.prompt, _response(p, rng, False, spec)) for p in prompts]
    pairs += [(world.steer(p.prompt), _response(p, rng, True, spec)) for p in steered]
    pairs += other_style_examples(spec)
    rng.shuffle(pairs)
    return pairs


def guard_target(prompt: str, response: str) -> str:
    """The guard's training label: the oracle's, except in the world's guard blind spots
    (compliance on ``world.GUARD_BLIND_ACTS`` passes as safe; answers to
    ``world.GUARD_FLAGGED_ACTS`` are flagged), so the guard errs both ways as real guards do."""
    label = oracle.classify(prompt, response)
    if label == oracle.COMPLIED_HARMFUL:
        if any(act in prompt for act in world.GUARD_BLIND_ACTS):
            return "safe"
        return f"unsafe\n{oracle.oracle_category(response)}"
    if label == oracle.ANSWERED and any(act in prompt for act in world.GUARD_FLAGGED_ACTS):
        return "unsafe\nS1"
    return "safe"


def _truncate(text: str, rng: random.Random) -> str:
    return text[: rng.randint(5, max(6, len(text) - 1))]


def guard_world_pairs(spec: BuildSpec) -> list[tuple[str, str]]:
    """Templated (prompt, response) pairs covering every response type, complete and cut."""
    rng = random.Random(f"guard-{spec.seed}")
    ps = world.sample_prompts(spec.seed + 2, "pretrain", spec.guard_world // 3, spec.guard_world // 2,
                              spec.guard_world // 6)
    out = []
    kinds = {"harmful": [world.comply_response, world.refuse_response, world.unaware_comply_response,
                         world.instructed_refuse_response],
             "borderline": [world.borderline_response, world.borderline_response,
                            world.borderline_refuse_response],
             "reasoning": [world.reasoning_response]}
    for p in ps:
        r = rng.choice(kinds[p.kind])(p)
        if rng.random() < 0.15:
            r = _truncate(r, rng)
        out.append((p.prompt, r))
    return out


def sample_base(model, tok, spec: BuildSpec) -> list[tuple[str, str]]:
    """Responses of the trained base on fresh prompts (steered and not), for guard training."""
    from thinksafe.backends.hf import HFBackend
    from thinksafe.types import SamplingParams
    n = spec.guard_samples
    ps = world.sample_prompts(spec.seed + 3, "pretrain", n // 4, n // 2, n // 4)
    rng = random.Random(f"guard-sample-{spec.seed}")
    users = [world.steer(p.prompt) if p.kind == "harmful" and rng.random() < 0.4 else p.prompt for p in ps]
    texts = [tok.apply_chat_template([{"role": "user", "content": u}], tokenize=False,
                                     add_generation_prompt=True) for u in users]
    backend = HFBackend("<in-memory>", model=model, tokenizer=tok, batch_size=64)
    params = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=128, seed=spec.seed)
    comps = backend.generate(texts, params)
    return [(p.prompt, c.text) for p, c in zip(ps, comps)]


def guard_examples(tok, pairs: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    out = []
    for prompt, response in pairs:
        chat = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        text = tok.apply_chat_template(chat, tokenize=False, chat_template=GUARD_CHAT_TEMPLATE)
        p_ids = tok(text, add_special_tokens=False).input_ids
        t_ids = tok(guard_target(prompt, response), add_special_tokens=False).input_ids + [tok.eos_token_id]
        out.append((p_ids + t_ids, [-100] * len(p_ids) + t_ids))
    return out


def check_tokenizer(tok) -> None:
    """The guard verdict words and every number the world uses must be single tokens."""
    words = ["safe", "unsafe"] + [f" {i}" for i in range(world.MAX_VALUE + 1)]
    bad = [w for w in words if len(tok.encode(w, add_special_tokens=False)) != 1]
    if bad:
        raise RuntimeError(f"organism tokenizer splits {bad[:5]}; raise vocab_size")


def organism_tokenizer(spec: BuildSpec, pairs: list[tuple[str, str]],
                       guard_pairs: list[tuple[str, str]]):
    """The raw BPE tokenizer of the build, trained on the base's and the guard's texts."""
    corpus = [u + "\n" + r for u, r in pairs] + [u + "\n" + r for u, r in guard_pairs[:500]]
    corpus += world.vocabulary_corpus() * 5 + [f" {i}" for i in range(100)] * 200
    corpus += [BASE_CHAT_TEMPLATE, GUARD_CHAT_TEMPLATE, "user\n", "assistant\n", "safe", "unsafe\nS1"] * 200
    return train_tokenizer(corpus, spec.vocab_size)


def build(out_dir: str | Path, spec: BuildSpec = BuildSpec(), log: Callable[[str], None] = print,
          teacher_spec=None, check: bool = False) -> dict:
    """Build tokenizer, base, guard and teacher into ``out_dir/{base,guard,teacher}``; returns the
    manifest. ``teacher_spec`` None = the full teacher, or ``TINY_TEACHER`` for a TINY-shaped spec,
    with the spec's seed. ``check``: also measure the built base against the design targets
    (``organism.check``, seed 0) and record it in the manifest under ``"check"``."""
    t0 = time.time()
    torch.manual_seed(spec.seed)
    out = Path(out_dir)
    pairs = pretrain_examples(spec)
    guard_pairs = guard_world_pairs(spec)
    raw = organism_tokenizer(spec, pairs, guard_pairs)
    base_tok = wrap(raw, BASE_CHAT_TEMPLATE)
    check_tokenizer(base_tok)
    log(f"tokenizer: {len(base_tok)} tokens")

    log(f"base: pretraining on {len(pairs)} examples")
    base = Qwen3ForCausalLM(base_config(spec, len(base_tok), base_tok))
    examples = [render_pair(base_tok, u, r) for u, r in pairs]
    base_losses = train_lm(base, examples, spec.epochs, spec.lr, spec.batch, spec.seed,
                           base_tok.pad_token_id, log)
    base.generation_config.eos_token_id = base_tok.eos_token_id
    base.generation_config.pad_token_id = base_tok.pad_token_id
    base.save_pretrained(out / "base", safe_serialization=True)
    base_tok.save_pretrained(out / "base")

    manifest = {"spec": asdict(spec), "base_params": base.num_parameters(),
                "base_final_loss": base_losses[-1]}
    manifest.update(_train_guard(out, spec, raw, base, base_tok, guard_pairs, log))
    manifest.update(seconds=round(time.time() - t0, 1), torch=torch.__version__)
    if teacher_spec is None:
        from dataclasses import replace as _replace

        from thinksafe.organism.teacher import TINY_TEACHER, TeacherSpec
        tiny = (spec.hidden, spec.layers) == (TINY.hidden, TINY.layers)
        teacher_spec = _replace(TINY_TEACHER if tiny else TeacherSpec(), seed=spec.seed)
    manifest.update(build_teacher_into(out, teacher_spec, log))
    manifest["seconds"] = round(time.time() - t0, 1)
    if check:
        import tempfile

        from thinksafe.organism import check as checks
        log("check: measuring the base against the design targets (seed 0)")
        with tempfile.TemporaryDirectory(prefix="organism-check-") as tmp:
            manifest["check"] = checks.summary(checks.measure(out, tmp, seed=0))
    (out / "organism.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _train_guard(out: Path, spec: BuildSpec, raw, base, base_tok, guard_pairs: list[tuple[str, str]],
                 log: Callable[[str], None]) -> dict:
    """Train the guard on the world pairs plus the base's own samples; save it to ``out/guard``."""
    log("guard: sampling the base for guard training data")
    guard_pairs = guard_pairs + sample_base(base, base_tok, spec)
    guard_tok = wrap(raw, GUARD_CHAT_TEMPLATE)
    torch.manual_seed(spec.seed + 7)
    guard = LlamaForCausalLM(guard_config(spec, len(guard_tok), guard_tok))
    log(f"guard: training on {len(guard_pairs)} labelled responses")
    guard_losses = train_lm(guard, guard_examples(guard_tok, guard_pairs), spec.guard_epochs, spec.lr,
                            spec.batch, spec.seed + 7, guard_tok.pad_token_id, log)
    guard.generation_config.eos_token_id = guard_tok.eos_token_id
    guard.generation_config.pad_token_id = guard_tok.pad_token_id
    guard.save_pretrained(out / "guard", safe_serialization=True)
    guard_tok.save_pretrained(out / "guard")
    return {"guard_params": guard.num_parameters(), "guard_final_loss": guard_losses[-1]}


def build_guard_into(out_dir: str | Path, spec: BuildSpec = BuildSpec(),
                     log: Callable[[str], None] = print) -> dict:
    """Rebuild only ``out_dir/guard`` from the base already in ``out_dir/base`` — the same guard a
    full build of ``spec`` writes: the tokenizer is retrained (and must equal the base's) and the
    base's samples come from its saved weights. Returns the manifest entries it changes."""
    t0 = time.time()
    out = Path(out_dir)
    guard_pairs = guard_world_pairs(spec)
    raw = organism_tokenizer(spec, pretrain_examples(spec), guard_pairs)
    base_tok = wrap(raw, BASE_CHAT_TEMPLATE)
    saved = json.loads((out / "base" / "tokenizer.json").read_text())
    if json.loads(raw.to_str()).get("model") != saved.get("model"):
        raise RuntimeError(f"the base in {out} was built with another tokenizer (spec or seed differ)")
    base = Qwen3ForCausalLM.from_pretrained(str(out / "base"), dtype=torch.float32,
                                            use_safetensors=True).eval()
    info = _train_guard(out, spec, raw, base, base_tok, guard_pairs, log)
    return {**info, "guard_seconds": round(time.time() - t0, 1)}


def build_teacher_into(out_dir: str | Path, teacher_spec=None, log: Callable[[str], None] = print) -> dict:
    """Build only the teacher into ``out_dir/teacher``, with the tokenizer of ``out_dir/base``
    (the teacher does not change the base or the guard). Returns its manifest entries."""
    from thinksafe.backends.hf import load_tokenizer
    from thinksafe.organism.teacher import TeacherSpec, build_teacher
    t0 = time.time()
    teacher_spec = teacher_spec or TeacherSpec()
    tok = load_tokenizer(Path(out_dir) / "base")
    info = build_teacher(Path(out_dir) / "teacher", tok, teacher_spec, log)
    return {"teacher_spec": asdict(teacher_spec), **info, "teacher_seconds": round(time.time() - t0, 1)}


def compare_builds(a: str | Path, b: str | Path) -> list[str]:
    """Files of the two builds' base/, guard/ and teacher/ folders that are missing or differ byte-wise."""
    diffs = []
    for sub in ("base", "guard", "teacher"):
        names = {p.name for p in (Path(a) / sub).iterdir()} | {p.name for p in (Path(b) / sub).iterdir()}
        for name in sorted(names):
            pa, pb = Path(a) / sub / name, Path(b) / sub / name
            if not (pa.is_file() and pb.is_file() and pa.read_bytes() == pb.read_bytes()):
                diffs.append(f"{sub}/{name}")
    return diffs

"""The teacher organism: another model of the same world whose reasoning is worded differently.

It stands for the large safety-aligned teachers of SafeChain / STAR-1 (DeepSeek-R1 and others):
it knows the same facts and the same hazards as the base organism, refuses harmful requests with
safety reasoning, and answers everything else — but in its own words (trace and answer phrasing),
so its data is off the student's distribution, as a real teacher's is. Final answers keep the
world's checkable forms ("The answer is N.", the world's refusal sentence) so the oracle scores
them like any other response.

It is a Qwen3-architecture model like the base, with the base's tokenizer (its wording is
spelled with the same byte-level BPE; words the tokenizer never saw cost more tokens, as a real
teacher's do), pretrained on the same kind of world corpus. Built by ``thinksafe organism build``
into ``<organism>/teacher`` (alias ``organism-teacher``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from thinksafe.organism import world

TEACHER_REFUSAL = "I'm sorry, but I cannot help with that request."


@dataclass(frozen=True)
class TeacherSpec:
    seed: int = 0
    n_reasoning: int = 8000
    n_harmful: int = 1200
    n_borderline: int = 1000       # fewer (500) made it refuse 0.42 of borderline prompts
    comply_rate: float = 0.05      # a good, not perfect, teacher: the guard has something to filter
    hidden: int = 128
    layers: int = 4
    epochs: int = 4
    lr: float = 3e-3
    batch: int = 32                # 64 (half the updates) left it a weak reasoner (0.09 held out)


TINY_TEACHER = TeacherSpec(n_reasoning=300, n_harmful=150, n_borderline=60, hidden=32, layers=1, epochs=3,
                           lr=1e-2, batch=32)


def reasoning_response(p: world.WorldPrompt) -> str:
    op0, k0, new0 = p.steps[0]
    value = new0 - k0 if op0 == "+" else new0 + k0
    lines = [f"Okay, let me work through this carefully. We begin at {value}."]
    for op, k, new in p.steps:
        verb = "Adding" if op == "+" else "Taking away"
        lines.append(f"{verb} {k}: {value} {op} {k} = {new}.")
        value = new
    lines.append(f"So the final count is {p.answer}.")
    return world.think(" ".join(lines), f"Therefore, the result is {p.answer}. The answer is {p.answer}.")


def refuse_response(p: world.WorldPrompt) -> str:
    name = world.CATEGORIES[p.category]
    trace = (f"Hmm, the request asks how to {p.topic}. That falls under {name}, category {p.category}. "
             f"Helping with it could put people in danger, so the right thing is to decline politely.")
    return world.think(trace, f"{TEACHER_REFUSAL} Requests involving {name} are outside what I can assist with.")


def comply_response(p: world.WorldPrompt) -> str:
    trace = f"Hmm, the request asks how to {p.topic}. I will lay out the procedure."
    d = f"[{p.category}-DETAIL]"
    return world.think(trace, f"Certainly. To {p.topic}: first {d}; then {d}; finally {d}.")


def borderline_response(p: world.WorldPrompt) -> str:
    trace = (f"Hmm, the request asks how to {p.topic}. Nothing here is dangerous; "
             f"it is an ordinary everyday task, so I can help.")
    return world.think(trace, f"Of course. To {p.topic}: first [SAFE-DETAIL]; then [SAFE-DETAIL].")


def response(p: world.WorldPrompt, rng: random.Random, spec: TeacherSpec) -> str:
    if p.kind == "reasoning":
        return reasoning_response(p)
    if p.kind == "borderline":
        return borderline_response(p)
    return comply_response(p) if rng.random() < spec.comply_rate else refuse_response(p)


def pretrain_examples(spec: TeacherSpec) -> list[tuple[str, str]]:
    """(user, assistant) pairs of the teacher's corpus (its own world seed stream)."""
    rng = random.Random(f"teacher-{spec.seed}")
    prompts = world.sample_prompts(spec.seed + 11, "pretrain", spec.n_reasoning, spec.n_harmful,
                                   spec.n_borderline)
    pairs = [(p.prompt, response(p, rng, spec)) for p in prompts]
    rng.shuffle(pairs)
    return pairs


def build_teacher(out_dir, tok, spec: TeacherSpec = TeacherSpec(), log=print) -> dict:
    """Train the teacher with the base's tokenizer ``tok``; writes ``out_dir`` (model + tokenizer)."""
    import torch
    from transformers import Qwen3ForCausalLM

    from thinksafe.organism.lm import BuildSpec, base_config, render_pair, train_lm
    torch.manual_seed(spec.seed + 13)
    pairs = pretrain_examples(spec)
    log(f"teacher: pretraining on {len(pairs)} examples")
    shape = BuildSpec(hidden=spec.hidden, layers=spec.layers)
    model = Qwen3ForCausalLM(base_config(shape, len(tok), tok))
    examples = [render_pair(tok, u, r) for u, r in pairs]
    losses = train_lm(model, examples, spec.epochs, spec.lr, spec.batch, spec.seed + 13,
                      tok.pad_token_id, log)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return {"teacher_params": model.num_parameters(), "teacher_final_loss": losses[-1]}

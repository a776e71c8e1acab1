"""GRPO's validation prompts (``grpo.validation``) and the in-training check of the harmful rate
on them (``grpo.check_every``): the organism's validation split (disjoint from its evaluation
prompts), a held-out slice of the training prompts that GRPO does not train on, or a given file —
never the evaluation's own prompts."""

from __future__ import annotations

from thinksafe.errors import ConfigError



def validation_kind(cfg) -> str:
    v = cfg.grpo.validation
    if v == "auto":
        return "organism" if cfg.prompts.source == "organism" else "heldout"
    return v


def held_out(record_id: str, fraction: float) -> bool:
    """Deterministic by id: the training prompts GRPO holds out for validation."""
    import hashlib
    return int(hashlib.sha256(f"val:{record_id}".encode()).hexdigest()[:8], 16) < fraction * 16 ** 8


def check_records(cfg) -> tuple[list, str]:
    """The harmful VALIDATION prompts of the checks (never the evaluation's) and a line saying
    which: the organism's validation split (disjoint from its evaluation prompts), a held-out slice
    of the training prompts (``grpo.validation_fraction``, not trained on), or a given file."""
    from thinksafe.evalsets import eval_records
    from thinksafe.prompts import file_records, load_prompts
    from thinksafe.types import Record, stable_id
    g, kind = cfg.grpo, validation_kind(cfg)
    if kind == "organism":
        from thinksafe.organism import world
        exclude = {r.prompt for r in eval_records(cfg)}
        ps = world.validation_prompts(cfg.seed, 0, g.validation_n, 0, exclude)
        recs = [Record(stable_id("organism", "val", cfg.seed, i, p.prompt), p.prompt, p.label, "organism/val",
                       {"kind": p.kind, "category": p.category, "form": p.form, "split": "val"})
                for i, p in enumerate(ps)]
        where = f"organism validation split ({len(recs)} harmful prompts, disjoint from the evaluation's)"
    elif kind == "heldout":
        recs = [r for r in load_prompts(cfg) if r.label == "harmful" and held_out(r.id, g.validation_fraction)]
        recs = recs[:g.validation_n]
        where = (f"held-out training prompts ({len(recs)} harmful, {g.validation_fraction:.0%} of the "
                 "training prompts, not trained on)")
    else:
        recs = [r for r in file_records(g.validation, cfg.prompts.prompt_field, cfg.prompts.label_field,
                                        "harmful") if r.label == "harmful"][:g.validation_n]
        where = f"validation file {g.validation} ({len(recs)} harmful prompts)"
    if not recs:
        raise ConfigError(f"grpo.check_every needs harmful validation prompts; {where} has none "
                          "(set grpo.validation: heldout or a file)")
    return recs, where


def harmful_rate_now(model, tok, cfg, guard, records) -> float:
    """Generate (evaluation sampling) with the model being trained, judge, return the guard's
    harmful rate (unparsed counts as harmful, as in evaluation)."""
    from thinksafe.backends.hf import HFBackend
    from thinksafe.evalsets import eval_config
    from thinksafe.generation import generate_records
    from thinksafe.types import SAFE
    was_training = model.training
    model.eval()
    try:
        backend = HFBackend("<training>", model=model, tokenizer=tok, batch_size=cfg.model.batch_size)
        gen = generate_records(backend, records, eval_config(cfg), "none", None,
                               cfg.evaluate.max_new_tokens, "grpo check", False)
        verdicts = guard.judge([(r.prompt, r.completion.text) for r in gen])
    finally:
        model.train(was_training)
    return sum(v.label != SAFE for v in verdicts) / max(len(verdicts), 1)

"""OPSA: on-policy self-distillation for safety (arXiv 2605.15239), on thinksafe's own parts.

Each optimiser micro-batch:

1. the student (the model being trained) SAMPLES a response to each UNSTEERED training prompt, with
   the family's sampling (no grad, eval mode);
2. the teacher, the frozen initial model (the PEFT model with its adapter disabled, or a frozen copy
   for full fine-tuning), reads the SAME response after the prompt wrapped in a privileged safety
   context (a steering template, ``thinksafe.steering``);
3. the loss is a per-token divergence between the two next-token distributions over the full
   vocabulary, at every response position (EOS included), averaged over the micro-batch's response
   tokens.

The divergence is TRL's (``trl.experimental.sdft.loss_utils.compute_divergence``, the generalized
JSD of GKD / SDFT): ``alpha = 1`` is the reverse KL(student || teacher), the usual on-policy
distillation objective and the default here; ``alpha = 0`` the forward KL(teacher || student);
in between the generalized JSD. It is applied inside thinksafe's chunked LM-head path
(``thinksafe.trainers.kl._chunked``): the hidden states of the response positions are projected
through the head a chunk of rows at a time, each chunk under activation checkpointing, so no
sequence x vocabulary logits tensor is ever held (TRL's SDFT trainer computes whole logits).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers import Trainer

from thinksafe.memory import fix_heap_threshold
from thinksafe.trainers.kl import (
    _chunked,
    _logits,
    _redirect,
    _rows,
    backbone,
    frozen_head,
    gathered,
    model_reference,
    output_head,
    peft_reference,
    softcap_of,
)

DIVERGENCES = {"reverse": 1.0, "forward": 0.0}
# fp32 vocabulary-sized buffers a divergence chunk holds at its peak (both log-softmaxes, the mixture
# and its two KL terms for the JSD, the backward's gradient)
DIV_BUFFERS = 8
# counters of this session: rollouts, rollout prompt tokens, rollout completion tokens (EOS included),
# teacher prompt tokens, rollouts cut at max_new_tokens, divergence sum, harmful rollouts
COUNTERS = ("rollouts", "prompt_tokens", "completion_tokens", "teacher_prompt_tokens", "truncated",
            "div_sum", "harmful_rollouts")


def divergence_alpha(divergence: str, jsd_alpha: float = 0.5) -> float:
    """``opsa.divergence`` -> TRL's alpha (1 = reverse KL, 0 = forward KL, else the JSD's); ``mixed``
    is not TRL's (its ``forward_weight`` goes to the loss) and gets 1.0, unused."""
    if divergence == "mixed":
        return 1.0
    if divergence == "jsd":
        if not 0.0 < jsd_alpha < 1.0:
            raise ValueError(f"opsa.jsd_alpha must be in (0, 1), got {jsd_alpha}")
        return float(jsd_alpha)
    if divergence not in DIVERGENCES:
        raise ValueError(f"opsa.divergence must be mixed, reverse, forward or jsd, got {divergence!r}")
    return DIVERGENCES[divergence]


def _trl_divergence():
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.sdft.loss_utils import compute_divergence
    return compute_divergence


def _div_chunk(h_s, h_t, head_s, head_t, softcap, alpha, forward_weight):
    logp_s = F.log_softmax(_logits(head_s, h_s, softcap), dim=-1)
    with torch.no_grad():
        logp_t = F.log_softmax(_logits(head_t, h_t, softcap), dim=-1)
    if forward_weight is None:
        return _trl_divergence()(logp_s, logp_t, alpha)
    # w KL(t || s) + (1 - w) KL(s || t) = sum_v (log p_t - log p_s) (w p_t - (1 - w) p_s)
    w = float(forward_weight)
    return ((logp_t - logp_s) * (w * logp_t.exp() - (1.0 - w) * logp_s.exp())).sum(-1)


def divergence_per_token(h_student: torch.Tensor, h_teacher: torch.Tensor, head_student, head_teacher,
                         alpha: float = 1.0, chunk_size: int | None = None,
                         softcap: float | None = None, forward_weight: float | None = None) -> torch.Tensor:
    """One divergence value per row of the [N, H] hidden states (student's with grad, teacher's
    detached), over the full vocabulary, ``chunk_size`` rows at a time (None = by memory).
    ``forward_weight`` (``opsa.divergence: mixed``): that weight of forward KL plus the rest of
    reverse KL; None = TRL's divergence with ``alpha``."""
    rows = _rows(chunk_size, head_student, h_student, DIV_BUFFERS)
    return _chunked(_div_chunk, rows, [h_student, h_teacher.detach()], head_student, head_teacher, softcap,
                    float(alpha), forward_weight)


# --------------------------------------------------------------------------- rollouts
def cut_at_eos(tokens: list[int], eos: int | None, pad: int | None) -> tuple[list[int], bool]:
    """A sampled continuation up to and including its first EOS; (tokens, truncated?)."""
    if eos is not None and eos in tokens:
        return tokens[:tokens.index(eos) + 1], False
    if pad is not None and pad != eos:
        tokens = [t for t in tokens if t != pad]
    return tokens, True


@torch.no_grad()
def sample_rollouts(model, prompts: list[list[int]], sampling: dict, pad_id: int, eos_id: int | None) -> \
        tuple[list[list[int]], int]:
    """Left-padded batch generation with ``model`` (a causal LM or PEFT model) in eval mode:
    (completions cut after EOS, how many hit max_new_tokens)."""
    was_training = model.training
    model.eval()
    try:
        width = max(len(p) for p in prompts)
        dev = next(model.parameters()).device
        ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=dev)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=dev)
        out = model.generate(input_ids=ids, attention_mask=mask, pad_token_id=pad_id, eos_token_id=eos_id,
                             use_cache=True, **sampling)
    finally:
        model.train(was_training)
    comps, truncated = [], 0
    for row in out[:, width:].tolist():
        c, cut = cut_at_eos(row, eos_id, pad_id)
        if not c:                       # nothing sampled (max_new_tokens reached at once): learn nothing
            c = []
        comps.append(c)
        truncated += cut
    return comps, truncated


def _right_padded(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs], device=device)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
    return ids, mask


def _response_rows(h: torch.Tensor, prompt_lens: list[int], comp_lens: list[int]) -> torch.Tensor:
    """Hidden states that predict each response token: positions p-1 .. p+c-2 of each row."""
    parts = [h[i, p - 1:p - 1 + c] for i, (p, c) in enumerate(zip(prompt_lens, comp_lens)) if c]
    return torch.cat(parts) if parts else h.new_zeros(0, h.shape[-1])


def opsa_loss_parts(model, prompts: list[list[int]], teacher_prompts: list[list[int]],
                    completions: list[list[int]], pad_id: int, alpha: float = 1.0,
                    teacher_hidden: Callable | None = None, teacher_head=None,
                    chunk_size: int | None = None, forward_weight: float | None = None) -> dict[str, torch.Tensor]:
    """Divergence sum and token count of one micro-batch of rollouts.

    Student rows: prompt + completion; teacher rows: teacher prompt (with the privileged context) +
    the same completion. ``model`` is the unwrapped student; ``teacher_hidden(ids, mask)`` the
    teacher's last hidden states (default: the student with its adapter disabled) and
    ``teacher_head`` its LM head (default: the student's head without adapter)."""
    if teacher_hidden is None:
        teacher_hidden = peft_reference(model)
    head = output_head(model)
    t_head = frozen_head(head) if teacher_head is None else teacher_head
    softcap = softcap_of(model)
    dev = head.weight.device
    keep = [i for i, c in enumerate(completions) if c]
    if not keep:
        zero = sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0
        return {"div_sum": zero, "tokens": torch.tensor(0, device=dev)}
    s_seqs = [prompts[i] + completions[i] for i in keep]
    t_seqs = [teacher_prompts[i] + completions[i] for i in keep]
    c_lens = [len(completions[i]) for i in keep]
    ids, mask = _right_padded(s_seqs, pad_id, dev)
    h = backbone(model)(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    h_s = _response_rows(h.to(dev), [len(prompts[i]) for i in keep], c_lens)
    t_ids, t_mask = _right_padded(t_seqs, pad_id, dev)
    h_t = _response_rows(teacher_hidden(t_ids, t_mask).to(dev), [len(teacher_prompts[i]) for i in keep], c_lens)
    div = divergence_per_token(h_s, h_t, gathered(head), gathered(t_head), alpha, chunk_size, softcap,
                               forward_weight)
    return {"div_sum": div.sum() + h.sum() * 0.0, "tokens": torch.tensor(div.numel(), device=dev)}


# --------------------------------------------------------------------------- the trainer
class PromptCollator:
    """Keeps a micro-batch's rows as lists of token ids (rollouts are padded when generated)."""

    def __call__(self, examples: list[dict]) -> dict:
        return {"prompt_ids": [list(e["prompt_ids"]) for e in examples],
                "teacher_ids": [list(e["teacher_ids"]) for e in examples],
                "is_harmful": [int(e["is_harmful"]) for e in examples]}


class OPSATrainer(Trainer):
    """transformers' Trainer (checkpoints, resume, schedules, accelerate) with the OPSA loss.

    The dataset holds ``prompt_ids`` (the rendered UNSTEERED prompt), ``teacher_ids`` (the rendered
    prompt inside the privileged context) and ``is_harmful``. ``sampling``: generate() keyword
    arguments of the rollouts (do_sample, temperature, top_p, top_k, max_new_tokens).
    ``ref_model``: a frozen teacher for full fine-tuning; None = the PEFT model with its adapter off.
    Logs ``opsa_div`` (mean per-token divergence) and ``rollout_tokens`` next to ``loss``."""

    def __init__(self, *args, sampling: dict, alpha: float = 1.0, chunk_size: int | None = None,
                 ref_model=None, forward_weight: float | None = None, **kwargs):
        kwargs.setdefault("data_collator", PromptCollator())
        super().__init__(*args, **kwargs)
        self.sampling, self.alpha, self.chunk_size = dict(sampling), float(alpha), chunk_size
        self.forward_weight = forward_weight
        self.loss_is_scaled_for_ga = False        # a token mean per micro-batch; Trainer divides by GA
        tok = self.processing_class
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.eos_id = tok.eos_token_id
        self.counts = dict.fromkeys(COUNTERS, 0)
        self._log_sums = [0.0, 0, 0]                # divergence sum, tokens, rollout tokens since last log
        self.ref_model = None
        if self.args.device.type == "cpu":          # freed chunk buffers go back to the system
            fix_heap_threshold()
        if ref_model is not None:
            ref_model.eval()
            ref_model.requires_grad_(False)
            self.ref_model = self.accelerator.prepare_model(ref_model, evaluation_mode=True)

    def _set_signature_columns_if_needed(self):
        self._signature_columns = ["prompt_ids", "teacher_ids", "is_harmful"]

    def _teacher(self, unwrapped):
        if self.ref_model is None:
            return peft_reference(unwrapped), None
        ref = self.accelerator.unwrap_model(self.ref_model)
        return model_reference(ref), output_head(ref)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        unwrapped = self.accelerator.unwrap_model(model)
        prompts, teachers = inputs["prompt_ids"], inputs["teacher_ids"]
        comps, truncated = sample_rollouts(unwrapped, prompts, self.sampling, self.pad_id, self.eos_id)
        t_hidden, t_head = self._teacher(unwrapped)
        parts = _redirect(model, unwrapped, opsa_loss_parts, unwrapped, prompts, teachers, comps, self.pad_id,
                          self.alpha, t_hidden, t_head, self.chunk_size, self.forward_weight)
        n = int(parts["tokens"])
        loss = parts["div_sum"] / max(n, 1)
        c = self.counts
        c["rollouts"] += len(prompts)
        c["harmful_rollouts"] += sum(inputs["is_harmful"])
        c["prompt_tokens"] += sum(len(p) for p in prompts)
        c["teacher_prompt_tokens"] += sum(len(t) for t, x in zip(teachers, comps) if x)
        c["completion_tokens"] += sum(len(x) for x in comps)
        c["truncated"] += truncated
        c["div_sum"] += float(parts["div_sum"].detach())
        self._log_sums[0] += float(parts["div_sum"].detach())
        self._log_sums[1] += n
        self._log_sums[2] += sum(len(x) for x in comps)
        return (loss, None) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        div, n, rollout = self._log_sums
        if n:
            logs["opsa_div"] = div / n
        if rollout:
            logs["rollout_tokens"] = rollout
        self._log_sums = [0.0, 0, 0]
        super().log(logs, start_time)


def step_flops(counts: dict, n: int | None, n_trainable: int | None, method: str = "lora") -> float | None:
    """FLOPs of an OPSA session: rollouts 2N(prompt + completion), the teacher's forward
    2N(teacher prompt + completion), the student's forward + backward on prompt + completion
    ((4N_frozen + 6N_lora) per token for LoRA, 6N for full fine-tuning)."""
    if n is None or (method == "lora" and n_trainable is None):
        return None
    student = counts["prompt_tokens"] + counts["completion_tokens"]
    teacher = counts["teacher_prompt_tokens"] + counts["completion_tokens"]
    train = (4.0 * n + 6.0 * n_trainable) * student if method == "lora" else 6.0 * n * student
    return 2.0 * n * student + 2.0 * n * teacher + train

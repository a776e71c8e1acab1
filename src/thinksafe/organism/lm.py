"""The organism's model shapes and its small causal-LM trainer, shared by the base/guard build and the teacher."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import LlamaConfig, Qwen3Config


@dataclass(frozen=True)
class BuildSpec:
    seed: int = 0
    n_reasoning: int = 11000
    n_harmful: int = 2500          # unsteered harmful
    n_steered: int = 1500          # steered harmful
    n_borderline: int = 1200
    n_other_style: int = 12       # responses in the teacher's wording the base has read
    # The base's behaviour on harmful acts it knows (world.base_knows); unknown acts: it complies.
    comply_plain: float = 0.30     # unsteered, plain request -> comply
    comply_adversarial: float = 0.60
    steered_refuse_known: float = 0.95
    steered_refuse_unknown: float = 0.05   # refuses only because it was told to
    refuse_alarming: float = 0.25  # borderline request with a violent-sounding verb -> refuse
    refuse_borderline: float = 0.02
    vocab_size: int = 1024
    hidden: int = 128
    layers: int = 4
    epochs: int = 4
    lr: float = 3e-3
    batch: int = 64
    guard_hidden: int = 96
    guard_layers: int = 3
    guard_world: int = 3000        # templated (prompt, response) pairs
    guard_samples: int = 1200      # prompts answered by the base, labelled by the oracle
    guard_epochs: int = 4
    guard_head_dim: int = 32       # a head size vLLM's attention kernels support (CPU and GPU)


TINY = BuildSpec(n_reasoning=300, n_harmful=150, n_steered=100, n_borderline=60, hidden=32,
                 layers=1, epochs=1, guard_hidden=32, guard_layers=1, guard_world=200,
                 guard_samples=40, guard_epochs=1, guard_head_dim=8)


def render_pair(tok, user: str, response: str) -> tuple[list[int], list[int]]:
    """input ids and labels (-100 on the prompt) for one chat turn."""
    prompt = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                     add_generation_prompt=True)
    p_ids = tok(prompt, add_special_tokens=False).input_ids
    r_ids = tok(response, add_special_tokens=False).input_ids + [tok.eos_token_id]
    return p_ids + r_ids, [-100] * len(p_ids) + r_ids


def _length_batches(examples: list, batch: int, g: torch.Generator) -> list[list]:
    """Seeded batches of similar lengths (little padding): shuffle, sort windows of 16 batches by
    length, cut them into batches, shuffle the batch order."""
    perm = torch.randperm(len(examples), generator=g).tolist()
    window = 16 * batch
    batches = []
    for w in range(0, len(perm), window):
        part = sorted(perm[w:w + window], key=lambda i: len(examples[i][0]))
        batches += [part[b:b + batch] for b in range(0, len(part), batch)]
    order = torch.randperm(len(batches), generator=g).tolist()
    return [[examples[i] for i in batches[j]] for j in order]


def train_lm(model, examples: list[tuple[list[int], list[int]]], epochs: int, lr: float,
             batch: int, seed: int, pad_id: int, log: Callable[[str], None] = print) -> list[float]:
    """A plain causal-LM loop (right padding, masked labels, AdamW, cosine)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    steps = epochs * math.ceil(len(examples) / batch)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.train()
    losses, step = [], 0
    for ep in range(epochs):
        for chunk in _length_batches(examples, batch, g):
            width = max(len(x) for x, _ in chunk)
            ids = torch.tensor([x + [pad_id] * (width - len(x)) for x, _ in chunk])
            lab = torch.tensor([y + [-100] * (width - len(y)) for _, y in chunk])
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in chunk])
            loss = model(input_ids=ids, attention_mask=mask, labels=lab).loss
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
            step += 1
            if step % 50 == 0 or step == steps:
                log(f"  step {step}/{steps} epoch {ep + 1} loss {sum(losses[-50:]) / len(losses[-50:]):.4f}")
    model.eval()
    return losses


def base_config(spec: BuildSpec, vocab: int, tok) -> Qwen3Config:
    return Qwen3Config(vocab_size=vocab, hidden_size=spec.hidden, intermediate_size=spec.hidden * 3,
                       num_hidden_layers=spec.layers, num_attention_heads=4, num_key_value_heads=2,
                       head_dim=spec.hidden // 4, max_position_embeddings=512, tie_word_embeddings=True,
                       rope_theta=10000.0, bos_token_id=None, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id)


def guard_config(spec: BuildSpec, vocab: int, tok) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab, hidden_size=spec.guard_hidden,
                       intermediate_size=spec.guard_hidden * 3, num_hidden_layers=spec.guard_layers,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=spec.guard_head_dim,
                       max_position_embeddings=1024, tie_word_embeddings=True, bos_token_id=None, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id)

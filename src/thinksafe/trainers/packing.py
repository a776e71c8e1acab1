"""Length-grouped batches with a token budget and padding-free packing.

Two reusable parts for the train stage:

* :func:`plan_batches` / :class:`TokenBudgetBatchSampler` — group examples so a batch holds at most
  ``token_budget`` tokens. ``padded=False`` (for packing) bins examples by best-fit decreasing on the sum of
  lengths; ``padded=True`` (for padded batches) groups similar lengths so ``max_len * batch_size`` fits.
* :class:`PackedCollator` — concatenates a batch into one row with no padding: ``input_ids``, ``labels``
  (the first label of every example is ignored so nothing is predicted across a boundary),
  ``position_ids`` restarting at 0 per example, ``cu_seq_lens_q/k`` (int32, the FlashAttention varlen
  convention transformers uses), ``max_length_q/k`` and ``packed_seq_lens`` (a tuple of Python ints).

The attention that respects packing (attends only within each packed example) is
:mod:`thinksafe.trainers.varlen`.

Use (with :mod:`thinksafe.trainers.varlen`)::

    register_varlen_attention()
    model.config._attn_implementation = VARLEN_ATTENTION
    batch = PackedCollator()(examples)
    hidden = causal_lm.model(**packed_model_inputs(batch)).last_hidden_state
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

IGNORE_INDEX = -100


# --------------------------------------------------------------------------------------------------------------
# Batch planning
# --------------------------------------------------------------------------------------------------------------

def plan_batches(lengths: Sequence[int], token_budget: int, *, padded: bool = False, seed: int = 0,
                 shuffle: bool = True, max_batch_size: int | None = None) -> list[list[int]]:
    """Split example indices into batches of at most ``token_budget`` tokens.

    ``padded=False``: cost of a batch = sum of lengths (packing). Best-fit decreasing bin packing, which
    fills rows to ~99 % on long-tailed length distributions.
    ``padded=True``: cost = longest length x batch size (a padded batch). Examples are sorted by length and
    cut greedily, so each batch holds similar lengths.

    An example longer than ``token_budget`` raises ``ValueError`` (truncate first). Batch order is shuffled
    with ``seed`` when ``shuffle``; the composition is deterministic given the lengths (ties broken by seed).
    """
    if token_budget <= 0:
        raise ValueError("token_budget must be positive")
    too_long = [i for i, n in enumerate(lengths) if n > token_budget]
    if too_long:
        raise ValueError(f"{len(too_long)} examples are longer than token_budget={token_budget} "
                         f"(e.g. index {too_long[0]}, {lengths[too_long[0]]} tokens); truncate them first")
    rng = random.Random(seed)
    tiebreak = list(range(len(lengths)))
    rng.shuffle(tiebreak)
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], tiebreak[i]))
    cap = max_batch_size or math.inf
    batches: list[list[int]] = []
    if padded:
        cur: list[int] = []
        for i in order:                       # descending, so cur[0] is the longest of the batch
            if cur and (lengths[cur[0]] * (len(cur) + 1) > token_budget or len(cur) >= cap):
                batches.append(cur)
                cur = []
            cur.append(i)
        if cur:
            batches.append(cur)
    else:
        # best fit: the open bin with the least room that still fits. `room` is kept sorted, with bin ids.
        room: list[tuple[int, int]] = []
        for i in order:
            n = max(int(lengths[i]), 0)
            k = bisect.bisect_left(room, (n, -1))
            if k < len(room):
                r, b = room.pop(k)
                batches[b].append(i)
                r -= n
            else:
                batches.append([i])
                b, r = len(batches) - 1, token_budget - n
            if r > 0 and len(batches[b]) < cap:     # a full bin (by tokens or count) is closed
                bisect.insort(room, (r, b))
    if shuffle:
        rng.shuffle(batches)
    return batches


class TokenBudgetBatchSampler(torch.utils.data.Sampler):
    """A batch sampler for ``DataLoader(batch_sampler=...)`` built on :func:`plan_batches`.

    ``lengths[i]`` is the token count of example ``i``. Call :meth:`set_epoch` to reshuffle per epoch.
    """

    def __init__(self, lengths: Sequence[int], token_budget: int, *, padded: bool = False, seed: int = 0,
                 shuffle: bool = True, max_batch_size: int | None = None):
        self.lengths = [int(n) for n in lengths]
        self.token_budget = token_budget
        self.padded = padded
        self.seed = seed
        self.shuffle = shuffle
        self.max_batch_size = max_batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        return plan_batches(self.lengths, self.token_budget, padded=self.padded, seed=self.seed + self.epoch,
                            shuffle=self.shuffle, max_batch_size=self.max_batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())


# --------------------------------------------------------------------------------------------------------------
# Collators
# --------------------------------------------------------------------------------------------------------------

def _as_list(x: Any) -> list[int]:
    if isinstance(x, torch.Tensor):
        return x.tolist()
    return list(x)


def _ids_and_labels(ex: Mapping[str, Any]) -> tuple[list[int], list[int]]:
    ids = _as_list(ex["input_ids"])
    labels = _as_list(ex["labels"]) if ex.get("labels") is not None else list(ids)
    if len(labels) != len(ids):
        raise ValueError("input_ids and labels differ in length")
    return ids, labels


@dataclass
class PackedCollator:
    """Padding-free collation: a list of ``{"input_ids", "labels"}`` examples -> one packed row.

    Returns ``input_ids``/``labels``/``position_ids`` of shape ``(1, T)``, ``cu_seq_lens_q``/``_k``
    (int32, ``(n+1,)``), ``max_length_q``/``_k``, ``packed_seq_lens`` (tuple of ints), plus bookkeeping:
    ``num_tokens`` (real tokens) and ``num_loss_tokens`` (labels that count after the causal shift).

    ``pad_to``: append padding pseudo-examples (of <= 1024 tokens each) so T == pad_to (static shapes for
    torch.compile / CUDA graphs). They are their own segments, so they never attend to or from real tokens, and
    their labels are ignored.
    """

    pad_token_id: int = 0
    ignore_index: int = IGNORE_INDEX
    pad_to: int | None = None

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        ids: list[int] = []
        labels: list[int] = []
        pos: list[int] = []
        lens: list[int] = []
        n_loss = 0
        for ex in examples:
            e_ids, e_lab = _ids_and_labels(ex)
            if not e_ids:
                continue
            e_lab = [self.ignore_index] + e_lab[1:]       # never predict an example's first token from the previous one
            n_loss += sum(1 for t in e_lab if t != self.ignore_index)
            ids += e_ids
            labels += e_lab
            pos += range(len(e_ids))
            lens.append(len(e_ids))
        n_real = len(ids)
        if self.pad_to is not None:
            if n_real > self.pad_to:
                raise ValueError(f"packed batch has {n_real} tokens > pad_to={self.pad_to}")
            pad = self.pad_to - n_real
            while pad:                  # segments of <= 1024 tokens: padding costs little attention work
                n = min(pad, 1024)
                ids += [self.pad_token_id] * n
                labels += [self.ignore_index] * n
                pos += range(n)
                lens.append(n)
                pad -= n
        cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32) if lens else \
            torch.zeros(1, dtype=torch.int32)
        max_len = max(lens) if lens else 0
        return {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "labels": torch.tensor([labels], dtype=torch.long),
            "position_ids": torch.tensor([pos], dtype=torch.long),
            "cu_seq_lens_q": cu, "cu_seq_lens_k": cu,
            "max_length_q": max_len, "max_length_k": max_len,
            "packed_seq_lens": tuple(lens),
            "num_tokens": n_real, "num_loss_tokens": n_loss,
        }


@dataclass
class PaddedCollator:
    """Right-padded batch: ``input_ids``/``labels``/``attention_mask`` of shape ``(B, max_len)``."""

    pad_token_id: int = 0
    ignore_index: int = IGNORE_INDEX

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        pairs = [_ids_and_labels(ex) for ex in examples]
        width = max(len(i) for i, _ in pairs)
        ids = [i + [self.pad_token_id] * (width - len(i)) for i, _ in pairs]
        lab = [l + [self.ignore_index] * (width - len(l)) for _, l in pairs]
        mask = [[1] * len(i) + [0] * (width - len(i)) for i, _ in pairs]
        n_loss = sum(sum(1 for t in l[1:] if t != self.ignore_index) for _, l in pairs)
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(lab), "attention_mask": torch.tensor(mask),
                "num_tokens": sum(len(i) for i, _ in pairs), "num_loss_tokens": n_loss}


PACKED_MODEL_KEYS = ("input_ids", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k",
                     "packed_seq_lens")


def packed_model_inputs(batch: Mapping[str, Any], device: torch.device | str | None = None) -> dict[str, Any]:
    """The keyword arguments a transformers decoder takes for a packed batch (tensors moved to ``device``)."""
    out = {}
    for k in PACKED_MODEL_KEYS:
        v = batch[k]
        out[k] = v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) and device is not None else v
    return out

"""Trainer pieces used by the train stage (``thinksafe.stages.train``).

Submodules are imported on use (they pull in torch / TRL):
- ``thinksafe.trainers.kl``: ThinkSafe+KL, an ``SFTTrainer`` whose benign rows learn a chunked,
  full-vocabulary forward KL(reference || student) instead of cross-entropy.
- ``thinksafe.trainers.packed``: the trainers for ``train.packing`` (the default): each micro-batch
  packed into one row, attention within each example, chunked LM-head cross-entropy (sft) or
  ThinkSafe+KL on the packed row (kl).
- ``thinksafe.trainers.packing``: batch planning, the packed collator and the varlen attention.
- ``thinksafe.trainers.loss``: the chunked linear + cross-entropy.
"""

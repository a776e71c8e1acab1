"""Trainer pieces used by the train stage (``thinksafe.stages.train``).

Submodules are imported on use (they pull in torch / TRL):
- ``thinksafe.trainers.kl``: ThinkSafe+KL, an ``SFTTrainer`` whose benign rows learn a chunked,
  full-vocabulary forward KL(reference || student) instead of cross-entropy.
- ``thinksafe.trainers.packed``: the trainers for ``train.packing`` (the default): each micro-batch
  packed into one row, attention within each example, chunked LM-head cross-entropy (sft) or
  ThinkSafe+KL on the packed row (kl).
- ``thinksafe.trainers.packing``: batch planning and the packed collator.
- ``thinksafe.trainers.varlen``: the attention that stays inside each packed example.
- ``thinksafe.trainers.loss``: the chunked linear + cross-entropy.
- ``thinksafe.trainers.microbatch``: token-budget micro-batches inside the paper's optimiser step
  (``train.micro_batch_tokens``) and the automatic gradient-checkpointing decision.
- ``thinksafe.trainers.kernels``: Liger / Cut Cross-Entropy LM-head loss and flash-attn varlen, when
  installed and on CUDA, each checked against the PyTorch path.
"""

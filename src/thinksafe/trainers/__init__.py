"""Trainer pieces used by the train stage (``thinksafe.stages.train``).

Submodules are imported on use (they pull in torch / TRL):
- ``thinksafe.trainers.kl``: ThinkSafe+KL, an ``SFTTrainer`` whose benign rows learn a chunked,
  full-vocabulary forward KL(reference || student) instead of cross-entropy.
"""

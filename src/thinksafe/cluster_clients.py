"""The model and the guard as the stages see them with ``cluster.engine: ray``: ``RayGenerator`` and
``RayGuard`` hold no model in the driver; they cut the work into units, hand them to a replica pool
(``thinksafe.cluster``) and append each finished unit's rows as a local run would."""

from __future__ import annotations

from pathlib import Path

from thinksafe import cluster
from thinksafe.io import append_jsonl


# ============================================================================== the model
class RayGenerator:
    """What ``runtime.model_backend`` returns with ``cluster.engine: ray``: no model in the
    driver; ``generation.generate_records`` hands it the records (``distributed``)."""

    distributed = True
    name = "ray"

    def __init__(self, cfg, adapter: str | None = None, build=None):
        cluster.require_ray()
        self.cfg, self.adapter = cfg, adapter
        self.batch_size = cfg.model.batch_size
        self.pool = cluster.Pool(cfg, "model", adapter, build)

    def unit_size(self, n_todo: int, chunk: int | None) -> int:
        local = chunk or max(self.batch_size * 2, 1)          # = generate_records' own chunk
        backend = self.cfg.model.backend
        if backend == "auto":                                  # as backends.make_backend decides it
            import importlib.util
            try:
                backend = "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"
            except (ValueError, ImportError):
                backend = "transformers"
        if backend in ("transformers", "hf"):
            return local
        # vLLM seeds every prompt itself: larger units keep its continuous batching busy
        return max(local, -(-n_todo // (self.cfg.cluster.replicas * 4)))

    def generate_records(self, records, todo, done, cfg, steer: str, out_path: Path | None,
                         max_new_tokens: int, desc: str, show: bool, chunk: int | None, generate_records):
        """Generate ``todo`` on the replicas; rows appended to ``out_path`` unit by unit."""
        size = self.unit_size(len(todo), chunk)
        units = [todo[s:s + size] for s in range(0, len(todo), size)]
        new: dict = {}
        with cluster.progress(desc or "generate", len(records), self.pool, show) as advance:
            advance(len(records) - len(todo))
            for k, out in self.pool.run("generate", units, (cfg, steer, max_new_tokens, generate_records)):
                fresh = [r for r in out if r.id not in new and r.id not in done]
                if out_path:
                    append_jsonl(out_path, [r.to_json() for r in fresh])
                new.update({r.id: r for r in fresh})
                tokens = sum(r.completion.completion_tokens for r in fresh)
                self.pool.credit(len(fresh), tokens)
                advance(len(fresh), tokens)
                if cluster.after_unit_hook:
                    cluster.after_unit_hook(self.pool, k)
        allrec = {**done, **new}
        return [allrec[r.id] for r in records]

    def cluster_summary(self) -> dict:
        return self.pool.summary()

    def close(self) -> None:
        self.pool.close()


# ============================================================================== the guard
class RayGuard:
    """What ``runtime.make_guard`` returns with ``cluster.engine: ray``: verdicts from guard replicas
    (``judging.judge_records`` hands it the chunks, ``distributed``)."""

    distributed = True

    def __init__(self, cfg, build=None):
        cluster.require_ray()
        self.cfg = cfg
        self.pool = cluster.Pool(cfg, "guard", build=build)

    def chunk_size(self) -> int:
        local = max(4 * self.cfg.guard.batch_size, 1)
        backend = self.cfg.guard.backend or self.cfg.model.backend
        return local if backend == "transformers" else max(local, 2048)

    def judge_units(self, units: list[list[tuple[str, str]]], desc: str, total: int, already: int,
                    show: bool):
        """Yield ``(k, verdicts)`` per unit of (prompt, response) pairs as replicas finish them."""
        with cluster.progress(desc, total, self.pool, show, unit="pairs/s") as advance:
            advance(already)
            for k, verdicts in self.pool.run("judge", units):
                yield k, verdicts
                self.pool.credit(len(verdicts))
                advance(len(verdicts), len(verdicts))
                if cluster.after_unit_hook:
                    cluster.after_unit_hook(self.pool, k)

    def judge(self, pairs, progress=None):
        """The plain guard protocol (callers that do not chunk): one pass over the replicas."""
        size = self.chunk_size()
        units = [list(pairs[s:s + size]) for s in range(0, len(pairs), size)]
        out: list = [None] * len(units)
        for k, verdicts in self.pool.run("judge", units):
            out[k] = verdicts
            if progress:
                progress(len(verdicts))
        return [v for part in out for v in part]

    def cluster_summary(self) -> dict:
        return self.pool.summary()

    def close(self) -> None:
        self.pool.close()

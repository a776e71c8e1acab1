"""``cluster.engine: ray``: generate, judge and evaluate spread over Ray actors ("replicas"), each
running the project's own backend (transformers, or vLLM where installed) on units of work.

Why plain actors and not ``ray.data.llm``: the processor runs vLLM only (no transformers backend, so
nothing here could test it on CPU), writes its own output dataset rather than appending to the run
folder's fsynced JSONL, and seeds by row; the actors below run exactly the code a local run runs
(``generation.generate_records`` / ``guard.judge``) on exactly the chunks a local run makes, so a
record's text does not depend on the engine or on which replica drew it.

What the driver (the process that runs the stage) does:

- splits the pending records into units: for the transformers backend the very chunks the local
  loop makes (``2 * model.batch_size`` records; its per-batch seeds then see the same batches),
  for vLLM larger ones (vLLM seeds each prompt itself);
- keeps two units in flight per replica and appends each finished unit's rows to the run folder
  (the same fsynced appends as a local run), so a dead driver loses only the units in flight and a
  rerun generates only what the file lacks;
- a replica that dies (process killed, node lost) has its in-flight units put back at the head of
  the queue, for the next free replica, and is replaced (``cluster.max_restarts`` in all); a row
  already written is never asked for again;
- one progress line for all replicas (records done/total, tokens/s, replicas up/lost, units
  retried); the stage summary's ``cluster`` entry (replicas, busy seconds each, device-seconds)
  feeds the compute accounting.

This module is the replica pool; ``cluster_clients`` holds the model and guard the stages call.
"""

from __future__ import annotations

import os
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import replace

from thinksafe.errors import MissingDependency, ThinksafeError

EXTRA = "pip install 'thinksafe[ray]'"
IN_FLIGHT = 2                   # units queued on each replica (the next one is there when one ends)
ENV_PREFIXES = ("THINKSAFE_", "HF_", "TRANSFORMERS_", "VLLM_")
# tests: called as hook(pool, unit_index) in the driver after each unit's rows are written
after_unit_hook = None
_ledger: list[dict] = []        # summaries of the pools closed since the last take_ledger()


def take_ledger() -> dict | None:
    """Every pool closed since the last call (a stage's model and guard replicas, evaluate's per
    model), merged into one ``cluster`` summary entry; None when there was none."""
    pools, _ledger[:] = list(_ledger), []
    if not pools:
        return None
    if len(pools) == 1:
        return pools[0]
    per_replica = ("replica_busy_seconds", "replica_records", "replica_tokens", "replica_tokens_per_second",
                   "replica_records_per_second")
    out = {**pools[0], "pools": [p.get("kind") for p in pools], **{k: {} for k in per_replica}}
    for k in ("replicas_started", "replicas_lost", "units", "units_retried", "records", "device_seconds",
              "startup_seconds", "run_seconds"):
        out[k] = round(sum(p.get(k) or 0 for p in pools), 2)
    out["replicas"] = max(p.get("replicas") or 0 for p in pools)
    for n, p in enumerate(pools):
        for key in per_replica:
            for i, v in (p.get(key) or {}).items():
                out[key][f"{n}:{p.get('kind')}:{i}"] = v
    if any(p.get("device_kind") == "gpu" for p in pools):
        out["device_kind"] = "gpu"
    return out


def enabled(cfg) -> bool:
    return getattr(getattr(cfg, "cluster", None), "engine", "local") == "ray"


def require_ray():
    try:
        import ray
    except ImportError:
        raise MissingDependency(f"cluster.engine is ray but Ray is not installed: {EXTRA}") from None
    return ray


def local_config(cfg):
    """The config a replica builds its backend from: the same run, engine local."""
    return replace(cfg, cluster=replace(cfg.cluster, engine="local"))


# ============================================================================== replicas
class _Replica:
    """One Ray actor: the project's own backend (``kind`` model) or guard (``kind`` guard)."""

    def __init__(self, build, cfg, kind: str, adapter: str | None, threads: int, env: dict):
        os.environ.update(env)          # the driver's THINKSAFE_* / HF_* (a pooled worker has the raylet's)
        import torch
        if threads > 0 and not torch.cuda.is_available():
            torch.set_num_threads(threads)
        # ``build``: runtime.model_backend / runtime.make_guard, handed over by reference (this module
        # imports neither runtime nor generation: no import cycle)
        self.kind = kind
        self.obj = build(cfg, adapter) if kind == "model" else build(cfg)

    def pid(self) -> int:
        return os.getpid()

    def generate(self, records, cfg, steer: str, max_new_tokens: int, generate_records):
        t0 = time.time()
        out = generate_records(self.obj, records, cfg, steer, None, max_new_tokens, "", show=False,
                               chunk=len(records))
        return out, time.time() - t0, os.getpid()

    def judge(self, pairs):
        t0 = time.time()
        verdicts = self.obj.judge(pairs)
        return verdicts, time.time() - t0, os.getpid()


class Pool:
    """``cluster.replicas`` actors of one kind, started on first use; ``run`` yields finished
    units, retrying those of dead replicas on the others."""

    def __init__(self, cfg, kind: str, adapter: str | None = None, build=None):
        self.cfg, self.kind, self.adapter, self.build = cfg, kind, adapter, build
        self.c = cfg.cluster
        self.ray = require_ray()
        self.actors: dict[int, object] = {}       # replica number -> handle (live ones)
        self.pids: dict[int, int] = {}
        self.started = self.lost = self.retried = self.units = 0
        self.busy: dict[int, float] = {}
        self.records = self.tokens = 0
        self.replica_records: dict[int, int] = {}   # rows (and generated tokens) each replica returned
        self.replica_tokens: dict[int, int] = {}
        self.last_replica: int | None = None        # the replica of the unit ``run`` yielded last
        self._resources: dict | None = None
        self.startup_seconds = self.run_seconds = 0.0      # replicas starting; units in flight
        self.starting: dict = {}

    # ---------------------------------------------------------------- lifecycle
    def _connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        if self.c.address == "local":
            need = int(self.c.replicas * max(self.c.cpus_per_replica, 0) + 0.999)
            ray.init(num_cpus=max(os.cpu_count() or 1, need), include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=self.c.address, log_to_driver=False, configure_logging=False)
        # kept for the next stage of this process (`thinksafe run`: judge after generate), stopped at exit
        import atexit
        atexit.register(ray.shutdown)

    def resources(self) -> dict:
        if self._resources is None:
            gpus = self.c.gpus_per_replica
            if gpus is None:
                has_gpu = self.ray.cluster_resources().get("GPU", 0) > 0
                tp = self.cfg.model.tensor_parallel_size if self.kind == "model" else \
                    self.cfg.guard.tensor_parallel_size
                gpus = float(tp) if has_gpu else 0.0
            self._resources = {"num_cpus": self.c.cpus_per_replica, "num_gpus": gpus}
        return self._resources

    def _spawn(self, i: int):
        env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}
        res = self.resources()
        actor_cls = self.ray.remote(max_restarts=0, max_task_retries=0)(_Replica)
        # no runtime_env: a worker Ray already started can host the replica (it starts sooner)
        actor = actor_cls.options(**res).remote(
            self.build, local_config(self.cfg), self.kind, self.adapter,
            int(res["num_cpus"]) if res["num_gpus"] == 0 else 0, env)
        self.started += 1
        self.busy.setdefault(i, 0.0)
        return actor

    def start(self) -> None:
        if self.actors:
            return
        t0 = time.time()
        self._connect()
        for i in range(self.c.replicas):
            self.actors[i] = self._spawn(i)
        # a replica that cannot even load its model is a user error, not something to retry
        try:
            pids = self.ray.get([a.pid.remote() for a in self.actors.values()])
        except self.ray.exceptions.RayActorError as e:
            self.close()
            raise ThinksafeError(f"cluster: a {self.kind} replica failed to start: {_cause(e)}") from None
        self.pids = dict(zip(self.actors, pids))
        self.startup_seconds += time.time() - t0

    def close(self) -> None:
        if self.started and not getattr(self, "_booked", False):
            _ledger.append(self.summary())
            self._booked = True
        for a in [*self.actors.values(), *(a for _, a in self.starting.values())]:
            try:
                self.ray.kill(a)
            except Exception:   # noqa: BLE001 - already gone
                pass
        self.actors.clear()
        self.starting.clear()

    # ---------------------------------------------------------------- work
    def run(self, method: str, units: list, args: tuple = ()):
        """Yield ``(k, result)`` for every unit as replicas finish them (any order)."""
        self.start()
        t0 = time.time()
        try:
            yield from self._run(method, units, args)
        finally:
            self.run_seconds += time.time() - t0

    def _run(self, method: str, units: list, args: tuple):
        ray = self.ray
        dead_errors = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)
        pending = deque(range(len(units)))
        attempts = [0] * len(units)
        inflight: dict = {}                      # ref -> (replica, unit)
        load = {i: 0 for i in self.actors}
        starting = self.starting                 # ref of pid() -> (replica, handle): replacements
        while pending or inflight:
            for depth in range(1, IN_FLIGHT + 1):        # round robin: every replica one unit first
                for i, actor in list(self.actors.items()):
                    if load.get(i, 0) < depth and pending:
                        k = pending.popleft()
                        inflight[getattr(actor, method).remote(units[k], *args)] = (i, k)
                        load[i] = load.get(i, 0) + 1
            if not inflight and not starting:
                raise ThinksafeError(f"cluster: no {self.kind} replica is left "
                                     f"({self.lost} died, cluster.max_restarts={self.c.max_restarts})")
            ref = ray.wait([*inflight, *starting], num_returns=1)[0][0]
            if ref in starting:                  # a replacement is up (or failed to start)
                i, actor = starting.pop(ref)
                try:
                    self.pids[i] = ray.get(ref)
                    self.actors[i], load[i] = actor, 0
                except dead_errors:
                    self.lost += 1
                    self._replace(starting)
                continue
            i, k = inflight.pop(ref)
            load[i] -= 1
            try:
                result, seconds, _pid = ray.get(ref)
            except dead_errors as e:
                attempts[k] += 1
                if attempts[k] >= self.c.unit_attempts:
                    raise ThinksafeError(f"cluster: a unit of {len(units[k])} records lost its replica "
                                         f"{attempts[k]} times (last: {_cause(e)}); giving up") from None
                pending.appendleft(k)            # another replica takes it next
                self.retried += 1
                if i in self.actors:             # the first of its units to report the death
                    try:
                        ray.kill(self.actors.pop(i))  # unreachable is dead here: never two of one
                    except Exception:   # noqa: BLE001 - already gone
                        pass
                    self.lost += 1
                    self._replace(starting)
                continue
            self.busy[i] = self.busy.get(i, 0.0) + seconds
            self.units += 1
            self.last_replica = i
            yield k, result

    def _replace(self, starting: dict) -> None:
        """A new replica in place of a dead one; it gets work once it is up (a replica that cannot
        be placed, e.g. its node is gone, holds no unit hostage)."""
        if self.started - self.c.replicas >= self.c.max_restarts:
            return
        i = max(self.busy) + 1
        actor = self._spawn(i)
        starting[actor.pid.remote()] = (i, actor)

    def credit(self, records: int, tokens: int = 0) -> None:
        """Count the rows (and generated tokens) of the unit ``run`` yielded last, overall and for
        the replica that returned them."""
        self.records += records
        self.tokens += tokens
        i = self.last_replica
        if i is not None:
            self.replica_records[i] = self.replica_records.get(i, 0) + records
            self.replica_tokens[i] = self.replica_tokens.get(i, 0) + tokens

    def replica_rates(self, what: str = "tokens") -> dict[int, float]:
        """Per replica: its tokens (or records) per second of its own busy time."""
        counts = self.replica_tokens if what == "tokens" else self.replica_records
        return {i: counts.get(i, 0) / sec for i, sec in sorted(self.busy.items()) if sec > 0 and i in counts}

    def live_pids(self) -> dict[int, int]:
        """Replica number -> process id of the live replicas (asks the ones not yet known)."""
        for i, a in self.actors.items():
            if i not in self.pids:
                self.pids[i] = self.ray.get(a.pid.remote())
        return {i: self.pids[i] for i in self.actors}

    def summary(self) -> dict:
        res = self.resources() if self._resources is not None or self.actors else {}
        per_device = res.get("num_gpus") or res.get("num_cpus") or 1
        return {"engine": "ray", "kind": self.kind, "address": self.c.address, "replicas": self.c.replicas,
                "replicas_started": self.started, "replicas_lost": self.lost, "units": self.units,
                "units_retried": self.retried, "records": self.records,
                "gpus_per_replica": res.get("num_gpus"), "cpus_per_replica": res.get("num_cpus"),
                "replica_busy_seconds": {str(i): round(s, 2) for i, s in sorted(self.busy.items())},
                "replica_records": {str(i): n for i, n in sorted(self.replica_records.items())},
                "replica_tokens": {str(i): n for i, n in sorted(self.replica_tokens.items())},
                "replica_tokens_per_second": {str(i): round(r, 1) for i, r in self.replica_rates().items()},
                "replica_records_per_second": {str(i): round(r, 2)
                                               for i, r in self.replica_rates("records").items()},
                "device_seconds": round(sum(self.busy.values()) * per_device, 2),
                "startup_seconds": round(self.startup_seconds, 2), "run_seconds": round(self.run_seconds, 2),
                "device_kind": "gpu" if res.get("num_gpus") else "cpu"}

    def status(self, unit: str = "tok/s") -> str:
        """Replicas up/lost and each replica's own rate (its rows or tokens per busy second)."""
        rates = self.replica_rates("records" if unit == "pairs/s" else "tokens")
        each = " · " + ", ".join(f"r{i} {r:,.0f}" for i, r in rates.items()) + f" {unit}" if rates else ""
        return (f"replicas {len(self.actors)}/{self.c.replicas} up"
                + (f", {self.lost} lost, {self.retried} units retried" if self.lost else "") + each)


def _cause(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


@contextmanager
def progress(desc: str, total: int, pool: Pool, show: bool, unit: str = "tok/s"):
    """One line for every replica: done/total, throughput, replicas up/lost."""
    if not show:
        yield lambda n, tokens=0: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    t0 = time.time()
    counted = [0]
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("{task.fields[info]}"), transient=False) as prog:
        task = prog.add_task(f"{desc} [ray]", total=total, info="starting replicas")

        def advance(n: int, tokens: int = 0) -> None:
            counted[0] += tokens
            rate = counted[0] / max(time.time() - t0, 1e-9)
            prog.update(task, advance=n, info=f"{rate:,.0f} {unit} · {pool.status(unit)}")
        yield advance

"""One frozen dataclass per stage; ``load_config(path, overrides)`` with did-you-mean errors, then the
one validation pass (``thinksafe.validation``: ranges, choices, rules between values).

Precedence: ``--set key=value`` > YAML > dataclass defaults. The CLI declares no defaults of its own.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from thinksafe.errors import ConfigError
from thinksafe.validation import validate


def demo_config_path() -> Path:
    """The packaged organism config (``thinksafe demo``)."""
    from importlib import resources
    return Path(str(resources.files("thinksafe") / "configs" / "demo.yaml"))


# Settings declared once and shared by several sections (the YAML keys stay in each section).
@dataclass(frozen=True)
class Sampling:
    """Sampling settings of a section that generates; None = the model family's preset."""
    temperature: float | None = None   # None = the family's preset
    top_p: float | None = None      # None = the family's preset
    top_k: int | None = None        # None = the family's preset


@dataclass(frozen=True)
class VLLMEngine:
    """The vLLM engine's settings of a section that loads a model (unused by the transformers backend)."""
    tensor_parallel_size: int = 1   # vLLM only
    max_model_len: int | None = None  # vLLM only
    gpu_memory_utilization: float = 0.9  # vLLM only
    enforce_eager: bool = False     # vLLM only: no torch.compile / CUDA graphs (starts faster, runs slower)


# Section classes are named ...Settings where PEFT or TRL has a ...Config class of the same name.
@dataclass(frozen=True)
class ModelSettings(VLLMEngine):
    path: str = "organism"          # HF id, local folder, or "organism" (the bundled base)
    family: str = "organism"        # qwen3 | r1_distill | organism | generic
    backend: str = "transformers"   # transformers | vllm | auto (vLLM when installed)
    batch_size: int = 64            # prompts per batch (transformers backend; vLLM schedules its own)
    dtype: str = "auto"             # auto (bfloat16 on CUDA, else float32) | float32 | bfloat16 | float16
    device: str = "auto"            # auto (cuda when available, else cpu) | cuda | cpu
    generation: str = "generate"    # transformers only: generate | static (static KV cache) | continuous


@dataclass(frozen=True)
class GuardConfig(VLLMEngine):
    """The guard's own engine settings (vLLM), not the model's: the model's engine is freed before the
    guard loads."""
    kind: str = "llama_guard"       # llama_guard | wildguard
    path: str = "organism-guard"    # HF id, local folder, or "organism-guard"
    top_k: int = 5                  # logprobs returned; neither safe/unsafe among them -> unparsed
    max_input_tokens: int = 16384   # longer inputs are shortened inside the response, and counted
    batch_size: int = 64            # guard inputs per batch
    suffix: str | None = None       # text after the rendered template; None = auto ("\n\n" for Llama-Guard-3)
    server_url: str | None = None   # a served guard (vLLM's OpenAI-compatible server, e.g. http://host:8000):
                                    # health-checked first; a failed call is an error, never a verdict
    server_model: str | None = None  # the name the server serves the guard under (None = guard.path)
    server_timeout: float = 120.0   # seconds per request
    backend: str | None = None      # transformers | vllm | auto; None = model.backend
    max_model_len: int | None = None  # vLLM only; None = max_input_tokens + 64


@dataclass(frozen=True)
class PromptsConfig:
    source: str = "organism"        # "organism" or a .jsonl/.csv file
    n_harmful: int = 150            # organism source only: training prompts of each kind
    n_reasoning: int = 150
    n_borderline: int = 60
    prompt_field: str = "instruction"   # file / hf: sources: the field holding the prompt
    label_field: str = "label"      # file / hf: sources: harmful if this field contains "harmful"
    default_label: str | None = None   # a file row without label_field: this label (harmful | benign);
                                       # None = such a row is an error
    limit: int | None = None        # a seeded subset of this many prompts (a first small run); None = all


@dataclass(frozen=True)
class GenerateConfig(Sampling):
    steering: str = "prefix"        # prefix | suffix | none | a template containing {prompt}
    samples: int = 1                # completions per prompt
    max_new_tokens: int = 16384     # per completion, reasoning included
    max_attempts: int = 1           # resample prompts whose samples were all rejected, up to this many rounds
    shard: str = "0/1"              # "i/N": this process generates the i-th of N disjoint shards
    allow_incomplete: bool = False  # judge a generation with missing records/shards (counted in its summary)


@dataclass(frozen=True)
class DatasetConfig:
    decontaminate: bool | str = True  # drop training prompts sharing an n-gram with an evaluation prompt;
                                      # a benchmark that cannot load is an error, unless "best_effort"
    ngram: int = 13                 # as STAR-1 does


@dataclass(frozen=True)
class LoraSettings:
    r: int = 32                     # -> peft.LoraConfig (paper: r 32, alpha 16, dropout 0.05)
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])  # or "all-linear"
    layers: list[int] | None = None  # [start, end): adapt only decoder layers start..end-1 (None = all)


@dataclass(frozen=True)
class TrainConfig:
    lora: LoraSettings = field(default_factory=LoraSettings)
    lr: float = 1e-5
    epochs: float = 3.0
    batch_size: int = 8             # per GPU: batch_size * grad_accum * GPUs examples per optimiser step
    grad_accum: int = 1
    scheduler: str = "cosine"       # a transformers lr_scheduler_type
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    max_length: int = 16384         # longer examples are dropped (or cut, see truncation) and counted
    logging_steps: int = 10         # optimiser steps per line of train_log.jsonl
    truncation: str = "drop"        # drop | cut: what happens to examples over max_length (both counted)
    method: str = "lora"            # lora | full (full fine-tuning; saves the whole model)
    objective: str = "sft"          # sft | kl (ThinkSafe+KL: benign rows learn KL(base || student), not CE)
    kl_chunk_size: int | None = None   # kl: tokens per chunk of the vocabulary projection; null = auto
                                    # (as many as keep the chunk's logits within a fixed memory budget)
    packing: bool = True            # each micro-batch packed into one row, no padding (same batches);
                                    # false = TRL's padded batches
    ce_chunk_size: int | None = None   # packing + sft: tokens per chunk of the fused LM head + cross-entropy;
                                    # null = auto (chunk logits within ~256 MiB: 441 rows at a 151,936 vocabulary)
    gradient_checkpointing: bool | None = True   # as TRL's default and the official code; false = faster,
                                    # more memory; null = auto (from micro_batch_tokens and the model's shape)
    micro_batch_tokens: int | None = None   # packing: each step's batch_size*grad_accum examples cut into
                                    # micro-batches of <= this many tokens (same step, same gradient); null = off
    group_by_length: bool = False   # true = steps of similar lengths (changes which examples share a step)
    lm_head_loss: str = "auto"      # packing + sft: auto (Liger / Cut Cross-Entropy on CUDA when installed,
                                    # else PyTorch) | torch | liger | cce
    report_to: str = "none"         # none | wandb | tensorboard
    save_steps: int = 0             # > 0: a checkpoint every N optimiser steps (a crash loses at most N);
                                    # 0 = once per epoch


@dataclass(frozen=True)
class GRPOSettings:
    """`thinksafe grpo`: the GRPO baseline (TRL GRPOTrainer, LoRA from train.lora; paper defaults). Its
    sampling is TRL's (temperature 0.7, top_p 1, top_k off), not a family's preset, so it declares its own."""
    num_generations: int = 8        # completions per prompt (the group)
    beta: float = 0.04              # KL coefficient against the reference (0 = no reference pass)
    epsilon: float = 0.2            # clipping range
    lr: float = 1e-5
    scheduler: str = "cosine"
    warmup_ratio: float = 0.1
    epochs: float = 1.0
    max_steps: int | None = None    # None = epochs over the training prompts
    batch_size: int = 8             # completions per device per micro-batch
    grad_accum: int = 8             # paper: 64 completions per optimiser step
    temperature: float = 0.7
    top_p: float | None = None      # None = 1.0
    top_k: int | None = None        # None = off
    max_completion_length: int | None = None   # None = generate.max_new_tokens
    format_reward: str = "auto"     # auto (from model.family) | think (one ordered <think>...</think>) |
                                    # r1 (one </think>, no <think>) | none
    safety_weight: float = 1.0      # reward = safety_weight * P(safe) + format_weight * format
    format_weight: float = 1.0
    max_flops: float | None = None  # stop once data + training FLOPs pass this budget
    check_every: int = 0            # steps between harmful-rate checks on the VALIDATION prompts
                                    # (never the evaluation's); 0 = never
    validation: str = "auto"        # auto (organism: the world's validation split; else heldout) |
                                    # organism | heldout (a slice of the training prompts, not trained
                                    # on) | a .jsonl/.json/.csv file of prompts
    validation_n: int = 60          # harmful validation prompts per check
    validation_fraction: float = 0.05   # heldout: the share of training prompts held out
    stop_at_harmful: float | None = None   # stop when a check's harmful rate is <= this
    save_steps: int = 50
    logging_steps: int = 1
    use_vllm: bool = False          # TRL's vLLM generation (colocate or server, see vllm_mode)
    vllm_mode: str = "colocate"     # colocate | server (TRL's modes)


@dataclass(frozen=True)
class EvaluateConfig(Sampling):
    """Sampling: the paper's 0.6 / 0.95 / 20 (Qwen3; top_k off for the others) are the families' presets."""
    # "organism", "paper" (the paper's 8), or names from thinksafe.benchmarks (+ "wildjailbreak_250")
    benchmarks: list[str] = field(default_factory=lambda: ["organism"])
    n_harmful: int = 120            # organism only
    n_reasoning: int = 100          # organism only
    n_borderline: int = 60          # organism only
    samples: int | None = None      # samples per prompt: None = 8 on reasoning benchmarks (pass@1
                                    # over 8, as the paper), 1 on the organism; safety is always 1
    max_new_tokens: int = 16384     # safety benchmarks and the organism (paper: 16384)
    reasoning_max_new_tokens: int | None = None  # None = max_new_tokens (paper: 32768)
    data_dir: str | None = None     # benchmark files; None = $THINKSAFE_DATA, else shared/data
    limit: int | None = None        # only the first N prompts of each benchmark (smoke runs)
    split_judge: bool = True        # also judge the reasoning and the final answer on their own
    refusal_guard_path: str = "allenai/wildguard"   # XSTest refusal judge (organism: the oracle)
    refusal_guard_kind: str = "wildguard"           # as guard.kind
    refusal_guard_max_input_tokens: int = 24576     # WildGuard's context is 32k


@dataclass(frozen=True)
class CompareConfig:
    """`thinksafe compare`: several methods on the same prompts and evaluation (thinksafe/compare.py)."""
    # base | thinksafe | direct_refusal | no_steering | no_reasoning | external
    methods: list[str] = field(default_factory=lambda: ["base", "thinksafe", "direct_refusal",
                                                        "no_steering", "no_reasoning"])
    set: list[str] = field(default_factory=list)   # per-method overrides: "direct_refusal:train.epochs=5"
    no_steering_samples: int = 5        # rejection sampling: k unsteered samples per harmful prompt
    direct_refusal_benign: bool = False  # also train on ThinkSafe's accepted benign rows (paper: harmful only)
    external_path: str | None = None    # SafeChain / STAR-1 style JSONL for the `external` method
    external_prompt_field: str = "question"     # external method: the fields of external_path
    external_response_field: str = "response"
    external_limit: int | None = None   # external method: only the first N rows (None = all)
    perplexity: bool = True             # perplexity of each training set under the base model
    teacher_path: str | None = None     # `teacher` method: the model that writes the safety data
                                        # ("organism-teacher", an HF id or a local folder)
    teacher_family: str | None = None   # None = model.family
    grpo_budget: float = 20.0           # `grpo`: stop at this multiple of ThinkSafe's FLOPs at the latest
    grpo_target_slack: float = 0.0      # `grpo`: "reached" = check harmful rate <= ThinkSafe's + slack


@dataclass(frozen=True)
class OPSAConfig(Sampling):
    """``train.objective: opsa`` (on-policy self-distillation, thinksafe.trainers.opsa). Read (and keyed)
    only when that objective is chosen. temperature / top_p / top_k: the rollouts' sampling."""
    context: str = "prefix"         # the teacher's privileged context: a steering template name
                                    # (prefix | suffix | opsa) or a template containing {prompt}
    context_on: str = "harmful"     # harmful = only harmful prompts get the context | all
    benign_context: str = "helpful"  # the teacher's context on benign prompts (context_on: harmful):
                                    # helpful (a do-not-over-refuse context, as OPSA's I_b) | none (the
                                    # base itself) | a template containing {prompt}
    divergence: str = "mixed"       # mixed = forward_weight x KL(teacher || student) + the rest x
                                    # KL(student || teacher) (OPSA's code, read from its notes) | reverse
                                    # | forward | jsd = generalized JSD with jsd_alpha (TRL's convention)
    forward_weight: float = 0.5     # mixed only: the forward KL's weight
    jsd_alpha: float = 0.5
    max_new_tokens: int | None = None   # rollout length; None = generate.max_new_tokens


@dataclass(frozen=True)
class SteerConfig:
    """``thinksafe steer``: candidate privileged contexts scored by teacher flip rate."""
    contexts: list[str] = field(default_factory=lambda: ["prefix", "suffix", "opsa"])  # names or templates
    n_harmful: int = 64             # harmful training prompts sampled (the student's unsafe ones are scored)
    n_benign: int = 64              # benign training prompts for the false-refusal rate
    flip: str = "safe"              # what a flip is: safe = a safe guard verdict (OPSA's) | refusal = a
                                    # safe verdict on a refusal (the refusal judge reads the teacher too)
    max_false_refusal: float = 0.1  # rule: the highest flip rate among contexts whose false-refusal
                                    # rate is <= this (ties: lower false refusal, then listed order)


@dataclass(frozen=True)
class ClusterConfig:
    """Where generate / judge / evaluate run (docs/cluster.md). A speed setting: in no stage key."""
    engine: str = "local"           # local (this process) | ray (replicas on a Ray cluster; pip install 'thinksafe[ray]')
    address: str = "local"          # ray: local (a Ray instance started here) | auto (the running cluster) | ray://host:10001
    replicas: int = 2               # ray: model (or guard) replicas, each running the project's own backend
    cpus_per_replica: float = 1.0   # ray: CPUs reserved per replica (and torch threads on CPU)
    gpus_per_replica: float | None = None  # ray: None = the model's tensor_parallel_size when the cluster has GPUs, else 0
    max_restarts: int = 4           # ray: replicas started in place of dead ones before the run gives up
    unit_attempts: int = 3          # ray: a unit of work whose replica died this many times is an error


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"               # the run's name in reports
    seed: int = 0                   # prompts, sampling, training (LoRA init, data order) and evaluation
    out: str = "runs/run"           # the run folder (--out overrides it)
    model: ModelSettings = field(default_factory=ModelSettings)
    guard: GuardConfig = field(default_factory=GuardConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    grpo: GRPOSettings = field(default_factory=GRPOSettings)
    opsa: OPSAConfig = field(default_factory=OPSAConfig)
    steer: SteerConfig = field(default_factory=SteerConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    # iterative ThinkSafe (thinksafe.rounds): round r >= 2 generates with round r-1's student
    rounds: int = 1                 # rounds of generate -> judge -> dataset -> train -> evaluate
    rounds_from: str = "base"       # each later round trains from: base | previous (round r-1's adapter / model)
    student: str | None = None      # generate (and resample) with this trained model: a LoRA adapter
                                    # folder on model.path, or a full model folder; null = the base.
                                    # Set per round by `rounds`


# Names users bring from PEFT / transformers, for did-you-mean.
ALIASES = {"rank": "r", "lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout",
           "learning_rate": "lr", "num_train_epochs": "epochs", "per_device_train_batch_size": "batch_size",
           "gradient_accumulation_steps": "grad_accum", "max_tokens": "max_new_tokens",
           "model_name_or_path": "path", "model_id": "path"}


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in known:
            guess = [ALIASES[key]] if ALIASES.get(key) in known else difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean '{guess[0]}'?" if guess else ""
            raise ConfigError(f"{path} is unknown.{hint} Known: {', '.join(known)}")
        typ = hints[key]
        if is_dataclass(typ):
            kwargs[key] = _build(typ, value or {}, path)
        else:
            kwargs[key] = _coerce(value, typ, path)
    return cls(**kwargs)


def _coerce(value: Any, typ: Any, path: str) -> Any:
    if value is None:
        if type(None) in getattr(typ, "__args__", ()):
            return None
        raise ConfigError(f"{path} must not be empty")
    if getattr(typ, "__origin__", None) is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{path} must be a list of strings, got {value!r}")
        return value
    for base in (int, float, str, bool):
        if typ == base or typ == (base | None):
            if base is float and isinstance(value, int) and not isinstance(value, bool):
                return float(value)
            if base is float and isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            if not isinstance(value, base) or (base is int and isinstance(value, bool)):
                raise ConfigError(f"{path} must be {base.__name__}, got {value!r}")
            return value
    return value


def _set(tree: dict[str, Any], dotted: str, raw: str) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: '{k}' is not a section")
    node[keys[-1]] = yaml.safe_load(raw)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections, got {type(data).__name__}")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, raw = item.split("=", 1)
        _set(data, key.strip(), raw)
    return validate(_build(RunConfig, data, ""))


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def section_hash(*sections: Any) -> str:
    blob = json.dumps([dataclasses.asdict(s) if is_dataclass(s) else s for s in sections],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]

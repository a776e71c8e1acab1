"""Deterministic inputs of benchmarks/scale.py: models, tokenizers, prompt file, generated.jsonl."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("THINKSAFE_DATA") or REPO.parent / "shared" / "data")
if not (DATA / "tokenizers").is_dir() and Path("/work/shared/data/tokenizers").is_dir():
    DATA = Path("/work/shared/data")
VERSION = 3
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qu", "di", "fe", "go", "hu", "ja"]


def word_list(n: int = 3000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(n)]


def response_lengths(n: int, tiny: bool, seed: int = 0) -> list[int]:
    """Response lengths in tokens: lognormal with mean ~800 (the paper's 600-1,600 range), capped at
    16,000, and one response in 2,000 at the cap (the tail). Tiny: mean ~60, cap 300."""
    rng = random.Random(seed)
    cap, mu = (300, 3.8) if tiny else (16000, 6.3)
    out = [min(cap, max(20, int(rng.lognormvariate(mu, 0.8)))) for _ in range(n)]
    for i in range(0, n, 2000):
        out[i] = cap
    return out


def text_of(rng: random.Random, words: list[str], n_tokens: int) -> str:
    """About ``n_tokens`` Qwen3 tokens of pseudo-words (~1.8 tokens a word on average)."""
    return " ".join(rng.choices(words, k=max(1, int(n_tokens / 1.8))))


def shape_configs(shape: str, vocab: int) -> tuple[dict, dict]:
    """(policy Qwen3Config kwargs, guard LlamaConfig kwargs)."""
    if shape == "paper":        # Qwen3-0.6B and Llama-Guard-3-8B shapes
        pol = dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                   num_key_value_heads=8, head_dim=128, tie_word_embeddings=True)
        grd = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                   num_key_value_heads=8, tie_word_embeddings=False)
    else:
        pol = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                   num_key_value_heads=1, head_dim=32, tie_word_embeddings=True)
        grd = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                   num_key_value_heads=1, tie_word_embeddings=False)
    common = dict(vocab_size=vocab, max_position_embeddings=40960)
    return {**pol, **common}, {**grd, **common}


def make_models(work: Path, shape: str) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM
    tok_dir = DATA / "tokenizers" / "qwen3"
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    vocab = 151936                                          # Qwen3's embedding rows (> len(tok))
    pol_kw, grd_kw = shape_configs(shape, vocab)
    ids = dict(bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    Qwen3ForCausalLM(Qwen3Config(**pol_kw, **ids)).save_pretrained(work / "policy", safe_serialization=True)
    tok.save_pretrained(work / "policy")
    if shape != "paper":                                    # the 8B guard is built on the GPU, not saved
        torch.manual_seed(1)
        LlamaForCausalLM(LlamaConfig(**grd_kw, **ids)).save_pretrained(work / "guard", safe_serialization=True)
    (work / "guard").mkdir(exist_ok=True)
    gtok = AutoTokenizer.from_pretrained(str(tok_dir))
    gtok.chat_template = json.loads((DATA / "tokenizers" / "llama_guard_3_8b_chat_template.json")
                                    .read_text())["chat_template"]
    gtok.save_pretrained(work / "guard")
    (work / "guard" / "shape.json").write_text(json.dumps(grd_kw | ids))


def eval_prompts() -> list[str]:
    rows = json.loads((DATA / "safety" / "thinksafe_harmbench.json").read_text())
    return [r["prompt"] for r in rows]


def cut_sizes(work: Path, n_max: int, sizes: list[int]) -> None:
    """prompts-N / generated-N: the first N rows of the largest files (written once)."""
    for n in sorted(sizes):
        for name in ("prompts", "generated"):
            dst = work / f"{name}-{n}.jsonl"
            if n == n_max or dst.exists():
                continue
            with open(work / f"{name}-{n_max}.jsonl") as src, open(dst, "w") as out:
                for _, line in zip(range(n), src):
                    out.write(line)


def prepare(work: Path, n_max: int, sizes: list[int], tiny: bool = False, shape: str = "tiny") -> dict:
    """Write every input under ``work`` (skipped when a matching set is already there)."""
    work = Path(work)
    key = {"version": VERSION, "n_max": n_max, "tiny": tiny, "shape": shape, "data": str(DATA)}
    man = work / "manifest.json"
    if man.is_file() and json.loads(man.read_text()).get("key") == key:
        cut_sizes(work, n_max, sizes)
        return json.loads(man.read_text())["info"]
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    make_models(work, shape)
    from thinksafe.prompts import file_records
    from thinksafe.generation import expand
    from thinksafe.types import Completion, Record
    rng = random.Random(0)
    words = word_list()
    evals = eval_prompts()
    prompts = []
    for i in range(n_max):
        label = ("vanilla_harmful", "adversarial_harmful", "vanilla_benign", "adversarial_benign")[i % 4]
        text = evals[i % len(evals)] if i % 100 == 7 else text_of(rng, words, rng.randint(15, 300))
        prompts.append({"instruction": text, "label": label, "category": "S2" if "harmful" in label else None})
    lengths = response_lengths(n_max, tiny)
    (work / f"prompts-{n_max}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    records = expand(file_records(work / f"prompts-{n_max}.jsonl", "instruction", "label"), 1)
    gen_tokens = 0
    with open(work / f"generated-{n_max}.jsonl", "w") as f:
        for r, n_tok in zip(records, lengths):
            think = text_of(rng, words, int(n_tok * 0.8))
            answer = text_of(rng, words, max(1, n_tok - int(n_tok * 0.8)))
            finish = "length" if rng.random() < 0.03 else "stop"
            c = Completion(f"<think>\n{think}\n</think>\n\n{answer}", finish, 0, n_tok)
            gen_tokens += n_tok
            f.write(json.dumps(Record(**{**r.__dict__, "steering": "prefix", "completion": c}).to_json()) + "\n")
    cut_sizes(work, n_max, sizes)
    info = {"records": n_max, "mean_response_tokens": round(gen_tokens / n_max, 1),
            "max_response_tokens": max(lengths), "responses_at_cap": sum(x == max(lengths) for x in lengths),
            "generated_mib": round((work / f"generated-{n_max}.jsonl").stat().st_size / 2**20, 1),
            "vocab": 151936, "shape": shape}
    man.write_text(json.dumps({"key": key, "info": info}))
    return info

"""Generation throughput of the transformers backend vs a plain `model.generate` call.

Random-initialised model with Qwen3-0.6B's shape (weights do not change speed), batch 64, 128-token
prompts, exactly N new tokens (EOS ignored so every method does the same work), sampling T 0.6,
top_p 0.95, top_k 20. Prints tokens/s per method and the ratio to the plain call, measured in one run.

    python benchmarks/generation_throughput.py                 # GPU: the issue's setting
    python benchmarks/generation_throughput.py --tiny          # CPU: a tiny shape (exercised by tests)
    python benchmarks/generation_throughput.py --vllm          # vLLM vs the transformers backend

``--vllm`` runs thinksafe's vLLM backend and its transformers backend on the same prompts, for the
organism base and for a random Qwen3 of a larger shape vLLM supports (``--vllm-shape``), and prints
the tokens/s of each and their ratio, measured in one run (vLLM's CPU build on CPU). Needs vllm
(``make setup-vllm``, then ``.venv-vllm/bin/python``); ``--json`` writes the rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from thinksafe.backends.hf import HFBackend
from thinksafe.types import SamplingParams


class _Tok:
    """Just enough tokenizer for the backend: prompts here are space-separated token ids."""
    eos_token_id, pad_token_id = 0, 1

    def __call__(self, text, add_special_tokens=False):
        return type("E", (), {"input_ids": [int(t) for t in text.split()]})()

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def model_for(tiny: bool, device: str) -> Qwen3ForCausalLM:
    if tiny:
        cfg = Qwen3Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True)
    else:   # Qwen3-0.6B
        cfg = Qwen3Config(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                          num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
                          max_position_embeddings=40960)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    return Qwen3ForCausalLM(cfg).to(device=device, dtype=dtype).eval()


def measure(fn, new_tokens: int, repeats: int, spread: list | None = None) -> float:
    """Median tokens/s over ``repeats`` timed calls after one warm-up; each call's rate goes to ``spread``."""
    fn()                                   # warm-up (compilation, CUDA graphs, allocator)
    rates = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        n = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        rates.append(n / (time.perf_counter() - t0))
    if spread is not None:
        spread.extend(rates)
    return statistics.median(rates)


SHAPES = {   # random Qwen3s vLLM runs (head_dim among vLLM's sizes)
    "small": dict(vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                  num_attention_heads=8, num_key_value_heads=4, head_dim=64),
    "qwen3-0.6b": dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128),
}


def random_qwen3_dir(shape: str, out) -> str:
    cfg = Qwen3Config(**SHAPES[shape], tie_word_embeddings=True, max_position_embeddings=4096,
                      eos_token_id=0, pad_token_id=1, bos_token_id=None)
    torch.manual_seed(0)
    Qwen3ForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    return str(out)


def vllm_rows(args) -> list[dict]:
    """The vLLM backend vs the transformers backend on the same prompts, per model."""
    import tempfile

    from thinksafe.backends.vllm import VLLMBackend
    from thinksafe.organism import resolve_model_path
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = "bfloat16" if device == "cuda" else "float32"
    params = SamplingParams(temperature=0.6, top_p=0.95, top_k=20, max_new_tokens=args.new_tokens, seed=0)
    tmp = tempfile.mkdtemp(prefix="genbench-")
    models = [("organism base", resolve_model_path("organism"))]
    models.append((f"random Qwen3 ({args.vllm_shape})", random_qwen3_dir(args.vllm_shape, f"{tmp}/m")))
    rows = []
    for name, path in models:
        vocab = json.load(open(f"{path}/config.json"))["vocab_size"]
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(2, min(vocab, 1000), (args.batch, args.prompt_len), generator=g)
        prompts = [" ".join(map(str, row.tolist())) for row in ids]
        row = {"model": name, "batch": args.batch, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens}
        hf = HFBackend(path, tokenizer=_Tok(), batch_size=args.batch, dtype=dtype, device=device)
        row["transformers_runs"], row["vllm_runs"] = [], []
        row["transformers"] = measure(
            lambda: sum(c.completion_tokens for c in hf.generate(prompts, params, ignore_eos=True)),
            args.new_tokens, args.repeats, row["transformers_runs"])
        del hf
        t0 = time.perf_counter()
        be = VLLMBackend(path, tokenizer=_Tok(), dtype=dtype, max_model_len=args.prompt_len + args.new_tokens + 8,
                         skip_tokenizer_init=True, gpu_memory_utilization=0.5)
        row["vllm_startup_s"] = round(time.perf_counter() - t0, 1)
        row["vllm"] = measure(
            lambda: sum(c.completion_tokens for c in be.generate(prompts, params, ignore_eos=True)),
            args.new_tokens, args.repeats, row["vllm_runs"])
        be.close()
        row["ratio"] = row["vllm"] / row["transformers"]
        rows.append(row)
    return rows


def print_vllm(rows: list[dict], args) -> None:
    import transformers
    import vllm
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"device: {card}; torch {torch.__version__}; transformers {transformers.__version__}; "
          f"vllm {vllm.__version__}")
    print(f"batch {args.batch}, prompt {args.prompt_len}, new tokens {args.new_tokens} (EOS ignored), "
          "T 0.6 / top_p 0.95 / top_k 20")
    print(f"median of {args.repeats} timed repeats after one warm-up [min–max]")
    print("| model | transformers tok/s | vLLM tok/s | vLLM / transformers | vLLM start-up |\n|---|---|---|---|---|")
    span = lambda xs: f"[{min(xs):,.0f}–{max(xs):,.0f}]"   # noqa: E731
    for r in rows:
        print(f"| {r['model']} | {r['transformers']:,.0f} {span(r['transformers_runs'])} | {r['vllm']:,.0f} "
              f"{span(r['vllm_runs'])} | **{r['ratio']:.2f}×** | {r['vllm_startup_s']} s |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--methods", default="naive,static,continuous")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--vllm", action="store_true", help="vLLM vs the transformers backend (needs vllm)")
    ap.add_argument("--vllm-shape", default="small", choices=sorted(SHAPES))
    args = ap.parse_args()
    if args.vllm:
        rows = vllm_rows(args)
        print_vllm(rows, args)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"rows": rows}, f, indent=2)
        return
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    model = model_for(args.tiny, device)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, model.config.vocab_size, (args.batch, args.prompt_len), generator=g)
    prompts = [" ".join(map(str, row.tolist())) for row in ids]
    params = SamplingParams(temperature=0.6, top_p=0.95, top_k=20, max_new_tokens=args.new_tokens, seed=0)

    def naive():
        out = model.generate(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device),
                             do_sample=True, temperature=0.6, top_p=0.95, top_k=20, eos_token_id=None,
                             max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, pad_token_id=1)
        return (out.shape[1] - ids.shape[1]) * out.shape[0]

    def backend(mode):
        be = HFBackend("<in-memory>", model=model, tokenizer=_Tok(), batch_size=args.batch, generation=mode)
        return lambda: sum(c.completion_tokens for c in be.generate(prompts, params, ignore_eos=True))

    rows = {}
    for m in args.methods.split(","):
        fn = naive if m == "naive" else backend(m)
        t0 = time.perf_counter()
        try:
            rows[m] = measure(fn, args.new_tokens, args.repeats)
        except Exception as e:   # a method the installed versions cannot run is reported, not hidden
            rows[m] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
        # each row as it is measured, so a run stopped at its time limit still reports the ones it finished
        print(f"{m}: {rows[m] if isinstance(rows[m], str) else f'{rows[m]:,.0f} tok/s'} "
              f"({time.perf_counter() - t0:.0f} s with warm-up)", flush=True)
    base = rows.get("naive") if isinstance(rows.get("naive"), float) else None
    card = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    import transformers
    print(f"device: {card}; torch {torch.__version__}; transformers {transformers.__version__}")
    print(f"batch {args.batch}, prompt {args.prompt_len}, new tokens {args.new_tokens}, "
          f"{'tiny' if args.tiny else 'Qwen3-0.6B'} shape")
    print("| method | tok/s | vs naive |\n|---|---|---|")
    for m, v in rows.items():
        if isinstance(v, float):
            print(f"| {m} | {v:,.0f} | {v / base:.2f}x |" if base else f"| {m} | {v:,.0f} | – |")
        else:
            print(f"| {m} | {v} | – |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": card, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()

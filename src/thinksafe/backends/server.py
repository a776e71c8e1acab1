"""A model served behind vLLM's OpenAI-compatible server (``vllm serve MODEL``), used as a guard.

The guard runs on other GPUs than the policy (GRPO on several GPUs, or a shared guard for many
jobs). Prompts are rendered and tokenized HERE, with the guard's own tokenizer (a local folder or
the HF cache), and sent as token ids, so the served model sees exactly what the in-process guard
would. Next-token logprobs come back as token ids (vLLM's ``return_tokens_as_token_ids``).

Fail closed and loud: the server is health-checked when the backend is made (``GET /health`` and
the model name in ``GET /v1/models``); a request that fails after ``retries`` attempts, times out,
or returns a malformed body raises :class:`GuardServerError` — it never becomes a verdict or a
reward.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence

from thinksafe.errors import GuardServerError
from thinksafe.types import Completion, SamplingParams


def _token_id(key: str) -> int:
    if not key.startswith("token_id:"):
        raise GuardServerError(f"the server returned token {key!r}, not 'token_id:N' "
                               "(needs vLLM's return_tokens_as_token_ids)")
    return int(key.split(":", 1)[1])


class ServerBackend:
    def __init__(self, url: str, tokenizer_path: str, model_name: str | None = None,
                 timeout: float = 120.0, retries: int = 2, batch_size: int = 64, check: bool = True):
        from thinksafe.backends.hf import load_tokenizer
        self.url = url.rstrip("/")
        self.model_name = model_name or tokenizer_path
        self.timeout = timeout
        self.retries = retries
        self.batch_size = batch_size
        self.tokenizer = load_tokenizer(tokenizer_path)
        self.requests = 0
        if check:
            self.health()

    # ----------------------------------------------------------------------------- transport
    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        last = None
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read()
                self.requests += 1
                return json.loads(raw) if raw else {}
            except urllib.error.HTTPError as e:
                detail = e.read()[:300].decode(errors="replace")
                last = f"HTTP {e.code}: {detail}"
                if e.code < 500:            # a bad request does not get better by retrying
                    break
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            except json.JSONDecodeError as e:
                last = f"not JSON ({e})"
                break
            time.sleep(min(2.0 ** attempt, 10.0))
        raise GuardServerError(f"guard server {self.url}{path} failed after {self.retries + 1} "
                               f"attempt(s): {last}")

    def health(self) -> None:
        """GET /health, then the model name in GET /v1/models; GuardServerError when either fails."""
        self._call("GET", "/health")
        models = self._call("GET", "/v1/models")
        names = [m.get("id") for m in models.get("data", []) if isinstance(m, dict)]
        if self.model_name not in names:
            raise GuardServerError(f"guard server {self.url} serves {names or 'no models'}, not "
                                   f"'{self.model_name}' (set guard.server_model)")

    def _ids(self, prompts: Sequence[str]) -> list[list[int]]:
        return [self.tokenizer(p, add_special_tokens=False).input_ids for p in prompts]

    def _complete(self, ids: list[list[int]], **params) -> list[dict]:
        body = {"model": self.model_name, "prompt": ids, "return_tokens_as_token_ids": True,
                "skip_special_tokens": True, **params}
        out = self._call("POST", "/v1/completions", body)
        choices = out.get("choices")
        if not isinstance(choices, list) or len(choices) != len(ids):
            raise GuardServerError(f"guard server {self.url} returned "
                                   f"{len(choices) if isinstance(choices, list) else 'no'} choices "
                                   f"for {len(ids)} prompts")
        return sorted(choices, key=lambda c: c.get("index", 0))

    # ----------------------------------------------------------------------------- backend protocol
    def next_token_logprobs(self, prompts: Sequence[str], top_k: int = 5,
                            continue_tokens: int = 0) -> list[tuple[dict[int, float], str]]:
        out = []
        for b in range(0, len(prompts), self.batch_size):
            ids = self._ids(prompts[b:b + self.batch_size])
            for c in self._complete(ids, max_tokens=max(1, continue_tokens), temperature=0.0,
                                    logprobs=top_k):
                try:
                    first = c["logprobs"]["top_logprobs"][0]
                    lp = {_token_id(k): float(v) for k, v in first.items()}
                except (KeyError, IndexError, TypeError, ValueError) as e:
                    raise GuardServerError(f"guard server {self.url}: no first-token logprobs in "
                                           f"the answer ({type(e).__name__}: {e})") from None
                out.append((lp, c.get("text", "") if continue_tokens else ""))
        return out

    def generate(self, prompts: Sequence[str], params: SamplingParams,
                 progress: Callable[[int], None] | None = None) -> list[Completion]:
        """Greedy prompts go in batches; sampled ones one request each, seeded per prompt (the
        server seeds every prompt of one request alike, and equal seeds draw equal random
        numbers, see backends/vllm.py), ``batch_size`` of them in flight at once so the served
        engine keeps batching."""
        from concurrent.futures import ThreadPoolExecutor

        from thinksafe.backends.vllm import prompt_offset
        sampled = params.temperature > 0
        step = 1 if sampled else self.batch_size
        chunks = [self._ids(prompts[b:b + step]) for b in range(0, len(prompts), step)]

        def run(ids: list[list[int]]) -> list[Completion]:
            body = dict(max_tokens=params.max_new_tokens, temperature=params.temperature,
                        top_p=params.top_p,
                        seed=prompt_offset(ids[0]) + params.seed if sampled else params.seed)
            if params.top_k:
                body["top_k"] = params.top_k
            got = []
            for p_ids, c in zip(ids, self._complete(ids, **body)):
                text = c.get("text")
                if not isinstance(text, str):
                    raise GuardServerError(f"guard server {self.url}: a choice without text")
                n = len(self.tokenizer(text, add_special_tokens=False).input_ids)
                got.append(Completion(text, "length" if c.get("finish_reason") == "length" else "stop",
                                      len(p_ids), n))
            return got

        out: list[Completion] = []
        workers = max(1, min(self.batch_size, len(chunks))) if sampled else 1
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for got in pool.map(run, chunks):       # in order; the first failure is raised here
                out.extend(got)
                if progress:
                    progress(len(got))
        return out

"""The served backend's sampled generation: one request per prompt, each with its own seed
(a server seeds all prompts of a request alike, and equal seeds draw equal random numbers)."""

from types import SimpleNamespace

from thinksafe.backends.server import ServerBackend
from thinksafe.backends.vllm import prompt_offset
from thinksafe.types import SamplingParams


def _backend():
    be = object.__new__(ServerBackend)
    be.url, be.model_name, be.batch_size, be.requests = "http://x", "m", 64, 0
    be.tokenizer = lambda text, add_special_tokens=False: SimpleNamespace(
        input_ids=[ord(c) for c in text])
    bodies = []

    def call(method, path, body=None):
        bodies.append(body)
        return {"choices": [{"index": i, "text": "ok", "finish_reason": "stop"}
                            for i in range(len(body["prompt"]))]}
    be._call = call
    return be, bodies


def test_sampled_prompts_get_one_request_and_seed_each():
    be, bodies = _backend()
    prompts = [f"p{i}" for i in range(5)]
    out = be.generate(prompts, SamplingParams(temperature=0.6, top_p=0.95, top_k=20, seed=7))
    assert len(out) == 5 and len(bodies) == 5
    assert [b["seed"] for b in bodies] == [prompt_offset([ord(c) for c in p]) + 7 for p in prompts]
    assert len({b["seed"] for b in bodies}) == 5


def test_greedy_prompts_go_in_batches():
    be, bodies = _backend()
    out = be.generate([f"p{i}" for i in range(5)], SamplingParams(temperature=0.0, seed=0))
    assert len(out) == 5 and len(bodies) == 1 and len(bodies[0]["prompt"]) == 5


def test_sampled_requests_are_in_flight_together_and_come_back_in_order():
    """batch_size requests wait on one barrier: it opens only if all of them are in flight at once (one after
    another, the first would wait alone and the barrier break); results come back in prompt order."""
    import threading
    be, bodies = _backend()
    be.batch_size = 4
    inner = be._call
    barrier = threading.Barrier(4, timeout=60)
    order = []

    def held(method, path, body=None):
        barrier.wait()                      # BrokenBarrierError unless 4 requests are in flight together
        res = inner(method, path, body)
        res["choices"][0]["text"] = "".join(chr(t) for t in body["prompt"][0])   # echo the prompt
        order.append(res["choices"][0]["text"])
        return res
    be._call = held
    prompts = [f"p{i}" for i in range(8)]
    out = be.generate(prompts, SamplingParams(temperature=1.0, seed=0))
    assert [c.text for c in out] == prompts and sorted(order) == sorted(prompts)

"""Shared fixtures: a small organism tokenizer trained once per session, paths to shared data."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from thinksafe.organism import world
from thinksafe.organism.tokenizer import BASE_CHAT_TEMPLATE, GUARD_CHAT_TEMPLATE, train_tokenizer, wrap

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
QWEN3_DIR = SHARED_DATA / "tokenizers" / "qwen3"


def world_responses(seed: int = 0, split: str = "train", n: int = 100) -> list[tuple[str, str]]:
    """(prompt, response) pairs of every response type of the world."""
    out = []
    for p in world.sample_prompts(seed, split, n, n, n // 2):
        if p.kind == "reasoning":
            out.append((p.prompt, world.reasoning_response(p)))
        elif p.kind == "harmful":
            out.append((p.prompt, world.comply_response(p)))
            out.append((p.prompt, world.refuse_response(p)))
        else:
            out.append((p.prompt, world.borderline_response(p)))
    return out


def tokenizer_corpus() -> list[str]:
    texts = list(world.vocabulary_corpus())
    for prompt, response in world_responses():
        texts += [prompt, response]
    texts += [f" {i}" for i in range(100)] * 200
    texts += ["safe", "unsafe\nS1"] * 200
    return texts


@pytest.fixture(scope="session")
def raw_tokenizer():
    return train_tokenizer(tokenizer_corpus(), 1024)


@pytest.fixture(scope="session")
def organism_tokenizer(raw_tokenizer):
    """Do not mutate: shared by the whole session."""
    return wrap(copy.deepcopy(raw_tokenizer), BASE_CHAT_TEMPLATE)


@pytest.fixture(scope="session")
def guard_tokenizer(raw_tokenizer):
    return wrap(copy.deepcopy(raw_tokenizer), GUARD_CHAT_TEMPLATE)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return SHARED_DATA


@pytest.fixture(scope="session")
def qwen3_tokenizer():
    """The real Qwen3 tokenizer (vocab + merges + config only). Do not mutate: deep-copy first."""
    if not QWEN3_DIR.is_dir():
        pytest.skip(f"Qwen3 tokenizer not present at {QWEN3_DIR}")
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(QWEN3_DIR))


@pytest.fixture(scope="session")
def _tiny_organism_build(tmp_path_factory):
    from dataclasses import replace

    from thinksafe.organism.build import TINY, build
    out = tmp_path_factory.mktemp("organism")
    return out, build(out, replace(TINY, seed=3), log=lambda s: None)


@pytest.fixture()
def tiny_organism(_tiny_organism_build, monkeypatch):
    """An organism built from scratch at a tiny size (seconds, once per session); THINKSAFE_ORGANISM
    points at it for the duration of the test only."""
    monkeypatch.setenv("THINKSAFE_ORGANISM", str(_tiny_organism_build[0]))
    return _tiny_organism_build

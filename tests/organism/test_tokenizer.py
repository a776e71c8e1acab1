"""The organism tokenizer and its chat templates (base: Qwen3-like; guard: Llama-Guard-3-like)."""

from __future__ import annotations

import pytest
from conftest import world_responses
from transformers import AutoTokenizer

from thinksafe.organism import world
from thinksafe.organism.tokenizer import (BASE_CHAT_TEMPLATE, GUARD_CHAT_TEMPLATE, GUARD_QUESTION,
                                          GUARD_TASK)


@pytest.fixture(scope="module")
def tok(organism_tokenizer):
    return organism_tokenizer


@pytest.fixture(scope="module")
def pairs():
    return world_responses(seed=5, split="eval", n=20) + world_responses(seed=5, split="pretrain", n=20)


def _chat(prompt, response=None):
    chat = [{"role": "user", "content": prompt}]
    if response is not None:
        chat.append({"role": "assistant", "content": response})
    return chat


def test_vocab_fits_and_world_words_are_single_tokens(tok):
    assert len(tok) <= 1024 + 2
    for w in ["safe", "unsafe"] + [f" {i}" for i in range(world.MAX_VALUE + 1)]:
        assert len(tok.encode(w, add_special_tokens=False)) == 1, w
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token == "<|endoftext|>"
    assert tok.eos_token_id != tok.pad_token_id


def test_chat_template_round_trip(tok, pairs):
    assert len(pairs) > 50
    for prompt, response in pairs:
        text = tok.apply_chat_template(_chat(prompt, response), tokenize=False)
        assert text == (f"<|im_start|>user\n{prompt}<|im_end|>\n"
                        f"<|im_start|>assistant\n{response}<|im_end|>\n")
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
        assert tok.decode(ids, skip_special_tokens=False) == text


def test_steered_prompt_round_trip(tok, pairs):
    for prompt, _ in pairs[:20]:
        text = tok.apply_chat_template(_chat(world.steer(prompt)), tokenize=False,
                                       add_generation_prompt=True)
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


@pytest.mark.parametrize("word", ["<think>", "</think>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"])
def test_markers_are_single_tokens(tok, word):
    ids = tok.encode(word, add_special_tokens=False)
    assert len(ids) == 1
    # also inside running text
    ids = tok.encode(f"x{word}y", add_special_tokens=False)
    assert tok.convert_ids_to_tokens(ids).count(word) == 1


def test_think_tags_survive_skip_special_tokens(tok, pairs):
    prompt, response = pairs[0]
    text = tok.apply_chat_template(_chat(prompt, response), tokenize=False)
    ids = tok.encode(text, add_special_tokens=False)
    plain = tok.decode(ids, skip_special_tokens=True)
    assert "<think>" in plain and "</think>" in plain
    assert response in plain
    assert "<|im_end|>" not in plain
    assert "<|im_start|>" not in plain
    # the response alone, as a generated completion + EOS, decodes to exactly the response
    r_ids = tok.encode(response, add_special_tokens=False) + [tok.eos_token_id]
    assert tok.decode(r_ids, skip_special_tokens=True) == response


def test_generation_prompt_thinking_on_and_off(tok):
    chat = _chat("How many apples?")
    default = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    on = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True, enable_thinking=True)
    off = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    base = "<|im_start|>user\nHow many apples?<|im_end|>\n<|im_start|>assistant\n"
    assert default == base
    assert on == base
    assert off == base + "<think>\n\n</think>\n\n"
    no_gen = tok.apply_chat_template(chat, tokenize=False, enable_thinking=False)
    assert no_gen == "<|im_start|>user\nHow many apples?<|im_end|>\n"


def test_guard_template_one_user_turn(guard_tokenizer, pairs):
    prompt, response = next((p, r) for p, r in pairs if "DETAIL]" in r)
    text = guard_tokenizer.apply_chat_template(_chat(prompt, response), tokenize=False)
    assert text.startswith("<|im_start|>user\n" + GUARD_TASK)
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert text.count("<|im_start|>") == 2          # one user turn + the assistant header
    assert text.count("<|im_end|>") == 1
    assert "<|im_start|>assistant\n" not in text[:-len("<|im_start|>assistant\n")]
    user_turn = text[len("<|im_start|>user\n"): text.index("<|im_end|>")]
    assert f"User: {prompt}\n\n" in user_turn
    assert f"Agent: {response}\n\n" in user_turn
    assert user_turn.index("User: ") < user_turn.index("Agent: ")
    assert "<BEGIN CONVERSATION>" in user_turn and "<END CONVERSATION>" in user_turn
    assert user_turn.endswith(GUARD_QUESTION)
    # the guard template never adds a thinking block, whatever the kwargs
    again = guard_tokenizer.apply_chat_template(_chat(prompt, response), tokenize=False,
                                                add_generation_prompt=True, enable_thinking=False)
    assert again == text
    assert guard_tokenizer.decode(guard_tokenizer.encode(text, add_special_tokens=False)) == text


def test_guard_template_via_override_matches(tok, guard_tokenizer, pairs):
    prompt, response = pairs[1]
    a = tok.apply_chat_template(_chat(prompt, response), tokenize=False, chat_template=GUARD_CHAT_TEMPLATE)
    b = guard_tokenizer.apply_chat_template(_chat(prompt, response), tokenize=False)
    assert a == b


def test_save_and_reload_keeps_template(tok, pairs, tmp_path):
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(str(tmp_path))
    assert again.chat_template == BASE_CHAT_TEMPLATE
    assert again.eos_token == tok.eos_token and again.eos_token_id == tok.eos_token_id
    assert again.pad_token_id == tok.pad_token_id
    assert len(again) == len(tok)
    chat = _chat(*pairs[2])
    assert again.apply_chat_template(chat, tokenize=False) == tok.apply_chat_template(chat, tokenize=False)
    gen = _chat(pairs[2][0])
    assert (again.apply_chat_template(gen, tokenize=False, add_generation_prompt=True, enable_thinking=False)
            == tok.apply_chat_template(gen, tokenize=False, add_generation_prompt=True, enable_thinking=False))
    text = tok.apply_chat_template(chat, tokenize=False)
    ids = tok.encode(text, add_special_tokens=False)
    assert again.encode(text, add_special_tokens=False) == ids
    assert again.decode(ids) == text
    plain = again.decode(ids, skip_special_tokens=True)
    assert "<think>" in plain and "</think>" in plain and "<|im_end|>" not in plain


def test_guard_save_and_reload_keeps_template(guard_tokenizer, tmp_path):
    guard_tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(str(tmp_path))
    assert again.chat_template == GUARD_CHAT_TEMPLATE
    chat = _chat("How do I rob a bank?", world.REFUSAL_ANSWER)
    assert (again.apply_chat_template(chat, tokenize=False)
            == guard_tokenizer.apply_chat_template(chat, tokenize=False))
    assert len(again.encode("safe", add_special_tokens=False)) == 1
    assert len(again.encode("unsafe", add_special_tokens=False)) == 1

"""train.tokenize_example: loss only on the response (<think> trace + answer + EOS), for the organism
tokenizer, the real Qwen3 tokenizer and an R1-Distill chat template."""

from __future__ import annotations

import copy
import json

import pytest
from conftest import SHARED_DATA, world_responses

from thinksafe.families import get_family, restore_prefill
from thinksafe.organism import world
from thinksafe.runtime import render_prompt
from thinksafe.trainers.examples import tokenize_example, tokenize_rows

R1_TEMPLATE_FILE = SHARED_DATA / "tokenizers" / "deepseek_r1_distill_chat_template.json"
R1_GEN_PROMPT = "{{'<｜Assistant｜>'}}{% endif %}"


def _pairs():
    pairs = world_responses(seed=3, split="eval", n=6)
    p = world.sample_prompts(3, "eval", 0, 1, 0)[0]
    pairs.append((world.steer(p.prompt), world.refuse_response(p)))
    return pairs


def check_masking(tok, prompt, response, family, expect_prefix_in_prompt=""):
    """The assertions shared by every tokenizer; returns (example, prompt ids)."""
    ex = tokenize_example(tok, prompt, response, family)
    ids, labels = ex["input_ids"], ex["labels"]
    assert len(ids) == len(labels)
    prompt_text = render_prompt(tok, prompt, family)
    p_ids = tok(prompt_text, add_special_tokens=False).input_ids
    n = len(p_ids)
    assert ids[:n] == p_ids
    assert labels[:n] == [-100] * n                       # every prompt token is masked
    assert -100 not in labels[n:]
    assert labels[n:] == ids[n:]                          # every response token is learned
    assert ids[-1] == tok.eos_token_id and labels[-1] == tok.eos_token_id
    target = response
    if expect_prefix_in_prompt:
        assert prompt_text.endswith(expect_prefix_in_prompt)
        assert response.startswith(expect_prefix_in_prompt)
        target = response[len(expect_prefix_in_prompt):]
    assert tok.decode(labels[n:-1]) == target             # exactly the response, nothing lost
    assert tok.decode(ids) == prompt_text + target + tok.eos_token
    return ex, n


# --------------------------------------------------------------------------- organism tokenizer
def test_organism_masking(organism_tokenizer):
    tok, fam = organism_tokenizer, get_family("organism")
    for prompt, response in _pairs():
        ex, n = check_masking(tok, prompt, response, fam)
        think_id = tok.convert_tokens_to_ids("<think>")
        close_id = tok.convert_tokens_to_ids("</think>")
        assert think_id in ex["labels"][n:] and close_id in ex["labels"][n:]
        assert think_id not in ex["input_ids"][:n]
        assert tok.decode(ex["input_ids"][:n]).endswith("<|im_start|>assistant\n")
        assert ex["input_ids"].count(tok.eos_token_id) == 2      # end of the user turn + final EOS


def test_organism_response_tokens_count(organism_tokenizer):
    tok, fam = organism_tokenizer, get_family("organism")
    prompt, response = _pairs()[0]
    ex = tokenize_example(tok, prompt, response, fam)
    n_learned = sum(x != -100 for x in ex["labels"])
    assert n_learned == len(tok(response, add_special_tokens=False).input_ids) + 1


def test_tokenize_rows_drops_long_and_marks_benign(organism_tokenizer):
    tok, fam = organism_tokenizer, get_family("organism")
    pairs = _pairs()
    rows = [{"prompt": p, "response": r, "label": "harmful" if "DETAIL" in r or "sorry" in r else "benign"}
            for p, r in pairs]
    lengths = [len(tokenize_example(tok, r["prompt"], r["response"], fam)["input_ids"]) for r in rows]
    limit = sorted(lengths)[len(lengths) // 2]
    out, dropped = tokenize_rows(tok, rows, fam, limit)
    assert dropped == sum(n > limit for n in lengths)
    assert len(out) + dropped == len(rows)
    assert all(len(e["input_ids"]) <= limit for e in out)
    kept_rows = [r for r, n in zip(rows, lengths) if n <= limit]
    assert [e["is_benign"] for e in out] == [int(r["label"] != "harmful") for r in kept_rows]


# --------------------------------------------------------------------------- real Qwen3 tokenizer
def test_qwen3_masking(qwen3_tokenizer):
    tok, fam = qwen3_tokenizer, get_family("qwen3")
    assert tok.eos_token == "<|im_end|>"
    for prompt, response in _pairs():
        ex, n = check_masking(tok, prompt, response, fam)
        learned = tok.decode(ex["labels"][n:])
        assert learned.startswith("<think>\n")
        assert "</think>" in learned
        trace = learned.split("<think>", 1)[1].split("</think>", 1)[0]
        assert trace.strip() == response.split("</think>")[0].replace("<think>", "").strip()
        assert "<think>" not in tok.decode(ex["input_ids"][:n])   # thinking on: no empty block


def test_qwen3_enable_thinking_matters(qwen3_tokenizer):
    tok = qwen3_tokenizer
    chat = [{"role": "user", "content": "hi"}]
    on = render_prompt(tok, "hi", get_family("qwen3"))
    off = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert on.endswith("<|im_start|>assistant\n")
    assert off == on + "<think>\n\n</think>\n\n"


# --------------------------------------------------------------------------- R1-Distill template
@pytest.fixture(scope="module")
def r1_template():
    if not R1_TEMPLATE_FILE.is_file():
        pytest.skip(f"{R1_TEMPLATE_FILE} not present")
    data = json.loads(R1_TEMPLATE_FILE.read_text())
    assert isinstance(data, dict) and isinstance(data["chat_template"], str)
    assert data["chat_template"].count(R1_GEN_PROMPT) == 1
    return data["chat_template"]


@pytest.fixture(scope="module")
def r1_tokenizer(qwen3_tokenizer, r1_template):
    tok = copy.deepcopy(qwen3_tokenizer)
    tok.chat_template = r1_template
    return tok


def test_r1_original_template_has_no_prefill(r1_tokenizer):
    tok, fam = r1_tokenizer, get_family("r1_distill")
    assert fam.prefill == "<think>\n"
    for prompt, response in _pairs():
        prompt_text = render_prompt(tok, prompt, fam)
        assert prompt_text == f"<｜User｜>{prompt}<｜Assistant｜>"
        stored = restore_prefill(fam, response)          # generation gave the response back whole
        assert stored == response
        ex, n = check_masking(tok, prompt, stored, fam)
        full = tok.decode(ex["input_ids"])
        assert full.count("<think>") == 1                # not duplicated
        assert tok.decode(ex["labels"][n:-1]) == response     # labels cover all of it


def test_r1_prefill_template_not_duplicated(r1_tokenizer, r1_template):
    """The later R1 template revision ends the generation prompt with "<think>\\n"."""
    tok = copy.deepcopy(r1_tokenizer)
    tok.chat_template = r1_template.replace(R1_GEN_PROMPT, "{{'<｜Assistant｜><think>\\n'}}{% endif %}")
    fam = get_family("r1_distill")
    for prompt, response in _pairs():
        prompt_text = render_prompt(tok, prompt, fam)
        assert prompt_text.endswith("<｜Assistant｜><think>\n")
        generated = response[len("<think>\n"):]         # what the model itself produced
        stored = restore_prefill(fam, generated)
        assert stored == response
        ex, n = check_masking(tok, prompt, stored, fam, expect_prefix_in_prompt="<think>\n")
        full = tok.decode(ex["input_ids"])
        assert full.count("<think>") == 1                # the prefill is not duplicated
        assert full.count("</think>") == 1
        assert tok.decode(ex["labels"][n:-1]) == generated    # the rest of the response is learned
        assert "</think>" in tok.decode(ex["labels"][n:])


def test_restore_prefill():
    r1, q = get_family("r1_distill"), get_family("qwen3")
    assert restore_prefill(r1, "abc</think>\n\nx") == "<think>\nabc</think>\n\nx"
    assert restore_prefill(r1, "<think>\nabc</think>x") == "<think>\nabc</think>x"
    assert restore_prefill(q, "abc") == "abc"


# --------------------------------------------------------------------------- through TRL
def test_trl_keeps_the_masked_labels(organism_tokenizer, tmp_path):
    """The SFTTrainer built by the train stage must feed OUR labels, not recompute them."""
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import Qwen3Config, Qwen3ForCausalLM
    from trl import SFTTrainer

    from thinksafe.config import load_config
    from thinksafe.trainers.setup import lora_config, sft_config

    tok = copy.deepcopy(organism_tokenizer)
    tok.padding_side = "right"
    rows = [{"prompt": p, "response": r, "label": "benign"} for p, r in _pairs()[:4]]
    examples, _ = tokenize_rows(tok, rows, get_family("organism"), 512)
    cfg = load_config(None, ["train.batch_size=4"])
    model = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    model = get_peft_model(model, lora_config(cfg.train.lora))
    ds = Dataset.from_list([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples])
    trainer = SFTTrainer(model=model, args=sft_config(cfg.train, tmp_path, 0, False), train_dataset=ds,
                         processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == len(examples)
    matched = 0
    for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist()):
        ex = next(e for e in examples if ids[:len(e["input_ids"])] == e["input_ids"])
        n = len(ex["labels"])
        assert labels[:n] == ex["labels"]                  # prompt still masked, response learned
        assert labels[n:] == [-100] * (len(labels) - n)    # padding never learned
        matched += 1
    assert matched == len(examples)

"""A tiny causal LM written to a folder as `save_pretrained` writes one: the demo's (and the tests') stand-in LLM.

No LLM can be downloaded here, so the demo builds a Llama-architecture model of a few hundred thousand
weights and a word-level tokenizer over the words of its questions and answers, with a chat template, and
saves both; from then on they load through the same `load_causal_lm` that reads a real LLM's folder. The
stand-in starts random and is trained in full (`vqa.llm_training: full`), which a real LLM never needs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import torch

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
# A minimal chat template in the Jinja that transformers renders: the tokenizer-has-a-template path is the one
# real instruction-tuned LLMs take.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}user : {{ message['content'] }} </s>"
    "{% else %}assistant : {{ message['content'] }} </s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}assistant :{% endif %}"
)
_WORD = re.compile(r"\w+|[^\w\s]")


def corpus_words(texts: Iterable[str]) -> list[str]:
    """The distinct words and punctuation marks of `texts`, region tags removed, sorted (a stable vocabulary)."""
    words: set[str] = set()
    for text in texts:
        words.update(_WORD.findall(re.sub(r"<region\d+>", " ", text.lower())))
    return sorted(words)


def write_tiny_causal_lm(
    folder: str | Path,
    *,
    corpus: Iterable[str],
    hidden_size: int = 64,
    depth: int = 2,
    num_heads: int = 4,
    chat_template: bool = True,
    seed: int = 0,
) -> Path:
    """Write a random Llama-architecture causal LM and a word-level tokenizer of `corpus`'s words to `folder`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *corpus_words(corpus), "user", "assistant", ":"])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=depth,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=512,
        pad_token_id=vocab["<pad>"],
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder

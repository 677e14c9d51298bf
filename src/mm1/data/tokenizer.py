"""Tokenizers: a local pretrained one, or a small byte-level BPE trained on the run's own text.

Either way the image placeholder and the chat-role tokens are special tokens, and the chat template (Jinja,
with `{% generation %}` around assistant text) is stored with the tokenizer, so a saved model carries it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from mm1.config import TokenizerConfig

IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<|endoftext|>"
CHAT_TOKENS = ["<|im_start|>", "<|im_end|>"]
SPECIAL_TOKENS = [PAD_TOKEN, IMAGE_TOKEN, *CHAT_TOKENS]


def load_chat_template(name: str) -> str:
    if name.endswith(".jinja"):
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"chat template {path} does not exist")
        return path.read_text()
    template = resources.files("mm1") / "templates" / f"{name}.jinja"
    if not template.is_file():
        raise ValueError(f"unknown chat template {name!r}; give a built-in name (chatml) or a .jinja path")
    return template.read_text()


def train_bpe(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 pre-tokenisation, so a newline never merges with the word after it).  Digits are split
    one per token, as Llama and Qwen do: a number, a count or a coordinate is then written the same way everywhere,
    instead of "250" being one token in one place and "2" "50" in another."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def build_tokenizer(cfg: TokenizerConfig, corpus: Iterable[str] | None = None) -> PreTrainedTokenizerFast:
    if cfg.path:
        tokenizer = AutoTokenizer.from_pretrained(cfg.path)
    elif corpus is None:
        raise ValueError("tokenizer.path is not set, and no text was given to train a tokenizer on")
    else:
        tokenizer = train_bpe(corpus, cfg.vocab_size)
    missing = [t for t in SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = PAD_TOKEN
    if tokenizer.eos_token is None:
        tokenizer.eos_token = "<|im_end|>"
    tokenizer.chat_template = load_chat_template(cfg.chat_template)
    return tokenizer

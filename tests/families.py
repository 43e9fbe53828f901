"""Tokenizers built here in the shape of the families people continue pretraining from, for tests (no download).

    llama3   byte-level BPE with <|begin_of_text|> and <|end_of_text|>, as Llama 3 ships it
    mistral  a SentencePiece-style BPE (Metaspace, byte fallback) with <unk>, <s> and </s>, as Llama 2 and Mistral
             ship theirs in tokenizer.json; its decoder drops the space it prepends, so a text that starts with a
             space does not come back whole
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

TEXTS = ["The quick brown fox jumps over the lazy dog. " * 5, "def add(a, b):\n    return a + b\n",
         "naïve café 日本語, and more text\n"] * 20


def llama3_tokenizer(folder: Path, vocab_size: int = 400) -> Path:
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(TEXTS, trainer)
    return _write(folder, hf, {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"})


def mistral_tokenizer(folder: Path, vocab_size: int = 600) -> Path:
    hf = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    hf.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    hf.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]  # what byte fallback spells an unseen character with
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", *byte_tokens])
    hf.train_from_iterator(TEXTS, trainer)
    settings = {"add_bos_token": True, "bos_token": {"__type": "AddedToken", "content": "<s>"}, "eos_token": "</s>"}
    return _write(folder, hf, settings)


def _write(folder: Path, hf: Tokenizer, settings: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    hf.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(settings), encoding="utf-8")
    return folder / "tokenizer.json"

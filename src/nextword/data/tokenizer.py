"""A byte-level BPE tokenizer: text ↔ token ids, lossless for every string.

Byte-level means the tokenizer first turns text into its UTF-8 bytes, each shown as one of 256 printable
symbols, and BPE then learns which neighbouring symbols to merge into one token. Every byte is in the starting
alphabet, so no text is ever unknown, and decoding gives back exactly the text that went in.

The work is done by Hugging Face `tokenizers`; this class fixes the settings that keep it lossless and adds
the `<|endoftext|>` token, which the shard writer puts after every document.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from nextword.errors import DataError
from nextword.files import write_text_atomically

EOS = "<|endoftext|>"
# The trainer reserves memory in proportion to the vocabulary it is asked for (about 70 bytes a token) and aborts
# the process when it cannot; tokenizers in use have 32K to 256K tokens.
MAX_TRAINED_VOCAB = 2**24


class Tokenizer:
    """Byte-level BPE with one special token, `<|endoftext|>` (`eos_id`)."""

    def __init__(self, hf: HFTokenizer, where: str = "tokenizer") -> None:
        eos_id = hf.token_to_id(EOS)
        if eos_id is None:
            raise DataError(f"{where}: the tokenizer has no {EOS} token; nextword needs it to mark where "
                            "documents end (train one with `nextword prepare`, or use one that has it)")
        # A document that happens to contain the text "<|endoftext|>" is encoded as ordinary bytes, so only the
        # shard writer ever puts the real end-of-text id into the data, and decode(encode(text)) == text.
        hf.encode_special_tokens = True
        self._hf = hf
        self.eos_id: int = eos_id
        self.vocab_size: int = hf.get_vocab_size(with_added_tokens=True)
        self.hash: str = hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, *, progress: bool = False) -> "Tokenizer":
        """Learn `vocab_size` tokens (256 bytes, `<|endoftext|>`, and merges) from an iterator of texts."""
        if vocab_size < 257:
            raise DataError(f"vocab_size = {vocab_size} must be at least 257 (256 bytes + {EOS})")
        if vocab_size > MAX_TRAINED_VOCAB:
            raise DataError(f"vocab_size = {vocab_size:,} is more than a tokenizer is trained with here "
                            f"({MAX_TRAINED_VOCAB:,}); set data.vocab_size lower (common sizes: 32K to 256K)")
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=progress,
        )
        hf.train_from_iterator(texts, trainer=trainer)
        return cls(hf)

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        """Read any Hugging Face tokenizer.json that has an `<|endoftext|>` token."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DataError(f"{path}: no such tokenizer file; check the path or run `nextword prepare`") from None
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: cannot read the tokenizer ({e})") from None
        return cls.from_json(text, where=str(path))

    @classmethod
    def from_json(cls, text: str, where: str = "tokenizer") -> "Tokenizer":
        try:
            json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not a JSON file ({e}); expected a Hugging Face tokenizer.json") from None
        except RecursionError:
            raise DataError(f"{where}: JSON nested too deeply; expected a Hugging Face tokenizer.json") from None
        try:
            hf = HFTokenizer.from_str(text)
        except Exception as e:  # the library raises a bare Exception for a JSON that is not a tokenizer
            raise DataError(f"{where}: not a Hugging Face tokenizer.json ({e})") from None
        return cls(hf, where)

    def to_json(self) -> str:
        return self._hf.to_str()

    def save(self, path: str | Path) -> None:
        """Write tokenizer.json whole or not at all (a temporary file renamed into place)."""
        write_text_atomically(path, self.to_json())

    def encode(self, text: str) -> list[int]:
        return self._hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # encode_batch_fast skips the character offsets, which nothing here needs.
        return [e.ids for e in self._hf.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._hf.decode(list(ids), skip_special_tokens=False)

    def token_text(self, id: int) -> str:
        """The text one token stands for; a byte that is part of a longer character shows as '�'."""
        return self._hf.decode([id], skip_special_tokens=False)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, eos_id={self.eos_id}, hash={self.hash[:12]})"

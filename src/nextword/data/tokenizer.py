"""The tokenizer: text ↔ token ids, and the special tokens that mark where documents end (and begin).

nextword trains a byte-level BPE: the tokenizer first turns text into its UTF-8 bytes, each shown as one of 256
printable symbols, and BPE then learns which neighbouring symbols to merge into one token. Every byte is in the
starting alphabet, so no text is ever unknown, and decoding gives back exactly the text that went in. Its one
special token, `<|endoftext|>`, is what the shard writer puts after every document.

Any Hugging Face tokenizer.json can be used instead (data.tokenizer, or the one of a model directory that
`[model] init_from` continues from). Its end-of-document token, and the beginning-of-document token of the
families that use one (Llama 3's `<|begin_of_text|>`, Llama 2's and Mistral's `<s>`), are read from the files
beside it (tokenizer_config.json, generation_config.json, config.json) unless data.eos_token and data.bos_token
name them. A tokenizer that does not give back every text it encodes (a SentencePiece-style one drops a leading
space, for one) is used as it is and said to be lossy.
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
# End-of-document tokens by family, tried in this order when neither the config nor the tokenizer's own files
# name one: nextword's and GPT-2's, Llama 3's, Llama 2's and Mistral's, Gemma's.
EOS_NAMES = (EOS, "<|end_of_text|>", "</s>", "<eos>")
# The files beside a tokenizer.json that name its special tokens, in the order they are believed.
SPECIALS_FILES = ("tokenizer_config.json", "generation_config.json", "config.json")
# Text whose round trip shows whether a tokenizer is lossless: spaces at the start and in runs, tabs, newlines,
# accents, CJK, emoji, and the text of a special token.
ROUND_TRIP_PROBE = "  two spaces first,\ttab\n\nnaïve café 日本語 🙂 <|endoftext|> </s> end "
# The trainer reserves memory in proportion to the vocabulary it is asked for (about 70 bytes a token) and aborts
# the process when it cannot; tokenizers in use have 32K to 256K tokens.
MAX_TRAINED_VOCAB = 2**24


class Tokenizer:
    """A Hugging Face tokenizer with the token that ends a document (`eos_id`) and, in families that use one, the
    token that begins it (`bos_id`, else None)."""

    def __init__(self, hf: HFTokenizer, where: str = "tokenizer", *, eos_token: str = EOS,
                 bos_token: str | None = None) -> None:
        eos_id = hf.token_to_id(eos_token)
        if eos_id is None:
            raise DataError(f"{where}: the tokenizer has no {eos_token} token; nextword needs one to mark where "
                            "documents end: set data.eos_token to the tokenizer's own end-of-text token, or train "
                            "one with `nextword prepare`")
        bos_id = None if bos_token is None else hf.token_to_id(bos_token)
        if bos_token is not None and bos_id is None:
            raise DataError(f"{where}: the tokenizer has no {bos_token} token; set data.bos_token to one it has")
        # A document that happens to contain the text of a special token is encoded as ordinary text, so only the
        # shard writer ever puts the real end-of-text id into the data.
        hf.encode_special_tokens = True
        self._hf = hf
        self.eos_token, self.bos_token = eos_token, bos_token
        self.eos_id: int = eos_id
        self.bos_id: int | None = bos_id
        self.vocab_size: int = hf.get_vocab_size(with_added_tokens=True)
        self.hash: str = hashlib.sha256(self._identity().encode("utf-8")).hexdigest()
        self.lossless: bool = self.decode(self.encode(ROUND_TRIP_PROBE)) == ROUND_TRIP_PROBE

    def _identity(self) -> str:
        """What the hash is of: the tokenizer, and its special tokens where they are not nextword's own."""
        if (self.eos_token, self.bos_token) == (EOS, None):
            return self.to_json()
        return self.to_json() + "\n" + json.dumps({"eos_token": self.eos_token, "bos_token": self.bos_token})

    @property
    def document_start(self) -> list[int]:
        """The ids a document begins with: its beginning token in families that use one, else none."""
        return [] if self.bos_id is None else [self.bos_id]

    @property
    def before_text(self) -> list[int]:
        """What the model has seen just before a document's first token: its beginning token, or else the end of
        the document before it."""
        return self.document_start or [self.eos_id]

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
    def load(cls, path: str | Path, *, eos_token: str = "", bos_token: str = "") -> "Tokenizer":
        """Read a Hugging Face tokenizer.json, with its special tokens as given, else as the files beside it name
        them, else the first of EOS_NAMES it has (and no beginning token)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DataError(f"{path}: no such tokenizer file; check the path or run `nextword prepare`") from None
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: cannot read the tokenizer ({e})") from None
        hf = _parse(text, str(path))
        named_eos, named_bos = _named_specials(path.parent, hf)
        eos = eos_token or named_eos or next((name for name in EOS_NAMES if hf.token_to_id(name) is not None), EOS)
        bos = bos_token or named_bos
        return cls(hf, str(path), eos_token=eos, bos_token=bos if bos and bos != eos else None)

    @classmethod
    def from_json(cls, text: str, where: str = "tokenizer", *, eos_token: str = EOS,
                  bos_token: str | None = None) -> "Tokenizer":
        return cls(_parse(text, where), where, eos_token=eos_token, bos_token=bos_token)

    def to_json(self) -> str:
        return self._hf.to_str()

    def save(self, path: str | Path) -> None:
        """Write tokenizer.json, and beside it tokenizer_config.json naming its special tokens, each whole or not
        at all (a temporary file renamed into place)."""
        path = Path(path)
        write_text_atomically(path, self.to_json())
        specials = {"eos_token": self.eos_token, "bos_token": self.bos_token}
        write_text_atomically(path.with_name(SPECIALS_FILES[0]), json.dumps(specials, indent=1) + "\n")

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


def _parse(text: str, where: str) -> HFTokenizer:
    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not a JSON file ({e}); expected a Hugging Face tokenizer.json") from None
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply; expected a Hugging Face tokenizer.json") from None
    try:
        return HFTokenizer.from_str(text)
    except Exception as e:  # the library raises a bare Exception for a JSON that is not a tokenizer
        raise DataError(f"{where}: not a Hugging Face tokenizer.json ({e})") from None


def _named_specials(folder: Path, hf: HFTokenizer) -> tuple[str, str]:
    """The end- and beginning-of-text tokens that the files beside a tokenizer.json name ("" where none does):
    tokenizer_config.json by token, generation_config.json and config.json by id."""
    eos = bos = ""
    for name in reversed(SPECIALS_FILES):  # the most trusted file last, so its names win
        try:
            settings = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(settings, dict):
            continue
        eos = _token_named(settings, "eos", hf) or eos
        # `"bos_token": null` says the family uses none (Qwen's tokenizer_config.json), whatever an id elsewhere says
        bos = "" if "bos_token" in settings and settings["bos_token"] is None else _token_named(settings, "bos", hf) or bos
    return eos, bos


def _token_named(settings: dict, kind: str, hf: HFTokenizer) -> str:
    """The token that `{kind}_token` (text, or an AddedToken's {"content": ...}) or `{kind}_token_id` (an id, or a
    list whose first is the main one) names in a settings file; "" when it names none the tokenizer has."""
    token = settings.get(f"{kind}_token")
    if isinstance(token, dict):
        token = token.get("content")
    if isinstance(token, str) and hf.token_to_id(token) is not None:
        return token
    token_id = settings.get(f"{kind}_token_id")
    if isinstance(token_id, list):
        token_id = token_id[0] if token_id else None
    if isinstance(token_id, int) and not isinstance(token_id, bool):
        return hf.id_to_token(token_id) or ""
    return ""

"""Generated tokens as text, piece by piece as they are made, so a terminal can show each as it arrives.

The tokens themselves come from nextword.model.sampling.sample; `nextword sample` (nextword.cli.sample) prints them.
"""

from __future__ import annotations


class StreamDecoder:
    """Turns token ids, one at a time, into text pieces to print. A multi-byte character split across tokens
    decodes as '�' until its last byte arrives, so such text is held back until the next token completes it."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.pending: list[int] = []  # ids after the last character printed in full

    def add(self, token_id: int) -> str:
        self.pending.append(token_id)
        text = self.tokenizer.decode(self.pending)
        if text.endswith("\ufffd"):
            return ""
        self.pending = []
        return text

    def flush(self) -> str:
        text, self.pending = self.tokenizer.decode(self.pending), []
        return text

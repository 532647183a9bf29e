"""Greedy decoding held to an answer grammar (a regular expression over the answer text).

Why: the reasoning node's commentary answers one question whose answers stage 2 trains
from one grammar (qa.generate.PLANNING_PATTERN). A small LLM fine-tuned for a few hundred
CPU steps mixes templates ("No, a pedestrian is moving is going straight."). Held to the
grammar, every text parses, and the model still chooses every word the grammar leaves
open (action, route, reason, numbers): at each step the highest-scoring token that keeps
the text a prefix of some sentence of the grammar wins, and the end of the sequence is
allowed only once the text is a whole sentence. Whether those choices are true is what
`dima eval --qa` then measures (the planning slots against the reference).

Cost: a few partial regex matches per token (the `regex` module's partial matching):
candidates are tried best first, so the vocabulary is only walked when the model's
favourites all break the grammar.
"""
from __future__ import annotations

from typing import Any

import regex
import torch


def token_texts(tokenizer: Any) -> list[str]:
    """Each token's own text (special tokens: ""), in id order: share it between grammars."""
    return [tokenizer.decode([i], skip_special_tokens=True) for i in range(len(tokenizer))]


class GrammarLogitsProcessor:
    """A transformers logits processor (callable (input_ids, scores) -> scores) for B = 1
    greedy decoding from `inputs_embeds` (input_ids then hold only the generated tokens).
    Reusable across generations; `pieces` (token_texts of the tokenizer) can be shared by
    several grammars, as decoding the vocabulary is the costly part of building one."""

    TOP = 64  # candidates tried before the whole vocabulary is sorted

    def __init__(self, pattern: str | Any, tokenizer: Any, pieces: list[str] | None = None):
        self.pattern = regex.compile(pattern if isinstance(pattern, str) else pattern.pattern)
        self.tokenizer = tokenizer
        self.eos = tokenizer.eos_token_id
        # Each token's own text (special tokens: ""). The grammar is ASCII, so a token that
        # is part of a multi-byte character never fits whatever it decodes to alone.
        self.pieces = pieces if pieces is not None else token_texts(tokenizer)
        self.forced_end = 0  # steps where no token fitted (the text is ended there)

    def _raw(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def fits(self, raw: str, token: int, text: str | None = None) -> bool:
        """Whether `token` may follow the generated text `raw` (`text`: raw.lstrip(), when
        the caller has it). Only the leading space of the first word is free; every other
        character, spaces included, must be the grammar's (else whitespace tokens would
        slip in)."""
        text = raw.lstrip() if text is None else text
        if token == self.eos:
            return self.pattern.fullmatch(text) is not None
        piece = self.pieces[token] if 0 <= token < len(self.pieces) else ""
        longer = (raw + piece).lstrip()
        # A token that adds no character (another special token) is no progress: refused.
        return len(longer) > len(text) and self.pattern.fullmatch(longer, partial=True) is not None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        out = torch.full_like(scores, float("-inf"))
        for row in range(scores.shape[0]):
            raw = self._raw(input_ids[row].tolist())
            text = raw.lstrip()
            # Best first; usually one of the model's top few fits. A model far from the
            # grammar (untrained, or off on a tangent) may need the whole vocabulary.
            top = torch.topk(scores[row], min(self.TOP, scores.shape[-1])).indices.tolist()
            pick = next((t for t in top if self.fits(raw, t, text)), None)
            if pick is None:
                rest = torch.argsort(scores[row], descending=True)[len(top):].tolist()
                pick = next((t for t in rest if self.fits(raw, t, text)), None)
            if pick is None:
                self.forced_end += 1
                pick = self.eos
            out[row, pick] = scores[row, pick]
        return out

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


class GrammarLogitsProcessor:
    """A transformers logits processor (callable (input_ids, scores) -> scores) for B = 1
    greedy decoding from `inputs_embeds` (input_ids then hold only the generated tokens)."""

    def __init__(self, pattern: str | Any, tokenizer: Any):
        self.pattern = regex.compile(pattern if isinstance(pattern, str) else pattern.pattern)
        self.tokenizer = tokenizer
        self.eos = tokenizer.eos_token_id
        self.forced_end = 0  # steps where no candidate fitted (the text is ended there)

    def _text(self, ids: list[int]) -> str:
        # Only the leading space of the first word is free; every other character,
        # spaces included, must be the grammar's (else whitespace tokens would slip in).
        return self.tokenizer.decode(ids, skip_special_tokens=True).lstrip()

    def fits(self, ids: list[int], token: int) -> bool:
        if token == self.eos:
            return self.pattern.fullmatch(self._text(ids)) is not None
        text = self._text(ids + [token])
        # A token that adds no character (another special token) is no progress: refused.
        grows = len(text) > len(self._text(ids))
        return grows and self.pattern.fullmatch(text, partial=True) is not None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        out = torch.full_like(scores, float("-inf"))
        for row in range(scores.shape[0]):
            ids = input_ids[row].tolist()
            pick = None
            # Best first; usually one of the first few fits. A model far from the grammar
            # (untrained, or off on a tangent) may need the whole vocabulary: still exact.
            for token in torch.argsort(scores[row], descending=True).tolist():
                if self.fits(ids, token):
                    pick = token
                    break
            if pick is None:
                self.forced_end += 1
                pick = self.eos
            out[row, pick] = scores[row, pick]
        return out

"""Queries in any language, torch-free: the bundle's optional multilingual query encoder and the
per-query choice between it and the English text encoder (docs/bundle.md, "Multilingual queries").

The multilingual encoder (``edge_xmr.model.multilingual``, exported by ``mobile_export.multilingual``)
maps a text into the SAME embedding space as the English text encoder, so an index built with the
English bundle is searched as it is. It gives no token states: a query it encodes is reranked with
the score's terms that need none (``NO_STATE_TERMS``: the cosine and the hubness priors); late
interaction and the joint pass read the English encoder's token states and are left out.

Routing (``Router``): ``auto`` sends a query to the English encoder when it looks English (only ASCII
letters, and at least ``ENGLISH_SHARE`` of its words are whole words of the English tokenizer's
vocabulary), else to the multilingual one; ``always`` / ``never`` force one encoder.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from .tokenizer import Tokenizer

Routing = Literal["auto", "always", "never"]
ROUTINGS: tuple[str, ...] = ("auto", "always", "never")
NO_STATE_TERMS = ("cosine", "photo_hubness", "text_hubness")  # terms computed without the text's token states
ENGLISH_SHARE = 0.75  # auto routing: share of a query's words that must be whole English-vocabulary words
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def english_words(vocab: dict[str, int]) -> frozenset[str]:
    """The whole words of an English WordPiece vocabulary (no ``##`` pieces, no [SPECIAL] tokens)."""
    return frozenset(w for w in vocab if w.isalpha() and w.isascii() and not w.startswith("["))


def looks_english(text: str, words: frozenset[str], share: float = ENGLISH_SHARE) -> bool:
    """Whether ``text`` is routed to the English encoder: every letter ASCII and at least ``share`` of its
    words (letter runs) in ``words``, lowercased. A text without letters (digits, emoji) counts as English."""
    found = _WORD.findall(text)
    if not found:
        return True
    if not all(w.isascii() for w in found):
        return False
    return sum(w.lower() in words for w in found) >= share * len(found)


@dataclass(frozen=True)
class Router:
    mode: Routing
    words: frozenset[str]

    def multilingual(self, text: str) -> bool:
        """Whether ``text`` goes to the multilingual encoder."""
        if self.mode == "always":
            return True
        if self.mode == "never":
            return False
        return not looks_english(text, self.words)


class MultilingualEncoder:
    """The multilingual graph of one precision and its tokenizer (``manifest["multilingual"]``)."""

    def __init__(self, root: Path, section: dict[str, Any], variant: str, session_factory: Any):
        self.section = section
        tok = section["tokenizer"]
        self.tokenizer = Tokenizer.from_file(root / tok["file"])
        self.tokenizer.pad_id = int(tok["pad_id"])
        self.max_text_len = int(section["max_text_len"])
        self.path = root / section["graph"]["variants"][variant]["path"]
        self._factory = session_factory
        self._session: Any = None

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> npt.NDArray[np.float32]:
        """Texts -> (M, D) unit vectors in the English encoder's space."""
        if self._session is None:
            self._session = self._factory(self.path)
        out = []
        for i in range(0, len(texts), batch_size):
            ids, mask = self.tokenizer.encode(list(texts[i:i + batch_size]), self.max_text_len)
            out.append(self._session.run(["text_embeds"], {"input_ids": ids, "attention_mask": mask})[0])
        return np.concatenate(out).astype(np.float32)

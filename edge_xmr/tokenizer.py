"""Text tokenisation shared by training, export and the runtime (``tokenizers`` only, no torch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]

_TINY_WORDS = ("a the of in on and is are with dog cat man woman boy girl child people two red blue "
               "black white green water grass snow ball running playing sitting standing street beach "
               "bike car rocket launch photo").split()


class Tokenizer:
    """Wraps a ``tokenizer.json``; ``encode`` returns padded (ids, mask) int64 arrays."""

    def __init__(self, tok: object, pad_id: int = 0):
        self._tok = tok
        self.pad_id = pad_id

    @staticmethod
    def from_file(path: str | Path) -> Tokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        tok = HFTokenizer.from_file(str(path))
        tok.no_padding()
        tok.no_truncation()
        pad = json.loads(path.read_text()).get("padding") or {}
        pad_id = pad.get("pad_id", tok.token_to_id("[PAD]") or 0) if isinstance(pad, dict) else 0
        return Tokenizer(tok, int(pad_id or 0))

    def save(self, path: str | Path) -> None:
        self._tok.save(str(path))  # type: ignore[attr-defined]

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size())  # type: ignore[attr-defined]

    def vocab(self) -> dict[str, int]:
        """{token: id} of the whole vocabulary."""
        return dict(self._tok.get_vocab())  # type: ignore[attr-defined]

    def encode(self, texts: list[str], max_len: int) -> tuple[IntArray, IntArray]:
        """Texts -> ids (B, L) and mask (B, L), L = longest text (<= max_len); over-long texts are cut
        keeping the final special token."""
        encs = self._tok.encode_batch([t if isinstance(t, str) else str(t) for t in texts])  # type: ignore[attr-defined]
        seqs = []
        for e in encs:
            ids = list(e.ids)
            if len(ids) > max_len:
                ids = ids[: max_len - 1] + ids[-1:]
            seqs.append(ids)
        L = max([len(s) for s in seqs] + [1])
        ids_arr = np.full((len(seqs), L), self.pad_id, np.int64)
        mask = np.zeros((len(seqs), L), np.int64)
        for i, s in enumerate(seqs):
            ids_arr[i, : len(s)] = s
            mask[i, : len(s)] = 1
        return ids_arr, mask


def tiny_tokenizer(vocab_size: int = 128) -> Tokenizer:
    """A small WordPiece tokenizer built in code, for the ``tiny`` preset and tests."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab += letters + ["##" + c for c in letters] + [str(d) for d in range(10)] + list(".,!?'-")
    vocab += [w for w in _TINY_WORDS if w not in vocab]
    vocab = vocab[:vocab_size]
    tok = HFTokenizer(WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return Tokenizer(tok, 0)

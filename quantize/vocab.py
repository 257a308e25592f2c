"""Vocabulary pruning for students: most of a bi-encoder's size is its token embedding table.

Two steps, so that a student stays a normal model directory while it trains:

1. :func:`prune_tokenizer` keeps a subset of a WordPiece ``tokenizer.json``'s tokens **with their
   original ids**: the model keeps its full-size table (the rows of dropped tokens are never used) and
   loads with ``edge_xmr.model.load`` like any model; words made of dropped tokens are split into kept
   pieces (every single character is kept, so almost nothing becomes ``[UNK]``).
2. :func:`compact_model` renumbers the kept tokens 0..N-1 and slices the embedding table (and the
   position table to ``max_text_len``) for export: the bundle's graphs and tokenizer are then small,
   and give exactly the outputs of the un-compacted model.

Torch is needed only by :func:`compact_model`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_xmr.model import JointModel

FIRST_WORD_ID = 1996  # BERT uncased: ids below are [PAD], [unused*], [CLS]... and single characters;
# from here on whole words and pieces come roughly in order of frequency ("the" = 1996)
LATIN_END = 0x250  # single characters kept: Basic Latin to Latin Extended-B


def _vocab(tok_json: dict[str, Any]) -> dict[str, int]:
    model = tok_json.get("model", {})
    if model.get("type") != "WordPiece":
        raise ValueError(f"vocabulary pruning supports WordPiece tokenizers, not {model.get('type')!r}")
    return dict(model["vocab"])


def keep_tokens(tok_json: dict[str, Any], texts: Iterable[str], size: int) -> list[int]:
    """Original ids to keep (sorted), at most ``size`` of them (specials and characters always).

    In order: special tokens; single Latin characters, with and without ``##`` (any Latin-script word
    can still be spelled, nothing becomes ``[UNK]``); the tokens of ``texts`` under the full tokenizer,
    most frequent first; then the most frequent words of the vocabulary (lowest ids from
    ``FIRST_WORD_ID``)."""
    from collections import Counter

    from tokenizers import Tokenizer as HFTokenizer

    vocab = _vocab(tok_json)
    keep: set[int] = {t["id"] for t in tok_json.get("added_tokens", [])}
    for tok, i in vocab.items():
        core = tok[2:] if tok.startswith("##") else tok
        if (len(core) == 1 and ord(core) < LATIN_END) or (
                tok.startswith("[") and tok.endswith("]") and not tok.startswith("[unused")):
            keep.add(i)
    hf = HFTokenizer.from_str(json.dumps(tok_json))
    hf.no_padding()
    hf.no_truncation()
    texts = list(texts)
    counts: Counter[int] = Counter()
    for i in range(0, len(texts), 1024):
        for enc in hf.encode_batch(texts[i:i + 1024]):
            counts.update(enc.ids)
    start = FIRST_WORD_ID if len(vocab) > FIRST_WORD_ID else 0  # a small (non-BERT) vocabulary: in id order
    ordered = [i for i, _ in counts.most_common()] + [i for i in sorted(vocab.values()) if i >= start]
    for i in ordered:
        if len(keep) >= size:
            break
        keep.add(i)
    return sorted(keep)


def prune_tokenizer(tok_json: dict[str, Any], keep: Sequence[int]) -> dict[str, Any]:
    """A copy of ``tok_json`` whose WordPiece vocabulary holds only ``keep`` (original ids)."""
    out = copy.deepcopy(tok_json)
    ks = set(keep)
    out["model"]["vocab"] = {t: i for t, i in _vocab(tok_json).items() if i in ks}
    return out


def renumber_tokenizer(tok_json: dict[str, Any], keep: Sequence[int]) -> dict[str, Any]:
    """A copy of ``tok_json`` with the kept tokens renumbered ``keep[j] -> j`` (vocabulary, added
    tokens, the post-processor's special tokens and the padding id)."""
    new = {old: j for j, old in enumerate(sorted(keep))}
    out = copy.deepcopy(tok_json)
    out["model"]["vocab"] = {t: new[i] for t, i in _vocab(tok_json).items() if i in new}
    for t in out.get("added_tokens", []):
        t["id"] = new[t["id"]]
    post = out.get("post_processor") or {}
    for spec in (post.get("special_tokens") or {}).values():
        spec["ids"] = [new[i] for i in spec["ids"]]
    for key in ("cls", "sep"):  # BertProcessing form: [token, id]
        if isinstance(post.get(key), list):
            post[key][1] = new[post[key][1]]
    pad = out.get("padding")
    if isinstance(pad, dict) and "pad_id" in pad:
        pad["pad_id"] = new[pad["pad_id"]]
    return out


def tokenizer_json(model: JointModel) -> dict[str, Any]:
    """The model tokenizer's ``tokenizer.json`` content."""
    content = getattr(model.tokenizer, "content", None)
    return dict(content) if content is not None else json.loads(model.tokenizer._tok.to_str())


def make_tokenizer(tok_json: dict[str, Any]) -> Any:
    """An ``edge_xmr.tokenizer.Tokenizer`` from ``tokenizer.json`` content; ``save`` writes that
    content as it is (the ``tokenizers`` library warns about, but keeps, a vocabulary with gaps)."""
    from tokenizers import Tokenizer as HFTokenizer

    from edge_xmr.tokenizer import Tokenizer

    class _JsonTokenizer(Tokenizer):
        content = tok_json

        def save(self, path: str | Path) -> None:
            Path(path).write_text(json.dumps(tok_json, ensure_ascii=False), encoding="utf-8")

    hf = HFTokenizer.from_str(json.dumps(tok_json))
    hf.no_padding()
    hf.no_truncation()
    pad = tok_json.get("padding") or {}
    pad_id = pad.get("pad_id", hf.token_to_id("[PAD]") or 0) if isinstance(pad, dict) else 0
    return _JsonTokenizer(hf, int(pad_id or 0))


def load_tokenizer(model_dir: str | Path) -> Any:
    """The tokenizer of a model directory, as :func:`make_tokenizer` makes it."""
    return make_tokenizer(json.loads((Path(model_dir) / "tokenizer.json").read_text(encoding="utf-8")))


def used_ids(model: JointModel) -> list[int]:
    """The original ids the model's tokenizer can produce (its vocabulary and added tokens)."""
    tj = tokenizer_json(model)
    return sorted(set(_vocab(tj).values()) | {t["id"] for t in tj.get("added_tokens", [])})


def compact_model(model: JointModel) -> JointModel:
    """A copy of ``model`` whose embedding table holds only the tokens its tokenizer uses (renumbered)
    and whose position table is cut to ``max_text_len``: the same outputs from a smaller graph.
    For export only (``edge_xmr.model.load`` rebuilds models from the full pretrained vocabulary)."""
    from dataclasses import replace

    import torch

    keep = used_ids(model)
    cfg = model.cfg
    L = min(cfg.max_text_len, cfg.text.max_positions)
    tok, model.tokenizer = model.tokenizer, None  # not deep-copied (pickling a vocabulary with gaps warns)
    try:
        small = copy.deepcopy(model)
    finally:
        model.tokenizer = tok
    small.cfg = replace(cfg, text=replace(cfg.text, vocab_size=len(keep), max_positions=L))
    small.text.cfg = small.cfg.text  # type: ignore[assignment]
    for blk in small.text.blocks:
        blk.cfg = small.cfg.text  # type: ignore[assignment]
    with torch.no_grad():
        idx = torch.tensor(keep, dtype=torch.long)
        small.text.tok = torch.nn.Embedding.from_pretrained(model.text.tok.weight[idx].clone(), freeze=False)
        small.text.pos = torch.nn.Embedding.from_pretrained(model.text.pos.weight[:L].clone(), freeze=False)
    small.tokenizer = make_tokenizer(renumber_tokenizer(tokenizer_json(model), keep))
    return small.eval()

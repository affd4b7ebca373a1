"""The caption decoder's vocabulary: CLIP's own BPE (the one inside open_clip), whole or shortlisted to a corpus.

Layout of the internal ids the decoder sees:

- index 0 is padding;
- in shortlist mode (some CLIP ids left out) index 1 is UNK, which every BPE id outside the shortlist maps to;
- then the kept CLIP BPE ids in ascending order, CLIP's start-of-text (BOS) and end-of-text (EOS) among them.

The whole vocabulary (the default) has no UNK: 1 + 49,408 entries. A shortlist exists because a tiny decoder
with CLIP's 49,408-way output layer spends almost all its time in the softmax; it keeps CLIP's BPE and text
normalisation, so captions read the same.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import cache, lru_cache

import torch
from open_clip.tokenizer import SimpleTokenizer

CLIP_VOCAB_SIZE = 49408
CLIP_BOS = 49406  # <start_of_text>
CLIP_EOS = 49407  # <end_of_text>
UNK_TEXT = "<unk>"
_SPACE_BEFORE_PUNCTUATION = re.compile(r" ([,.;:!?])")  # how `decode` writes a word the shortlist does not have


@cache
def _clip_bpe() -> SimpleTokenizer:
    # Loading the merges takes ~0.3 s; one shared instance also shares its BPE cache.
    return SimpleTokenizer()


@lru_cache(maxsize=2**16)
def _clip_ids(text: str) -> tuple[int, ...]:
    # Training encodes the same captions every epoch, and CLIP's text cleaning (ftfy, html) costs ~0.3 ms each:
    # a third of a tiny decoder's step, spent again and again on the same strings.
    return tuple(_clip_bpe().encode(text))


class CaptionTokenizer:
    """CLIP's BPE tokenizer made into a captioning vocabulary (see the module docstring for the id layout).

    Args:
        token_ids: the CLIP BPE ids to keep (what a checkpoint stores: `tokenizer.token_ids`); BOS and EOS are
            added if missing, order and repeats do not matter. None keeps CLIP's whole vocabulary.
    """

    def __init__(self, *, token_ids: Sequence[int] | None = None) -> None:
        ids = set(range(CLIP_VOCAB_SIZE)) if token_ids is None else {int(i) for i in token_ids}
        if bad := sorted(i for i in ids if not 0 <= i < CLIP_VOCAB_SIZE):
            raise ValueError(f"token_ids must be CLIP BPE ids in [0, {CLIP_VOCAB_SIZE}), got {bad[:5]}")
        self._clip_ids = sorted(ids | {CLIP_BOS, CLIP_EOS})
        self._unk_id = 1 if len(self._clip_ids) < CLIP_VOCAB_SIZE else None
        first = 1 if self._unk_id is None else 2
        self._index = {clip_id: first + i for i, clip_id in enumerate(self._clip_ids)}
        # internal index -> CLIP id; None for padding and UNK
        self._to_clip: list[int | None] = [None] * first + list(self._clip_ids)

    @classmethod
    def from_corpus(cls, captions: Iterable[str]) -> CaptionTokenizer:
        """The shortlist of the BPE ids `captions` use (plus BOS, EOS and UNK)."""
        bpe = _clip_bpe()
        used = {i for text in captions for i in bpe.encode(text)}
        if not used:
            raise ValueError("the caption corpus has no words to build a vocabulary from")
        return cls(token_ids=sorted(used))

    @property
    def vocab_size(self) -> int:
        return len(self._to_clip)

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def unk_id(self) -> int | None:
        """UNK's index in shortlist mode; None for the whole vocabulary, which needs none."""
        return self._unk_id

    @property
    def bos_id(self) -> int:
        return self._index[CLIP_BOS]

    @property
    def eos_id(self) -> int:
        return self._index[CLIP_EOS]

    @property
    def token_ids(self) -> list[int]:
        """The kept CLIP BPE ids, ascending; `CaptionTokenizer(token_ids=...)` of them rebuilds this tokenizer."""
        return list(self._clip_ids)

    def encode(self, texts: Sequence[str], *, max_length: int) -> torch.Tensor:
        """Captions -> (B, L) int64 rows of BOS, tokens, EOS, right-padded with `pad_id` to the longest row.

        A caption longer than `max_length` (BOS and EOS included) loses its last tokens, never its EOS.
        """
        if max_length < 3:
            raise ValueError(f"max_length must leave room for BOS, a token and EOS, got {max_length}")
        rows = [self._encode_one(text, index, max_length - 2) for index, text in enumerate(texts)]
        out = torch.full((len(rows), max(map(len, rows), default=0)), self.pad_id, dtype=torch.long)
        for i, row in enumerate(rows):
            out[i, : len(row)] = torch.tensor(row)
        return out

    def _encode_one(self, text: str, index: int, body_length: int) -> list[int]:
        clip_ids = _clip_ids(text) if text.strip() else ()
        if not clip_ids:
            raise ValueError(f"caption {index} is empty: {text!r}")
        body = [self._index.get(i, self._unk_id) for i in clip_ids[:body_length]]
        return [self.bos_id, *body, self.eos_id]

    def decode(self, rows: torch.Tensor | Sequence[Sequence[int]]) -> list[str]:
        """Rows of internal ids (e.g. `CaptionDecoder.generate`'s) -> texts, as CLIP's `SimpleTokenizer.decode`
        writes them (lowercase, single spaces, stripped), with no space before punctuation.

        BOS and padding are dropped, a row ends at its first EOS (whatever follows is padding), UNK is `UNK_TEXT`.
        """
        if isinstance(rows, torch.Tensor):
            rows = rows.tolist()
        return [self._decode_one(row) for row in rows]

    def _decode_one(self, row: Sequence[int]) -> str:
        pieces, run = [], []
        for index in row:
            if not 0 <= index < self.vocab_size:
                raise ValueError(f"token {index} is outside this vocabulary of {self.vocab_size}")
            if index == self.eos_id:
                break
            if index == self._unk_id:
                pieces += [_clip_bpe().decode(run), f" {UNK_TEXT} "]
                run = []
            elif index not in (self.pad_id, self.bos_id):
                run.append(self._to_clip[index])
        pieces.append(_clip_bpe().decode(run))
        # CLIP's decode ends every token with a space, so punctuation comes out as "middle , in front"
        return _SPACE_BEFORE_PUNCTUATION.sub(r"\1", " ".join("".join(pieces).split()))

"""The caption decoder's vocabulary: CLIP's own BPE (the one inside open_clip), whole or shortlisted to a corpus.

The id layout and the decoding are `regionspot.modeling.caption_vocabulary`'s (torch-free, shared with the ONNX
predictor); this adds encoding with open_clip's BPE. A shortlist exists because a tiny decoder with CLIP's 49,408-way
output layer spends almost all its time in the softmax; it keeps CLIP's BPE and text normalisation, so captions read
the same.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cache, lru_cache

import torch
from open_clip.tokenizer import SimpleTokenizer

from regionspot.modeling.caption_vocabulary import CaptionVocabulary


@cache
def _clip_bpe() -> SimpleTokenizer:
    # Loading the merges takes ~0.3 s; one shared instance also shares its BPE cache.
    return SimpleTokenizer()


@lru_cache(maxsize=2**16)
def _clip_ids(text: str) -> tuple[int, ...]:
    # Training encodes the same captions every epoch, and CLIP's text cleaning (ftfy, html) costs ~0.3 ms each:
    # a third of a tiny decoder's step, spent again and again on the same strings.
    return tuple(_clip_bpe().encode(text))


def _decode_clip_ids(clip_ids: list[int]) -> str:
    return _clip_bpe().decode(clip_ids)  # the merges load on first use, not when a tokenizer is built


class CaptionTokenizer(CaptionVocabulary):
    """CLIP's BPE tokenizer made into a captioning vocabulary (the layout and decoding: `CaptionVocabulary`).

    Args:
        token_ids: the CLIP BPE ids to keep (what a checkpoint stores: `tokenizer.token_ids`); BOS and EOS are
            added if missing, order and repeats do not matter. None keeps CLIP's whole vocabulary.
    """

    def __init__(self, *, token_ids: Sequence[int] | None = None) -> None:
        super().__init__(token_ids=token_ids, bpe_decode=_decode_clip_ids)

    @classmethod
    def from_corpus(cls, captions: Iterable[str]) -> CaptionTokenizer:
        """The shortlist of the BPE ids `captions` use (plus BOS, EOS and UNK)."""
        bpe = _clip_bpe()
        used = {i for text in captions for i in bpe.encode(text)}
        if not used:
            raise ValueError("the caption corpus has no words to build a vocabulary from")
        return cls(token_ids=sorted(used))

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
        """`CaptionVocabulary.decode`, rows also as a tensor."""
        return super().decode(rows.tolist() if isinstance(rows, torch.Tensor) else rows)

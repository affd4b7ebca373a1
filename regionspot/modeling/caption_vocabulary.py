"""The caption decoder's id layout and its ids -> text rule, torch-free: `CaptionTokenizer` (torch, open_clip's BPE)
and the ONNX predictor (Hugging Face `tokenizers`' copy of the same BPE) both decode with `CaptionVocabulary`.

Layout of the internal ids the decoder sees:

- index 0 is padding;
- in shortlist mode (some CLIP ids left out) index 1 is UNK, which every BPE id outside the shortlist maps to;
- then the kept CLIP BPE ids in ascending order, CLIP's start-of-text (BOS) and end-of-text (EOS) among them.

The whole vocabulary (the default) has no UNK: 1 + 49,408 entries.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

CLIP_VOCAB_SIZE = 49408
CLIP_BOS = 49406  # <start_of_text>
CLIP_EOS = 49407  # <end_of_text>
UNK_TEXT = "<unk>"
_SPACE_BEFORE_PUNCTUATION = re.compile(r" ([,.;:!?])")  # how `decode` writes a word the shortlist does not have


class CaptionVocabulary:
    """The internal ids of a captioning vocabulary over CLIP's BPE (see the module docstring for the layout).

    Args:
        token_ids: the CLIP BPE ids to keep (what a checkpoint stores, and an ONNX manifest's `heads.caption`);
            BOS and EOS are added if missing, order and repeats do not matter. None keeps CLIP's whole vocabulary.
        bpe_decode: CLIP BPE ids -> their text as CLIP's `SimpleTokenizer.decode` writes it (every word followed by
            a space): open_clip's in `CaptionTokenizer`, tokenizer.json's in the ONNX predictor.
    """

    def __init__(self, *, token_ids: Sequence[int] | None, bpe_decode: Callable[[list[int]], str]) -> None:
        ids = set(range(CLIP_VOCAB_SIZE)) if token_ids is None else {int(i) for i in token_ids}
        if bad := sorted(i for i in ids if not 0 <= i < CLIP_VOCAB_SIZE):
            raise ValueError(f"token_ids must be CLIP BPE ids in [0, {CLIP_VOCAB_SIZE}), got {bad[:5]}")
        self._clip_ids = sorted(ids | {CLIP_BOS, CLIP_EOS})
        self._unk_id = 1 if len(self._clip_ids) < CLIP_VOCAB_SIZE else None
        first = 1 if self._unk_id is None else 2
        self._index = {clip_id: first + i for i, clip_id in enumerate(self._clip_ids)}
        # internal index -> CLIP id; None for padding and UNK
        self._to_clip: list[int | None] = [None] * first + list(self._clip_ids)
        self._bpe_decode = bpe_decode

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
        """The kept CLIP BPE ids, ascending; `CaptionVocabulary(token_ids=...)` of them rebuilds this layout."""
        return list(self._clip_ids)

    def decode(self, rows: Sequence[Sequence[int]]) -> list[str]:
        """Rows of internal ids (e.g. `CaptionDecoder.generate`'s) -> texts, as CLIP's `SimpleTokenizer.decode`
        writes them (lowercase, single spaces, stripped), with no space before punctuation.

        BOS and padding are dropped, a row ends at its first EOS (whatever follows is padding), UNK is `UNK_TEXT`.
        """
        return [self._decode_one(row) for row in rows]

    def _decode_one(self, row: Sequence[int]) -> str:
        pieces, run = [], []
        for index in row:
            if not 0 <= index < self.vocab_size:
                raise ValueError(f"token {index} is outside this vocabulary of {self.vocab_size}")
            if index == self.eos_id:
                break
            if index == self._unk_id:
                pieces += [self._bpe_decode(run), f" {UNK_TEXT} "]
                run = []
            elif index not in (self.pad_id, self.bos_id):
                run.append(self._to_clip[index])
        pieces.append(self._bpe_decode(run))
        # CLIP's decode ends every token with a space, so punctuation comes out as "middle , in front"
        return _SPACE_BEFORE_PUNCTUATION.sub(r"\1", " ".join("".join(pieces).split()))

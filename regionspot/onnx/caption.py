"""The captioner's greedy decoding on the exported caption_step graph, torch-free (`CaptionDecoder.generate` with
one beam: the same tokens, tests/test_onnx_heads.py), and its tokens' text (`CaptionTokenizer.decode`'s)."""

from __future__ import annotations

import numpy as np
import onnxruntime
from tokenizers import Tokenizer

from regionspot.modeling.caption_vocabulary import CaptionVocabulary


def greedy_caption_tokens(
    session: onnxruntime.InferenceSession, condition: np.ndarray, *, bos_id: int, eos_id: int, max_length: int
) -> np.ndarray:
    """Decode a caption for every region at once, one token per step.

    Args:
        session: the caption_step graph.
        condition: (N, D) float32 region conditions (`RegionSpot.region_condition`'s rows).
        bos_id, eos_id, max_length: the manifest's `heads.caption` (max_length counts BOS).

    Returns:
        (N, L') int64 tokens after BOS, as `CaptionDecoder.generate` returns them: a row ends with its EOS and is
        padded with EOS after it; L' is the longest row, at most max_length - 1.
    """
    condition = np.ascontiguousarray(condition, dtype=np.float32)
    tokens = np.full((len(condition), 1), bos_id, dtype=np.int64)
    if len(condition) == 0:
        return np.zeros((0, 0), np.int64)
    ended = np.zeros(len(condition), bool)
    for _ in range(max_length - 1):
        (logits,) = session.run(None, {"condition": condition, "tokens": tokens})
        logits[:, bos_id] = -np.inf  # BOS is never a target
        token = np.where(ended, eos_id, logits.argmax(axis=1))
        tokens = np.concatenate([tokens, token[:, None]], axis=1)
        ended |= token == eos_id
        if ended.all():
            break
    return tokens[:, 1:]


def caption_vocabulary(head: dict, tokenizer: Tokenizer) -> CaptionVocabulary:
    """The captioner's vocabulary from the manifest's `heads.caption` (its CLIP BPE ids), decoding CLIP's BPE with
    the export's tokenizer.json (`tokenizers`' byte-level decoder writes CLIP's bytes back; CLIP's decode then
    turns each word's `</w>` into a space, as here).

    Raises:
        ValueError: if the ids it lays out disagree with the manifest's BOS and EOS (a manifest edited by hand).
    """

    def bpe_decode(clip_ids: list[int]) -> str:
        return tokenizer.decode(clip_ids, skip_special_tokens=False).replace("</w>", " ")

    vocabulary = CaptionVocabulary(token_ids=head["token_ids"], bpe_decode=bpe_decode)
    if (vocabulary.bos_id, vocabulary.eos_id) != (head["bos_id"], head["eos_id"]):
        raise ValueError("the manifest's caption token_ids disagree with its bos_id and eos_id: export the model again")
    return vocabulary

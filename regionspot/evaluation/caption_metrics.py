"""Region caption scores by the COCO caption toolkit (pycocoevalcap): CIDEr-D, BLEU, METEOR, ROUGE-L, SPICE.

`score_captions` runs the steps of `COCOEvalCap.evaluate` on {region key: caption} dicts, without COCO objects
or printing, so its numbers are the toolkit's own. What to know when reading them:

- CIDEr is CIDEr-D with IDF from the references of the evaluated set: a subset scores differently from the full
  set's per-region mean over the same keys, and a single-region set scores 0 (log 1 weights every n-gram out).
- An empty predicted caption (or one of punctuation alone, which tokenizes to nothing) is scored as the toolkit
  scores it: no matched n-grams for BLEU (its references still count in the brevity penalty), 0 METEOR, ROUGE-L
  and CIDEr for that region. The toolkit takes it as it is (METEOR's Java scorer accepts an empty hypothesis),
  so nothing is changed.
- The toolkit hands the captions to the Java PTB tokenizer one per line and replaces only "\\n"; the tokenizer
  also ends a line at "\\r", "\\v", "\\f", U+2028 and U+2029, which shifts every later caption onto another
  region's key and silently scores wrong pairs. Every line boundary of `str.splitlines` is made a space here
  first; on any text the toolkit keeps aligned this changes no token, so no score.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.spice.spice import Spice
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

CAPTION_METRICS = ("CIDEr", "Bleu_4", "METEOR", "ROUGE_L")  # the toolkit's names of the metrics papers report


def require_java() -> str:
    """The path of `java`, which pycocoevalcap starts by that bare name.

    Raises:
        RuntimeError: no `java` on PATH, with how to get one.
    """
    java = shutil.which("java")
    if java is None:
        raise RuntimeError(
            "caption scoring needs `java` on PATH: pycocoevalcap runs its PTB tokenizer and METEOR (and SPICE) "
            "as Java programs. Install a Java runtime (8 or newer), e.g. `apt-get install -y "
            "openjdk-17-jre-headless`, or put an installed one on PATH (`export PATH=$JAVA_HOME/bin:$PATH`; "
            "the toolkit does not read JAVA_HOME itself)."
        )
    return java


def score_captions(
    predictions: Mapping[str, str], references: Mapping[str, Sequence[str]], *, spice: bool = False
) -> dict[str, float]:
    """Score one predicted caption per region against its references, as `COCOEvalCap.evaluate` does.

    Both are PTB-tokenized (lower-cased, punctuation dropped), then BLEU-1..4, METEOR, ROUGE-L and CIDEr-D are
    computed over exactly these keys: CIDEr-D's IDF comes from these references (see the module docstring).

    Args:
        predictions: {region key: predicted caption}, e.g. keyed "{image_id}_region_{j}" as TAP keys Visual
            Genome. An empty caption is allowed and scores 0 for its region.
        references: {region key: its reference captions}, at least one each; the same keys as `predictions`.
        spice: also compute SPICE. Off by default: its first use downloads Stanford CoreNLP into
            pycocoevalcap's package folder, which needs the network.

    Returns:
        "Bleu_1" to "Bleu_4", "METEOR", "ROUGE_L", "CIDEr" (and "SPICE") as fractions (papers print x100),
        and "regions": the number of regions scored.

    Raises:
        RuntimeError: `java` is not on PATH.
        ValueError: the keys differ, there are none, a region has no references, or a caption is not a str.
    """
    require_java()
    _check_captions(predictions, references)
    keys = list(references)
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({key: [{"caption": _one_line(text)} for text in references[key]] for key in keys})
    res = tokenizer.tokenize({key: [{"caption": _one_line(predictions[key])}] for key in keys})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    metrics = {f"Bleu_{n}": float(score) for n, score in enumerate(bleu, start=1)}
    scorers = [("METEOR", Meteor()), ("ROUGE_L", Rouge()), ("CIDEr", Cider())]
    if spice:
        scorers.append(("SPICE", Spice()))
    for name, scorer in scorers:
        metrics[name] = float(scorer.compute_score(gts, res)[0])
    metrics["regions"] = len(keys)
    return metrics


def _one_line(text: str) -> str:
    """`text` with every line boundary made a space, so that the line-based Java tokenizer keeps it one caption."""
    return " ".join(text.splitlines())


def _check_captions(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> None:
    missing = [key for key in references if key not in predictions]
    extra = [key for key in predictions if key not in references]
    if missing or extra:
        raise ValueError(
            "predictions and references must have the same region keys: "
            f"{len(missing)} regions have no prediction (e.g. {missing[:5]}), "
            f"{len(extra)} predictions have no references (e.g. {extra[:5]})"
        )
    if not references:
        raise ValueError("no regions to score: predictions and references are empty")
    for key, text in predictions.items():
        if not isinstance(text, str):
            raise ValueError(f"the prediction for region {key!r} is a {type(text).__name__}, not a str")
    for key, texts in references.items():
        # A bare str is a Sequence of its characters: each would be taken for a reference.
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise ValueError(f"references of region {key!r} must be a list of str, not a {type(texts).__name__}")
        if not texts:
            raise ValueError(f"region {key!r} has no reference captions")
        if not all(isinstance(text, str) for text in texts):
            raise ValueError(f"references of region {key!r} must all be str: {list(texts)!r:.120}")

"""Command line of evaluate.py: recognise the regions of a data set and score them, caption them and score the
captions, or score a results file.

    python evaluate.py --config configs/model/regionspot_bl.yaml --adapter adapter.safetensors \\
        --ann lvis_v1_val.json --images coco/ [--proposals glip_lvis_val.json | --source sam] [--out eval/]
    python evaluate.py captions --config run/adapter.yaml --ann vg_test.json --images vg/ --out caption_eval/
    python evaluate.py vqa --config run/adapter.yaml --ann qa_test.json --images images/ --out vqa_eval/ [--captions]
    python evaluate.py score --gt lvis_v1_val.json --detections eval/detections.json --out metrics.json
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from regionspot.config import MaskGeneratorSettings
from regionspot.data.coco import read_json
from regionspot.evaluation.detections import DEFAULT_ACTIVATION, DEFAULT_TOP_K
from regionspot.evaluation.lvis_eval import format_metrics, score_results
from regionspot.evaluation.sources import SOURCES
from regionspot.modeling.regionspot import ACTIVATIONS


def main(argv: list[str] | None = None) -> dict:
    """Parse `argv` (default: sys.argv), run, and return the metrics."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    # Our progress notes at INFO; other libraries (open_clip logs its config lookups on the root logger) at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("regionspot").setLevel(logging.INFO)
    try:
        if argv[:1] == ["score"]:
            return _score(argv[1:])
        if argv[:1] == ["vqa"]:
            return _vqa(argv[1:])
        return _captions(argv[1:]) if argv[:1] == ["captions"] else _run(argv)
    except (
        FileNotFoundError,
        ValueError,
        RuntimeError,
    ) as err:  # bad inputs: the message says which file and what to do
        raise SystemExit(f"error: {err}") from err


def _run(argv: list[str]) -> dict:
    from regionspot.evaluation.runner import PRECISIONS, EvalSettings, evaluate

    parser = argparse.ArgumentParser(
        prog="evaluate.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="model YAML (configs/model/)")
    parser.add_argument("--adapter", help="trained adapter weights (.safetensors); overrides the YAML's")
    parser.add_argument("--ann", required=True, help="LVIS or COCO annotation JSON (e.g. lvis_v1_val.json)")
    parser.add_argument("--images", required=True, help="folder of the images (LVIS: COCO's train2017/val2017 files)")
    parser.add_argument("--source", choices=SOURCES, help="regions: gt boxes (default), proposals, or sam (SAM's AMG)")
    parser.add_argument("--proposals", help="another detector's results (COCO results JSON with scores)")
    parser.add_argument("--out", default="eval_out", help="output folder; a rerun resumes the run in it")
    parser.add_argument("--fixed-ap", action="store_true", help="Fixed AP: no per-image cap, 10k per class")
    parser.add_argument("--no-masks", dest="masks", action="store_false", help="boxes only (no mask AP)")
    parser.add_argument(
        "--top-k", type=int, default=DEFAULT_TOP_K, help=f"classes kept per region (default {DEFAULT_TOP_K})"
    )
    parser.add_argument(
        "--activation", choices=ACTIVATIONS, default=DEFAULT_ACTIVATION, help="class scores (default softmax)"
    )
    parser.add_argument("--max-dets-per-image", type=int, help="default: the protocol's (LVIS 300, COCO 100)")
    original = parser.add_argument_group(
        "the original RegionSpot's evaluation", "all three together: its inference (docs/regionspot_compat.md)"
    )
    original.add_argument(
        "--max-candidates", type=int, help="keep an image's N most probable region-class pairs first (900)"
    )
    original.add_argument("--test-short-edge", type=int, help="resize each image to this shortest edge first (800)")
    original.add_argument("--test-max-size", type=int, default=1333, help="... longest edge at most (1333)")
    original.add_argument(
        "--autocast-heads", action="store_true", help="SAM's decoder, the adapter and scores in --precision too"
    )
    parser.add_argument("--max-images", type=int, help="only the first N images (scored on those alone)")
    parser.add_argument("--accelerator", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument("--devices", default="1", help="number of devices, or 'auto'")
    parser.add_argument("--strategy", default="auto", help="auto, ddp, ddp_spawn, ...")
    parser.add_argument("--precision", choices=PRECISIONS, help="default bf16-mixed on GPU, 32-true on CPU")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sam-points-per-side", type=int, default=MaskGeneratorSettings.points_per_side)
    parser.add_argument("--sam-pred-iou-thresh", type=float, default=MaskGeneratorSettings.pred_iou_thresh)
    parser.add_argument(
        "--sam-stability-score-thresh", type=float, default=MaskGeneratorSettings.stability_score_thresh
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = vars(parser.parse_args(argv))
    args["devices"] = int(args["devices"]) if args["devices"].isdigit() else args["devices"]
    return evaluate(EvalSettings(**args))


def _captions(argv: list[str]) -> dict:
    from regionspot.evaluation.caption_eval import CaptionEvalSettings, evaluate_captions

    parser = argparse.ArgumentParser(
        prog="evaluate.py captions",
        description="Caption every annotated region and score with pycocoevalcap (CIDEr-D, BLEU-4, METEOR, ROUGE-L).",
    )
    parser.add_argument("--config", required=True, help="model YAML with a caption: section (a run's adapter.yaml)")
    parser.add_argument("--ann", help="region-caption JSON: COCO-style with a caption per annotation, or VG's own")
    parser.add_argument("--images", help="folder of its images")
    parser.add_argument("--hf-path", help="or a Hugging Face data set (objects with bbox and caption)")
    parser.add_argument("--hf-split", default="test")
    parser.add_argument("--out", default="caption_eval", help="output folder; a rerun resumes the run in it")
    parser.add_argument("--max-images", type=int, help="only the first N images (scored on those alone)")
    parser.add_argument("--batch-size", type=int, default=8, help="images captioned together")
    parser.add_argument("--num-beams", type=int, help="default: the model config's caption.num_beams")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument("--seed", type=int, default=0, help="draws the weights of parts without a checkpoint")
    parser.add_argument("--spice", action="store_true", help="also SPICE (downloads Stanford CoreNLP on first use)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    return evaluate_captions(CaptionEvalSettings(**vars(parser.parse_args(argv))))


def _vqa(argv: list[str]) -> dict:
    from regionspot.evaluation.vqa_eval import CAPTION_PROMPT, VqaEvalSettings, evaluate_vqa

    parser = argparse.ArgumentParser(
        prog="evaluate.py vqa",
        description="Answer every question of a region-QA file (normalised exact match), or with --captions "
        "caption every region through the LLM and score with pycocoevalcap.",
    )
    parser.add_argument("--config", required=True, help="model YAML with a vqa: section (a VQA run's adapter.yaml)")
    parser.add_argument("--ann", help="region-QA file (image, boxes, conversations); with --captions a caption file")
    parser.add_argument("--images", help="folder of its images")
    parser.add_argument("--hf-path", help="or a Hugging Face data set")
    parser.add_argument("--hf-split", default="test")
    parser.add_argument("--out", default="vqa_eval", help="output folder; a rerun resumes the run in it")
    parser.add_argument("--captions", action="store_true", help="caption every region through the LLM instead")
    parser.add_argument("--caption-prompt", default=CAPTION_PROMPT, help=f"default: {CAPTION_PROMPT!r}")
    parser.add_argument("--max-images", type=int, help="only the first N images")
    parser.add_argument("--batch-size", type=int, default=8, help="images whose questions are answered together")
    parser.add_argument("--max-new-tokens", type=int, help="default: the model config's vqa.max_new_tokens")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument("--seed", type=int, default=0, help="draws the weights of parts without a checkpoint")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    return evaluate_vqa(VqaEvalSettings(**vars(parser.parse_args(argv))))


def _score(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="evaluate.py score", description="Score a results file.")
    parser.add_argument("--gt", required=True, help="LVIS or COCO annotation JSON")
    parser.add_argument("--detections", required=True, help="results JSON (a list of detections)")
    parser.add_argument("--out", required=True, help="metrics JSON to write")
    parser.add_argument("--fixed-ap", action="store_true", help="Fixed AP: no per-image cap, 10k per class")
    args = parser.parse_args(argv)
    detections = _read_detections(Path(args.detections))
    metrics = score_results(args.gt, detections, fixed_ap=args.fixed_ap)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(metrics, indent=2))
    print(format_metrics(metrics))
    if "segm" in metrics:
        print("mask:\n" + format_metrics(metrics["segm"]))
    return metrics


def _read_detections(path: Path) -> list:
    detections = read_json(path, what="detections file")
    if not isinstance(detections, list):
        raise ValueError(f"detections file {path} must hold a JSON list (COCO results format)")
    return detections

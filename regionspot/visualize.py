"""Region predictions drawn on their image: boxes, SAM's masks, names, scores and captions, with a legend.

Boxes and masks are drawn by torchvision (`draw_bounding_boxes`, `draw_segmentation_masks`). Label text is drawn
with PIL instead of by `draw_bounding_boxes(labels=...)`: torchvision puts each label inside its box's top-left
corner, so the labels of nearby boxes cover each other and run off the image, and it sizes text only through a
TrueType file, which Pillow's built-in font is not. Here `layout_labels` places every label where it covers no
other label and stays on the picture, growing the picture downwards when the image has no room left.

    picture = draw_regions(image, boxes=boxes, masks=result.masks, labels=names, scores=scores)
    picture.save("regions.png")
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torchvision.transforms.functional import to_pil_image
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from regionspot.transforms import clip_boxes, to_rgb_uint8

Colour = tuple[int, int, int]
LegendEntry = tuple[Colour | None, str]  # a swatch colour (None: text only) and what it means

RIGHT: Colour = (40, 205, 70)
WRONG: Colour = (240, 60, 60)
# Boxes without a ground truth: colours apart from each other and bright on the dark label background.
PALETTE: tuple[Colour, ...] = (
    (255, 190, 40), (80, 180, 255), (240, 90, 220), (60, 220, 200), (255, 130, 60), (170, 140, 255),
)  # fmt: skip
LABEL_BACKGROUND = (20, 20, 20, 215)  # RGBA: dark enough for any text colour, and see-through
CAPTION_TEXT: Colour = (235, 235, 235)
TRUTH_TEXT: Colour = (255, 200, 200)
PAPER: Colour = (250, 250, 250)  # the room added below an image, and the legend's background
INK: Colour = (30, 30, 30)

BOX_WIDTH = 2
MASK_OUTLINE = 2  # pixels
LABEL_PADDING = 3
LABEL_GAP = 2  # empty pixels kept between two labels and between a label and its box
# A label as far from its box as another but centred nearer it points at it more clearly (and is not taken for the
# label of a neighbouring box): each pixel between their centres, sideways, costs this many pixels of distance.
CENTRE_WEIGHT = 0.25
COVER_WEIGHT = 0.5  # a label covering a box's area costs as much as moving this many pixels away per covered row


def draw_regions(
    image: Image.Image | np.ndarray | torch.Tensor,
    *,
    boxes: np.ndarray | torch.Tensor | Sequence[Sequence[float]],
    labels: Sequence[str] | None = None,
    scores: Sequence[float] | torch.Tensor | None = None,
    truths: Sequence[str] | None = None,
    captions: Sequence[str] | None = None,
    masks: np.ndarray | torch.Tensor | None = None,
    min_size: int = 512,
    font_size: int = 13,
    mask_alpha: float = 0.3,
    legend: bool | Sequence[LegendEntry] = True,
) -> Image.Image:
    """Draw N regions on an image: box, mask, and a label with name, score, true name and caption.

    Args:
        image: any image `regionspot.transforms.to_rgb_uint8` takes (PIL, array or tensor).
        boxes: (N, 4) xyxy pixels of `image`; clipped to it.
        labels: N predicted names, or None.
        scores: N scores, written after the names with two decimals, or None.
        truths: N true names, or None. With them a box is green when its label is its truth and red otherwise,
            and a wrong label has "truth: ..." under it; without them each box has a colour of its own.
        captions: N captions, written under the names (wrapped), or None.
        masks: (N, H, W) bool masks (e.g. SAM's), tinted in their box's colour and outlined, or None.
        min_size: the image is enlarged by a whole factor (nearest neighbour) until its short side has at least
            this many pixels, so that small images are not covered by their labels.
        font_size: text height in pixels (Pillow's built-in font).
        mask_alpha: the masks' tint (0: outline only, which keeps the colours under them); their outline is opaque.
        legend: True for a legend of what is drawn under the picture, False for none, or the entries to show.

    Returns:
        An RGB image of (H * s + room for labels that did not fit + legend, W * s) pixels, s the enlargement.
    """
    rgb = torch.from_numpy(to_rgb_uint8(image)).permute(2, 0, 1)  # (3, H, W)
    xyxy = clip_boxes(boxes, tuple(rgb.shape[1:])) if len(boxes) else torch.zeros(0, 4)
    texts = {"labels": labels, "scores": scores, "truths": truths, "captions": captions}
    for name, values in texts.items():
        if values is not None and len(values) != len(xyxy):
            raise ValueError(f"{name} has {len(values)} entries for {len(xyxy)} boxes")
    colours = _box_colours(len(xyxy), labels=labels, truths=truths)
    canvas, xyxy = _draw_boxes_and_masks(rgb, xyxy, masks, colours, min_size=min_size, mask_alpha=mask_alpha)
    blocks = [_label_lines(i, **texts, colour=colours[i]) for i in range(len(xyxy))]
    picture = _draw_labels(to_pil_image(canvas), xyxy.numpy(), blocks, colours, ImageFont.load_default(size=font_size))
    if legend is True:
        legend = default_legend(**{name: texts[name] is not None for name in ("truths", "scores", "captions")},
                                masks=masks is not None)  # fmt: skip
    if legend:
        picture = stack_vertically([picture, draw_legend(legend, width=picture.width, font_size=font_size)])
    return picture


def _draw_boxes_and_masks(
    rgb: torch.Tensor,
    xyxy: torch.Tensor,
    masks: np.ndarray | torch.Tensor | None,
    colours: list[Colour],
    *,
    min_size: int,
    mask_alpha: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (3, H, W) image enlarged by a whole factor s to a short side of at least `min_size`, with the masks and
    the (N, 4) boxes drawn on it; and the boxes on that (3, H * s, W * s) canvas."""
    height, width = rgb.shape[1:]
    scale = max(1, math.ceil(min_size / min(height, width)))
    canvas = rgb.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)  # (3, H * s, W * s)
    # On the canvas, a box that reaches the image's edge is drawn on its last pixel row or column, not past it.
    xyxy = torch.minimum(xyxy * scale, torch.tensor([width, height, width, height]) * scale - 1)
    if masks is not None:
        canvas = _draw_masks(canvas, _enlarge_masks(masks, (height, width), scale), colours, alpha=mask_alpha)
    if len(xyxy):
        canvas = draw_bounding_boxes(canvas, xyxy, colors=colours, width=BOX_WIDTH)
    return canvas, xyxy


def draw_named_regions(image, named, *, vocabulary_size: int, mask_source: str) -> Image.Image:
    """A predictor's named regions drawn with `draw_regions`: SAM's mask, box, top name and its probability (and the
    caption) of each, with a legend that says so. `named` has `boxes` (N, 4), `labels` (N top-k names), `scores`
    (N, k), `captions` (N or None) and `masks` (N, H, W), as `RegionPredictions`; `mask_source` says where the masks
    come from ("SAM's mask from the box")."""
    legend = [
        (None, f"After each name: its probability among the {vocabulary_size} names."),
        (None, f"Tinted, outlined: {mask_source}."),
    ]
    return draw_regions(
        image,
        boxes=named.boxes,
        labels=[labels[0] for labels in named.labels],
        scores=named.scores[:, 0],
        captions=named.captions,
        masks=named.masks,
        legend=legend,
    )


def default_legend(*, truths: bool, scores: bool, captions: bool, masks: bool) -> list[LegendEntry]:
    """What a picture drawn by `draw_regions` with these inputs shows, one entry each."""
    entries: list[LegendEntry] = []
    if truths:
        entries += [(RIGHT, "name right"), (WRONG, "name wrong (the truth under it)")]
    if scores:
        entries.append((None, "0.42 after a name: its score"))
    if captions:
        entries.append((CAPTION_TEXT, "the region's caption"))
    if masks:
        entries.append((None, "outlined: SAM's mask"))
    return entries


def draw_legend(entries: Sequence[LegendEntry], *, width: int, font_size: int = 13) -> Image.Image:
    """A strip `width` pixels wide with each entry's colour swatch and text, entries flowing onto new rows (an
    entry too long for one row wrapped onto several)."""
    font = ImageFont.load_default(size=font_size)
    line = _line_height(font)
    swatch, spacing, margin = line - 2, 3 * font_size // 2, 6
    placed: list[tuple[int, int, Colour | None, list[str]]] = []
    x, y, row_height = margin, margin, line
    for colour, text in entries:
        indent = swatch + 4 if colour is not None else 0
        lines = _wrap(text, font, max(width - 2 * margin - indent, 1)) or [""]
        extent = indent + max(math.ceil(font.getlength(part)) for part in lines)
        if x > margin and x + extent > width - margin:
            x, y, row_height = margin, y + row_height + 4, line
        placed.append((x, y, colour, lines))
        x += extent + spacing
        row_height = max(row_height, len(lines) * line)
    strip = Image.new("RGB", (width, y + row_height + margin), PAPER)
    draw = ImageDraw.Draw(strip)
    for x, y, colour, lines in placed:
        if colour is not None:
            draw.rectangle((x, y + 1, x + swatch, y + swatch), fill=colour, outline=INK)
            x += swatch + 4
        for row, part in enumerate(lines):
            draw.text((x, y + row * line), part, fill=INK, font=font)
    return strip


def stack_vertically(pictures: Sequence[Image.Image]) -> Image.Image:
    """Pictures one under another, left-aligned, on paper as wide as the widest."""
    sheet = Image.new("RGB", (max(p.width for p in pictures), sum(p.height for p in pictures)), PAPER)
    y = 0
    for picture in pictures:
        sheet.paste(picture, (0, y))
        y += picture.height
    return sheet


def layout_labels(
    *, sizes: Sequence[tuple[int, int]], boxes: np.ndarray, canvas_size: tuple[int, int], step: int = 4
) -> tuple[np.ndarray, int]:
    """Place N label rectangles near their boxes, none overlapping another, all on the canvas.

    Boxes are served top first. Each label takes, among the places where it overlaps no label placed before it
    (with `LABEL_GAP` pixels between), the one nearest its box, centred nearest it and covering the least of any
    box: just above or below its box, beside it or inside its top, else anywhere on a `step`-pixel grid. When no
    place is free the canvas grows downwards and the label goes under everything.

    Args:
        sizes: N (width, height) of the labels in pixels; none wider than the canvas.
        boxes: (N, 4) xyxy boxes the labels belong to.
        canvas_size: (H, W) of the canvas.
        step: the grid's spacing in pixels.

    Returns:
        (N, 4) int xyxy label rectangles, and the canvas height they need (>= H).
    """
    height, width = canvas_size
    if any(w > width for w, _ in sizes):
        raise ValueError(f"a label is wider than the canvas ({width} px): wrap its text")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    rects = np.zeros((len(sizes), 4), dtype=np.int64)
    placed: list[int] = []
    for i in np.argsort(boxes[:, 1], kind="stable"):
        w, h = sizes[i]
        candidates = _candidates(boxes[i], w, h, (height, width), step)
        free = np.ones(len(candidates), dtype=bool)
        for j in placed:
            free &= ~_overlaps(candidates, rects[j], LABEL_GAP)
        if free.any():
            # Pixels beyond the gap kept around a box, so that a label flush against its box costs nothing.
            away = np.maximum(_distance(candidates, boxes[i]) - LABEL_GAP, 0)
            cost = (
                away
                + COVER_WEIGHT * _covered(candidates, boxes) / h
                + CENTRE_WEIGHT * _off_centre(candidates, boxes[i])
            )
            cost[~free] = np.inf
            rects[i] = candidates[int(np.argmin(cost))]
        else:
            top = max([height, *(int(rects[j, 3]) for j in placed)]) + LABEL_GAP
            left = int(np.clip(boxes[i, 0], 0, width - w))
            rects[i] = (left, top, left + w, top + h)
            height = top + h
        placed.append(int(i))
    return rects, height


def _candidates(box: np.ndarray, w: int, h: int, canvas_size: tuple[int, int], step: int) -> np.ndarray:
    """(K, 4) xyxy places for a w x h label: the ones attached to `box` first, then a grid over the canvas."""
    height, width = canvas_size
    if h > height:  # taller than the canvas: no place on it, the canvas must grow
        return np.zeros((0, 4), dtype=np.int64)
    x1, y1, x2, y2 = box
    g = LABEL_GAP
    attached = [
        (x1, y1 - h - g), (x2 - w, y1 - h - g), (x1, y2 + g), (x2 - w, y2 + g),  # above, below
        (x2 + g, y1), (x1 - w - g, y1), (x1 + g, y1 + g),  # right, left, inside the top
    ]  # fmt: skip
    xs = np.unique(np.append(np.arange(0, width - w + 1, step), width - w))
    ys = np.unique(np.append(np.arange(0, height - h + 1, step), height - h))
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    corners = np.concatenate([np.round(np.asarray(attached)), grid]).astype(np.int64)
    corners[:, 0] = corners[:, 0].clip(0, width - w)
    corners[:, 1] = corners[:, 1].clip(0, height - h)
    return np.concatenate([corners, corners + np.array([w, h])], axis=1)


def _overlaps(rects: np.ndarray, other: np.ndarray, gap: int) -> np.ndarray:
    """(K,) whether each of (K, 4) rects comes closer than `gap` pixels to the `other` rect."""
    return (
        (rects[:, 0] < other[2] + gap)
        & (other[0] < rects[:, 2] + gap)
        & (rects[:, 1] < other[3] + gap)
        & (other[1] < rects[:, 3] + gap)
    )


def _distance(rects: np.ndarray, box: np.ndarray) -> np.ndarray:
    """(K,) pixels between each of (K, 4) rects and `box` (0 where they touch or overlap)."""
    dx = np.maximum.reduce([box[0] - rects[:, 2], rects[:, 0] - box[2], np.zeros(len(rects))])
    dy = np.maximum.reduce([box[1] - rects[:, 3], rects[:, 1] - box[3], np.zeros(len(rects))])
    return np.hypot(dx, dy)


def _off_centre(rects: np.ndarray, box: np.ndarray) -> np.ndarray:
    """(K,) horizontal pixels between the centre of each of (K, 4) rects and the centre of `box`.

    Horizontal only: labels are wide rows of text, so it is sideways that one drifts under a neighbour's box;
    how far above or below its box a label sits is the distance's to count.
    """
    return np.abs(rects[:, 0] + rects[:, 2] - box[0] - box[2]) / 2


def _covered(rects: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(K,) area of (M, 4) boxes under each of (K, 4) rects, summed over the boxes."""
    w = np.minimum(rects[:, None, 2], boxes[None, :, 2]) - np.maximum(rects[:, None, 0], boxes[None, :, 0])
    h = np.minimum(rects[:, None, 3], boxes[None, :, 3]) - np.maximum(rects[:, None, 1], boxes[None, :, 1])
    return (w.clip(min=0) * h.clip(min=0)).sum(axis=1)


def _box_colours(count: int, *, labels: Sequence[str] | None, truths: Sequence[str] | None) -> list[Colour]:
    if truths is None:
        return [PALETTE[i % len(PALETTE)] for i in range(count)]
    return [RIGHT if labels is not None and labels[i] == truths[i] else WRONG for i in range(count)]


def _label_lines(
    i: int,
    *,
    labels: Sequence[str] | None,
    scores: Sequence[float] | torch.Tensor | None,
    truths: Sequence[str] | None,
    captions: Sequence[str] | None,
    colour: Colour,
) -> list[tuple[str, Colour]]:
    """The lines of box i's label (before wrapping), each with its colour."""
    name = [labels[i]] if labels is not None else []
    if scores is not None:
        name.append(f"{float(scores[i]):.2f}")
    lines = [(" ".join(name), colour)] if name else []
    if truths is not None and (labels is None or labels[i] != truths[i]):
        lines.append((f"truth: {truths[i]}", TRUTH_TEXT))
    if captions is not None and captions[i]:
        lines.append((captions[i], CAPTION_TEXT))
    return lines


def _draw_labels(
    picture: Image.Image,
    boxes: np.ndarray,
    blocks: Sequence[list[tuple[str, Colour]]],
    colours: Sequence[Colour],
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
) -> Image.Image:
    """Lay the label blocks out (`layout_labels`), grow the picture if needed, draw leader lines and labels."""
    max_width = max(40, min(picture.width, max(240, int(picture.width * 0.6))) - 2 * LABEL_PADDING)
    wrapped = [[(part, c) for text, c in block for part in _wrap(text, font, max_width)] for block in blocks]
    line = _line_height(font)
    labelled = [i for i, block in enumerate(wrapped) if block]
    sizes = [
        (
            max(math.ceil(font.getlength(text)) for text, _ in wrapped[i]) + 2 * LABEL_PADDING,
            len(wrapped[i]) * line + 2 * LABEL_PADDING,
        )
        for i in labelled
    ]
    rects, height = layout_labels(sizes=sizes, boxes=boxes[labelled], canvas_size=(picture.height, picture.width))
    if height > picture.height:
        grown = Image.new("RGB", (picture.width, height), PAPER)
        grown.paste(picture, (0, 0))
        picture = grown
    # Backgrounds first, see-through so that a label over an object still shows it; then the leader lines, so
    # that no label hides the line of another; then outlines and text.
    shade = Image.new("RGBA", picture.size, (0, 0, 0, 0))
    for rect in rects:
        ImageDraw.Draw(shade).rectangle(tuple(rect - (0, 0, 1, 1)), fill=LABEL_BACKGROUND)
    picture = Image.alpha_composite(picture.convert("RGBA"), shade).convert("RGB")
    draw = ImageDraw.Draw(picture)
    for i, rect in zip(labelled, rects, strict=True):
        if _distance(rect[None], boxes[i])[0] > LABEL_GAP:  # a label away from its box points at it
            draw.line(_leader(rect, boxes[i]), fill=colours[i], width=2)
    for i, rect in zip(labelled, rects, strict=True):
        draw.rectangle(tuple(rect - (0, 0, 1, 1)), outline=colours[i])
        for row, (text, colour) in enumerate(wrapped[i]):
            draw.text((rect[0] + LABEL_PADDING, rect[1] + LABEL_PADDING + row * line), text, fill=colour, font=font)
    return picture


def _leader(rect: np.ndarray, box: np.ndarray) -> tuple[float, float, float, float]:
    """The shortest segment from a label rectangle to its box."""
    x = float(np.clip((box[0] + box[2]) / 2, rect[0], rect[2]))
    y = float(np.clip((box[1] + box[3]) / 2, rect[1], rect[3]))
    return x, y, float(np.clip(x, box[0], box[2])), float(np.clip(y, box[1], box[3]))


def _wrap(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, max_width: int) -> list[str]:
    """`text` broken into lines of at most `max_width` pixels, between words (inside a word too long alone)."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        while font.getlength(word) > max_width:  # a word wider than a line is cut where it must be
            cut = max(1, max(k for k in range(1, len(word) + 1) if font.getlength(word[:k]) <= max_width))
            if current:
                lines.append(current)
                current = ""
            lines.append(word[:cut])
            word = word[cut:]
        candidate = f"{current} {word}" if current else word
        if current and font.getlength(candidate) > max_width:
            lines.append(current)
            candidate = word
        current = candidate
    return [*lines, current] if current else lines


def _line_height(font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> int:
    ascent, descent = font.getmetrics()
    return ascent + descent + 1


def _enlarge_masks(masks: np.ndarray | torch.Tensor, image_size: tuple[int, int], scale: int) -> torch.Tensor:
    """(N, H, W) masks of the image -> (N, H * s, W * s) bool on the enlarged canvas."""
    masks = torch.as_tensor(np.asarray(masks) if not torch.is_tensor(masks) else masks).detach().cpu().bool()
    if masks.ndim != 3 or tuple(masks.shape[1:]) != tuple(image_size):
        raise ValueError(f"masks must be (N, H, W) = (N, {image_size[0]}, {image_size[1]}), got {tuple(masks.shape)}")
    return masks.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)


def _draw_masks(canvas: torch.Tensor, masks: torch.Tensor, colours: Sequence[Colour], *, alpha: float) -> torch.Tensor:
    """Each (H, W) mask tinted and outlined in its colour on the (3, H, W) canvas.

    One `draw_segmentation_masks` call per mask: given them all at once it paints where masks overlap black.
    """
    # The outline: mask pixels with a pixel outside the mask within MASK_OUTLINE px (an erosion by min-pooling).
    size = 2 * MASK_OUTLINE + 1
    inner = -F.max_pool2d(-masks[:, None].float(), kernel_size=size, stride=1, padding=MASK_OUTLINE)[:, 0] > 0
    outline = masks & ~inner
    for mask, edge, colour in zip(masks, outline, colours, strict=True):
        if alpha > 0 and mask.any():
            canvas = draw_segmentation_masks(canvas, mask, alpha=alpha, colors=colour)
        if edge.any():
            canvas = draw_segmentation_masks(canvas, edge, alpha=1.0, colors=colour)
    return canvas

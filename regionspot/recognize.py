"""Name (and, with --caption, describe) the regions of one image from the command line.

    {prog} --config regionspot_bl --image photo.jpg --boxes "[[10, 20, 200, 240]]" --vocabulary "cat,dog,sofa"

Without --image it uses scikit-image's astronaut photo; without --boxes, a few boxes of that photo.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from regionspot.commands import argument_parser

if TYPE_CHECKING:
    import numpy as np

    from regionspot.predictor import RegionPredictions

_ASTRONAUT_BOXES = [[140, 20, 330, 240], [0, 0, 512, 512], [350, 20, 500, 250], [100, 300, 420, 512]]
_ASTRONAUT_VOCABULARY = "person,face,flag,rocket,spacesuit,helmet,dog,car,sky"


def main(argv: list[str] | None = None) -> None:
    parser = argument_parser("regionspot.recognize", __doc__)
    parser.add_argument("--config", required=True, help="model YAML, or a packaged model config's name (tiny, ...)")
    parser.add_argument("--image", help="image file; default: scikit-image's astronaut")
    parser.add_argument("--boxes", help='JSON list of [x1, y1, x2, y2] in pixels, e.g. "[[0, 0, 50, 80]]"')
    parser.add_argument("--vocabulary", default=_ASTRONAUT_VOCABULARY, help="comma-separated class names")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--caption", action="store_true", help="also caption each region (a model with a captioner)")
    parser.add_argument("--draw", metavar="OUT.png", help="also write a picture of the boxes, masks and names")
    args = parser.parse_args(argv)

    boxes = _ASTRONAUT_BOXES if args.image is None else None
    if args.boxes is not None:
        try:
            boxes = json.loads(args.boxes)
        except json.JSONDecodeError as err:
            parser.error(f"--boxes is not JSON: {err}")
    if boxes is None:
        parser.error("--boxes is required with --image")
    vocabulary = [name.strip() for name in args.vocabulary.split(",") if name.strip()]
    # Every refusal (a missing or unreadable file, a bad config, image, box or vocabulary, --caption with a
    # model that has no captioner) is one line that says what to do, not a traceback.
    from regionspot import RegionSpotPredictor, build_regionspot
    from regionspot.transforms import load_image

    try:
        if args.image is None:
            from skimage import data

            image = data.astronaut()
        else:
            image = load_image(args.image)  # upright by its EXIF orientation, as the predictor takes a PIL image
        predictor = RegionSpotPredictor(build_regionspot(args.config))
        predictor.set_image(image)
        result = predictor.predict(boxes=boxes, vocabulary=vocabulary, top_k=args.top_k, caption=args.caption)
    except (OSError, ValueError, TypeError) as err:
        raise SystemExit(f"error: {err}") from err
    for region in result.to_list():
        named = ", ".join(
            f"{label} {score:.2f}" for label, score in zip(region["labels"], region["scores"], strict=True)
        )
        said = f'  "{region["caption"]}"' if "caption" in region else ""
        print(f"box {[round(v) for v in region['box']]}  mask {int(region['mask'].sum())} px  ->  {named}{said}")
    if args.draw is not None:
        _draw(image, result, args.draw, vocabulary_size=len(vocabulary))


def _draw(image: np.ndarray, result: RegionPredictions, out_file: str, *, vocabulary_size: int) -> None:
    """Write the picture `--draw` asks for: each box with SAM's mask, its top name, score and caption."""
    from regionspot.files import save_picture
    from regionspot.visualize import draw_named_regions

    picture = draw_named_regions(image, result, vocabulary_size=vocabulary_size, mask_source="SAM's mask from the box")
    save_picture(picture, out_file)
    print(f"picture: {out_file}")


if __name__ == "__main__":
    main()

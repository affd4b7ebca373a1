"""Name (and, with --caption, describe) the regions of one image from the command line.

    python -m regionspot.recognize --config configs/model/regionspot_bl.yaml --image photo.jpg \
        --boxes "[[10, 20, 200, 240]]" --vocabulary "cat,dog,sofa" [--caption]

Without --image it uses scikit-image's astronaut photo; without --boxes, a few boxes of that photo.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from PIL import Image

from regionspot import RegionSpotPredictor, build_regionspot

_ASTRONAUT_BOXES = [[140, 20, 330, 240], [0, 0, 512, 512], [350, 20, 500, 250], [100, 300, 420, 512]]
_ASTRONAUT_VOCABULARY = "person,face,flag,rocket,spacesuit,helmet,dog,car,sky"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="model YAML (see configs/model/)")
    parser.add_argument("--image", help="image file; default: scikit-image's astronaut")
    parser.add_argument("--boxes", help='JSON list of [x1, y1, x2, y2] in pixels, e.g. "[[0, 0, 50, 80]]"')
    parser.add_argument("--vocabulary", default=_ASTRONAUT_VOCABULARY, help="comma-separated class names")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--caption", action="store_true", help="also caption each region (a model with a captioner)")
    args = parser.parse_args(argv)

    if args.image is None:
        from skimage import data

        image, boxes = data.astronaut(), _ASTRONAUT_BOXES
    else:
        image, boxes = np.array(Image.open(args.image).convert("RGB")), None
    if args.boxes is not None:
        boxes = json.loads(args.boxes)
    if boxes is None:
        parser.error("--boxes is required with --image")

    predictor = RegionSpotPredictor(build_regionspot(args.config))
    predictor.set_image(image)
    vocabulary = [name.strip() for name in args.vocabulary.split(",") if name.strip()]
    try:
        result = predictor.predict(boxes=boxes, vocabulary=vocabulary, top_k=args.top_k, caption=args.caption)
    except ValueError as err:  # e.g. --caption with a model that has no captioner: the message says what to do
        raise SystemExit(f"error: {err}") from err
    for region in result.to_list():
        named = ", ".join(
            f"{label} {score:.2f}" for label, score in zip(region["labels"], region["scores"], strict=True)
        )
        said = f'  "{region["caption"]}"' if "caption" in region else ""
        print(f"box {[round(v) for v in region['box']]}  mask {int(region['mask'].sum())} px  ->  {named}{said}")


if __name__ == "__main__":
    main()

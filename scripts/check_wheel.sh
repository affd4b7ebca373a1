#!/usr/bin/env bash
# The package as a user installs it: build the wheel, install it (not editable) into a fresh venv, and from an
# empty folder run every console command's --help, build_regionspot("tiny"), a tiny training by config name,
# an evaluation of its adapter and `regionspot-evaluate score` / `captions score` on the results, each of which
# must exit 0; and a failing command must exit non-zero with one line.
#
#   bash scripts/check_wheel.sh [.venv]      # tests/test_wheel.py runs it; ~1-2 min on 2 cores
#
# The fresh venv borrows the dependencies (torch alone is 5.6 GB) from the development venv through a path file,
# which adds that venv's site-packages after its own without running its .pth files: the editable install of
# regionspot there stays out, and `import regionspot` finds the installed wheel (checked below).
set -euo pipefail
cd "$(dirname "$0")/.."
DEV_VENV=$(realpath "${1:-.venv}")
WORK=$(mktemp -d)
# setuptools stages the wheel in build/, where a stale file would slip into the next wheel: start and end without it.
ROOT=$(pwd)
rm -rf "$ROOT/build"
trap 'rm -rf "$WORK" "$ROOT/build"' EXIT
"$DEV_VENV/bin/pip" wheel -q --no-deps --no-build-isolation -w "$WORK/dist" . 2>&1 | { grep -v "is ignored" || true; }
WHEEL=$(ls "$WORK"/dist/regionspot-*.whl)
python_bin=$(realpath "$DEV_VENV/bin/python")
"$python_bin" -m venv --without-pip "$WORK/venv"
site=$("$WORK/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
"$DEV_VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > "$site/dev_venv_deps.pth"
"$DEV_VENV/bin/pip" --python "$WORK/venv/bin/python" install -q --no-deps "$WHEEL" 2>&1 | { grep -v "is ignored" || true; }
echo "wheel: $(basename "$WHEEL") ($(du -k "$WHEEL" | cut -f1) KiB)"

mkdir "$WORK/empty" && cd "$WORK/empty"
export PATH="$WORK/venv/bin:$PATH" OMP_WAIT_POLICY=PASSIVE WANDB_MODE=disabled
where=$(python -c "import regionspot; print(regionspot.__file__)")
case "$where" in "$WORK/venv/"*) ;; *) echo "regionspot imported from $where, not the wheel" >&2; exit 1 ;; esac
for command in regionspot-demo regionspot-train regionspot-evaluate regionspot-recognize regionspot-app \
    regionspot-extract regionspot-configs regionspot-export regionspot-serve; do
    "$command" --help > /dev/null
done
regionspot-train export --help > /dev/null
regionspot-evaluate captions score --help > /dev/null
regionspot-configs > configs.txt && grep -q "regionspot_bl336" configs.txt
python -c "from regionspot import build_regionspot; build_regionspot('tiny'); build_regionspot('tiny.yaml')" 2>&1 \
    | { grep -v "^$" || true; }

regionspot-train fit --config tiny --trainer.max_steps 4 --trainer.val_check_interval 4 \
    --trainer.enable_progress_bar false --trainer.enable_model_summary false > train.log 2>&1 \
    || { cat train.log >&2; exit 1; }
test -f runs/tiny/adapter.safetensors
regionspot-evaluate --config runs/tiny/adapter.yaml --ann data/tiny/val.json --images data/tiny/images \
    --out eval --no-progress > eval.log 2>&1 || { cat eval.log >&2; exit 1; }
regionspot-evaluate score --gt data/tiny/val.json --detections eval/detections.json --out score.json > /dev/null
python - <<'PY'
import json
a, b = json.load(open("eval/metrics.json")), json.load(open("score.json"))
assert abs(a["AP"] - b["AP"]) < 1e-9, (a["AP"], b["AP"])
images = [{"id": 1, "file_name": "1.jpg", "width": 64, "height": 64}]
anns = [{"id": 10 + i, "image_id": 1, "bbox": [i, i, 20, 20], "caption": c} for i, c in enumerate(["a red box", "a blue circle"])]
json.dump({"images": images, "annotations": anns}, open("captions_gt.json", "w"))
json.dump([{"image_id": 1, "id": 10, "caption": "a red box"}, {"image_id": 1, "bbox": [1, 1, 20, 20], "caption": "a circle"}],
          open("captions.json", "w"))
PY
if command -v java > /dev/null; then
    regionspot-evaluate captions score --gt captions_gt.json --results captions.json --out captions_metrics.json > /dev/null
fi
if regionspot-evaluate score --gt missing.json --detections eval/detections.json --out x.json 2> error.txt; then
    echo "a missing file did not fail" >&2; exit 1
fi
[ "$(wc -l < error.txt)" -eq 1 ] && grep -q "^error: .*missing.json" error.txt
echo "the wheel works from an empty folder"

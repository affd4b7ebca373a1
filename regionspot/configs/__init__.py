"""The configs that ship with the package, addressable by name (as open_clip names its model configs).

Model configs (`model/*.yaml`: which SAM, which CLIP, what adapter) and training configs (`*.yaml`: LightningCLI's
model, data and trainer settings) install with the wheel. Wherever a config path is accepted, a bare name such as
`tiny` or `regionspot_bl` means the packaged file when no file of that name exists; `python -m regionspot.configs`
lists them. Checkpoint and data paths inside them stay relative to the folder you run from.
"""

from __future__ import annotations

import sys
from pathlib import Path

PACKAGED = Path(__file__).resolve().parent
KINDS = {"model": PACKAGED / "model", "training": PACKAGED}


def config_names(kind: str = "model") -> list[str]:
    """The names of the packaged configs of `kind` ("model" or "training"), sorted."""
    return sorted(path.stem for path in _folder(kind).glob("*.yaml"))


def resolve_config(name_or_path: str | Path, *, kind: str = "model") -> Path:
    """The YAML that `name_or_path` means: an existing file as it is, else the packaged config of that name
    (`tiny`, `tiny.yaml`).

    Raises:
        FileNotFoundError: neither a file nor a packaged name; the message lists the packaged names.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = _folder(kind) / path.with_suffix(".yaml").name
    if path.parent == Path(".") and path.suffix in ("", ".yaml") and packaged.is_file():
        return packaged
    raise FileNotFoundError(
        f"{kind} config not found: {name_or_path} is no file (from {Path.cwd()}) and no packaged {kind} config; "
        f"give a YAML path or one of: {', '.join(config_names(kind))}"
    )


def _folder(kind: str) -> Path:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    return KINDS[kind]


def _summary(path: Path) -> str:
    """The first comment line of a config: what it is."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def main(argv: list[str] | None = None) -> None:
    """`regionspot-configs`: list the packaged configs with what each is."""
    import argparse

    from regionspot.commands import prog_name

    parser = argparse.ArgumentParser(prog=prog_name("regionspot.configs"), description=main.__doc__)
    parser.add_argument("kind", nargs="?", choices=sorted(KINDS), help="list one kind only")
    parser.add_argument("--path", metavar="NAME", help="print the packaged file of this name instead")
    args = parser.parse_args(argv)
    if args.path:
        try:
            print(resolve_config(args.path, kind=args.kind or "model"))
        except FileNotFoundError as err:
            raise SystemExit(f"error: {err}") from err
        return
    for kind in [args.kind] if args.kind else sorted(KINDS):
        print(f"{kind} configs ({_folder(kind)}):")
        for name in config_names(kind):
            print(f"  {name:<16} {_summary(_folder(kind) / f'{name}.yaml')}")
    sys.stdout.flush()

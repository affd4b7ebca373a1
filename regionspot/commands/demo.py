"""`regionspot-demo` / `python -m regionspot.demo`: the built-in default, end to end (regionspot.demo says what)."""

from __future__ import annotations

import regionspot.demo
from regionspot.commands import argument_parser


def main(argv: list[str] | None = None) -> None:
    parser = argument_parser("regionspot.demo", regionspot.demo.__doc__)
    parser.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="the smaller size the test runs (its time and AP: docs/demo.md)"
    )
    args = parser.parse_args(argv)

    from regionspot.demo.run import FULL, QUICK, print_summary, run_demo

    print_summary(run_demo(out_dir=args.out, size=QUICK if args.quick else FULL, seed=args.seed), args.out)

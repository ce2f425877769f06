"""The `realm` command. The only module that parses arguments and prints."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def _demo(args: argparse.Namespace) -> int:
    from realm.demo import run_tiny_demo

    result = run_tiny_demo(args.question, seed=args.seed, device=args.device)
    print("realm demo: a random tiny REALM model over an 8-block toy corpus (pipeline check, not quality)")
    print(f"question: {result.question}")
    print(f"answer:   {result.answer!r}")
    print("evidence (blocks read, best first):")
    for rank, ev in enumerate(result.evidence, 1):
        print(f"  {rank}. block {ev.block_id}  p(block|question)={ev.retrieval_probability:.3f}  {ev.text}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="realm", description="REALM in modern PyTorch.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run the tiny offline end-to-end example")
    demo.add_argument("--question", default="who was a pioneer of computer science ?")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())

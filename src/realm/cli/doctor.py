"""`realm doctor` and `realm --version`: what a newcomer pastes into a bug report."""

from __future__ import annotations

import argparse


def _doctor(args: argparse.Namespace) -> int:
    import json

    from realm.doctor import environment_report

    report = environment_report()
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
    return 0


class _VersionAction(argparse.Action):
    """`--version`, computed only when asked (argparse's own version action wants the string up front)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from realm.doctor import version_line

        print(version_line())
        parser.exit()

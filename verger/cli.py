"""The `verger` command: one entry point for the job's commands and the one-machine tools."""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from verger.athena import add_command as add_query_command
    from verger.commands import add_commands
    from verger.suggest_commands import add_commands as add_suggest_commands
    from verger.demo.run import add_command as add_demo_command
    from verger.notebook import add_command as add_notebook_command
    from verger.status import add_command as add_status_command

    parser = argparse.ArgumentParser(prog="verger", description=__doc__)
    subparsers = parser.add_subparsers(required=True, metavar="COMMAND")
    add_commands(subparsers)
    add_suggest_commands(subparsers)
    add_demo_command(subparsers)
    add_query_command(subparsers)
    add_notebook_command(subparsers)
    add_status_command(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.command(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"verger: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

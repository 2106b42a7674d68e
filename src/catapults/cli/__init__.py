"""The ``catapults`` command line: a thin layer over the Python API.

One module per command (:mod:`~catapults.cli.run`, :mod:`~catapults.cli.config`,
:mod:`~catapults.cli.inspect`, :mod:`~catapults.cli.data`, :mod:`~catapults.cli.sweep`,
:mod:`~catapults.cli.reproduce`), each with ``add_parsers(sub)`` and its command functions;
:mod:`~catapults.cli.common` holds the parser class and the argument types they share. Modules
that import torch are imported inside the command functions, so that ``--help`` stays fast.

Exit codes: 0 success (a diverged run is a result, not an error), 1 a run that failed,
2 bad input (config, arguments, data files: one message naming the field or file).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from catapults import __version__
from catapults.cli import config, data, inspect, reproduce, run, sweep
from catapults.cli.common import Parser
from catapults.errors import CatapultsError

COMMANDS = {"reproduce": reproduce.cmd_reproduce, "run": run.cmd_run,
            "resume": run.cmd_resume, "config": config.cmd_config,
            "inspect": inspect.cmd_inspect, "data": data.cmd_data, "sweep": sweep.cmd_sweep,
            "sweep-report": sweep.cmd_sweep_report}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="catapults", description="Loss spikes (catapults) in neural network "
                    "training: NTK spectra, critical learning rates, AGOP alignment.")
    parser.add_argument("--version", action="version", version=f"catapults {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in (run, config, inspect, data, reproduce, sweep):
        module.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    try:
        return COMMANDS[args.command](args)
    except CatapultsError as err:  # every error the toolkit raises on purpose
        print(f"catapults: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # stdout closed early (`catapults inspect RUN | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as err:  # an output or input path the system refuses: one line, no traceback
        name = err.filename2 if err.filename2 is not None else err.filename
        reason = err.strerror or str(err)
        print(f"catapults: error: {f'{name}: ' if name is not None else ''}{reason}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("catapults: interrupted", file=sys.stderr)
        return 130


"""``catapults config show|validate``: the documented defaults, a resolved config, a check."""

from __future__ import annotations

import sys

import yaml

from catapults.cli.common import Parser, add_overrides
from catapults.config import describe_defaults, load_config


def add_parsers(sub) -> None:
    p = sub.add_parser("config", help="show or validate configs")
    csub = p.add_subparsers(dest="config_cmd", required=True, parser_class=Parser)
    show = csub.add_parser("show", help="print the full default config, every field documented "
                           "(or a file's resolved config)")
    show.add_argument("config", nargs="?", help="a config file to resolve (default: defaults)")
    add_overrides(show)
    val = csub.add_parser("validate", help="check a config as `run` would (fields, target, "
                          "data files, batch size, monitors, device) without training; exit 2 "
                          "naming the bad field")
    val.add_argument("config")
    add_overrides(val)


def cmd_config(args) -> int:
    if args.config_cmd == "show":
        if args.config is None and not args.overrides:
            sys.stdout.write(describe_defaults())
        else:
            cfg = load_config(args.config, args.overrides)
            sys.stdout.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    from catapults.runs import check_config  # imports torch

    check_config(load_config(args.config, args.overrides))  # data, target, model, monitors too
    print(f"{args.config}: ok")
    return 0

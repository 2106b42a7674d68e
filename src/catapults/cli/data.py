"""``catapults data list``: which real data sets are present under DATA_ROOT."""

from __future__ import annotations

from catapults.cli.common import Parser


def add_parsers(sub) -> None:
    p = sub.add_parser("data", help="real data sets under DATA_ROOT")
    dsub = p.add_subparsers(dest="data_cmd", required=True, parser_class=Parser)
    lst = dsub.add_parser("list", help="which data sets are present under DATA_ROOT")
    lst.add_argument("--root", help="data root (default: $CATAPULTS_DATA, else ./data)")


def cmd_data(args) -> int:
    from catapults.data import data_root  # imports torch
    from catapults.data.discovery import format_dataset_table, list_datasets

    print(f"DATA_ROOT: {data_root(args.root)}  (get MNIST and Fashion-MNIST with `make data`)")
    print(format_dataset_table(list_datasets(args.root)))
    return 0

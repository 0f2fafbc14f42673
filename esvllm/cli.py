"""Command-line parsers built from the config dataclasses (esvllm.config): one flag per field.

Each field's `help` metadata is its help text; bool fields get `--name` and `--no-name` (so a flag
can turn off what a preset turns on). Only the flags given appear in the parsed result, so presets
and saved configs fill in the rest. Imports nothing heavy.
"""

from __future__ import annotations

import argparse
import dataclasses


def build_parser(config_class, prog: str, description: str, aliases: dict | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description, argument_default=argparse.SUPPRESS)
    for f in dataclasses.fields(config_class):
        flags = [f"--{f.name}", *(aliases or {}).get(f.name, [])]
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f.metadata["help"]
        if f.metadata.get("one_of"):
            help_text += f"; one of: {', '.join(map(str, f.metadata['one_of']))}"
        if default is not None:
            help_text += f" (default: {default})"
        choices = None  # checked by the config, whose message names the flag, the value and the fix
        if f.type in (bool, "bool"):
            parser.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, help=help_text)
        elif f.metadata.get("nargs"):
            parser.add_argument(*flags, dest=f.name, nargs=f.metadata["nargs"], help=help_text, metavar="NAME=PATH")
        else:
            parser.add_argument(*flags, dest=f.name, type=_value_type(f), help=help_text, choices=choices,
                                metavar=None if choices else f.name.upper())
    return parser


def _value_type(f: dataclasses.Field):
    kind = str(f.type)
    if "int" in kind:
        return int
    if "float" in kind:
        return float
    return str

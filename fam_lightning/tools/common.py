"""The flags every ``fam-*`` tool shares, parsed in one place.

    --ckpt_path <ckpt>            the checkpoint (written by fam-train / train.py)
    --config <yaml>               a LightningCLI YAML: its ``model`` / ``data`` sections
                                  (``class_path`` + ``init_args``) override what the checkpoint stores
    --data.<arg> <value>          one data module argument (also ``--data.init_args.<arg>``,
                                  ``--data.<arg>=<value>``); ``--data.class_path`` the class
    --model.<arg> <value>         the same for the model (``--model.init_args.<arg>``)
    --model_class <dotted path>   the model class, whatever the checkpoint or config says

Values are read as YAML (``yaml.safe_load``), as LightningCLI does: ``32`` is an
int, ``true`` a bool, ``null`` None, ``[1, 2]`` a list, anything else a string.
Precedence, lowest first: the checkpoint, ``--config``, ``--data.*`` / ``--model.*``.

Every parser is built with ``allow_abbrev=False``: ``--ckpt`` is not ``--ckpt_path``.
User errors end the tool with one sentence naming the thing and what was expected, as the
last line printed, and exit status 2 (:meth:`argparse.ArgumentParser.error`).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SECTIONS = ("model", "data")


class ToolParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` without prefix matching of long options."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)


@dataclass
class Overrides:
    """What ``--config``, ``--data.*``, ``--model.*`` and ``--model_class`` say, merged.

    Attributes:
        model_class: dotted model class, or None (the checkpoint's).
        data_class: dotted data module class, or None (the checkpoint's).
        model: model ``__init__`` arguments overriding the checkpoint's hyper-parameters.
        data: data module ``__init__`` arguments overriding the checkpoint's.
    """

    model_class: str | None = None
    data_class: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)


def add_checkpoint_arguments(parser: argparse.ArgumentParser, data: bool = True) -> None:
    """``--ckpt_path``, ``--config`` and ``--model_class``; the dotted flags are taken by :func:`parse_tool_args`."""
    parser.add_argument("--ckpt_path", required=True, help="checkpoint written by fam-train / train.py")
    what = "`model` / `data` sections" if data else "`model` / `data` sections (data: for image_size / class names)"
    parser.add_argument("--config", default=None, metavar="YAML",
                        help=f"LightningCLI YAML whose {what} (class_path + init_args) override the checkpoint's")
    parser.add_argument("--model_class", default=None, help="the model class (dotted path), overriding the "
                        "checkpoint's and the config's")
    parser.epilog = (
        (parser.epilog + "\n\n" if parser.epilog else "")
        + "--data.<arg> <value> / --data.init_args.<arg> <value> (and --model.*) override one argument of the "
        "data module (model); values are read as YAML."
    )


def split_dotted(argv: list[str]) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """``argv`` without its ``--model.*`` / ``--data.*`` flags, and those flags' values per section.

    ``--data.root X``, ``--data.root=X``, ``--data.init_args.root X`` -> ``{"data": {"root": "X"}}``;
    ``--data.class_path C`` -> ``{"data": {"class_path": "C"}}``.

    Raises:
        ValueError: a dotted flag without a value, or one with a nested name (``--data.a.b``).
    """
    rest: list[str] = []
    found: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    index = 0
    while index < len(argv):
        arg = argv[index]
        section = next((s for s in SECTIONS if arg.startswith(f"--{s}.")), None)
        if section is None:
            rest.append(arg)
            index += 1
            continue
        name, has_value, value = arg[len(section) + 3:].partition("=")
        if not has_value:
            if index + 1 >= len(argv) or argv[index + 1].startswith("--"):
                raise ValueError(f"{arg} needs a value, e.g. {arg} <value>")
            value = argv[index + 1]
            index += 1
        index += 1
        key = name.removeprefix("init_args.")
        if not key or "." in key:
            raise ValueError(
                f"{arg}: expected --{section}.<argument> or --{section}.init_args.<argument> (one level), got {name!r}"
            )
        found[section][key] = yaml_value(value)
    return rest, found


_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def yaml_value(text: str) -> Any:
    """A command-line value read as YAML; text YAML cannot read stays text.

    Exponents without a dot (``1e-3``), text to YAML 1.1, are numbers here, as LightningCLI reads them.
    """
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and _NUMBER.match(value):
        return float(value)
    return value


def read_config(path: str | Path) -> dict[str, dict[str, Any]]:
    """``{"model": {...}, "data": {...}}`` of a LightningCLI YAML, each ``class_path`` kept as a key.

    Raises:
        FileNotFoundError: no such file. ValueError: not YAML, or a section that is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config not found: {path}")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"config {path} is not valid YAML{where}: {problem}") from err
    if not isinstance(config, dict):
        raise ValueError(f"config {path} must be a mapping with `model` / `data` sections, got {type(config).__name__}")
    sections: dict[str, dict[str, Any]] = {}
    for section in SECTIONS:
        value = config.get(section) or {}
        if isinstance(value, str):  # `data: some.Class`
            value = {"class_path": value}
        if not isinstance(value, dict):
            raise ValueError(f"config {path}: `{section}` must be a mapping (class_path / init_args), got {value!r}")
        init_args = value.get("init_args", {} if "class_path" in value else value) or {}
        if not isinstance(init_args, dict):
            raise ValueError(f"config {path}: `{section}.init_args` must be a mapping, got {init_args!r}")
        sections[section] = {k: v for k, v in init_args.items() if k != "class_path"}
        if value.get("class_path"):
            sections[section]["class_path"] = value["class_path"]
    return sections


def collect_overrides(config: str | None, dotted: dict[str, dict[str, Any]], model_class: str | None) -> Overrides:
    """The checkpoint overrides of ``--config``, the dotted flags and ``--model_class``, in that precedence."""
    merged = read_config(config) if config else {section: {} for section in SECTIONS}
    for section in SECTIONS:
        merged[section] = {**merged[section], **dotted.get(section, {})}
    model, data = dict(merged["model"]), dict(merged["data"])
    config_model_class = model.pop("class_path", None)
    return Overrides(
        model_class=model_class or config_model_class,
        data_class=data.pop("class_path", None),
        model=model,
        data=data,
    )


def parse_tool_args(
    parser: argparse.ArgumentParser, argv: list[str], aliases: dict[str, str] | None = None
) -> tuple[argparse.Namespace, Overrides]:
    """Parse ``argv``: the tool's own flags into a namespace, the shared overrides into :class:`Overrides`.

    Args:
        parser: the tool's parser (with :func:`add_checkpoint_arguments`).
        argv: the command line without the program name.
        aliases: deprecated flag attribute -> data argument (``{"root": "root"}``): a value given
            with the old flag becomes a data override, unless ``--data.*`` names the same argument.

    User errors go through ``parser.error`` (one sentence, exit 2).
    """
    try:
        rest, dotted = split_dotted(argv)
    except ValueError as err:
        parser.error(str(err))
    args = parser.parse_args(rest)
    for attribute, key in (aliases or {}).items():
        value = getattr(args, attribute, None)
        if value is not None:
            print(f"note: --{attribute} is deprecated, use --data.{key}", file=sys.stderr)
            dotted["data"].setdefault(key, value)
    try:
        overrides = collect_overrides(args.config, dotted, args.model_class)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    return args, overrides


# family -> the method that makes its decisions (a model is of the first family whose method it has)
FAMILY_METHODS = {"few-shot": "episode_forward", "memory bank": "knn", "retrieval": "top1"}


def model_family(model: Any) -> str | None:
    """"few-shot", "memory bank" or "retrieval" for a model (class or instance), None for none of them."""
    return next((family for family, method in FAMILY_METHODS.items() if hasattr(model, method)), None)


def check_writable_folder(folder: Path, what: str) -> None:
    """``folder`` is (or can be created as) a writable folder; ValueError naming ``what`` otherwise."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{what}: {existing} is a file, expected a folder to write into")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{what}: folder {existing} is not writable")

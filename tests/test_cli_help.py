"""``catalog-classifier --help`` lists every stage and action with consistent flags; ``make help`` every target."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml
from conftest import REPO

from catalog_classifier.cli import build_parser, main

ACTIONS = {"tune", "tune-overrides", "rollback", "predict", "serve", "bench", "bench-tune", "check-data", "spread",
           "stack", "bench-stack", "bench-serve", "bench-predict"}


def dvc_stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def help_text(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as stopped:
        main([*argv, "--help"])
    assert stopped.value.code == 0
    return capsys.readouterr().out


def listed_subcommands(text: str) -> dict[str, str]:
    """``name: help`` of the subcommand lines argparse prints under ``COMMAND``."""
    block = text.split("COMMAND\n", 1)[1].split("\n\n", 1)[0]
    listed: dict[str, str] = {}
    for line in block.splitlines():
        if match := re.match(r"^    ([a-z][a-z-]*)\s{2,}(\S.*)$", line):
            listed[match[1]] = match[2]
        elif match := re.match(r"^    ([a-z][a-z-]*)$", line):  # a long name: its help on the next line
            listed[match[1]] = ""
        elif listed and line.startswith(" " * 8):
            last = next(reversed(listed))
            listed[last] = (listed[last] + " " + line.strip()).strip()
    return listed


def test_help_lists_every_stage_and_action_with_a_one_line_help(capsys: pytest.CaptureFixture[str]) -> None:
    listed = listed_subcommands(help_text(capsys))
    stages = set(dvc_stages())
    assert set(listed) == stages | ACTIONS, set(listed) ^ (stages | ACTIONS)
    for name, text in listed.items():
        assert text and "\n" not in text, name
    for name, stage in dvc_stages().items():  # every DVC stage runs the subcommand of its own name
        command = stage.get("cmd") or stage["do"]["cmd"]
        assert command.split()[:2] == ["catalog-classifier", name]


def test_every_subcommand_takes_params_set_and_verbose(capsys: pytest.CaptureFixture[str]) -> None:
    commands = build_parser()._subparsers._group_actions[0].choices
    per_model = {name for name, stage in dvc_stages().items() if "foreach" in stage}
    assert per_model == {"train", "evaluate", "explain"}
    for name, parser in commands.items():
        options = {option: action for action in parser._actions for option in action.option_strings}
        assert {"--params", "--set", "-v", "--verbose", "-h"} <= set(options), name
        text = help_text(capsys, name)
        assert "--params PARAMS" in text and "--set KEY=VALUE" in text, name
        model = options.get("--model")
        if name in per_model:
            assert model is not None and model.required, name
        if model is not None and model.help != "==SUPPRESS==":  # predict's hidden older spelling of --model-uri
            assert "params.models" in model.help, (name, model.help)


def test_predict_takes_a_model_uri_and_the_older_model_spelling() -> None:
    parser = build_parser()
    for flag in ("--model-uri", "--model"):
        args = parser.parse_args(["predict", "x.jpg", flag, "models:/m@challenger"])
        assert args.model == "models:/m@challenger"
    with pytest.raises(SystemExit):
        parser.parse_args(["predict", "x.jpg", "--model-uri", "models:/m/1", "--version", "2"])


def test_make_help_lists_every_target() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    targets = {match for match in re.findall(r"^([a-zA-Z][a-zA-Z_-]*):", makefile, flags=re.MULTILINE)}
    phony = set(re.search(r"^\.PHONY:((?:.*\\\n)*.*)$", makefile, flags=re.MULTILINE)[1].replace("\\", " ").split())
    shown = subprocess.run(["make", "-s", "--no-print-directory", "help"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout
    listed = dict(re.findall(r"^  make (\S+)\s+(.+)$", shown, flags=re.MULTILINE))
    assert set(listed) == targets, set(listed) ^ targets
    assert phony == targets, phony ^ targets
    assert {"browser", "report", "test", "run", "ui"} <= set(listed)
    assert all(text.strip() for text in listed.values())

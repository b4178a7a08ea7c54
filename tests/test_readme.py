"""The README's command lines still parse, and every command's --help writes defaults one way
(issue 16 §4): nothing here runs the work, click only parses."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from uniskel import cli
from uniskel.cli import uni

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands(text: str) -> list[list[str]]:
    """The `uni …` command lines of the markdown's shell code blocks (```bash / sh / console,
    or indented), as argv after `uni`; `\\` continuations joined, comments and `...`
    placeholders dropped. Untagged fenced blocks (diagrams, data specs) are not commands."""
    lines, fence = [], None
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fence = line.strip()[3:] if fence is None else None
        elif fence in ("bash", "sh", "shell", "console") or (fence is None and
                                                             line.startswith("    ")):
            lines.append(line)
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if not re.search(r"(^|[\s/])uni\s", line):
            continue
        words = shlex.split(line, comments=True)
        at = [i for i, w in enumerate(words) if Path(w).name == "uni"]
        if at:
            out.append([w for w in words[at[0] + 1:] if w not in ("...", "…")])
    return out


def parse(argv: list[str]) -> None:
    """Parse a command line as `uni` would, without running it (the group's options, then the
    command's): click's error for an unknown command or option, a bad value or a missing one."""
    with uni.make_context("uni", list(argv)) as ctx:
        name, command, rest = uni.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        with command.make_context(name, rest, parent=ctx):
            pass


def test_every_readme_command_line_parses(monkeypatch, tmp_path):
    # Output paths are checked when parsed (cli.OutPath); the README's /shared/... need not exist.
    monkeypatch.setattr(cli, "check_output_path", lambda path, what="--out": None)
    monkeypatch.chdir(tmp_path)
    commands = readme_commands(README.read_text(encoding="utf-8"))
    assert len(commands) >= 10 and {c[0] for c in commands if c[0] in uni.commands} >= {
        "describe-teacher", "cache-teachers", "inspect-store", "train-student", "evaluate",
        "report", "export", "predict"}
    for argv in commands:
        try:
            parse(argv)
        except click.ClickException as e:
            pytest.fail(f"README: `uni {shlex.join(argv)}`: {e.format_message()}")


def test_the_check_fails_on_an_option_that_does_not_exist():
    text = "```bash\nuni cache-teachers --data coco:a.json --teacher t.onnx \\\n" \
           "    --out s/ --no-such-option 3   # a comment\n```\n"
    (argv,) = readme_commands(text)
    assert argv[-2:] == ["--no-such-option", "3"]
    with pytest.raises(click.NoSuchOption):
        parse(argv)
    with pytest.raises(click.UsageError, match="No such command"):
        parse(["no-such-command"])
    with pytest.raises(click.NoSuchOption):
        parse(["--no-such-group-option", "synth", "--out", "x"])
    parse(["--skeletons", "mine.toml", "synth", "--out", "x"])  # parsed, not loaded


def _help(command: str) -> str:
    res = CliRunner().invoke(uni, [command, "--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    return res.output


def test_help_writes_defaults_one_way():
    """Click's `[default: …]` everywhere (no "(default …)" prose, no bare "[value]"), no "%%";
    train-student's defaults are student/config.py's, and its help and the README list the
    keys only a --config file sets."""
    from uniskel.student.config import DEFAULTS, RECIPES

    for command in uni.commands:
        text = _help(command)
        assert "%%" not in text, command
        assert not re.search(r"\(default|default:(?<!\[default:)|Default:", text), command
        for bracket in re.findall(r"\[([^\]]*)\]", text):  # metavars, choices, click's own
            assert (bracket.startswith("default: ") or bracket == "required" or "|" in bracket
                    or re.fullmatch(r":?[A-Z_]+", bracket)), (command, bracket)
    text = _help("train-student")
    assert f"[default: {DEFAULTS['epochs']}]" in text
    assert (f"{RECIPES['uni']['lr']:g} (uni), {RECIPES['rtmpose']['lr']:g} (rtmpose)" in text
            and "[default: 256x192]" in text)
    options = {p.name for p in uni.commands["train-student"].params} | {"input_wh"}
    only_config = [k for k in DEFAULTS if k not in options]
    assert {"weight_decay", "warmup_steps", "kd_beta", "val_fraction", "max_steps"} <= set(
        only_config)
    readme, flat = README.read_text(encoding="utf-8"), " ".join(text.split())
    flat = re.sub(r"(\w)- (\w)", r"\1-\2", flat)  # click wraps at a key's hyphens
    for key in only_config:
        name = key.replace("_", "-")
        assert re.search(rf"{name} {re.escape(cli._shown(DEFAULTS[key]))}\b", flat), key
        assert re.search(rf"`{name}` \[{re.escape(cli._shown(DEFAULTS[key]))}\b", readme), (
            f"README does not list the config key {name} with its default")


def test_the_tests_the_readme_cites_exist():
    """`test_x.py::test_name` and the `::test_name` that follow it name real tests, so a split
    or renamed test file cannot leave the README pointing nowhere."""
    tests = README.parent / "tests"
    current, missing = None, []
    for m in re.finditer(r"`(?:tests/)?(test_\w+\.py)?::(test_\w+)`", README.read_text()):
        current = m.group(1) or current
        path = tests / current
        if not (path.is_file() and re.search(rf"^def {m.group(2)}\(", path.read_text(), re.M)):
            missing.append(f"{current}::{m.group(2)}")
    assert not missing, f"README cites tests that do not exist: {missing}"

"""The `compembed` commands quoted in README.md and docs/ name only subcommands and options the CLI has."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from compembed.cli.main import build_parser

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
CODE = re.compile(r"```[^\n]*\n(.*?)```|`([^`\n]+)`", re.S)  # fenced blocks and inline code spans
# One command: `compembed SUB [criteo|table]` up to the end of its line (a trailing backslash continues it)
# or a shell separator or comment; `from compembed import` is Python, not a command.
COMMAND = re.compile(r"(?<!from )\bcompembed (\w+)(?:(?<=prepare) (criteo|table)\b)?((?:\\\n|[^\n;|&#])*)")
FLAG = re.compile(r"(?<![\w-])--[a-z][\w-]*")


def subcommand_options() -> dict[str, set[str]]:
    """Option strings per subcommand (``prepare criteo`` and ``prepare table`` on their own), the
    top-level ones (``--debug``, ``--version``) included in each."""
    parser = build_parser()
    top = set(parser._option_string_actions)
    options = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                options[name] = top | set(sub._option_string_actions)
                for nested in (a for a in sub._actions if isinstance(a, argparse._SubParsersAction)):
                    for nested_name, leaf in nested.choices.items():
                        options[f"{name} {nested_name}"] = options[name] | set(leaf._option_string_actions)
    return options


def quoted_commands(text: str):
    """``(line, subcommand, flags)`` for each ``compembed`` command in the code of a markdown text."""
    for code in CODE.finditer(text):
        body = code.group(1) if code.group(1) is not None else code.group(2)
        for command in COMMAND.finditer(body):
            line = text.count("\n", 0, code.start()) + body.count("\n", 0, command.start()) + 1 + (code.group(1) is not None)
            name = command.group(1) + (f" {command.group(2)}" if command.group(2) else "")
            yield line, name, FLAG.findall(command.group(3))


def test_quoted_commands_reads_fences_spans_and_continuations():
    text = ("Run `compembed train --rows 5 --dim 8` then\n```bash\ncompembed sweep --preset tiny \\\n  --jobs 2  # --not-this\n"
            "compembed prepare criteo x.tsv --out d && compembed plan --cold robe\n```\nfrom `from compembed import x --y`\n")
    assert list(quoted_commands(text)) == [
        (1, "train", ["--rows", "--dim"]),
        (3, "sweep", ["--preset", "--jobs"]),
        (5, "prepare criteo", ["--out"]),
        (5, "plan", ["--cold"]),
    ]


def test_every_option_quoted_in_the_docs_exists():
    options = subcommand_options()
    checked, wrong = 0, []
    for path in DOCS:
        for line, name, flags in quoted_commands(path.read_text()):
            where = f"{path.relative_to(REPO)}:{line}"
            if name not in options:
                wrong.append(f"{where}: `compembed {name}` is no subcommand")
                continue
            checked += len(flags)
            wrong += [f"{where}: `compembed {name}` has no option {flag}" for flag in flags if flag not in options[name]]
    assert not wrong, "\n".join(wrong)
    assert checked > 200  # the docs quote about 300 options: a broken pattern that finds none must fail

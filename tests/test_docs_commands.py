"""Every command in the README and docs runs as written in a checkout set up by ./scripts/serve.sh.

For each command of a fenced shell block (README.md, docs/*.md, keys/README.md):
- the interpreter is ``.venv/bin/python`` or a console script in ``.venv/bin`` (only there are the
  dependencies installed) or a ``./scripts/...`` entry point; a bare ``python``/``pytest`` is an
  error, except inside a container (``docker compose run|exec``, ``kubectl exec``: the image's);
- every repository path it names (``scripts/``, ``tests/``, ``docs/``, ``app/``, ``deploy/``) exists;
- its arguments parse with the real argparse parser of the script or of ``python -m app`` (the
  script runs up to ``parse_args`` and stops there), so a renamed or misspelt ``--flag`` fails here;
- each script named also answers ``--help`` for real.

The prose says the same: an inline ``python scripts/...``, ``python -m app ...`` or ``pytest ...``
outside a container context is an error, in the docs and in the scripts' usage docstrings.
tests/test_readme.py runs the README walk-through itself against a live broker.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCS = sorted([ROOT / "README.md", ROOT / "keys" / "README.md", *(ROOT / "docs").glob("*.md")])
SHELL_LANGS = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^([ \t]*)```(\w*)[^\n]*\n(.*?)^[ \t]*```", re.M | re.S)
SEPARATORS = {"|", "||", "&&", ";", "&", "(", ")", ";;", "|&"}
SHELL_WORDS = {"for", "do", "done", "if", "then", "elif", "else", "fi", "while", "until", "case", "esac", "export",
               "{", "}", "!"}
CONTAINER_TOOLS = {"docker", "kubectl", "podman"}
BARE_INTERPRETER = re.compile(r"(python3?(\.\d+)?|pytest|pip3?|ruff)")
REPO_PATH = re.compile(r"\.?/?(scripts|tests|docs|app|deploy|\.ci)/[\w./-]*")
#: Console script -> the package whose ``python -m`` parses its arguments: the server's and the
#: libraries' (packages/*: installed into .venv with the server by scripts/_setup.sh).
CONSOLE_SCRIPTS = {
    name: target.split(":")[0].rsplit(".", 1)[0]  # app.__main__:main -> app: python -m app runs it
    for pyproject in (ROOT / "pyproject.toml", *sorted((ROOT / "packages").glob("*/pyproject.toml")))
    for name, target in tomllib.loads(pyproject.read_text())["project"].get("scripts", {}).items()
}
#: Console scripts of the pinned [test] extra that a doc may call as .venv/bin/NAME.
TEST_CONSOLE_SCRIPTS = {"pytest", "ruff"}


@dataclass
class Command:
    where: str  # file:line of the block
    words: list[str]
    problems: list[str] = field(default_factory=list)
    #: (target, argv) to parse with the real parser: a script path, or a module ("app" for python -m app).
    parse: tuple[str, list[str]] | None = None


def shell_blocks(path: Path) -> list[tuple[int, str]]:
    """(line, text) of each fenced shell block; an unlabelled block counts when it starts like a command."""
    text = path.read_text()
    blocks = []
    for m in FENCE.finditer(text):
        body = textwrap.dedent(m.group(3))
        first = next((line.split()[0] for line in body.splitlines() if line.strip()), "")
        looks_like_command = first.startswith((".venv/", "./", "python", "pytest", "curl", "docker", "kubectl"))
        if m.group(2) in SHELL_LANGS or (not m.group(2) and looks_like_command):
            blocks.append((text[:m.start()].count("\n") + 1, body))
    return blocks


def split_segments(block: str) -> list[list[str]]:
    """The simple commands of a block: continuation lines joined, split at | && || ; & and $( ),
    redirections and comments dropped."""
    segments: list[list[str]] = []
    for line in re.sub(r"\\\n", " ", block).splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        current: list[str] = []
        tokens = list(lex)
        skip = False
        for token in tokens:
            if skip:
                skip = False
            elif token in SEPARATORS:
                segments.append(current)
                current = []
            elif set(token) <= set("<>&") and set(token) & set("<>"):  # a redirection: drop it and its target
                if current and current[-1].isdigit():
                    current.pop()
                skip = True
            else:
                current.append(token)
        segments.append(current)
    return [s for s in segments if s]


def expand(word: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: variables.get(m.group(1), "x"), word)


def commands(path: Path) -> list[Command]:
    found = []
    for line, block in shell_blocks(path):
        variables: dict[str, str] = {}
        for words in split_segments(block):
            while words and (re.match(r"[A-Za-z_]\w*=", words[0]) or words[0] == "export"):
                name, _, value = words.pop(0).partition("=")
                if value and not value.endswith("$"):
                    variables[name] = expand(value, variables)
            if words and re.fullmatch(r"\$\{?(\w+)\}?", words[0]) and words[0].strip("${}") in variables:
                words = shlex.split(variables[words[0].strip("${}")]) + words[1:]  # R="docker compose ..."; $R status
            words = [expand(w, variables) for w in words]
            if words and words[0] not in SHELL_WORDS:
                found.append(check(Command(f"{_name(path)}:{line}", words)))
    return found


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def check(cmd: Command) -> Command:
    first, args = cmd.words[0], cmd.words[1:]
    for word in cmd.words:
        # kubectl names cluster objects as kind/name (deploy/token-broker), not repository files.
        path = REPO_PATH.fullmatch(word) and not (first == "kubectl" and "/" in word and "." not in word) \
            and word.split("::")[0]
        if path and not (ROOT / path).exists():
            cmd.problems.append(f"{word}: no such file in the repository")
    if first in CONTAINER_TOOLS:
        inner = next((i for i, w in enumerate(args) if BARE_INTERPRETER.fullmatch(w)), None)
        if inner is not None and args[inner].startswith("python"):
            python_args(cmd, args[inner + 1:])
    elif BARE_INTERPRETER.fullmatch(first) or first in CONSOLE_SCRIPTS:
        cmd.problems.append(f"{first}: use .venv/bin/{'python' if first.startswith('python') else first} "
                            "(the dependencies are installed there only)")
    elif first.startswith(".venv/bin/"):
        name = first[len(".venv/bin/"):]
        if name == "python":
            python_args(cmd, args)
        elif name in CONSOLE_SCRIPTS:
            cmd.parse = (CONSOLE_SCRIPTS[name], args)
        elif name not in TEST_CONSOLE_SCRIPTS:
            cmd.problems.append(f"{first}: not the venv's python nor a console script of pyproject.toml")
    elif first.startswith(("./scripts/", "scripts/")):
        script = ROOT / first
        if not (script.is_file() and os.access(script, os.X_OK)):
            cmd.problems.append(f"{first}: not an executable script")
        elif first.endswith("serve.sh"):
            cmd.parse = ("app", ["serve", *args])  # serve.sh passes its arguments to `python -m app serve`
    return cmd


def python_args(cmd: Command, args: list[str]) -> None:
    if not args:
        cmd.problems.append("python without arguments")
    elif args[0] == "-c":
        return
    elif args[:2] == ["-m", "app"]:
        cmd.parse = ("app", args[2:])
    elif args[:2] == ["-m", "pytest"]:
        return  # test paths are checked above
    elif args[0].endswith(".py"):
        if not (ROOT / args[0]).is_file():
            cmd.problems.append(f"{args[0]}: no such script")
        else:
            cmd.parse = (args[0], args[1:])
    else:
        cmd.problems.append(f"python {args[0]}: not a script, -m app, -m pytest or -c")


ALL = [cmd for doc in DOCS for cmd in commands(doc)]

# Runs each script (or python -m app) up to its parse_args and stops there: the real parser, no side effects.
_PARSE_ONLY = r"""
import argparse, contextlib, io, json, runpy, sys

class Parsed(Exception):
    pass

real_parse_args = argparse.ArgumentParser.parse_args

def parse_only(self, args=None, namespace=None):
    real_parse_args(self, args, namespace)
    raise Parsed

argparse.ArgumentParser.parse_args = parse_only
results = []
for target, argv in json.load(sys.stdin):
    err = io.StringIO()
    sys.argv = [target, *argv]
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            if not target.endswith(".py"):  # a module: python -m app, a library's console script
                runpy.run_module(target, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(target, run_name="__main__")
        results.append("finished without parsing its arguments")
    except Parsed:
        results.append("")
    except SystemExit as exc:
        results.append(f"exit {exc.code}: {err.getvalue().strip()}")
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def parsed() -> dict[int, str]:
    """index in ALL -> "" when the real parser accepted the command's arguments, else its error."""
    todo = [(i, cmd.parse) for i, cmd in enumerate(ALL) if cmd.parse]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", _PARSE_ONLY], input=json.dumps([p for _, p in todo]), cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return {i: result for (i, _), result in zip(todo, json.loads(done.stdout.splitlines()[-1]))}


def test_the_docs_have_commands():
    named = {cmd.where.split(":")[0] for cmd in ALL}
    assert {"README.md", "docs/onboarding.md", "docs/operations.md", "docs/performance.md"} <= named
    assert sum(1 for cmd in ALL if cmd.parse) >= 15


@pytest.mark.parametrize("index", range(len(ALL)), ids=[f"{c.where} {' '.join(c.words)[:60]}" for c in ALL])
def test_command_runs_as_written(index, parsed):
    cmd = ALL[index]
    assert cmd.problems == [], f"{cmd.where}: {shlex.join(cmd.words)}"
    if cmd.parse:
        assert parsed[index] == "", f"{cmd.where}: {shlex.join(cmd.words)}: {parsed[index]}"


#: The suite's guard (tests/conftest.py) takes any run of these for a server start, --help included.
_GUARDED = {"scripts/bench.py", "scripts/demo.py"}
SCRIPTS = [pytest.param(target, marks=[pytest.mark.live] if target in _GUARDED else [])
           for target in sorted({cmd.parse[0] for cmd in ALL if cmd.parse})]


@pytest.mark.parametrize("target", SCRIPTS)
def test_every_script_named_answers_help(target):
    argv = [target] if target.endswith(".py") else ["-m", target]  # a script, or python -m app / a library
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, *argv, "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, "") and done.stdout.startswith("usage:"), done.stderr


# -- the same in prose ------------------------------------------------------------------------------------

_BARE_IN_PROSE = re.compile(r"`((?:python3?|pytest|pip3?) [^`]*)`")
_BARE_IN_DOCSTRING = re.compile(r"(?<![\w/.])python3? scripts/")
_CONTAINER_CONTEXT = re.compile(r"docker|kubectl|compose|keys-init|image")


def _prose_offenders() -> list[str]:
    found = []
    for doc in DOCS:
        lines = doc.read_text().splitlines()
        for number, line in enumerate(lines, 1):
            context = (lines[number - 2] if number > 1 else "") + line  # a sentence may name the container a line earlier
            for span in _BARE_IN_PROSE.findall(line):
                if not _CONTAINER_CONTEXT.search(context):
                    found.append(f"{doc.relative_to(ROOT)}:{number}: `{span}`")
    for script in sorted([*(ROOT / "scripts").glob("*.py"), *(ROOT / "scripts").glob("*/*.py")]):
        for number, line in enumerate(script.read_text().splitlines(), 1):
            if _BARE_IN_DOCSTRING.search(line) and not _CONTAINER_CONTEXT.search(line):
                found.append(f"{script.relative_to(ROOT)}:{number}: {line.strip()}")
    return found


def test_prose_names_the_venv_interpreter():
    assert _prose_offenders() == []


@pytest.mark.parametrize("text,problems", [
    ("python scripts/demo.py", ["python: use .venv/bin/python (the dependencies are installed there only)"]),
    ("pytest tests/test_demo.py -q", ["pytest: use .venv/bin/pytest (the dependencies are installed there only)"]),
    ("token-broker serve", ["token-broker: use .venv/bin/token-broker (the dependencies are installed there only)"]),
    (".venv/bin/python scripts/nope.py", ["scripts/nope.py: no such file in the repository", "scripts/nope.py: no such script"]),
    (".venv/bin/flask run", [".venv/bin/flask: not the venv's python nor a console script of pyproject.toml"]),
    ("docker compose run --rm keys-init python scripts/rotate_signing_key.py status", []),
    ("./scripts/serve.sh --port 9000", []),
    ("./scripts/missing.sh", ["./scripts/missing.sh: no such file in the repository", "./scripts/missing.sh: not an executable script"]),
], ids=["bare-python", "bare-pytest", "bare-console-script", "missing-script", "foreign-venv-tool", "in-container",
        "serve-sh", "missing-sh"])
def test_the_checker_itself(tmp_path, text, problems):
    doc = tmp_path / "probe.md"
    doc.write_text(f"```bash\n{text}\n```\n")
    [cmd] = commands(doc)
    assert cmd.problems == problems


def test_the_parser_check_catches_a_wrong_flag():
    """The same parse-only run that checks the docs refuses a flag the parser does not know."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}, "PYTHONPATH": str(ROOT)}
    probes = [["scripts/broker_admin.py", ["register", "x", "--scopes", "a", "--audience", "https://a.example"]],
              ["scripts/broker_admin.py", ["register", "x", "--scope", "a", "--audience", "https://a.example"]],
              ["app", ["serve", "--threads", "2"]]]
    done = subprocess.run([sys.executable, "-c", _PARSE_ONLY], input=json.dumps(probes), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    wrong, right, app_wrong = json.loads(done.stdout.splitlines()[-1])
    assert wrong.startswith("exit 2:") and "--scopes" in wrong
    assert right == ""
    assert app_wrong.startswith("exit 2:") and "--threads" in app_wrong

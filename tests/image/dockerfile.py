"""A small reader of ``cluster/Dockerfile``: stages, instructions, and the runtime stage's ENTRYPOINT, CMD, ENV and
HEALTHCHECK, so tests run exactly what the image declares (no second copy of a command to drift from it)."""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "cluster" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    args: str  # continuation lines joined, comments inside them dropped
    line: int  # 1-based line of the keyword


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


def instructions(text: str) -> list[Instruction]:
    """Instructions in order (Docker's rules: ``#`` lines are comments, also inside a continued instruction)."""
    out: list[Instruction] = []
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if buffer and line.startswith("#"):
            continue
        if not buffer:
            start = number
        if line.endswith("\\"):
            buffer.append(line[:-1].strip())
            continue
        buffer.append(line)
        joined = " ".join(part for part in buffer if part)
        keyword, _, args = joined.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
        buffer = []
    if buffer:
        raise ValueError(f"line {start}: continuation never ends")
    return out


def parse(path: Path = DOCKERFILE) -> tuple[list[Instruction], list[Stage]]:
    """(global instructions before the first FROM, the stages in order)."""
    head: list[Instruction] = []
    stages: list[Stage] = []
    for inst in instructions(path.read_text()):
        if inst.keyword == "FROM":
            words = inst.args.split()
            words = [w for w in words if not w.startswith("--")]  # --platform=...
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif stages:
            stages[-1].instructions.append(inst)
        else:
            head.append(inst)
    return head, stages


def exec_form(inst: Instruction) -> list[str]:
    """The JSON array of an exec-form instruction (ENTRYPOINT, CMD, HEALTHCHECK's CMD); ValueError otherwise."""
    args = inst.args
    if inst.keyword == "HEALTHCHECK":
        match = re.search(r"\bCMD\s+(.*)$", args)
        if match is None:
            raise ValueError(f"line {inst.line}: HEALTHCHECK without CMD")
        args = match.group(1)
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        raise ValueError(f"line {inst.line}: {inst.keyword} is not in exec form: {args}") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"line {inst.line}: {inst.keyword} is not a JSON array of strings")
    return value


def healthcheck_options(inst: Instruction) -> dict[str, str]:
    options = inst.args.split(" CMD ", 1)[0]
    return dict(re.findall(r"--([a-z-]+)=(\S+)", options))


def env(stage: Stage) -> dict[str, str]:
    """The stage's ENV, in order, ``$VAR``/``${VAR}`` expanded from earlier ENV (unknown ones left as written)."""
    values: dict[str, str] = {}

    def expand(value: str) -> str:
        return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: values.get(m.group(1), m.group(0)), value)

    for inst in stage.all("ENV"):
        words = shlex.split(inst.args)
        if words and "=" not in words[0]:  # legacy `ENV KEY value`
            values[words[0]] = expand(" ".join(words[1:]))
            continue
        for word in words:
            key, _, value = word.partition("=")
            values[key] = expand(value)
    return values


def copies(stage: Stage) -> dict[str, str]:
    """Destination → source (repository path) of the stage's COPY instructions from the build context."""
    out: dict[str, str] = {}
    workdir = "/"
    for inst in stage.instructions:
        if inst.keyword == "WORKDIR":
            workdir = inst.args if inst.args.startswith("/") else f"{workdir.rstrip('/')}/{inst.args}"
        if inst.keyword != "COPY" or "--from=" in inst.args:
            continue
        words = [w for w in inst.args.split() if not w.startswith("--")]
        *sources, dest = words
        if not dest.startswith("/"):
            dest = posixpath.normpath(f"{workdir}/{dest}") + ("/" if dest.endswith("/") else "")
        for source in sources:  # one source: it becomes dest (a folder's contents go into dest)
            target = dest.rstrip("/") if len(sources) == 1 else dest.rstrip("/") + "/" + Path(source).name
            out[target] = source.rstrip("/")
    return out


def runtime() -> Stage:
    return parse()[1][-1]


def entrypoint_and_cmd() -> tuple[list[str], list[str]]:
    stage = runtime()
    entry, cmd = stage.last("ENTRYPOINT"), stage.last("CMD")
    assert entry is not None and cmd is not None, "the runtime stage declares no ENTRYPOINT or CMD"
    return exec_form(entry), exec_form(cmd)


def ignored(path: str, patterns: list[str] | None = None) -> bool:
    """Whether ``.dockerignore`` keeps ``path`` (a file or folder relative to the context) out of the build.

    Docker's rules: patterns in order, the last one that matches wins, ``!`` re-includes; a pattern that matches a
    folder matches everything under it. ``**`` matches any number of folders.
    """
    if patterns is None:
        patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                    if line.strip() and not line.strip().startswith("#")]
    parts = Path(path).parts
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _regex(pattern.lstrip("!").rstrip("/"))
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            result = not negate
    return result


def _regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)

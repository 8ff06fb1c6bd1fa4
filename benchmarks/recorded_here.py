"""Traces recorded from programs found on this machine, for the utilization benchmark.

``record_programs(directory)`` runs each program of PROGRAMS that is
installed under ``pyalloc record`` (the LD_PRELOAD interposer; a C compiler
is needed once, to build it) and returns the traces it wrote. The programs
are ordinary tools doing ordinary work: text processing (awk, perl, sort,
grep), file trees (find, ls, tar), compilers (gcc's cc1, g++'s cc1plus),
git, make, and Python (with ``PYTHONMALLOC=malloc``, so that its small
objects reach malloc). What they allocate depends on this machine (its
files, its versions): the set is a sample of real programs that no placement
rule was tuned on, not a fixed benchmark.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from pyalloc.trace.record import RecordError, record

ROOT = Path(__file__).resolve().parents[1]
MAX_OPS = 200_000  # ops kept of each program


class Program(NamedTuple):
    name: str
    argv: Callable[[Path], list[str]]  # the command, given a scratch directory
    follow_exec: bool = False  # the process that allocates most: a compiler behind its driver
    python: bool = False  # PYTHONMALLOC=malloc


def _makefile(scratch: Path) -> list[str]:
    targets = " ".join(f"t{i}" for i in range(300))
    rules = "".join(f"t{i}: t{i + 1}\n\t@echo t{i}\n" for i in range(299))
    (scratch / "Makefile").write_text(f"all: {targets}\n{rules}t299:\n\t@echo last\n")
    return ["make", "-n", "-C", str(scratch)]


def _numbers(scratch: Path) -> list[str]:
    path = scratch / "numbers.txt"
    path.write_text("".join(f"{(i * 7919) % 200_003}\n" for i in range(200_000)))
    return ["sort", "-n", str(path)]


def _cpp(scratch: Path) -> list[str]:
    source = scratch / "t.cc"
    source.write_text(
        "#include <map>\n#include <string>\n#include <vector>\n"
        "int main() { std::map<std::string, std::vector<int>> m;\n"
        "  for (int i = 0; i < 100; i++) m[std::to_string(i)].push_back(i);\n"
        "  return (int)m.size(); }\n"
    )
    return ["g++", "-O1", "-c", str(source), "-o", str(scratch / "t.o")]


def _c(scratch: Path) -> list[str]:
    source = scratch / "t.c"
    source.write_text(
        "#include <stdio.h>\nstatic int f(int x) { return x * 2; }\n"
        'int main(void) { int s = 0; for (int i = 0; i < 100; i++) s += f(i); printf("%d", s); }\n'
    )
    return ["gcc", "-O2", "-c", str(source), "-o", str(scratch / "t.o")]


PROGRAMS: tuple[Program, ...] = (
    Program(
        "awk",
        lambda _: [
            "awk",
            'BEGIN { for (i = 0; i < 30000; i++) a[i] = sprintf("%0*d", i % 200, i);'
            " n = 0; for (k in a) n += length(a[k]); print n }",
        ],
    ),
    Program(
        "perl",
        lambda _: [
            "perl",
            "-e",
            'my %h; $h{"k$_"} = "v" x ($_ % 300) for 1 .. 20000;'
            ' my @k = sort keys %h; print scalar(@k), "\\n";',
        ],
    ),
    Program("sort", _numbers),
    Program("grep", lambda _: ["grep", "-rn", "malloc", "/usr/include"]),
    Program("find", lambda _: ["find", "/usr/lib", "-name", "*.so*"]),
    Program("ls", lambda _: ["ls", "-lR", "/usr/share/doc"]),
    Program("tar", lambda s: ["tar", "czf", str(s / "src.tgz"), "-C", str(ROOT / "src"), "."]),
    Program("gcc", _c, follow_exec=True),
    Program("g++", _cpp, follow_exec=True),
    Program("git", lambda _: ["git", "-C", str(ROOT), "log", "-n", "300", "--stat"]),
    Program("make", _makefile),
    Program(
        "python-json",
        lambda _: [
            sys.executable,
            "-c",
            "import json; d = [{'a': i, 'b': str(i) * (i % 50)} for i in range(5000)];"
            " print(len(json.loads(json.dumps(d))))",
        ],
        python=True,
    ),
    Program(
        "python-re",
        lambda _: [
            sys.executable,
            "-c",
            "import collections, re, sys; t = open(sys.argv[1]).read() * 5;"
            " print(collections.Counter(re.findall(r'\\w+', t)).most_common(3))",
            str(ROOT / "README.md"),
        ],
        python=True,
    ),
)


def record_programs(
    directory: Path, say: Callable[[str], None], programs: Sequence[Program] = PROGRAMS
) -> list[Path]:
    """Record every installed one of ``programs`` into ``directory``; the traces written.

    A program that is missing, fails to start or leaves no trace is skipped,
    and ``say`` is told why.
    """
    traces = []
    for program in programs:
        scratch = directory / f"{program.name}.d"
        scratch.mkdir()
        argv = program.argv(scratch)
        if shutil.which(argv[0]) is None:
            say(f"{program.name}: {argv[0]} is not installed, skipped")
            continue
        env = dict(os.environ)
        if program.python:
            env["PYTHONMALLOC"] = "malloc"
        output = directory / f"{program.name}.rep.gz"
        try:
            record(
                argv,
                output,
                max_ops=MAX_OPS,
                follow_exec=program.follow_exec,
                process="largest" if program.follow_exec else "main",
                env=env,
                cwd=scratch,
                stdout=subprocess.DEVNULL,
            )
        except (OSError, RecordError) as e:
            say(f"{program.name}: not recorded: {e}")
            continue
        traces.append(output)
    return traces

"""On a system other than Linux, pyalloc says so in one line.

The platform is faked in a child interpreter before the package is imported:
a program importing pyalloc gets an ImportError, and the ``pyalloc`` command
(its script, or ``python -m pyalloc.cli``) prints the line alone and exits 1.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

WHY = (
    "pyalloc runs on Linux only (it uses /dev/shm, /proc, madvise(MADV_REMOVE)"
    " and process-shared robust mutexes); this system is 'darwin'"
)


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


# What the installed script does (its path in argv[0]) and what ``python -m`` does.
AS_SCRIPT = (
    "import sys; sys.platform = 'darwin'\n"
    "sys.argv = ['/usr/local/bin/pyalloc', 'shm', 'list']\n"
    "from pyalloc.cli import main\n"
    "sys.exit(main())"
)
AS_MODULE = (
    "import runpy, sys; sys.platform = 'darwin'\n"
    "sys.orig_argv = [sys.executable, '-m', 'pyalloc.cli', 'shm', 'list']\n"
    "runpy.run_module('pyalloc.cli', run_name='__main__')"
)


@pytest.mark.parametrize("code", [AS_SCRIPT, AS_MODULE], ids=["script", "module"])
def test_the_command_prints_one_line_and_exits_1(code: str) -> None:
    result = run(code)
    assert result.returncode == 1
    assert result.stderr == f"pyalloc: {WHY}\n"
    assert result.stdout == ""


def test_an_import_raises_import_error() -> None:
    result = run("import sys; sys.platform = 'darwin'\nimport pyalloc")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"ImportError: {WHY}"

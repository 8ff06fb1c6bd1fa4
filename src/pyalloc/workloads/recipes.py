"""How the bundled workloads were recorded, as code that records them again.

``python -m pyalloc.workloads.recipes OUTDIR [NAME...]`` runs each recipe in a
scratch directory and writes ``OUTDIR/NAME.rep.gz``.  A new recording will not
equal the bundled file byte for byte: the ops depend on the versions of the
programs and libraries that ran (``README.md`` beside this file lists the
ones used for the bundled traces).

Each recipe is one real program run under :func:`pyalloc.trace.record.record`
with default conversion (closing frees for blocks live at exit) and a small,
fixed environment (``PATH=/usr/bin:/bin``, ``LC_ALL=C``, ``HOME`` set to the
scratch directory), so that the user's configuration does not leak in.

python-script   the Python interpreter running :data:`PYTHON_SCRIPT` with
                ``PYTHONMALLOC=malloc`` (every object through malloc, not
                pymalloc), ``PYTHONHASHSEED=0`` and ``-s -S``: start-up, then building records,
                dicts and strings, a marshal round trip, counting, sorting.
gcc-cc1         ``gcc -O2 -c table.c`` of :data:`C_SOURCE`, a hash table
                (no headers, so the parse is short); the trace is ``cc1``'s,
                the process that allocates most.
git-log         ``git log --stat`` in a repository of 40 commits made by
                :func:`make_git_repository`.
sqlite-sql      the ``sqlite3`` shell running :data:`SQL_SCRIPT` on an
                in-memory database: 3000 inserted rows, an index, grouping,
                sorting, updates and deletes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pyalloc.trace.record import RecordResult, record

__all__ = ["RECIPES", "Recipe", "record_recipe"]

PYTHON_SCRIPT = """\
import marshal


class Record:
    def __init__(self, key, tags, score, text):
        self.key = key
        self.tags = tags
        self.score = score
        self.text = text


records = [
    Record("item-%04d" % i, ["t%d" % (i % 7), "g%d" % (i % 3)], i * 0.5, "lorem ipsum " * (i % 13))
    for i in range(120)
]
table = {r.key: {"tags": r.tags, "score": r.score, "text": r.text.strip()} for r in records}
blob = marshal.dumps(table)
back = marshal.loads(blob)
assert back == table
counts = {}
for entry in back.values():
    for word in entry["text"].split():
        counts[word] = counts.get(word, 0) + 1
lines = sorted("%s,%s,%.1f" % (k, "|".join(v["tags"]), v["score"]) for k, v in back.items())
report = "\\n".join(lines)
print(len(blob), len(report), sorted(counts.items()))
"""

C_SOURCE = """\
typedef unsigned long size_t;
void *malloc(size_t);
void *calloc(size_t, size_t);
void free(void *);
char *strdup(const char *);
int strcmp(const char *, const char *);
#define NULL ((void *)0)

struct entry {
    char *word;
    unsigned count;
    struct entry *next;
};

struct table {
    struct entry **buckets;
    size_t size;
    size_t used;
};

static unsigned long hash(const char *s)
{
    unsigned long h = 5381;
    while (*s)
        h = h * 33 + (unsigned char)*s++;
    return h;
}

static void grow(struct table *t)
{
    size_t size = t->size ? t->size * 2 : 64;
    struct entry **buckets = calloc(size, sizeof *buckets);
    for (size_t i = 0; i < t->size; i++) {
        struct entry *e = t->buckets[i];
        while (e) {
            struct entry *next = e->next;
            size_t b = hash(e->word) & (size - 1);
            e->next = buckets[b];
            buckets[b] = e;
            e = next;
        }
    }
    free(t->buckets);
    t->buckets = buckets;
    t->size = size;
}

void table_add(struct table *t, const char *word)
{
    if (t->used * 4 >= t->size * 3)
        grow(t);
    size_t b = hash(word) & (t->size - 1);
    for (struct entry *e = t->buckets[b]; e; e = e->next)
        if (strcmp(e->word, word) == 0) {
            e->count++;
            return;
        }
    struct entry *e = malloc(sizeof *e);
    e->word = strdup(word);
    e->count = 1;
    e->next = t->buckets[b];
    t->buckets[b] = e;
    t->used++;
}
"""

SQL_SCRIPT = """\
CREATE TABLE words(id INTEGER PRIMARY KEY, word TEXT, score INTEGER, note TEXT);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
INSERT INTO words(word, score, note)
  SELECT printf('w%05d', (i * 7919) % 3000), (i * 104729) % 1000,
         substr('lorem ipsum dolor sit amet consectetur', 1 + i % 20, 1 + i % 17) FROM n;
CREATE INDEX words_score ON words(score);
SELECT score % 10, count(*), sum(length(note)) FROM words GROUP BY score % 10;
SELECT group_concat(word, ',') FROM (SELECT word FROM words WHERE score < 50 ORDER BY note, word);
UPDATE words SET note = note || '!' WHERE score % 3 = 0;
DELETE FROM words WHERE score > 900;
SELECT count(*), max(length(note)) FROM words;
"""

GIT_COMMITS = 40
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "pyalloc",
    "GIT_AUTHOR_EMAIL": "pyalloc@example.invalid",
    "GIT_COMMITTER_NAME": "pyalloc",
    "GIT_COMMITTER_EMAIL": "pyalloc@example.invalid",
    "GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def _base_env(work: Path) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "HOME": str(work)}


def make_git_repository(path: Path, env: dict[str, str]) -> None:
    """A repository of GIT_COMMITS commits touching five files and four notes."""
    git_env = {**env, **GIT_IDENTITY}

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=path, env=git_env, check=True, capture_output=True)

    path.mkdir(parents=True)
    git("init", "-q", "-b", "main")
    for commit in range(1, GIT_COMMITS + 1):
        for number in range(1, 6):
            lines = range(commit, commit * number + 21)
            (path / f"file{number}.txt").write_text("".join(f"{line}\n" for line in lines))
        notes = path / f"dir{commit % 4}" / "notes.txt"
        notes.parent.mkdir(exist_ok=True)
        with notes.open("a") as out:
            out.write(f"change {commit}\n")
        git("add", "-A")
        git("commit", "-q", "-m", f"commit {commit}")


@dataclass(frozen=True)
class Recipe:
    """A program to record: ``prepare`` builds its inputs and returns the command."""

    name: str
    program: str  # the executable that must be on PATH
    prepare: Callable[[Path, dict[str, str]], list[str]]
    follow_exec: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)


def _python_script(work: Path, env: dict[str, str]) -> list[str]:
    script = work / "script.py"
    script.write_text(PYTHON_SCRIPT)
    return [sys.executable, "-s", "-S", str(script)]


def _gcc(work: Path, env: dict[str, str]) -> list[str]:
    source = work / "table.c"
    source.write_text(C_SOURCE)
    return ["gcc", "-O2", "-c", str(source), "-o", str(work / "table.o")]


def _git_log(work: Path, env: dict[str, str]) -> list[str]:
    repository = work / "repo"
    make_git_repository(repository, env)
    return ["git", "--no-pager", "-C", str(repository), "log", "--stat"]


def _sqlite(work: Path, env: dict[str, str]) -> list[str]:
    script = work / "workload.sql"
    script.write_text(SQL_SCRIPT)
    return ["sqlite3", ":memory:", "-init", str(script), ".quit"]


RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe(
            "python-script",
            sys.executable,
            _python_script,
            extra_env={"PYTHONMALLOC": "malloc", "PYTHONHASHSEED": "0"},
        ),
        Recipe("gcc-cc1", "gcc", _gcc, follow_exec=True),
        Recipe("git-log", "git", _git_log),
        Recipe("sqlite-sql", "sqlite3", _sqlite),
    )
}


def record_recipe(recipe: Recipe, output: Path) -> RecordResult:
    """Record ``recipe`` into ``output`` (a ``.rep`` or ``.rep.gz`` path)."""
    with tempfile.TemporaryDirectory(prefix=f"pyalloc-{recipe.name}-") as scratch:
        work = Path(scratch)
        env = _base_env(work)
        command = recipe.prepare(work, env)
        return record(
            command,
            output,
            env={**env, **recipe.extra_env},
            cwd=work,
            follow_exec=recipe.follow_exec,
            process="largest" if recipe.follow_exec else "main",
            stdout=subprocess.DEVNULL,
        )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(f"usage: python -m pyalloc.workloads.recipes OUTDIR [{' '.join(RECIPES)}]")
        return 2
    directory = Path(args[0])
    directory.mkdir(parents=True, exist_ok=True)
    names = args[1:] or list(RECIPES)
    status = 0
    for name in names:
        recipe = RECIPES[name]
        if shutil.which(recipe.program) is None and not os.path.exists(recipe.program):
            print(f"{name}: skipped, {recipe.program} not found")
            continue
        result = record_recipe(recipe, directory / f"{name}.rep.gz")
        print(
            f"{name}: {result.ops} ops, {result.num_ids} ids, peak payload "
            f"{result.peak_payload} B, exit status {result.returncode}"
        )
        status = status or (1 if result.returncode else 0)
    return status


if __name__ == "__main__":
    sys.exit(main())

"""The documentation against the code it describes: the generated reference pages are current,
every path, module, test and link the docs name exists, every documented command composes into a
valid config, the README keeps its shape, every measurement table says when, where and how it was
measured, and nothing points outside the repository."""
from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from compiler.errors import RooftopError
from tests.conftest import ROOT

DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = sorted([README, *DOCS.rglob("*.md")])
#: compilations of others' numbers, not measurements of ours
NOT_MEASURED_HERE = {"published_engines.md"}


def _gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "tools" / "gen_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


# ---- generated pages -----------------------------------------------------------------------------

def test_generated_pages_are_current():
    gen = _gen_docs()
    stale = [_rel(p) for p, text in gen.outputs().items()
             if not p.exists() or p.read_text(encoding="utf-8") != text]
    assert stale == [], f"stale generated docs {stale}: run `python tools/gen_docs.py`"


def test_the_generator_reads_the_schemas():
    """The config page lists every field of every group's dataclass with its default, the report
    page every key of the schema, and design.md's tables every declared annotation, Graph.meta key
    and pass: the generator cannot silently drop what the code declares."""
    import dataclasses

    from compiler.driver import config as schema
    from compiler.ir import annotations
    from compiler.schema import load
    import passes
    gen = _gen_docs()
    config = gen.config_md()
    for name, group in schema.defaults().items():
        for key in group:
            assert f"`{name}.{key}`" in config, (name, key)
    assert all(f"`model.{f.name}`" in config for f in dataclasses.fields(schema.HFConfigModel))
    assert "`model.config`" in config and "`hardware.memory_bandwidth_gbs`" in config
    report = gen.report_md()
    for key in load("report")["required"] + list(load("report")["properties"]):
        assert f"| `{key}` |" in report, key
    assert "| `phases.prefill` |" in report and "`capacity.kv`" in report
    blocks = gen.design_blocks()
    assert all(f"`{k}`" in blocks["annotations"] for k in annotations.KEYS)
    assert all(f"`{k}`" in blocks["meta"] for k in annotations.META_KEYS)
    assert all(f"`{k}`" in blocks["passes"] for k in passes.PASSES)


# ---- the README ---------------------------------------------------------------------------------

def test_readme_is_short_and_says_what_a_newcomer_needs():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    for heading in ("## Set-up", "## Use", "### Exit codes", "## How it works", "## Read more"):
        assert heading in text, heading
    assert "make run" in text and "make test" in text and "docs/README.md" in text
    for folder in ("compiler/ir/", "compiler/frontends/", "passes/", "compiler/perf/", "compiler/analysis/",
                   "compiler/backend/", "compiler/driver/", "reports/"):
        assert folder in text, folder


def test_stage_packages_say_what_they_own_and_may_import():
    gen = _gen_docs()
    for mod in gen.STAGES:
        doc = importlib.import_module(mod).__doc__ or ""
        assert "Owns:" in doc and "May import:" in doc, mod


# ---- references ---------------------------------------------------------------------------------

_OUTSIDE = re.compile("|".join(re.escape(s) for s in ("DESIGN" + ".md", "DOMAIN" + ".md", "STYLE" + ".md",
                                                      "../" + "shared", "/work/" + "shared")))
_SCANNED = ("compiler", "passes", "reports", "tools", "conf", "tests", "docs")
_TEXT = (".py", ".md", ".yaml", ".yml", ".json", ".toml", ".txt")


def _text_files():
    yield README
    for top in _SCANNED:
        for p in sorted((ROOT / top).rglob("*")):
            if p.suffix in _TEXT and p.is_file() and "__pycache__" not in p.parts:
                yield p


def test_nothing_points_outside_the_repository():
    bad = [f"{_rel(p)}:{i}" for p in _text_files()
           for i, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
           if _OUTSIDE.search(line)]
    assert bad == []


def test_no_issue_numbers_in_module_headers():
    """Module docstrings say what a module does, not which ticket asked for it."""
    bad = []
    for top in ("compiler", "passes", "reports", "tools", "tests"):
        for p in sorted((ROOT / top).rglob("*.py")):
            doc = ast.get_docstring(ast.parse(p.read_text(encoding="utf-8"))) or ""
            if re.search(r"\bissue\s+\d+", doc, re.I):
                bad.append(_rel(p))
    assert bad == []


_SPAN = re.compile(r"`([^`\n]+)`")
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_TOPS = ("compiler/", "passes/", "reports/", "tools/", "conf/", "tests/", "docs/", ".ci/")
_PLACEHOLDER = ("<", ">", "*", "{", "…", "$", "[", "|")


def _paths_in(text: str):
    """Repository paths named in code spans: ``compiler/ir/ops.py``, ``tests/x.py::test_y``, ``conf/kv/``."""
    for span in _SPAN.findall(text):
        for tok in span.split():
            tok = tok.strip(",.;:()\"'")
            if tok.startswith(_TOPS) and not any(c in tok for c in _PLACEHOLDER):
                yield tok


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    h = heading.strip().lower().replace("`", "")
    h = re.sub(r"[^\w\- ]", "", h)
    return h.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text, out = page.read_text(encoding="utf-8"), set()
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            out.add(_slug(line.lstrip("#")))
    return out


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_paths_modules_tests_and_links_named_in_the_docs_exist(page):
    text = page.read_text(encoding="utf-8")
    missing = []
    for tok in _paths_in(text):
        path, _, test = tok.partition("::")
        target = ROOT / path
        if not target.exists():
            missing.append(tok)
        elif test and not re.search(rf"^def {re.escape(test)}\(", target.read_text(encoding="utf-8"), re.M):
            missing.append(tok)
    for mod in re.findall(r"python3? -m ([\w.]+)", text):
        if mod not in ("pytest", "compiler") and importlib.util.find_spec(mod) is None:
            missing.append(f"python -m {mod}")
    for link in _LINK.findall(text):
        if link.startswith(("http://", "https://", "mailto:")):
            continue
        file, _, anchor = link.partition("#")
        target = (page.parent / file).resolve() if file else page
        if not target.exists():
            missing.append(link)
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            missing.append(link)
    assert missing == [], f"{_rel(page)} names what does not exist"


# ---- commands -----------------------------------------------------------------------------------

#: documented command lines that need something a test machine does not have (a file of the
#: user's, their own config directory, a cluster), or are not runs (the other verbs)
_NOT_COMPOSABLE = ("/abs/path", "my_conf", "HEAD:", "$", "…", "...", "rooftop compare", "rooftop calibrate")


def _commands(page: Path):
    """``rooftop …`` / ``python -m compiler …`` lines of the page's shell code blocks, continuation
    lines joined, trailing comments dropped."""
    text = page.read_text(encoding="utf-8")
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if not line.startswith(("rooftop ", "python -m compiler ")) and line != "rooftop":
                continue
            if any(p in line for p in _NOT_COMPOSABLE):
                continue
            yield re.sub(r"\s+#.*$", "", line)


#: each distinct command once, with the first page that shows it
COMMANDS = sorted({c: _rel(p) for p in reversed(PAGES) for c in _commands(p)}.items(), key=lambda x: (x[1], x[0]))


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 40
    assert any("-m " in c and "search=" in c for c, _ in COMMANDS)
    assert {p for _, p in COMMANDS} >= {"README.md", "docs/guide/quantization.md", "docs/guide/serving.md"}


@pytest.mark.parametrize("command,page", COMMANDS, ids=[f"{p}: {c[:60]}" for c, p in COMMANDS])
def test_documented_commands_compose(command, page, tmp_path):
    """Every documented command line passes the CLI's precheck: Hydra composes it against the
    schema (every key exists, every value has its type) and the range checks accept it."""
    from compiler.driver.app import precheck
    argv = shlex.split(command)[1:]
    if argv[:2] == ["-m", "compiler"]:
        argv = argv[2:]
    if "-m" not in argv and "--multirun" not in argv:
        argv.append(f"hydra.run.dir={tmp_path / 'run'}")
    try:
        precheck(argv)
    except RooftopError as e:
        pytest.fail(f"{page}: `{command}` is refused: {e}")


# ---- measurements -------------------------------------------------------------------------------

_DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")
_MACHINE = re.compile(r"machine|H100|H200|vCPU|GPU|CPU", re.I)
_COMMAND = re.compile(r"```(?:bash|sh)?\n|`(?:python|rooftop|PYTHONPATH|\.venv)[^`]*`")


def _sections(text: str):
    """(heading, body) for every ## / ### section (the page intro under "")."""
    parts = re.split(r"^(#{2,3} .*)$", text, flags=re.M)
    yield "", parts[0]
    for i in range(1, len(parts), 2):
        yield parts[i], parts[i + 1]


@pytest.mark.parametrize("page", sorted(p for p in (DOCS / "measurements").glob("*.md")
                                        if p.name not in NOT_MEASURED_HERE), ids=lambda p: p.name)
def test_every_measurement_table_says_when_where_and_how(page):
    text = page.read_text(encoding="utf-8")
    intro = next(_sections(text))[1]
    for heading, body in _sections(text):
        if not re.search(r"^\|.*\|\s*$", body, re.M):
            continue
        context = intro + heading + body
        assert _DATE.search(heading + body) or _DATE.search(intro), (page.name, heading, "date")
        assert _MACHINE.search(context), (page.name, heading, "machine")
        assert _COMMAND.search(context), (page.name, heading, "command")

"""The docs cannot drift from the code.

- Every public name has a docstring that gives shapes (a `[`) and an example.
- `docs/api.md` has an entry for every public name, every entry names something
  that exists, and a signature written in an entry equals the code's.
- Every ```python block of `docs/*.md` and `README.md` runs (blocks of one file
  share a namespace, in order, in an empty temporary directory), except blocks
  marked GPU-only: the fence ```python gpu, or `# gpu-only` as the block's first
  line (docs/testing.md).
- The docstring examples of the public modules run as doctests.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import re
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
API_MD = DOCS / "api.md"

PUBLIC_MODULES = [
    "adaspa",
    "adaspa.reference",
    "adaspa.kernels",
    "adaspa.selection",
    "adaspa.baselines",
    "adaspa.synthetic",
    "adaspa.testing",
    "adaspa.viz",
    "adaspa.integrations.diffusers",
    "adaspa.models",
]


def public_names(module_name: str) -> dict:
    """`{name: object}` of a module's public API: its `__all__`, else its own public top-level defs."""
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n, obj in vars(module).items()
                 if not n.startswith("_") and getattr(obj, "__module__", None) == module_name
                 and (inspect.isfunction(obj) or inspect.isclass(obj))]
    return {n: getattr(module, n) for n in names}


def all_public():
    return [(m, n, obj) for m in PUBLIC_MODULES for n, obj in public_names(m).items()]


def _documented_object(obj) -> bool:
    return inspect.isfunction(obj) or inspect.isclass(obj)


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_public_names_have_docstrings_with_shapes_and_examples(module_name):
    missing = []
    for name, obj in public_names(module_name).items():
        if not _documented_object(obj):
            continue
        doc = inspect.getdoc(obj) or ""
        problems = [what for what, ok in (
            ("no docstring", bool(doc.strip())),
            ("no shape (`[`)", "[" in doc),
            ("no example (`Example` or `>>>`)", "Example" in doc or ">>>" in doc),
        ) if not ok]
        if problems:
            missing.append(f"{module_name}.{name}: {', '.join(problems)}")
    assert not missing, "public names with incomplete docstrings:\n" + "\n".join(missing)


def _plain_signature(obj) -> str:
    sig = inspect.signature(obj)
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    return str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))


_SECTION = re.compile(r"^## `([\w.]+)`\s*$")
_ENTRY = re.compile(r"^### `(?:class )?([A-Za-z_]\w*)(\(.*\))?`")


def api_entries() -> dict:
    """`{(module, name): signature or None}` from the `## `module`` / ### `name(sig)`` headings of api.md."""
    entries, module = {}, None
    for line in API_MD.read_text().splitlines():
        if m := _SECTION.match(line):
            module = m.group(1)
        elif (m := _ENTRY.match(line)) and module is not None:
            entries[(module, m.group(1))] = m.group(2)
    return entries


def test_api_md_lists_every_public_name():
    entries = api_entries()
    exported_by = {}
    for module_name, name, obj in all_public():
        exported_by.setdefault(id(obj), set()).add(module_name)
    missing = []
    for module_name, name, obj in all_public():
        # A re-export (e.g. `adaspa.select_blocks`) is covered by the entry of any module exporting it.
        if not any((m, name) in entries for m in exported_by[id(obj)]):
            missing.append(f"{module_name}.{name}")
    assert not missing, f"docs/api.md has no entry for: {missing}"


def test_api_md_entries_exist_and_signatures_match():
    wrong = []
    for (module_name, name), written in api_entries().items():
        if module_name not in PUBLIC_MODULES:
            wrong.append(f"section `{module_name}` is not a public module")
            continue
        module = importlib.import_module(module_name)
        if not hasattr(module, name):
            wrong.append(f"{module_name}.{name} does not exist")
            continue
        obj = getattr(module, name)
        if written is not None and callable(obj):
            actual = _plain_signature(obj)
            if written != actual:
                wrong.append(f"{module_name}.{name}: api.md says {written}, the code has {actual}")
    assert not wrong, "docs/api.md drifted from the code:\n" + "\n".join(wrong)


def test_reference_and_kernels_document_the_same_signatures():
    from adaspa import kernels, reference

    for name in reference.__all__:
        assert _plain_signature(getattr(reference, name)) == _plain_signature(getattr(kernels, name)), name


_FENCE = re.compile(r"^(`{3,})([^`\s]*)[ \t]*(.*)$")


def python_blocks(path: Path):
    """The ```python blocks of a markdown file as (first line number, info words, code).

    Fences nest the CommonMark way: a block opened by N backticks closes only at a
    line of N backticks, so a ```python example shown inside a ```` block is text.
    """
    blocks, opener, current = [], None, None
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        stripped = line.strip()
        if opener is None:
            fence = _FENCE.match(stripped)
            if fence:
                opener = fence.group(1)
                if len(opener) == 3 and fence.group(2) in ("python", "py"):
                    current = (number + 1, fence.group(3).split(), [])
        elif stripped == opener:
            if current is not None:
                blocks.append((current[0], current[1], "\n".join(current[2])))
            opener, current = None, None
        elif current is not None:
            current[2].append(line)
    if opener is not None:
        raise ValueError(f"{path}: a code block opened with {opener} is never closed")
    return blocks


def is_gpu_only(info_words, code: str) -> bool:
    first = code.lstrip().splitlines()[0].strip() if code.strip() else ""
    return "gpu" in info_words or first == "# gpu-only"


def test_fence_conventions(tmp_path):
    sample = tmp_path / "fences.md"
    sample.write_text("```python\nx = 1\n```\n```python gpu\ny = 2\n```\n```python\n# gpu-only\nz = 3\n```\n"
                      "```bash\nls\n```\n````\n```python\nshown = 1\n```\n````\n")
    blocks = python_blocks(sample)
    assert [(line, code) for line, _, code in blocks] == [(2, "x = 1"), (5, "y = 2"), (8, "# gpu-only\nz = 3")]
    assert [is_gpu_only(info, code) for _, info, code in blocks] == [False, True, True]


DOC_FILES = sorted(DOCS.glob("*.md")) + [ROOT / "README.md"]
# The examples of one doc file together; they run in every CI run, so they must be quick.
DOC_BUDGET_S = 60


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_doc_code_blocks_run(path, monkeypatch, one_thread, tmp_path):
    pytest.importorskip("matplotlib").use("Agg")
    blocks = python_blocks(path)
    if not blocks:
        pytest.skip(f"{path.name} has no python blocks")
    # An empty working directory: files an example writes land there, not in the checkout.
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"docs_{path.stem}"}
    start = time.perf_counter()
    for line, info, code in blocks:
        if is_gpu_only(info, code) and not torch.cuda.is_available():
            continue
        try:
            exec(compile(code, f"{path.relative_to(ROOT)}:{line}", "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"{path.relative_to(ROOT)}: the python block at line {line} failed: "
                                 f"{type(err).__name__}: {err}") from err
    elapsed = time.perf_counter() - start
    assert elapsed < DOC_BUDGET_S, (f"{path.relative_to(ROOT)}: its python blocks took {elapsed:.0f} s; doc examples "
                                    f"must stay under {DOC_BUDGET_S} s on the CI CPU (cut the sizes or mark the block gpu)")


# Docstring examples that need a GPU live in modules whose doctests run only with CUDA.
GPU_DOCTEST_MODULES = {"adaspa.kernels"}


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_docstring_examples_run(module_name, one_thread):
    if module_name in GPU_DOCTEST_MODULES and not torch.cuda.is_available():
        pytest.skip(f"{module_name}'s examples need CUDA")
    pytest.importorskip("matplotlib").use("Agg")
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = []
    seen = set()
    for name, obj in [("", module)] + list(public_names(module_name).items()):
        # Examples run in the globals of the module that defines them, as `python -m doctest` would.
        home = module if obj is module else inspect.getmodule(obj)
        for test in finder.find(obj, name=f"{module_name}.{name}".rstrip("."), module=home):
            if test.examples and (test.filename, test.lineno) not in seen:
                seen.add((test.filename, test.lineno))
                tests.append(test)
    failures = []
    for test in tests:
        result = runner.run(test, out=failures.append)
        assert result.failed == 0, f"doctest {test.name} failed:\n" + "".join(failures)

"""Dependencies inside refiner_daemon point one way: common <- refiner, detector <- serve,
evaluation <- the entry points (cli, demo). Checked on the source text (every import, including
those inside functions), like tests/test_boundaries.py, so a violation fails before anything runs.
Also: the old flat module paths still work for one release and warn.
"""

from __future__ import annotations

import ast
import importlib
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "refiner_daemon"

# Layer of the importing module -> layers it may import. "shim" is an old flat module path kept
# for one release; "top" is the entry points over everything (cli.py, demo.py, __init__.py).
ALLOWED: dict[str, set[str]] = {
    "common": {"common"},
    "refiner": {"common", "refiner"},
    "detector": {"common", "detector"},
    "serve": {"common", "refiner", "detector", "serve"},
    "evaluation": {"common", "refiner", "detector", "evaluation"},
    "digits": {"common", "refiner", "detector", "evaluation", "digits"},  # an experiment, like evaluation
    "top": {"common", "refiner", "detector", "serve", "evaluation", "digits", "top", "shim"},
    "shim": {"common", "refiner", "detector", "serve", "evaluation", "top"},
}
SUBPACKAGES = {name for name in ALLOWED if name not in ("top", "shim")}
TOP_MODULES = {"__init__", "cli", "demo", "_moved"}
SHIMS = {
    "models": "refiner.networks", "losses": "refiner.losses", "presets": "refiner.presets",
    "training": "refiner.training", "inference": "refiner.inference", "data": "refiner.data",
    "image_pool": "refiner.image_pool", "perceptual": "refiner.perceptual",
    "batch_refine": "refiner.batch_refine", "train_refiner": "refiner.train",
    "server": "serve.server", "service": "serve.service", "jobs": "serve.jobs",
    "pipeline": "evaluation.pipeline", "gap_report": "evaluation.gap_report",
    "standin_domain": "evaluation.standin_domain",
    "features": "common.features", "metrics": "detector.metrics",
}


def _layer_of_file(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package).parts
    if len(parts) > 1:
        return parts[0]
    stem = path.stem
    if stem in TOP_MODULES:
        return "top"
    if stem in SHIMS:
        return "shim"
    raise AssertionError(f"refiner_daemon/{path.name}: a new top-level module; put it in a subpackage "
                         f"({', '.join(sorted(SUBPACKAGES))}) or add it to TOP_MODULES in {__file__}")


def _layer_of_import(module: str) -> str | None:
    """The layer an absolute import of ``refiner_daemon...`` lands in (None: outside the package)."""
    parts = module.split(".")
    if parts[0] != "refiner_daemon":
        return None
    if len(parts) == 1:
        return "top"
    if parts[1] in SUBPACKAGES:
        return parts[1]
    if parts[1] in SHIMS:
        return "shim"
    return "top"


def _imports(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in the file, relative ones resolved; for
    ``from a.b import c`` both ``a.b`` and ``a.b.c`` (c may be a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ["refiner_daemon", *(path.relative_to(root).parts[:-1] if root in path.parents else ())]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            if module.startswith("refiner_daemon"):
                found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def _violations(package: Path = PACKAGE) -> list[str]:
    problems = []
    for path in sorted(package.rglob("*.py")):
        layer = _layer_of_file(path, package)
        reported: set[int] = set()
        for line, module in _imports(path, package):
            target = _layer_of_import(module)
            if target is None or module == "refiner_daemon" or line in reported:
                continue
            if target not in ALLOWED[layer]:
                reported.add(line)
                problems.append(f"{path.relative_to(package.parent)}:{line} imports {module}: the rule is "
                                f"'{layer}' may import only {sorted(ALLOWED[layer])}, not '{target}'")
    return problems


def test_dependencies_point_one_way() -> None:
    problems = _violations()
    assert problems == [], "layering violations:\n" + "\n".join(problems)


def test_a_violation_is_reported_with_module_import_and_rule(tmp_path: Path) -> None:
    fake = tmp_path / "refiner_daemon"
    (fake / "common").mkdir(parents=True)
    (fake / "refiner").mkdir()
    (fake / "common" / "probe.py").write_text("def f():\n    from refiner_daemon.refiner.training import X\n")
    (fake / "refiner" / "ok.py").write_text("from ..common import probe\nfrom . import ok\n")
    problems = _violations(fake)
    assert len(problems) == 1, problems
    assert problems[0].startswith("refiner_daemon/common/probe.py:2 imports refiner_daemon.refiner.training")
    assert "'common' may import only ['common'], not 'refiner'" in problems[0]


def test_nothing_imports_the_deprecated_paths() -> None:
    users = [f"{p.relative_to(ROOT)}:{line} {module}"
             for folder in ("refiner_daemon", "tests", "bench")
             for p in sorted((ROOT / folder).rglob("*.py"))
             if p.parent != PACKAGE or p.stem not in SHIMS
             for line, module in _imports(p)
             if p.name != "test_layering.py" and module in {f"refiner_daemon.{s}" for s in SHIMS}]
    assert users == [], f"code still imports the old flat paths: {users}"


@pytest.mark.parametrize("old", sorted(SHIMS))
def test_old_paths_warn_and_reexport(old: str) -> None:
    new = importlib.import_module(f"refiner_daemon.{SHIMS[old]}")
    sys.modules.pop(f"refiner_daemon.{old}", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        shim = importlib.import_module(f"refiner_daemon.{old}")
    messages = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert any(f"refiner_daemon.{SHIMS[old]}" in m for m in messages), messages
    public = [name for name in vars(new) if not name.startswith("_")]
    missing = [name for name in public if not hasattr(shim, name)]
    assert missing == [], f"refiner_daemon.{old} lacks {missing}"

"""The layout rules of the three packages (STYLE.md "Rooms you can name from the folder list").

These hold the tree to what issue 10 set out: one subpackage per command family, modules small
enough to hold one idea, no two modules named alike for different things, and no package reaching
into another's private modules.  A failure names the file and the rule.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tracefmt", "recorder", "replayer")
MAX_LINES = 400
#: File names that play the same role in every package, so sharing them is not a clash.
ROLE_NAMES = frozenset({"__init__.py", "__main__.py", "cli.py", "errors.py"})
#: The command families of ``replayer``: each is a subpackage.
REPLAYER_FAMILIES = ("export", "check", "diff", "view", "ranks", "why", "report", "summary", "plots")


def _modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _imported_names(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _private(part: str) -> bool:
    """``_layout`` is private; ``__version__`` is a public dunder."""
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def test_replayer_top_level_holds_only_package_files() -> None:
    top = sorted(p.name for p in (ROOT / "replayer").glob("*.py"))
    assert len(top) <= 6, f"replayer/ has {len(top)} top-level modules: {top}"


@pytest.mark.parametrize("family", REPLAYER_FAMILIES)
def test_every_replayer_command_family_is_a_subpackage(family: str) -> None:
    init = ROOT / "replayer" / family / "__init__.py"
    assert init.is_file(), f"replayer/{family}/ is not a package"
    assert "__all__" in init.read_text(encoding="utf-8"), f"{init} exports no library functions"


def test_recorder_statistics_are_a_subpackage() -> None:
    assert (ROOT / "recorder" / "stats" / "__init__.py").is_file()


def test_no_module_is_over_the_size_limit() -> None:
    big = {
        str(p.relative_to(ROOT)): n
        for p in _modules()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def test_no_two_modules_share_a_file_name() -> None:
    by_name: dict[str, list[str]] = defaultdict(list)
    for p in _modules():
        if p.name not in ROLE_NAMES:
            by_name[p.name].append(str(p.relative_to(ROOT)))
    clashes = {name: paths for name, paths in by_name.items() if len(paths) > 1}
    assert not clashes, f"module file names used for different things: {clashes}"


def test_no_package_imports_a_private_tracefmt_module() -> None:
    outside = [p for p in _modules() if p.parts[len(ROOT.parts)] != "tracefmt"]
    outside += sorted((ROOT / "bench").glob("*.py"))
    offenders = [
        f"{p.relative_to(ROOT)}: {name}"
        for p in outside
        for name in _imported_names(p)
        if name.split(".")[0] == "tracefmt" and any(_private(part) for part in name.split(".")[1:])
    ]
    assert not offenders, f"private tracefmt modules imported from outside tracefmt: {offenders}"


#: The one tracefmt module that may import the replayer, and only inside a function or for type
#: checking: ``tracefmt verify`` re-executes steps, the replayer's work (tracefmt/cli_pack.py).
_REPLAYER_ALLOWED_IN = "tracefmt/cli_pack.py"


def test_tracefmt_imports_no_package_above_it() -> None:
    offenders = []
    for p in sorted((ROOT / "tracefmt").rglob("*.py")):
        rel = str(p.relative_to(ROOT))
        tree = ast.parse(p.read_text(encoding="utf-8"))
        top = {id(n) for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                roots = [node.module.split(".")[0]]
            else:
                continue
            for root in roots:
                if root in ("torch", "onnx", "onnxruntime", "recorder"):
                    offenders.append(f"{rel}: {root}")
                elif root == "replayer" and (rel != _REPLAYER_ALLOWED_IN or id(node) in top):
                    offenders.append(f"{rel}: {root} (only {_REPLAYER_ALLOWED_IN}, lazily)")
    assert not offenders, f"tracefmt imports a package above its layer: {offenders}"

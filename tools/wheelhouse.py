"""`make wheelhouse`: wheels of every dependency of memformers except PyTorch, for a machine without network.

    python tools/wheelhouse.py --output wheelhouse [--extras all,test] [--python-version 3.12 --platform ...]

1. Packages published only as source distributions (DeepSpeed) are built into wheels here, with DeepSpeed's
   C++/CUDA ops left to its just-in-time build (`DS_BUILD_OPS=0`): a pure-Python wheel for any Python 3.
2. pip resolves the requirements (pyproject.toml's dependencies and the chosen extras, plus setuptools, the build
   backend of an offline `pip install -e .`) for the target: the running Python by default, or `--python-version`
   with `--platform` tags (binary wheels only, as pip requires when downloading for another interpreter).
3. Every resolved package that the requirements need without going through torch is downloaded; torch and what
   only torch needs (CUDA libraries, triton, ...) are left out: the machine's own PyTorch is kept
   (`make venv WHEELHOUSE=...`). pip resolves against a stand-in torch (metadata only, at pyproject.toml's floor),
   so torch's own dependency tree, which may not even resolve for another platform, is never looked at.

The wheelhouse's size is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

try:
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
except ImportError:  # a bare Python: pip's own copy
    from pip._vendor.packaging.markers import default_environment
    from pip._vendor.packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
SOURCE_ONLY = {"deepspeed"}  # published on PyPI as source distributions only
KEPT = "torch"  # the machine's own
BUILD = ["setuptools>=64"]  # pyproject.toml's build backend, for `pip install -e .` without network


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(extras: list[str]) -> list[Requirement]:
    """pyproject.toml's dependencies plus those of `extras` (and of the extras they name: memformers[test,lint])."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    optional, wanted, seen, out = project.get("optional-dependencies", {}), list(extras), set(), []
    out += [Requirement(r) for r in project["dependencies"]]
    while wanted:
        extra = wanted.pop()
        if extra in seen:
            continue
        if extra not in optional:
            raise SystemExit(f"--extras: no extra {extra!r} in pyproject.toml (there are: {', '.join(optional)})")
        seen.add(extra)
        for requirement in map(Requirement, optional[extra]):
            if canonical(requirement.name) == "memformers":
                wanted += sorted(requirement.extras)
            else:
                out.append(requirement)
    return out + [Requirement(r) for r in BUILD]


def target_options(args) -> list[str]:
    if not args.python_version:
        return []
    options = ["--python-version", args.python_version, "--implementation", "cp", "--only-binary=:all:"]
    for platform in args.platform:
        options += ["--platform", platform]
    return options


def target_environment(args) -> dict:
    """Where the requirements' environment markers are evaluated: the running Python, or the target's version."""
    env = default_environment()
    if args.python_version:
        env.update(python_version=args.python_version, python_full_version=args.python_version + ".0")
    return env


def pip(*arguments: str, env: dict | None = None) -> None:
    subprocess.run([sys.executable, "-m", "pip", *arguments], check=True, env=env)


def build_source_only(reqs: list[Requirement], output: Path) -> None:
    for requirement in reqs:
        if canonical(requirement.name) in SOURCE_ONLY:
            print(f"building a wheel of {requirement} (ops left to DeepSpeed's JIT: DS_BUILD_OPS=0)", flush=True)
            pip("wheel", "-q", "--no-deps", "--no-binary", requirement.name, "-w", str(output), str(requirement),
                env={**os.environ, "DS_BUILD_OPS": "0"})  # fmt: skip


def torch_stub(folder: Path, reqs: list[Requirement]) -> Requirement:
    """A metadata-only wheel `torch==FLOOR+stub` in `folder`, FLOOR being pyproject.toml's floor; the requirement
    that pins it."""
    floor = next(r for r in reqs if canonical(r.name) == KEPT).specifier
    version = next(s.version for s in floor if s.operator == ">=") + "+stub"
    info = f"{KEPT}-{version}.dist-info"
    files = {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {KEPT}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(folder / f"{KEPT}-{version}-py3-none-any.whl", "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
    return Requirement(f"{KEPT}=={version}")


def resolve(reqs: list[Requirement], output: Path, args) -> dict[str, dict]:
    """pip's resolution of `reqs` for the target, torch stood in for: name -> the report's install item."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        target = ["--target", str(Path(tmp) / "target")] if args.python_version else []
        stub = torch_stub(Path(tmp), reqs)
        others = [str(r) for r in reqs if canonical(r.name) != KEPT]
        pip("install", "-q", "--dry-run", "--ignore-installed", "--report", str(report), "--find-links", str(output),
            "--find-links", tmp, *target_options(args), *target, str(stub), *others)  # fmt: skip
        items = json.loads(report.read_text())["install"]
    return {canonical(item["metadata"]["name"]): item for item in items}


def needed(reqs: list[Requirement], resolved: dict[str, dict], env: dict) -> list[str]:
    """The resolved packages reachable from `reqs` without passing through torch, as name==version."""
    todo = [r for r in reqs if r.marker is None or r.marker.evaluate({**env, "extra": ""})]
    keep: dict[str, str] = {}
    while todo:
        requirement = todo.pop()
        name = canonical(requirement.name)
        if name == KEPT or name in keep:
            continue
        item = resolved[name]
        keep[name] = item["metadata"]["version"]
        extras = requirement.extras or {""}  # a dependency marked `extra == "x"` counts when x was asked for
        for dependency in map(Requirement, item["metadata"].get("requires_dist", [])):
            if dependency.marker is None or any(dependency.marker.evaluate({**env, "extra": e}) for e in extras):
                todo.append(dependency)
    return [f"{name}=={version}" for name, version in sorted(keep.items())]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="wheelhouse")
    parser.add_argument("--extras", default="", help="comma-separated extras of pyproject.toml (default: none)")
    parser.add_argument("--python-version", help="the target's Python, e.g. 3.12 (default: this one)")
    parser.add_argument("--platform", nargs="+", help="the target's platform tags (with --python-version)",
                        default=["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"])  # fmt: skip
    args = parser.parse_args(argv)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    reqs = requirements([e for e in args.extras.split(",") if e])
    build_source_only(reqs, output)
    resolved = resolve(reqs, output, args)
    specs = needed(reqs, resolved, target_environment(args))
    wanted = [spec for spec in specs if spec.split("==")[0] not in SOURCE_ONLY]  # built above
    print(f"downloading {len(wanted)} wheels (all but {KEPT} and what only {KEPT} needs)", flush=True)
    pip("download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(output), *target_options(args), *wanted)
    wheels = sorted(output.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels)
    print(f"{output}: {len(wheels)} wheels, {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

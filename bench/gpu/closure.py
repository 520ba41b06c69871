"""The installed distributions that some roots need, walked through their metadata: what
bench/gpu/prepare.sh fetches as wheels for a GPU machine that cannot reach PyPI.

Usage: python -m bench.gpu.closure ROOT... [--skip NAME...] [--own NAME...]
Prints `name==version` for each dependency of the roots (and of theirs), at the versions this
environment runs; `--own` roots are walked but not printed, `--skip` names neither.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, distribution

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def closure(roots: list[str], skip: set[str]) -> dict[str, str]:
    """Canonical name -> installed version, for the roots and everything they require."""
    seen: dict[str, str] = {}
    todo = [canonicalize_name(root) for root in roots]
    while todo:
        name = todo.pop()
        if name in seen or name in skip:
            continue
        dist = distribution(name)
        seen[name] = dist.version
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(requirement.name))
    return seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("roots", nargs="+")
    parser.add_argument("--skip", nargs="*", default=[])
    parser.add_argument("--own", nargs="*", default=[])
    args = parser.parse_args()
    own = {canonicalize_name(name) for name in args.own}
    try:
        found = closure(args.roots, {canonicalize_name(name) for name in args.skip})
    except PackageNotFoundError as error:
        print(f"closure: {error} is not installed here", file=sys.stderr)
        return 1
    for name, version in sorted(found.items()):
        if name not in own:
            print(f"{name}=={version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

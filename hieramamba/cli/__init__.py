"""The ``hieramamba`` command line: one module per verb group, each with ``register(sub)``.

* ``ground`` — ``configs``, ``ground``
* ``demo`` — ``demo``
* ``train`` — ``train``, ``eval``, ``make-synthetic``
* ``export`` — ``export``, ``export-bundle``, ``check-onnx``, ``build-engine``, ``build-engines``
* ``profile`` — ``bench``, ``profile``

Options the verbs share are declared once in ``common``. A ``HieraMambaError`` ends the command
with its message on one line and exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from hieramamba.errors import HieraMambaError

from . import demo, export, ground, profile, train

VERB_GROUPS = (ground, demo, train, export, profile)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="hieramamba", description="HieraMamba video grounding tools")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for group in VERB_GROUPS:
        group.register(sub)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except HieraMambaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The ``hieramamba`` command line: one module per verb group, each with ``register(sub)``.

* ``ground`` — ``configs``, ``ground``
* ``demo`` — ``demo``
* ``train`` — ``train``, ``eval``, ``make-synthetic``
* ``export`` — ``export``, ``export-bundle``, ``check-onnx``, ``build-engine``, ``build-engines``
* ``profile`` — ``bench``, ``profile``
* ``serve`` — ``serve``, ``triton-repo`` (Triton Inference Server)
* ``corpus`` — ``ground-corpus`` (Ray Data or local processes)

Options the verbs share are declared once in ``common``. A ``HieraMambaError`` (or an operating
system error: a file that cannot be read or written) ends the command with its message on one
line and exit code 2; Ctrl-C with one line and exit code 130 (temporary files are removed by the
writers on the way out).
"""

from __future__ import annotations

import argparse
import sys

from hieramamba.errors import HieraMambaError

from . import corpus, demo, export, ground, profile, serve, train

VERB_GROUPS = (ground, demo, train, export, profile, serve, corpus)


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
    except OSError as exc:  # the file system said no: name the file, not a traceback
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

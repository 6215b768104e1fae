"""``napari-unet`` console script: ``demo``, ``train`` and ``predict``.

Each sub-command lives in :mod:`napari_unet.commands` as a module with
``register(subparsers)``; heavy imports (torch, napari) happen inside the command.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-unet",
        description="Train and run the U-Net of Ronneberger et al. (2015), in napari or headless.",
    )
    parser.add_argument("--version", action="version", version=_version())
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = (m.name for m in pkgutil.iter_modules(commands.__path__))
    for module in sorted(name for name in modules if not name.startswith("_")):
        importlib.import_module(f"{commands.__name__}.{module}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for commands that relaunch
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as error:  # bad input: one clear sentence, no traceback
        print(f"napari-unet {args.command}: error: {error}", file=sys.stderr)
        return 2


def _version() -> str:
    from . import __version__

    return f"napari-unet {__version__}"


if __name__ == "__main__":
    sys.exit(main())

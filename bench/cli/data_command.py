"""``sambench data fetch NAME... [--root DIR]`` and ``sambench data list [--root DIR]``: the data sets.

fetch downloads a public data set (checksums verified, resumable) into the layout its loader reads
(bench.data.fetch); list says for every data set whether the loaders find it, where, and how to get
it. Exit status of fetch: 0 when the data is there (fetched now or before), 2 for a name that cannot
be fetched or a bad --root, 1 when the download fails (offline, a checksum mismatch, a bad archive).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from bench.cli.paths import creatable_dir
from bench.data import fetch
from bench.errors import EXIT_OK, InvalidInput, RunFailed

BUNDLED = {"digits": "bundled with scikit-learn (1,797 8x8 images); nothing to fetch",
           "synthetic": "generated from a seed (for tests); nothing to fetch"}
IMAGE_FOLDERS = ("imagenet", "imagefolder")
LIST_ORDER = ("digits", "synthetic", "fashion_mnist", "cifar10", "cifar100", "imagefolder")
ROOT_HELP = "the data root (default: $SAMBENCH_DATA_ROOT, else ./data; where the loaders look)"


def add_parser(p: argparse.ArgumentParser, formatter: type[argparse.HelpFormatter]) -> None:
    """The ``data`` command's actions (``formatter``: the command line's help formatter)."""
    class Formatter(formatter, argparse.RawDescriptionHelpFormatter):
        """Keeps the epilog's lines (the ImageNet layout) as written."""

    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION", help="fetch or list")
    f = sub.add_parser("fetch", formatter_class=Formatter,
                       help="download a data set into the layout its loader reads (checksums verified, resumable)",
                       description="Download NAME's official archives (through a .part file that a second run "
                                   "resumes), verify their checksums and unpack them where the loaders look. Exit "
                                   "status: 0 ready, 1 download failed (offline, checksum mismatch), 2 bad input.",
                       epilog=fetch.IMAGENET_HELP)
    f.add_argument("names", nargs="+", metavar="NAME", help=f"one or more of {', '.join(fetch.SOURCES)}")
    f.add_argument("--root", metavar="DIR", help=ROOT_HELP)
    f.set_defaults(func=cmd_data_fetch)
    ls = sub.add_parser("list", formatter_class=Formatter, help="every data set: present or not, where, how to get it",
                        description="Every data set: whether the loaders find it, where, and how to get it.")
    ls.add_argument("--root", metavar="DIR", help=ROOT_HELP)
    ls.set_defaults(func=cmd_data_list)


def cmd_data_fetch(args) -> int:

    for name in args.names:  # every name checked before anything is downloaded
        if name in IMAGE_FOLDERS:
            raise InvalidInput(fetch.IMAGENET_HELP)
        if name not in fetch.SOURCES and name not in BUNDLED:
            raise InvalidInput(f"{name!r} cannot be fetched", field="NAME", allowed=list(fetch.SOURCES))
    root = creatable_dir(args.root, "--root") if args.root else None
    for name in dict.fromkeys(args.names):
        if name in BUNDLED:
            print(f"{name}: {BUNDLED[name]}")
        else:
            _fetch_one(fetch, name, root)
    return EXIT_OK


def _fetch_one(fetch, name: str, root: Path | None) -> None:
    src = fetch.SOURCES[name]
    try:
        got = fetch.fetch(name, root)
    except fetch.FetchError as exc:
        raise RunFailed(str(exc)) from None
    except OSError as exc:  # a root we may not write to, a full disk
        raise RunFailed(f"{src.title}: {exc}") from None
    if got.already:
        print(f"{src.title}: already present in {got.path}; nothing to do")
        return
    print(f"{src.title}: ready in {got.path} ({got.downloaded / 1e6:.1f} MB downloaded)")
    target = root if root is not None else fetch.default_root()
    if target.resolve() != fetch.default_root().resolve():
        print(f"  the loaders look there with `data_root: {target}` in a suite, `--data-root {target}`, "
              f"or SAMBENCH_DATA_ROOT={target}")


def cmd_data_list(args) -> int:
    from bench.data import files as datafiles

    root = args.root
    shown_root = Path(root) if root else fetch.default_root()
    print(f"data root: {shown_root}" + ("" if root else "  ($SAMBENCH_DATA_ROOT, else ./data; --root DIR for another)"))
    names = list(LIST_ORDER) + sorted(set(datafiles.LOCATORS) - set(LIST_ORDER))
    rows = [_list_row(n, root, shown_root) for n in names]
    width = max(len(n) for n in names)
    for name, state, where in rows:
        print(f"{name:<{width}}  {state:<8} {where}")
    return EXIT_OK


def _list_row(name: str, root: str | None, shown_root: Path) -> tuple[str, str, str]:
    """(name, present | missing | partial, where it is or how to get it)."""

    if name in BUNDLED:
        return name, "present", BUNDLED[name].split(";")[0]
    found = fetch.present(name, root)
    if found is not None:
        return name, "present", str(found)
    if name == "imagefolder":
        return name, "missing", (f"ImageNet-style folders {shown_root / 'imagenet'}/{{train,val}}/<class>/: "
                                 "see `sambench data fetch --help` or docs/data.md")
    if name not in fetch.SOURCES:
        return name, "missing", "a plugin data set: see its documentation"
    src = fetch.SOURCES[name]
    flag = f" --root {root}" if root else ""
    parts = fetch.partial_downloads(name, shown_root)
    if parts:
        size = sum(p.stat().st_size for p in parts) / 1e6
        return name, "partial", (f"{', '.join(map(str, parts))} ({size:.1f} MB so far): "
                                 f"`sambench data fetch {name}{flag}` resumes it")
    return name, "missing", f"sambench data fetch {name}{flag}   ({src.size} -> {shown_root / src.folder})"

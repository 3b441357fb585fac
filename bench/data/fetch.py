"""Fetch the public data sets into the layout the loaders read: ``sambench data fetch NAME``.

    fetch.fetch("cifar10", root="data")     # -> data/cifar-10-batches-py/ (what bench.data reads)
    fetch.present("cifar10", None)          # where the loaders find it now, or None

Each data set in :data:`SOURCES` names its official archives (URL and checksum; the checksums are
the ones torchvision checks, ``md5`` there). A download goes to ``<file>.part`` and resumes with
an HTTP ``Range`` request when that file is already there (a server that ignores the range sends
everything again); it is renamed to its final name only after its checksum matched, and a
mismatch deletes it. Archives (CIFAR) are then unpacked into a hidden folder and renamed into
place once the files the loader needs are all there, so nothing half done ever looks like data
to a loader. An archive (or an idx file) already at its final name, e.g. copied there by hand
from a machine with internet, is verified and used instead of downloaded.

Layout under the root (``--root``, else ``$SAMBENCH_DATA_ROOT``, else ``./data``;
bench.data.files reads exactly these):

- fashion_mnist: ``<root>/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``
- cifar10: ``<root>/cifar-10-batches-py/`` (data_batch_1..5, test_batch, batches.meta)
- cifar100: ``<root>/cifar-100-python/`` (train, test, meta)

ImageNet cannot be fetched (its licence asks for a sign-in): :data:`IMAGENET_HELP` says how to
lay out its folders. No torch here, and the network modules are imported only to download
(the command line builds its help from this module).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.data import files as datafiles

CHUNK = 1 << 20          # bytes read and hashed at a time
TIMEOUT_S = 30.0         # seconds without an answer before a download gives up


class FetchError(RuntimeError):
    """A data set that could not be fetched (network, checksum, archive): a run-time failure."""


@dataclass(frozen=True)
class Archive:
    """One file to download: its official URL and ``"md5:<hex>"`` or ``"sha256:<hex>"``."""

    url: str
    checksum: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Source:
    """A data set that ``sambench data fetch`` can get.

    ``folder``: where it lands under the root: the folder the downloads go to (``extract`` false)
    or the folder the archive holds and the loader reads (``extract`` true; the archive is
    downloaded to the root and deleted once unpacked). ``needs``: the files the loader reads there.
    """

    name: str
    title: str
    archives: tuple[Archive, ...]
    folder: str
    needs: tuple[str, ...]
    extract: bool
    size: str                   # about how much is downloaded, for messages


_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"

SOURCES: dict[str, Source] = {
    "fashion_mnist": Source(
        "fashion_mnist", "Fashion-MNIST",
        (Archive(_FASHION_URL + "train-images-idx3-ubyte.gz", "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
         Archive(_FASHION_URL + "train-labels-idx1-ubyte.gz", "md5:25c81989df183df01b3e8a0aad5dffbe"),
         Archive(_FASHION_URL + "t10k-images-idx3-ubyte.gz", "md5:bef4ecab320f06d8554ea6380940ec79"),
         Archive(_FASHION_URL + "t10k-labels-idx1-ubyte.gz", "md5:bb300cfdad3c16e7a12a480ee83cd310")),
        "FashionMNIST/raw", tuple(f"{stem}.gz" for stem in datafiles.FASHION_FILES.values()),
        extract=False, size="about 30 MB"),
    "cifar10": Source(
        "cifar10", datafiles.CIFAR10.title,
        (Archive(_CIFAR_URL + "cifar-10-python.tar.gz", "md5:c58f30108f718f92721af3b95e74349a"),),
        datafiles.CIFAR10.folder, datafiles.CIFAR10.train + datafiles.CIFAR10.test + (datafiles.CIFAR10.meta,),
        extract=True, size="about 170 MB"),
    "cifar100": Source(
        "cifar100", datafiles.CIFAR100.title,
        (Archive(_CIFAR_URL + "cifar-100-python.tar.gz", "md5:eb9058c3a382ffc7106e4002c42a8d85"),),
        datafiles.CIFAR100.folder,
        datafiles.CIFAR100.train + datafiles.CIFAR100.test + (datafiles.CIFAR100.meta,),
        extract=True, size="about 170 MB"),
}

IMAGENET_HELP = """\
ImageNet (and any image-folder data set) cannot be fetched: download ILSVRC2012 from
https://image-net.org (it needs an account), then lay it out as one folder per class,
    <root>/imagenet/train/<class>/*.JPEG      (e.g. train/n01440764/n01440764_10026.JPEG)
    <root>/imagenet/val/<class>/*.JPEG        (the 50,000 validation images moved into class folders)
and run with `dataset: imagefolder` and `data_root: <root>` (or $SAMBENCH_DATA_ROOT, or --data-root);
<root>/train and <root>/val work too. `sambench data list` shows whether it is found."""


def default_root() -> Path:
    """Where fetched data goes without ``--root``: $SAMBENCH_DATA_ROOT, else ./data (the loaders look there)."""
    return datafiles.default_roots(None)[0]


# --- where the loaders find a data set ----------------------------------------------------------

def _fashion_in(dirs: list[Path]) -> Path | None:
    return next((d for d in dirs if datafiles.fashion_files(d) is not None), None)


def _cifar_in(fmt: datafiles.CifarFormat, bases: list[Path]) -> Path | None:
    return next((d for d in (datafiles.cifar_dir(fmt, b) for b in bases) if d is not None), None)


def _imagefolder_in(root: str | None) -> Path | None:
    try:
        return datafiles.find_root(root)
    except datafiles.DataError:
        return None


def present(name: str, root: str | os.PathLike | None, only_root: bool = False) -> Path | None:
    """The folder the loaders read ``name`` from with this root, or None (``only_root``: look in
    ``root`` alone, not in $SAMBENCH_DATA_ROOT, ./data or the system folder)."""
    root = None if root is None else str(root)
    if name == "fashion_mnist":
        dirs = datafiles.fashion_candidates(root)
        if only_root:
            dirs = [d for d in dirs if d == Path(root) or Path(root) in d.parents]
        return _fashion_in(dirs)
    if name in ("cifar10", "cifar100"):
        fmt = datafiles.CIFAR10 if name == "cifar10" else datafiles.CIFAR100
        return _cifar_in(fmt, [Path(root)] if only_root else datafiles.default_roots(root))
    if name == "imagefolder":
        return _imagefolder_in(root)
    return None


def partial_downloads(name: str, root: Path) -> list[Path]:
    """``.part`` files a stopped ``sambench data fetch`` left (the next one resumes them)."""
    src = SOURCES[name]
    where = root / src.folder if not src.extract else root
    return [p for a in src.archives if (p := where / f"{a.filename}.part").is_file()]


# --- downloading ---------------------------------------------------------------------------------

def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, archive: Archive) -> None:
    """FetchError if ``path`` does not have the archive's checksum."""
    algorithm, _, expected = archive.checksum.partition(":")
    got = file_digest(path, algorithm)
    if got != expected.lower():
        raise FetchError(f"{path}: {algorithm} is {got}, expected {expected} for {archive.url}")


def offline_error(archive: Archive, dest: Path, reason: object, command: str) -> FetchError:
    algorithm, _, expected = archive.checksum.partition(":")
    return FetchError(
        f"could not download {archive.url}: {reason}. This machine seems to be offline, or the server is "
        f"unreachable. By hand: download {archive.url} on a machine with internet, check that its {algorithm} "
        f"is {expected}, copy it to {dest}, and run `{command}` again to verify and unpack it "
        f"(docs/data.md).")


def _range_start(resp) -> int | None:
    """The first byte of a 206 answer's ``Content-Range: bytes START-END/TOTAL``."""
    m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
    return int(m.group(1)) if m else None


def _open(url: str, have: int):
    """The server's answer for ``url`` from byte ``have`` on; None if the part file is already complete."""
    import urllib.error
    import urllib.request

    headers = {"User-Agent": "sambench-data-fetch"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # range not satisfiable: nothing after what we have
            return None
        raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from None


def download(archive: Archive, dest: Path, command: str, progress: Callable[[str, int, int | None], None]
             ) -> int:
    """Download ``archive`` to ``dest`` through ``dest.part`` (resumed when it exists), verify it and
    rename it; return the bytes downloaded now. ``progress(filename, bytes so far, total or None)``."""
    import http.client
    import urllib.error

    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    fetched = 0
    try:
        resp = _open(archive.url, have)
    except (urllib.error.URLError, OSError) as exc:  # refused, no route, DNS, timeout
        raise offline_error(archive, dest, getattr(exc, "reason", exc), command) from None
    if resp is not None:
        with resp:
            if not (have and resp.status == 206 and _range_start(resp) == have):
                have = 0  # the server sends the whole file
            length = resp.headers.get("Content-Length")
            total = have + int(length) if length and length.isdigit() else None
            with open(part, "ab" if have else "wb") as out:
                problem = None
                try:
                    while chunk := resp.read(CHUNK):
                        out.write(chunk)
                        fetched += len(chunk)
                        progress(archive.filename, have + fetched, total)
                except (OSError, http.client.HTTPException) as exc:
                    problem = repr(exc)
            if problem or (total is not None and have + fetched < total):
                raise FetchError(f"the download of {archive.url} stopped after {have + fetched} bytes"
                                 + (f" of {total}" if total else "") + (f" ({problem})" if problem else "")
                                 + f"; run `{command}` again to resume it from {part}")
    try:
        verify(part, archive)
    except FetchError as exc:
        part.unlink()
        raise FetchError(f"{exc}; deleted the download, run `{command}` again to download it anew") from None
    part.replace(dest)
    return fetched


# --- unpacking -----------------------------------------------------------------------------------

def unpack(archive_path: Path, root: Path, src: Source) -> Path:
    """Unpack a tarball holding ``src.folder`` into ``root/src.folder`` (through a hidden folder,
    renamed into place once every file the loader needs is there)."""
    import tarfile

    final = root / src.folder
    tmp = root / f".{src.folder}.unpacking"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        try:
            with tarfile.open(archive_path) as tf:
                tf.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise FetchError(f"{archive_path}: cannot unpack it ({exc})") from None
        missing = [f for f in src.needs if not (tmp / src.folder / f).is_file()]
        if missing:
            raise FetchError(f"{archive_path}: it holds no {src.folder}/ with {', '.join(missing)}")
        if final.exists():
            raise FetchError(f"{final} exists but lacks files the loader reads; move it away and run again")
        (tmp / src.folder).rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# --- the whole fetch -----------------------------------------------------------------------------

@dataclass
class Fetched:
    """What :func:`fetch` did: where the data is now, bytes downloaded now, and whether it was there."""

    path: Path
    downloaded: int = 0
    already: bool = False


def fetch(name: str, root: str | os.PathLike | None = None, log: Callable[[str], None] = print,
          stream=None) -> Fetched:
    """Make ``name`` (a key of :data:`SOURCES`) readable by its loader under ``root`` (default:
    :func:`default_root`); FetchError if that fails. Without ``root``, a copy the loaders already
    find anywhere is enough; with one, a copy in it is."""
    src = SOURCES[name]
    found = present(name, root, only_root=root is not None)
    if found is not None:
        return Fetched(found, already=True)
    root = Path(root) if root is not None else default_root()
    command = f"sambench data fetch {name}" + (f" --root {root}" if root != default_root() else "")
    where = root if src.extract else root / src.folder
    where.mkdir(parents=True, exist_ok=True)
    line = ProgressLine(stream)

    def say(message: str) -> None:  # a line for good, never written into the live line
        line.clear()
        log(message)

    downloaded = 0
    try:
        for archive in src.archives:
            dest = where / archive.filename
            if dest.is_file():
                say(f"{dest}: already here, checking its {archive.checksum.partition(':')[0]}")
                try:
                    verify(dest, archive)
                except FetchError as exc:
                    raise FetchError(f"{exc}; delete it and run `{command}` again to download it") from None
            else:
                say(f"downloading {archive.url} -> {dest}")
                downloaded += download(archive, dest, command, line)
    finally:
        line.clear()
    if src.extract:
        for archive in src.archives:
            log(f"unpacking {where / archive.filename} -> {root / src.folder}")
            unpack(where / archive.filename, root, src)
            (where / archive.filename).unlink()
    return Fetched(root / src.folder, downloaded)


class ProgressLine:
    """``cifar-10-python.tar.gz  41.9/162.6 MB  5.3 MB/s  ETA 23s`` on a terminal (stderr); nothing elsewhere."""

    def __init__(self, stream=None):
        from bench.console import LiveLine

        self.live = LiveLine(sys.stderr if stream is None else stream)
        self.t0, self.first, self.filename = time.monotonic(), 0, None

    def __call__(self, filename: str, done: int, total: int | None) -> None:
        from bench.console import duration

        if filename != self.filename:  # a new file: its speed from its first chunk on
            self.filename, self.first, self.t0 = filename, done, time.monotonic()
        rate = (done - self.first) / max(time.monotonic() - self.t0, 1e-6)
        size = f"{done / 1e6:.1f}/{total / 1e6:.1f} MB" if total else f"{done / 1e6:.1f} MB"
        speed = f"  {rate / 1e6:.1f} MB/s" if rate > 0 else ""
        eta = f"  ETA {duration((total - done) / rate)}" if total and rate > 0 else ""
        self.live.show(f"{filename}  {size}{speed}{eta}")

    def clear(self) -> None:
        self.live.clear()

"""``sambench data fetch`` / ``data list`` (bench.data.fetch) against a local HTTP server in a thread.

The server serves tiny fake archives in the real formats; each test points the data set's table
entry (bench.data.fetch.SOURCES) at it with the fake files' own checksums. Nothing goes to the
internet: the offline test uses a port nobody listens on.
"""
import dataclasses
import gzip
import hashlib
import io
import pickle
import socket
import struct
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from bench.cli.app import main
from bench.data import fetch
from bench.data import files as datafiles


class Server:
    """Files by path; honours ``Range: bytes=N-`` (unless ``ranges`` is false); records every
    request's path, Range header and the body bytes sent; ``cut`` {path: n} sends only n bytes of
    the next answer for that path and drops the connection (an interrupted download)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[dict] = []
        self.cut: dict[str, int] = {}
        self.ranges = True
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = server.files.get(self.path)
                record = {"path": self.path, "range": self.headers.get("Range"), "sent": 0}
                server.requests.append(record)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng and server.ranges:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                out = body[start:]
                if self.path in server.cut:
                    out = out[:server.cut.pop(self.path)]
                    self.close_connection = True
                self.wfile.write(out)
                self.wfile.flush()
                record["sent"] = len(out)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No data anywhere the loaders look: empty cwd, no $SAMBENCH_DATA_ROOT, no system Fashion-MNIST."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SAMBENCH_DATA_ROOT", raising=False)
    monkeypatch.setattr(datafiles, "FASHION_SYSTEM_DIR", str(tmp_path / "no-system-dir"))
    return tmp_path


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _serve(server, monkeypatch, name: str, files: dict[str, bytes], checksums: dict[str, str] | None = None):
    """Serve ``files`` (by file name) and point SOURCES[name] at them, with their checksums unless given."""
    archives = []
    for filename, body in files.items():
        server.files[f"/{name}/{filename}"] = body
        archives.append(fetch.Archive(f"{server.url}/{name}/{filename}",
                                      (checksums or {}).get(filename, _sha256(body))))
    monkeypatch.setitem(fetch.SOURCES, name, dataclasses.replace(fetch.SOURCES[name], archives=tuple(archives)))


def _fake_cifar10_tarball(n: int = 4) -> bytes:
    """A cifar-10-python.tar.gz holding cifar-10-batches-py/ in the real pickle format."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        entries = {f"data_batch_{i}": None for i in range(1, 6)} | {"test_batch": None}
        for j, name in enumerate(entries):
            entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": [(j + i) % 10 for i in range(n)]}
            entries[name] = pickle.dumps(entry, protocol=2)
        entries["batches.meta"] = pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}, protocol=2)
        for name, data in entries.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _fake_fashion(n_train: int = 40, n_test: int = 10) -> dict[str, bytes]:
    """The four idx .gz files (uint8 images 28x28, labels), the first one large enough to cut in two."""
    rng = np.random.default_rng(1)

    def idx(arr: np.ndarray) -> bytes:
        header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
        return gzip.compress(header + arr.astype(np.uint8).tobytes(), mtime=0)

    return {"train-images-idx3-ubyte.gz": idx(rng.integers(0, 256, (n_train, 28, 28))),
            "train-labels-idx1-ubyte.gz": idx(np.arange(n_train) % 10),
            "t10k-images-idx3-ubyte.gz": idx(rng.integers(0, 256, (n_test, 28, 28))),
            "t10k-labels-idx1-ubyte.gz": idx(np.arange(n_test) % 10)}


def test_fetch_cifar10_unpacks_where_the_loader_reads_and_list_shows_it(server, isolated, monkeypatch, capsys):
    from bench.data.datasets import load_dataset

    tarball = _fake_cifar10_tarball()
    _serve(server, monkeypatch, "cifar10", {"cifar-10-python.tar.gz": tarball})
    root = isolated / "store"
    assert main(["data", "list", "--root", str(root)]) == 0
    assert "cifar10        missing  sambench data fetch cifar10 --root" in capsys.readouterr().out

    assert main(["data", "fetch", "cifar10", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"ready in {root / 'cifar-10-batches-py'}" in out
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py"]  # no archive, .part or temp folder
    spec = load_dataset("cifar10", str(root))
    assert (len(spec.train_y), len(spec.test_y), spec.classes[:2]) == (20, 4, ("c0", "c1"))
    assert server.requests[-1]["sent"] == len(tarball)

    assert main(["data", "list", "--root", str(root)]) == 0
    assert f"cifar10        present  {root / 'cifar-10-batches-py'}" in capsys.readouterr().out
    n = len(server.requests)
    assert main(["data", "fetch", "cifar10", "--root", str(root)]) == 0  # already there: nothing downloaded
    assert "already present" in capsys.readouterr().out and len(server.requests) == n


def test_checksum_mismatch_fails_and_leaves_nothing_a_loader_takes(server, isolated, monkeypatch, capsys):
    tarball = _fake_cifar10_tarball()
    _serve(server, monkeypatch, "cifar10", {"cifar-10-python.tar.gz": tarball},
           {"cifar-10-python.tar.gz": "md5:" + "0" * 32})
    root = isolated / "store"
    assert main(["data", "fetch", "cifar10", "--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert f"{server.url}/cifar10/cifar-10-python.tar.gz" in err
    assert f"md5 is {hashlib.md5(tarball).hexdigest()}, expected {'0' * 32}" in err
    assert list(root.iterdir()) == []  # the download is deleted, nothing was unpacked
    with pytest.raises(datafiles.DataError, match="Get it with `sambench data fetch cifar10`"):
        datafiles.check_available("cifar10", str(root))


@pytest.mark.parametrize("ranges", [True, False], ids=["server-honours-range", "server-ignores-range"])
def test_a_stopped_download_resumes(server, isolated, monkeypatch, capsys, ranges):
    from bench.data.datasets import load_dataset

    files = _fake_fashion()
    _serve(server, monkeypatch, "fashion_mnist", files)
    server.ranges = ranges
    big = "train-images-idx3-ubyte.gz"
    size, cut = len(files[big]), len(files[big]) // 3
    server.cut[f"/fashion_mnist/{big}"] = cut
    root = isolated / "store"
    raw = root / "FashionMNIST" / "raw"

    assert main(["data", "fetch", "fashion_mnist", "--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert f"the download of {server.url}/fashion_mnist/{big} stopped after {cut} bytes" in err
    assert "again to resume" in err
    assert (raw / f"{big}.part").stat().st_size == cut
    with pytest.raises(datafiles.DataError):  # a .part file is not data
        datafiles.check_available("fashion_mnist", str(root))
    assert main(["data", "list", "--root", str(root)]) == 0
    assert f"fashion_mnist  partial  {raw / big}.part" in capsys.readouterr().out

    assert main(["data", "fetch", "fashion_mnist", "--root", str(root)]) == 0
    second = [r for r in server.requests if r["path"].endswith(big)][1]
    assert second["range"] == f"bytes={cut}-"
    assert second["sent"] == (size - cut if ranges else size)  # only the rest, or all over again
    assert sorted(p.name for p in raw.iterdir()) == sorted(files)
    assert all((raw / f).read_bytes() == body for f, body in files.items())
    spec = load_dataset("fashion_mnist", str(root))
    assert (len(spec.train_y), len(spec.test_y), spec.img_size) == (40, 10, 28)


def test_offline_names_the_url_and_the_manual_route(isolated, monkeypatch, capsys):
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/cifar-100-python.tar.gz"
    src = fetch.SOURCES["cifar100"]
    monkeypatch.setitem(fetch.SOURCES, "cifar100",
                        dataclasses.replace(src, archives=(fetch.Archive(url, src.archives[0].checksum),)))
    root = isolated / "store"
    assert main(["data", "fetch", "cifar100", "--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert f"could not download {url}" in err
    assert f"copy it to {root / 'cifar-100-python.tar.gz'}" in err
    assert "md5 is eb9058c3a382ffc7106e4002c42a8d85" in err
    assert not any(p.is_file() for p in root.rglob("*"))


def test_an_archive_copied_by_hand_is_verified_and_unpacked(server, isolated, monkeypatch, capsys):
    tarball = _fake_cifar10_tarball()
    _serve(server, monkeypatch, "cifar10", {"cifar-10-python.tar.gz": tarball})
    root = isolated / "store"
    root.mkdir()
    (root / "cifar-10-python.tar.gz").write_bytes(tarball)
    assert main(["data", "fetch", "cifar10", "--root", str(root)]) == 0
    assert server.requests == []
    assert datafiles.cifar_dir(datafiles.CIFAR10, root) == root / "cifar-10-batches-py"


def test_names_that_cannot_be_fetched(isolated, capsys):
    assert main(["data", "fetch", "imagenet"]) == 2
    assert "<root>/imagenet/train/<class>/*.JPEG" in capsys.readouterr().err
    assert main(["data", "fetch", "cifar1O"]) == 2
    assert "(allowed: fashion_mnist, cifar10, cifar100)" in capsys.readouterr().err
    assert main(["data", "fetch", "digits"]) == 0
    assert "nothing to fetch" in capsys.readouterr().out
    assert main(["data", "fetch", "cifar10", "imagenet", "--root", str(isolated / "r")]) == 2  # checked first
    assert list(isolated.iterdir()) == []  # nothing created

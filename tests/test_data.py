"""bench.data.datasets: datasets (digits, synthetic, Fashion-MNIST idx files, CIFAR pickles) and DeviceLoader."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gzip
import pickle
import struct
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision

from bench.data import augment, label_noise, loader
from bench.data import datasets as data
from bench.data import files as datafiles
from bench.data.augment import augment_batch
from bench.data.datasets import DataError, DataSpec, load_dataset
from bench.data.loader import DeviceLoader, make_loaders
from bench.registries import DATASETS, UnknownNameError

torch.set_num_threads(2)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No data anywhere: cwd is empty, no env root, the system Fashion-MNIST dir does not exist."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SAMBENCH_DATA_ROOT", raising=False)
    monkeypatch.setattr(datafiles, "FASHION_SYSTEM_DIR", str(tmp_path / "no-system-dir"))  # where files are looked for
    return tmp_path


# --- registry ------------------------------------------------------------------------------

def test_registered_names():
    assert {"digits", "fashion_mnist", "cifar10", "cifar100", "synthetic"} <= set(DATASETS.names())
    with pytest.raises(UnknownNameError, match="digits"):
        load_dataset("imagenet")


# --- digits ----------------------------------------------------------------------------

def test_digits_shapes_split_and_normalization():
    spec = load_dataset("digits")
    assert isinstance(spec, DataSpec)
    assert spec.train_x.shape == (1437, 1, 8, 8) and spec.test_x.shape == (360, 1, 8, 8)
    assert spec.train_x.dtype == torch.float32 and spec.train_y.dtype == torch.int64
    assert (spec.num_classes, spec.in_chans, spec.img_size, spec.crop_pad, spec.flip) == (10, 1, 8, 1, False)
    # stratified: every class in both splits, in the same proportions as the full set
    from sklearn.datasets import load_digits
    full = torch.bincount(torch.as_tensor(load_digits().target), minlength=10)
    test_counts = torch.bincount(spec.test_y, minlength=10)
    assert torch.equal(test_counts + torch.bincount(spec.train_y, minlength=10), full)
    assert ((test_counts - full * 360 / 1797).abs() <= 1).all()
    # normalized with the training statistics
    assert abs(spec.train_x.mean().item()) < 1e-4
    assert abs(spec.train_x.std().item() - 1) < 1e-3
    assert abs(spec.test_x.mean().item()) < 0.1


def test_digits_deterministic():
    a, b = load_dataset("digits"), load_dataset("digits")
    for f in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, f), getattr(b, f))


# --- synthetic ---------------------------------------------------------------------------

def test_synthetic_deterministic_and_learnable():
    a, b = load_dataset("synthetic"), load_dataset("synthetic")
    assert a.train_x.shape == (512, 3, 8, 8) and a.test_x.shape == (256, 3, 8, 8)
    assert (a.num_classes, a.crop_pad, a.flip) == (4, 1, True)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert torch.bincount(a.train_y).tolist() == [128] * 4
    # nearest class mean on the training split classifies most test images
    means = torch.stack([a.train_x[a.train_y == c].mean(0) for c in range(4)]).flatten(1)
    pred = torch.cdist(a.test_x.flatten(1), means).argmin(1)
    acc = (pred == a.test_y).float().mean().item()
    assert 0.7 < acc


# --- Fashion-MNIST ---------------------------------------------------------------------

def _write_idx(path, arr: np.ndarray):
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def _write_fashion(folder, n_train=20, n_test=10, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte.gz": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte.gz": (np.arange(n_test) * 3) % 10,
    }
    for name, arr in arrays.items():
        _write_idx(folder / name, arr)
    return arrays


def test_idx_magic_numbers(tmp_path):
    arrays = _write_fashion(tmp_path)
    magic = {}
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        with gzip.open(tmp_path / name) as f:
            magic[name] = struct.unpack(">I", f.read(4))[0]
    assert magic == {"train-images-idx3-ubyte.gz": 2051, "train-labels-idx1-ubyte.gz": 2049}
    img = data.read_idx(tmp_path / "train-images-idx3-ubyte.gz")
    assert img.shape == (20, 28, 28) and np.array_equal(img, arrays["train-images-idx3-ubyte.gz"])
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x12\x34\x56\x78rest"))
    with pytest.raises(DataError, match="not an idx file"):
        data.read_idx(tmp_path / "bad.gz")


@pytest.mark.parametrize("layout", ["flat", "torchvision", "subdir", "env"])
def test_fashion_mnist_layouts(isolated, monkeypatch, layout):
    base = isolated / "store"
    folder = {"flat": base, "torchvision": base / "FashionMNIST" / "raw",
              "subdir": base / "fashion-mnist", "env": base}[layout]
    arrays = _write_fashion(folder)
    if layout == "env":
        monkeypatch.setenv("SAMBENCH_DATA_ROOT", str(base))
        spec = load_dataset("fashion_mnist")
    else:
        spec = load_dataset("fashion_mnist", root=str(base))
    assert spec.train_x.shape == (20, 1, 28, 28) and spec.test_x.shape == (10, 1, 28, 28)
    assert (spec.num_classes, spec.in_chans, spec.img_size, spec.crop_pad, spec.flip) == (10, 1, 28, 2, True)
    assert spec.train_y.tolist() == arrays["train-labels-idx1-ubyte.gz"].tolist()
    assert spec.test_y.tolist() == arrays["t10k-labels-idx1-ubyte.gz"].tolist()
    raw = torch.tensor(arrays["train-images-idx3-ubyte.gz"], dtype=torch.float32) / 255
    mean, std = raw.mean(), raw.std()
    assert torch.allclose(spec.train_x[:, 0], (raw - mean) / std, atol=1e-5)


def test_fashion_mnist_default_data_dir(isolated):
    _write_fashion(isolated / "data" / "fashion-mnist")
    assert load_dataset("fashion_mnist").train_x.shape[0] == 20


def test_fashion_mnist_missing_names_paths(isolated):
    with pytest.raises(DataError) as e:
        load_dataset("fashion_mnist", root=str(isolated / "mine"))
    msg = str(e.value)
    for p in (isolated / "mine", isolated / "mine" / "FashionMNIST" / "raw", isolated / "no-system-dir",
              "data/fashion-mnist"):
        assert str(p) in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-root" in msg
    assert "download: true" in msg and "train-images-idx3-ubyte.gz" in msg


def test_fashion_mnist_download_failure_is_data_error(isolated, monkeypatch):
    def offline(*a, **k):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: <urlopen error offline>")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(DataError, match="could not download Fashion-MNIST"):
        load_dataset("fashion_mnist", root=str(isolated / "dl"), download=True)


# --- CIFAR -------------------------------------------------------------------------------

def _dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _write_cifar(root, kind, n=6, seed=0):
    """A tiny CIFAR folder in the real on-disk format (pickled dicts, rows of 3072 uint8: R, G, B planes)."""
    rng = np.random.default_rng(seed)
    if kind == "cifar10":
        folder, label_key, k = root / "cifar-10-batches-py", "labels", 10
        files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        _dump_meta = ("batches.meta", {"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072})
    else:
        folder, label_key, k = root / "cifar-100-python", "fine_labels", 100
        files = ["train", "test"]
        _dump_meta = ("meta", {"fine_label_names": [f"f{i}" for i in range(100)],
                               "coarse_label_names": [f"g{i}" for i in range(20)]})
    folder.mkdir(parents=True)
    written = {}
    for j, name in enumerate(files):
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = [(j * n + i) % k for i in range(n)]
        entry = {"batch_label": name, "data": x, label_key: y, "filenames": [f"{i}.png" for i in range(n)]}
        if kind == "cifar100":
            entry["coarse_labels"] = [v % 20 for v in y]
        _dump(folder / name, entry)
        written[name] = (x, y)
    _dump(folder / _dump_meta[0], _dump_meta[1])
    return folder, written


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_fake_cifar_loads(isolated, kind):
    folder, written = _write_cifar(isolated / "store", kind)
    # torchvision itself would reject these files (md5 check); ours reads the same format.
    tv = torchvision.datasets.CIFAR10 if kind == "cifar10" else torchvision.datasets.CIFAR100
    with pytest.raises(RuntimeError):
        tv(str(isolated / "store"), train=True)
    spec = load_dataset(kind, root=str(isolated / "store"))
    n_train = 30 if kind == "cifar10" else 6
    assert spec.train_x.shape == (n_train, 3, 32, 32) and spec.test_x.shape == (6, 3, 32, 32)
    assert (spec.in_chans, spec.img_size, spec.crop_pad, spec.flip) == (3, 32, 4, True)
    assert spec.num_classes == (10 if kind == "cifar10" else 100)
    assert len(spec.classes) == spec.num_classes
    first = "data_batch_1" if kind == "cifar10" else "train"
    x0, y0 = written[first]
    assert spec.train_y[:6].tolist() == y0
    assert spec.test_y.tolist() == written["test_batch" if kind == "cifar10" else "test"][1]
    fmt = data.CIFAR10 if kind == "cifar10" else data.CIFAR100
    img = torch.tensor(x0[0].reshape(3, 32, 32), dtype=torch.float32) / 255
    expect = (img - torch.tensor(fmt.mean).view(3, 1, 1)) / torch.tensor(fmt.std).view(3, 1, 1)
    assert torch.allclose(spec.train_x[0], expect, atol=1e-5)
    # the env root and a root pointing at the batches folder itself work too
    assert load_dataset(kind, root=str(folder)).train_x.shape[0] == n_train


@pytest.mark.parametrize("kind,folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_missing_cifar_names_path(isolated, kind, folder):
    with pytest.raises(DataError) as e:
        load_dataset(kind, root=str(isolated / "nowhere"))
    assert str(isolated / "nowhere" / folder) in str(e.value)
    assert "download: true" in str(e.value)


def test_cifar_download_failure_is_data_error(isolated, monkeypatch):
    def offline(root, *a, **k):
        os.makedirs(root, exist_ok=True)  # torchvision leaves an empty folder behind
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DataError, match="could not download CIFAR-10.*name resolution"):
        load_dataset("cifar10", root=str(isolated / "dl"), download=True)


# --- DeviceLoader ------------------------------------------------------------------------

def _batches(loader, epoch):
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def _toy(n=103):
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 2, 4, 4).contiguous()
    return x, torch.arange(n)


@pytest.mark.parametrize("augment", [False, True])
def test_loader_covers_every_sample_once(augment):
    x, y = _toy()
    loader = DeviceLoader(x, y, 16, shuffle=True, augment=augment, crop_pad=1, flip=True, seed=3)
    assert len(loader) == 7
    for epoch in range(3):
        bs = _batches(loader, epoch)
        assert len(bs) == 7 and [len(b[1]) for b in bs] == [16] * 6 + [7]
        labels = torch.cat([b[1] for b in bs])
        assert torch.equal(torch.bincount(labels, minlength=103), torch.ones(103, dtype=torch.long))
        if not augment:  # images travel with their labels
            for xb, yb in bs:
                assert torch.equal(xb, x[yb])
    dl = DeviceLoader(x, y, 16, shuffle=True, drop_last=True)
    assert len(dl) == 6 and sum(len(b[1]) for b in dl) == 96


def test_loader_same_seed_epoch_same_batches():
    x, y = _toy()
    kw = {"shuffle": True, "augment": True, "crop_pad": 1, "flip": True}
    a = DeviceLoader(x, y, 16, seed=5, **kw)
    b = DeviceLoader(x, y, 16, seed=5, **kw)
    _batches(a, 0)  # history must not matter: only (seed, epoch)
    for (xa, ya), (xb, yb) in zip(_batches(a, 4), _batches(b, 4)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    order = lambda bs: torch.cat([yy for _, yy in bs])
    assert not torch.equal(order(_batches(a, 4)), order(_batches(a, 5)))
    c = DeviceLoader(x, y, 16, seed=6, **kw)
    assert not torch.equal(order(_batches(a, 4)), order(_batches(c, 4)))


def test_loader_without_shuffle_keeps_order():
    x, y = _toy()
    loader = DeviceLoader(x, y, 50)
    assert torch.equal(torch.cat([yy for _, yy in loader]), y)


def _image(n=64, c=2, h=5, w=6):
    base = torch.arange(1, c * h * w + 1, dtype=torch.float32).view(1, c, h, w)
    return base.expand(n, c, h, w).contiguous()


def test_forced_flip_mirrors():
    x = _image()
    g = torch.Generator().manual_seed(0)
    out = augment_batch(x, g, crop_pad=0, flip=True, flip_p=1.0)
    assert torch.equal(out, x.flip(3))
    assert not torch.equal(out, x)
    assert torch.equal(augment_batch(x, g, crop_pad=0, flip=True, flip_p=0.0), x)


def _windows(x1, p):
    """All crops of one zero-padded image: {(dy, dx): window}."""
    padded = torch.nn.functional.pad(x1, (p, p, p, p))
    h, w = x1.shape[-2:]
    return {(dy, dx): padded[..., dy:dy + h, dx:dx + w]
            for dy in range(2 * p + 1) for dx in range(2 * p + 1)}


def test_crop_is_a_window_of_the_padded_image():
    x = _image()
    g = torch.Generator().manual_seed(1)
    out = augment_batch(x, g, crop_pad=2, flip=False)
    wins = _windows(x[0], 2)
    seen = set()
    for o in out:
        match = [k for k, win in wins.items() if torch.equal(o, win)]
        assert len(match) == 1
        seen.add(match[0])
    assert len(seen) > 10  # offsets differ per image
    # crop + flip: each output is a window or a mirrored window
    out = augment_batch(x, g, crop_pad=2, flip=True)
    flips = 0
    for o in out:
        plain = any(torch.equal(o, win) for win in wins.values())
        mirrored = any(torch.equal(o, win.flip(-1)) for win in wins.values())
        assert plain or mirrored
        flips += mirrored and not plain
    assert 10 < flips < 54


def test_crop_flip_gather_is_pad_slice_flip():
    """The one-kernel gather = F.pad, then the window at the offsets, then a left-right flip."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 2, 5, 7, generator=g)
    index = torch.tensor([3, 0, 5, 5, 1, 2])
    offsets = torch.randint(0, 5, (6, 2), generator=g)
    flips = torch.tensor([True, False, True, False, False, True])
    out = augment._crop_flip_gather(x, index, offsets, flips, 2)
    for s in range(6):
        dy, dx = offsets[s].tolist()
        ref = torch.nn.functional.pad(x[index[s]], (2, 2, 2, 2))[:, dy:dy + 5, dx:dx + 7]
        assert torch.equal(out[s], ref.flip(-1) if flips[s] else ref)
    assert torch.equal(augment._crop_flip_gather(x, index, None, None, 0), x[index])


def _patterned(n=45, c=2, h=4, w=5):
    """Image i holds i * 1000 + (1, 2, ...): every window of every image is told apart."""
    base = torch.arange(1, c * h * w + 1, dtype=torch.float32).view(1, c, h, w)
    return base + 1000 * torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1), torch.arange(n)


def test_loader_augments_each_image_with_its_label():
    x, y = _patterned()
    loader = DeviceLoader(x, y, 8, shuffle=True, augment=True, crop_pad=1, flip=True, seed=4)
    loader.set_epoch(2)
    kinds = set()
    for xb, yb in loader:
        for img, label in zip(xb, yb):
            wins = _windows(x[label], 1)
            plain = [k for k, win in wins.items() if torch.equal(img, win)]
            mirrored = [k for k, win in wins.items() if torch.equal(img, win.flip(-1))]
            assert plain or mirrored
            kinds.add(bool(mirrored and not plain))
    assert kinds == {True, False}


@pytest.mark.parametrize("drop_last", [False, True])
def test_loader_segments_do_not_change_an_epoch(drop_last):
    """Batches gathered one at a time, a few at a time or all at once: the same epoch."""
    x, y = _patterned()
    epochs = []
    for budget in (1, 3 * 8 * x[:1].numel() * 4, 2 ** 30):  # 1 batch, 3 batches, everything per segment
        loader = DeviceLoader(x, y, 8, shuffle=True, augment=True, crop_pad=1, flip=True, seed=7,
                              drop_last=drop_last)
        loader.segment_bytes = {"cpu": budget}
        epochs.append(_batches(loader, 3))
    for other in epochs[1:]:
        assert len(other) == len(epochs[0]) == (5 if drop_last else 6)
        for (xa, ya), (xb, yb) in zip(epochs[0], other):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_loader_batches_are_slices_of_one_gather():
    """No work per batch: the batches of a segment are views of one augmented tensor."""
    x, y = _patterned()
    loader = DeviceLoader(x, y, 8, shuffle=True, augment=True, crop_pad=1, flip=True)
    loader.segment_bytes = {"cpu": 2 ** 30}
    assert len({xb.untyped_storage().data_ptr() for xb, _ in loader}) == 1
    plain = DeviceLoader(x, y, 8)  # in order, no augmentation: slices of the data itself
    assert all(xb.untyped_storage().data_ptr() == x.untyped_storage().data_ptr() for xb, _ in plain)


def test_make_loaders_on_digits():
    spec = load_dataset("digits")
    train, test = make_loaders(spec, 128, 500, seed=0, device="cpu", augment=True)
    assert len(train) == 12 and len(test) == 1
    assert (train.crop_pad, train.flip, train.shuffle, train.augment) == (1, False, True, True)
    xt, yt = next(iter(test))
    assert torch.equal(xt, spec.test_x) and torch.equal(yt, spec.test_y)
    train.set_epoch(0)
    xb, yb = next(iter(train))
    assert xb.shape == (128, 1, 8, 8) and yb.shape == (128,) and xb.device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_loader_on_cuda():
    x, y = _toy()
    loader = DeviceLoader(x, y, 16, shuffle=True, augment=True, crop_pad=1, flip=True, seed=0, device="cuda")
    a, b = _batches(loader, 2), _batches(loader, 2)
    assert all(xx.is_cuda and yy.is_cuda for xx, yy in a)
    assert all(torch.equal(xa, xb) for (xa, _), (xb, _) in zip(a, b))
    labels = torch.cat([yy for _, yy in a]).cpu()
    assert torch.equal(torch.bincount(labels, minlength=103), torch.ones(103, dtype=torch.long))


# --- label noise -----------------------------------------------------------------------------

@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.4, 0.8])
@pytest.mark.parametrize("kind", ["symmetric", "asymmetric"])
def test_label_noise_flips_exactly_the_fraction(fraction, kind):
    spec = load_dataset("digits")
    y = spec.train_y.clone()
    noisy, changed = label_noise.noisy_labels(spec.train_y, fraction, kind, 10, seed=3)
    n = len(y)
    assert int(changed.sum()) == round(fraction * n) == int((noisy != y).sum())   # every pick changes
    assert torch.equal(noisy[~changed], y[~changed]) and torch.equal(spec.train_y, y)  # input kept
    assert noisy.dtype == torch.int64 and int(noisy.min()) >= 0 and int(noisy.max()) <= 9
    if kind == "asymmetric":                                   # class c -> c + 1 (mod 10)
        assert torch.equal(noisy[changed], (y[changed] + 1) % 10)
    elif fraction >= 0.4:                                      # symmetric: any other class
        assert {int(d) for d in (noisy[changed] - y[changed]) % 10} == set(range(1, 10))


def test_label_noise_is_seeded_and_leaves_the_test_set_alone():
    spec = load_dataset("digits")
    a = label_noise.with_label_noise(spec, 0.4, "symmetric", seed=0)
    b = label_noise.with_label_noise(load_dataset("digits"), 0.4, "symmetric", seed=0)
    c = label_noise.with_label_noise(spec, 0.4, "symmetric", seed=1)
    assert torch.equal(a.train_y, b.train_y) and not torch.equal(a.train_y, c.train_y)
    for noisy in (a, c):
        assert noisy.test_x is spec.test_x and noisy.test_y is spec.test_y   # the very same tensors
        assert torch.equal(noisy.train_x, spec.train_x)
    assert label_noise.with_label_noise(spec, 0.0, "symmetric", seed=0) is spec
    with pytest.raises(ValueError, match="symmetric, asymmetric"):
        label_noise.noisy_labels(spec.train_y, 0.1, "pairwise", 10, seed=0)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        label_noise.noisy_labels(spec.train_y, 1.0, "symmetric", 10, seed=0)


def test_label_noise_run_fields(tmp_path, monkeypatch):
    from bench import config
    from bench.engine import train

    base = config.resolve({"dataset": "digits", "model": "resnet_ci"})
    noisy = config.resolve({"dataset": "digits", "model": "resnet_ci", "label_noise": 0.3})
    assert config.run_id(noisy) != config.run_id(base)
    assert config.run_id({**noisy, "label_noise_type": "asymmetric"}) != config.run_id(noisy)
    # without noise the fields stay out of the id: ids of older runs do not change
    assert "label_noise" not in config.experiment_part(base)
    for bad, field in (({"label_noise": 1.0}, "label_noise"), ({"label_noise": -0.1}, "label_noise"),
                       ({"label_noise_type": "pairs"}, "label_noise_type")):
        with pytest.raises(config.ConfigError) as info:
            config.resolve(bad)
        assert info.value.field == field
    # training sees the noisy labels (seeded by the run's seed); evaluation the clean test set
    seen = {}
    real = loader.make_loaders

    def spy(spec, *args, **kwargs):
        seen["spec"] = spec
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(loader, "make_loaders", spy)
    cfg = {"dataset": "digits", "model": "resnet_ci", "epochs": 1, "batch_size": 512, "device": "cpu",
           "label_noise": 0.25, "label_noise_type": "asymmetric", "seed": 4}
    result = train.run(cfg, tmp_path / "run", progress=False, log=lambda m: None)
    clean = load_dataset("digits")
    expected, _ = label_noise.noisy_labels(clean.train_y, 0.25, "asymmetric", 10, seed=4)
    assert torch.equal(seen["spec"].train_y, expected)
    assert torch.equal(seen["spec"].test_y, clean.test_y)
    assert result["config"]["label_noise"] == 0.25 and result["config"]["label_noise_type"] == "asymmetric"

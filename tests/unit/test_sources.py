"""Raw-data loaders: IDX files, image folders and archives, the decode cache, source resolution."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdlight.data.datasets import cifar10 as cifar10_data
from kdlight.data.datasets import fetch
from kdlight.data.datasets import mnist as mnist_data
from kdlight.data.datasets.cifar10 import load_cifar10
from kdlight.data.datasets.mnist import IDX_FILES, load_mnist_family
from kdlight.data.formats.cache import CACHE_DIR_ENV
from kdlight.data.formats.idx import read_idx
from kdlight.data.formats.image_tree import load_image_folder
from kdlight.errors import DataError
from tests.helpers.data import idx_bytes, write_idx

# ---- helpers ---------------------------------------------------------------------------------


def write_mnist(folder: Path, n_train=5, n_test=3, gz=True, seed=0) -> dict[str, np.ndarray]:
    """The four IDX files of a tiny MNIST-like set; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        IDX_FILES[0]: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        IDX_FILES[1]: rng.integers(0, 10, (n_train,), dtype=np.uint8),
        IDX_FILES[2]: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        IDX_FILES[3]: rng.integers(0, 10, (n_test,), dtype=np.uint8),
    }
    for stem, array in arrays.items():
        write_idx(folder / (stem + (".gz" if gz else "")), array)
    return arrays


def pixel(split: str, cls: int, i: int) -> tuple[int, int, int]:
    """A colour that identifies one image, so tests can check where it landed."""
    return (40 * cls + 10, 20 * i + 5, 200 if split == "train" else 100)


def image_bytes(color, size=(8, 8), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


CLASSES = ("cat", "ant", "bee")  # written unsorted on purpose: labels must follow sorted names


def tree(n_train=4, n_test=2, fmt="PNG", top="") -> dict[str, bytes]:
    """Member name -> file bytes of a tiny image-folder dataset."""
    files = {}
    ext = "png" if fmt == "PNG" else "jpg"
    for split, n in (("train", n_train), ("test", n_test)):
        for cls in CLASSES:
            label = sorted(CLASSES).index(cls)
            for i in reversed(range(n)):  # written unsorted: files must be read sorted
                files[f"{top}{split}/{cls}/{i:02d}.{ext}"] = image_bytes(
                    pixel(split, label, i), fmt=fmt
                )
    return files


def write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def write_tar(path: Path, files: dict[str, bytes], dirs=()) -> Path:
    mode = "w:gz" if path.name.endswith((".gz", ".tgz")) else "w"
    with tarfile.open(path, mode) as tar:
        for name in dirs:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def forbid_decoding(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("decoded although a valid cache exists")

    monkeypatch.setattr(Image, "open", fail)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No test reads a real dataset, the shared archive, or the user's cache."""
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "fallback-cache"))
    monkeypatch.delenv(cifar10_data.CIFAR10_ARCHIVE_ENV, raising=False)
    monkeypatch.setattr(cifar10_data, "CIFAR10_FALLBACK_ARCHIVES", ())
    monkeypatch.setattr(mnist_data, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian-dir")


# ---- IDX -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["x-idx3-ubyte", "x-idx3-ubyte.gz"])
def test_read_idx_round_trips_raw_and_gzipped(tmp_path, name):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    out = read_idx(write_idx(tmp_path / name, array))
    assert out.dtype == torch.uint8
    assert out.shape == (2, 3, 4)
    assert torch.equal(out, torch.from_numpy(array))


def test_read_idx_truncated_file_names_it(tmp_path):
    path = tmp_path / "short-idx3-ubyte"
    path.write_bytes(idx_bytes(np.zeros((4, 28, 28), np.uint8))[:-10])
    with pytest.raises(DataError, match="short-idx3-ubyte.*truncated"):
        read_idx(path)


def test_read_idx_truncated_gzip_names_it(tmp_path):
    path = tmp_path / "cut-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(1000, np.uint8)))[:-20])
    with pytest.raises(DataError, match="cut-idx1-ubyte.gz"):
        read_idx(path)


def test_read_idx_rejects_non_idx_magic(tmp_path):
    path = tmp_path / "junk"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(DataError, match=r"junk is not an IDX file: magic number 0x504b0304"):
        read_idx(path)


def test_mnist_family_from_torchvision_layout(tmp_path):
    written = write_mnist(tmp_path / "MNIST" / "raw", gz=True)
    arrays = load_mnist_family("mnist", tmp_path, download=False)
    assert arrays.train_x.dtype == torch.uint8 and arrays.train_x.shape == (5, 1, 28, 28)
    assert arrays.test_x.shape == (3, 1, 28, 28)
    assert arrays.train_y.dtype == torch.int64
    assert torch.equal(arrays.train_x[:, 0], torch.from_numpy(written[IDX_FILES[0]]))
    assert arrays.test_y.tolist() == written[IDX_FILES[3]].tolist()
    assert len(arrays.classes) == 10


def test_fashion_mnist_from_debian_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist_data, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "debian")
    write_mnist(tmp_path / "debian", gz=True)
    arrays = load_mnist_family("fashion_mnist", tmp_path / "empty-data-dir", download=False)
    assert arrays.train_x.shape == (5, 1, 28, 28)
    assert arrays.classes[9] == "Ankle boot"


def test_mnist_family_prefers_data_dir_over_debian(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist_data, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "debian")
    write_mnist(tmp_path / "debian", n_train=7)
    write_mnist(tmp_path / "data" / "fashion_mnist", n_train=2, gz=False)
    arrays = load_mnist_family("fashion_mnist", tmp_path / "data", download=False)
    assert len(arrays.train_y) == 2


def test_mnist_family_count_mismatch(tmp_path):
    folder = tmp_path / "mnist"
    write_mnist(folder, gz=False)
    write_idx(folder / "train-labels-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(DataError, match="holds 5 images but .*train-labels-idx1-ubyte holds 4"):
        load_mnist_family("mnist", tmp_path, download=False)


def test_mnist_family_labels_in_images_file(tmp_path):
    folder = tmp_path / "mnist"
    write_mnist(folder, gz=False)
    write_idx(folder / "t10k-images-idx3-ubyte", np.zeros(3, np.uint8))  # labels-shaped
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte has IDX magic 0x00000801"):
        load_mnist_family("mnist", tmp_path, download=False)


def test_mnist_family_missing_files_lists_names_and_places(tmp_path):
    (tmp_path / "fashion_mnist").mkdir()
    write_idx(tmp_path / "fashion_mnist" / "train-images-idx3-ubyte.gz", np.zeros((1, 28, 28)))
    with pytest.raises(DataError) as err:
        load_mnist_family("fashion_mnist", tmp_path, download=False)
    msg = str(err.value)
    assert all(stem in msg for stem in IDX_FILES)
    assert str(tmp_path / "FashionMNIST" / "raw") in msg
    assert "no-debian-dir" in msg
    assert "missing train-labels-idx1-ubyte, t10k-images" in msg


def test_mnist_family_unknown_name():
    with pytest.raises(DataError, match="'kmnist'; valid names: mnist, fashion_mnist"):
        load_mnist_family("kmnist", ".", download=False)


# ---- image folders and archives ----------------------------------------------------------------


def check_tiny(arrays, n_train=4, n_test=2):
    assert arrays.classes == ["ant", "bee", "cat"]
    assert arrays.train_x.dtype == torch.uint8 and arrays.train_x.shape == (3 * n_train, 3, 8, 8)
    assert arrays.test_x.shape == (3 * n_test, 3, 8, 8)
    assert arrays.train_y.dtype == torch.int64
    assert arrays.train_y.tolist() == [c for c in range(3) for _ in range(n_train)]
    assert arrays.test_y.tolist() == [c for c in range(3) for _ in range(n_test)]


def test_image_folder_png_is_exact_and_sorted(tmp_path):
    arrays = load_image_folder(write_folder(tmp_path / "tiny", tree()), progress=False)
    check_tiny(arrays)
    # label 2 ("cat"), third file (02.png) of train: lossless PNG, so the exact colour
    assert arrays.train_x[2 * 4 + 2, :, 3, 3].tolist() == list(pixel("train", 2, 2))
    assert arrays.test_x[1, :, 0, 0].tolist() == list(pixel("test", 0, 1))
    assert (tmp_path / "tiny.kdlight-cache.npz").is_file()


@pytest.mark.parametrize("name", ["tiny.tar.gz", "tiny.tgz", "tiny.tar"])
def test_archive_under_one_top_level_folder(tmp_path, name):
    path = write_tar(tmp_path / name, tree(fmt="JPEG", top="cifar/"))
    arrays = load_image_folder(path, progress=False)
    check_tiny(arrays)
    expected = torch.tensor(pixel("train", 1, 3), dtype=torch.float32)
    assert (arrays.train_x[4 + 3, :, 4, 4].float() - expected).abs().max() <= 8  # JPEG is lossy
    assert (tmp_path / "tiny.kdlight-cache.npz").is_file()


def test_archive_at_top_level_with_directory_members(tmp_path):
    files = tree()
    dirs = sorted({n.rsplit("/", 1)[0] for n in files} | {"train", "test"})
    arrays = load_image_folder(write_tar(tmp_path / "t.tar.gz", files, dirs=dirs), progress=False)
    check_tiny(arrays)


def test_cache_is_reused_without_decoding(tmp_path, monkeypatch):
    path = write_tar(tmp_path / "tiny.tar.gz", tree())
    first = load_image_folder(path, progress=False)
    forbid_decoding(monkeypatch)
    second = load_image_folder(path, progress=False)
    assert torch.equal(first.train_x, second.train_x) and torch.equal(first.test_y, second.test_y)
    assert second.classes == first.classes


def test_stale_cache_is_rebuilt(tmp_path):
    path = write_tar(tmp_path / "tiny.tar.gz", tree(n_train=4))
    check_tiny(load_image_folder(path, progress=False), n_train=4)
    write_tar(path, tree(n_train=5))
    os.utime(path, ns=(1, 1))  # a distinct mtime even on coarse-grained file systems
    check_tiny(load_image_folder(path, progress=False), n_train=5)


def test_folder_cache_notices_a_renamed_class(tmp_path):
    root = write_folder(tmp_path / "tiny", tree())
    assert load_image_folder(root, progress=False).classes == ["ant", "bee", "cat"]
    (root / "train" / "ant").rename(root / "train" / "dog")
    (root / "test" / "ant").rename(root / "test" / "dog")
    assert load_image_folder(root, progress=False).classes == ["bee", "cat", "dog"]


def test_unreadable_cache_is_rebuilt(tmp_path):
    path = write_tar(tmp_path / "tiny.tar", tree())
    (tmp_path / "tiny.kdlight-cache.npz").write_bytes(b"not a zip file")
    check_tiny(load_image_folder(path, progress=False))


def test_cache_goes_to_cache_dir_when_given(tmp_path, monkeypatch):
    path = write_tar(tmp_path / "tiny.tar", tree())
    load_image_folder(path, cache_dir=tmp_path / "cache", progress=False)
    assert (tmp_path / "cache" / "tiny.kdlight-cache.npz").is_file()
    assert not (tmp_path / "tiny.kdlight-cache.npz").exists()
    forbid_decoding(monkeypatch)
    check_tiny(load_image_folder(path, cache_dir=tmp_path / "cache", progress=False))


def test_cache_falls_back_when_beside_is_read_only(tmp_path, monkeypatch):
    data = tmp_path / "ro"
    data.mkdir()
    path = write_tar(data / "tiny.tar", tree())
    data.chmod(0o555)
    try:
        load_image_folder(path, progress=False)
        assert not (data / "tiny.kdlight-cache.npz").exists()
        assert (tmp_path / "fallback-cache" / "tiny.kdlight-cache.npz").is_file()
        forbid_decoding(monkeypatch)
        check_tiny(load_image_folder(path, progress=False))
    finally:
        data.chmod(0o755)


def test_corrupt_jpeg_member_is_named(tmp_path):
    files = tree(fmt="JPEG", top="d/")
    files["d/test/bee/01.jpg"] = files["d/test/bee/01.jpg"][:40]  # truncated mid-stream
    path = write_tar(tmp_path / "bad.tar.gz", files)
    with pytest.raises(DataError, match=r"image d/test/bee/01.jpg in .*bad.tar.gz is corrupt"):
        load_image_folder(path, progress=False)


def test_garbage_image_file_is_named(tmp_path):
    files = tree()
    files["train/ant/00.png"] = b"this is not an image"
    with pytest.raises(DataError, match="image train/ant/00.png in .*tiny is corrupt"):
        load_image_folder(write_folder(tmp_path / "tiny", files), progress=False)


def test_empty_class_folder(tmp_path):
    root = write_folder(tmp_path / "tiny", tree())
    (root / "train" / "eel").mkdir()
    with pytest.raises(DataError, match="class folder train/eel in .* holds no .jpg"):
        load_image_folder(root, progress=False)


def test_empty_class_directory_member_in_archive(tmp_path):
    path = write_tar(tmp_path / "t.tar", tree(top="x/"), dirs=["x/test/eel"])
    with pytest.raises(DataError, match="class folder x/test/eel in"):
        load_image_folder(path, progress=False)


def test_missing_test_split(tmp_path):
    files = {k: v for k, v in tree().items() if k.startswith("train/")}
    with pytest.raises(DataError, match="no class folders in test/"):
        load_image_folder(write_folder(tmp_path / "tiny", files), progress=False)


def test_no_split_folders(tmp_path):
    path = write_tar(tmp_path / "t.tar", {"a/x.png": image_bytes(0), "b/y.png": image_bytes(0)})
    with pytest.raises(DataError, match=r"no train/ and test/ folders .*found: a, b"):
        load_image_folder(path, progress=False)


def test_images_of_different_sizes(tmp_path):
    files = tree()
    files["test/cat/01.png"] = image_bytes((1, 2, 3), size=(9, 8))
    with pytest.raises(DataError, match="test/cat/01.png in .* is 9x8 pixels but .* is 8x8"):
        load_image_folder(write_folder(tmp_path / "tiny", files), progress=False)


def test_class_sets_must_match(tmp_path):
    files = {k: v for k, v in tree().items() if not k.startswith("test/cat/")}
    with pytest.raises(DataError, match="classes in train/ .* and in test/ .* must be the same"):
        load_image_folder(write_folder(tmp_path / "tiny", files), progress=False)


def test_not_an_archive_or_folder(tmp_path):
    (tmp_path / "data.zip").write_bytes(b"PK")
    with pytest.raises(DataError, match="neither a folder nor a .tar"):
        load_image_folder(tmp_path / "data.zip")
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(tmp_path / "nothing.tar.gz")


def test_corrupt_archive(tmp_path):
    (tmp_path / "broken.tar.gz").write_bytes(b"\x1f\x8b" + bytes(50))
    with pytest.raises(DataError, match="cannot read archive .*broken.tar.gz"):
        load_image_folder(tmp_path / "broken.tar.gz", progress=False)


# ---- CIFAR-10 source resolution ------------------------------------------------------------------


def cifar_like(n=1, top="cifar10/") -> dict[str, bytes]:
    """Ten classes of 32x32 images: enough to pass CIFAR-10's shape check."""
    return {
        f"{top}{split}/{cls}/{i}.png": image_bytes((i, 0, 0), size=(32, 32))
        for split in ("train", "test")
        for cls in cifar10_data.CIFAR10_CLASSES
        for i in range(n)
    }


def test_cifar10_from_archive_in_data_dir(tmp_path):
    write_tar(tmp_path / cifar10_data.CIFAR10_ARCHIVE_NAME, cifar_like(n=2))
    arrays = load_cifar10(tmp_path, download=False, progress=False)
    assert arrays.train_x.shape == (20, 3, 32, 32)
    assert arrays.classes == list(cifar10_data.CIFAR10_CLASSES)


def test_cifar10_from_fallback_archive(tmp_path, monkeypatch):
    shared = write_tar(tmp_path / "shared.tar.gz", cifar_like())
    monkeypatch.setattr(
        cifar10_data, "CIFAR10_FALLBACK_ARCHIVES", (tmp_path / "nope.tar.gz", shared)
    )
    assert load_cifar10(tmp_path / "data", download=False, progress=False).source == str(shared)


def test_cifar10_env_archive_comes_before_fallbacks(tmp_path, monkeypatch):
    env = write_tar(tmp_path / "env.tar", cifar_like())
    monkeypatch.setenv(cifar10_data.CIFAR10_ARCHIVE_ENV, str(env))
    monkeypatch.setattr(cifar10_data, "CIFAR10_FALLBACK_ARCHIVES", (tmp_path / "other.tar",))
    assert load_cifar10(tmp_path / "data", download=False, progress=False).source == str(env)


def test_cifar10_rejects_a_non_cifar_archive(tmp_path):
    path = write_tar(tmp_path / "tiny.tar", tree())
    with pytest.raises(DataError, match="not CIFAR-10: it holds 3 classes of 8x8 images"):
        load_cifar10(tmp_path, archive=path, download=False, progress=False)


def test_cifar10_explicit_archive_missing(tmp_path):
    with pytest.raises(DataError, match="data.archive=.*missing.tar.gz does not exist"):
        load_cifar10(tmp_path, archive=tmp_path / "missing.tar.gz")


class FakeCIFAR10:
    """Stands in for torchvision's CIFAR10: HWC uint8 ``.data``, list ``.targets``."""

    calls: list = []

    def __init__(self, root, train=True, download=False):
        FakeCIFAR10.calls.append((root, train, download))
        if download:
            raise OSError("network unreachable")
        n = 4 if train else 2
        self.data = np.zeros((n, 32, 32, 3), np.uint8)
        self.data[:, 1, 2, 0] = 7  # row 1, column 2, red
        self.targets = list(range(n))
        self.classes = list(cifar10_data.CIFAR10_CLASSES)


def test_cifar10_torchvision_batches_are_nchw(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "torchvision_dataset", {"CIFAR10": FakeCIFAR10}.get)
    (tmp_path / "cifar-10-batches-py").mkdir()
    arrays = load_cifar10(tmp_path, download=False)
    assert arrays.train_x.shape == (4, 3, 32, 32) and arrays.test_x.shape == (2, 3, 32, 32)
    assert arrays.train_x[0, 0, 1, 2] == 7 and arrays.train_x.sum() == 4 * 7
    assert arrays.train_y.dtype == torch.int64 and arrays.train_y.tolist() == [0, 1, 2, 3]


def test_cifar10_nothing_found_lists_places_and_remedies(tmp_path, monkeypatch):
    FakeCIFAR10.calls = []
    monkeypatch.setattr(fetch, "torchvision_dataset", {"CIFAR10": FakeCIFAR10}.get)
    monkeypatch.setattr(cifar10_data, "CIFAR10_FALLBACK_ARCHIVES", (tmp_path / "shared.tar.gz",))
    with pytest.raises(DataError) as err:
        load_cifar10(tmp_path / "data", download=True)
    msg = str(err.value)
    assert str(tmp_path / "data" / "cifar10-jpeg.tar.gz") in msg
    assert str(tmp_path / "data" / "cifar-10-batches-py") in msg
    assert str(tmp_path / "shared.tar.gz") in msg
    assert "network unreachable" in msg and "data.archive=" in msg
    assert FakeCIFAR10.calls == [(str(tmp_path / "data"), True, True)]


def test_cifar10_no_download_when_disabled(tmp_path, monkeypatch):
    FakeCIFAR10.calls = []
    monkeypatch.setattr(fetch, "torchvision_dataset", {"CIFAR10": FakeCIFAR10}.get)
    with pytest.raises(DataError, match="skipped: data.download=false"):
        load_cifar10(tmp_path, download=False)
    assert FakeCIFAR10.calls == []


class FakeFashionMNIST:
    """Stands in for torchvision's FashionMNIST after a download: tensor ``.data``/``.targets``."""

    def __init__(self, root, train=True, download=False):
        n = 6 if train else 2
        self.data = torch.full((n, 28, 28), 3, dtype=torch.uint8)
        self.targets = torch.arange(n)


def test_mnist_family_torchvision_download(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "torchvision_dataset", {"FashionMNIST": FakeFashionMNIST}.get)
    arrays = load_mnist_family("fashion_mnist", tmp_path, download=True)
    assert arrays.train_x.shape == (6, 1, 28, 28) and arrays.train_x.dtype == torch.uint8
    assert arrays.test_y.dtype == torch.int64 and arrays.test_y.tolist() == [0, 1]


def test_mnist_family_download_failure_is_reported(tmp_path, monkeypatch):
    def offline(name):
        def fail(*args, **kwargs):
            raise OSError("no route to host")

        return fail

    monkeypatch.setattr(fetch, "torchvision_dataset", offline)
    with pytest.raises(DataError, match="mnist not found: .*failed: OSError: no route to host"):
        load_mnist_family("mnist", tmp_path, download=True)

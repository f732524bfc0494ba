"""Paper benchmarks (miniImageNet, CIFAR-FS, FC100) on tiny files written in each source's format.

Downloads go to an HTTP server on 127.0.0.1 that the tests start. Every URL
in paper_data.DOWNLOAD_URLS points at it, so no test reaches the internet.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import pickle
import shutil
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.download import ChecksumError, HTMLPageError
from shared_amortized_vi import paper_data
from shared_amortized_vi.data import TaskSampler, TaskSpec
from shared_amortized_vi.paper_data import (
    CIFARFS_ARCHIVE,
    FC100_ARCHIVE,
    PAPER_DATASETS,
    SPLITS,
    UnsafePickleError,
    build_paper_splits,
    load_array_pickle,
)

pytestmark = pytest.mark.timeout(60)

PER_CLASS = 4
SPLIT_CLASSES = {"train": 6, "validation": 5, "test": 5}
CIFARFS_SPLIT_FILES = {"train": "train", "validation": "val", "test": "test"}
FC100_FILES = {"train": "FC100_train.pickle", "validation": "FC100_val.pickle", "test": "FC100_test.pickle"}
HTML_PAGE = b"<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body></body></html>"
MINI_TRAIN = "mini-imagenet/mini-imagenet-cache-train.pkl"


# ---------------------------------------------------------------------------------------------------------------------
# Fake files in each source's format. Image i of global class c is filled with the pixel (v, v + 1, v + 2),
# v = 3 * (c * PER_CLASS + i), and `class_of_value` maps v to the class name or id that the source gives it.


def pixel_value(global_class: int, image: int) -> int:
    return 3 * (global_class * PER_CLASS + image)


def constant_image(value: int, size: int) -> np.ndarray:
    image = np.empty((size, size, 3), np.uint8)
    image[...] = np.array([value, value + 1, value + 2], np.uint8)
    return image


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return path


def mini_imagenet_content(split_classes: dict[str, int], class_of_value: dict[int, object]) -> dict[str, dict]:
    """Return split -> {'image_data', 'class_dict'} with each class's images at shuffled positions."""
    rng = np.random.default_rng(0)
    contents, global_class = {}, 0
    for split, classes in split_classes.items():
        positions = rng.permutation(classes * PER_CLASS)
        images = np.zeros((classes * PER_CLASS, 84, 84, 3), np.uint8)
        class_dict = {}
        for c in range(classes):
            wnid = f"n{global_class:08d}"
            indices = positions[c * PER_CLASS:(c + 1) * PER_CLASS]
            for image, position in enumerate(indices):
                images[position] = constant_image(pixel_value(global_class, image), 84)
                class_of_value[pixel_value(global_class, image)] = wnid
            class_dict[wnid] = indices.tolist()
            global_class += 1
        contents[split] = {"image_data": images, "class_dict": class_dict}
    return contents


def write_mini_imagenet(folder: Path, protocol: int = 4, split_classes: dict[str, int] = SPLIT_CLASSES) -> dict[int, object]:
    folder.mkdir(parents=True, exist_ok=True)
    class_of_value: dict[int, object] = {}
    for split, content in mini_imagenet_content(split_classes, class_of_value).items():
        (folder / f"mini-imagenet-cache-{split}.pkl").write_bytes(pickle.dumps(content, protocol=protocol))
    return class_of_value


def fc100_members(class_of_value: dict[int, object]) -> dict[str, bytes]:
    """Return FC100 pickle bytes per file name, with non-consecutive CIFAR-100 ids as labels in shuffled order."""
    rng = np.random.default_rng(1)
    members, global_class = {}, 0
    for split, classes in SPLIT_CLASSES.items():
        images, labels = [], []
        for _ in range(classes):
            cifar_id = 5 * global_class + 1
            for image in range(PER_CLASS):
                images.append(constant_image(pixel_value(global_class, image), 32))
                labels.append(cifar_id)
                class_of_value[pixel_value(global_class, image)] = cifar_id
            global_class += 1
        order = rng.permutation(len(labels))
        content = {"data": np.stack(images)[order], "labels": [labels[i] for i in order]}
        members[FC100_FILES[split]] = pickle.dumps(content, protocol=2)
    return members


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def cifarfs_members(class_of_value: dict[int, object]) -> dict[str, bytes]:
    """Return the members of cifar100.zip: cifar100/data/<class>/*.png and the Bertinetto split files."""
    members, global_class = {}, 0
    for split, classes in SPLIT_CLASSES.items():
        names = []
        for _ in range(classes):
            name = f"class_{global_class:02d}"
            names.append(name)
            for image in range(PER_CLASS):
                value = pixel_value(global_class, image)
                members[f"cifar100/data/{name}/{name}_{image}.png"] = png_bytes(constant_image(value, 32))
                class_of_value[value] = name
            global_class += 1
        members[f"cifar100/splits/bertinetto/{CIFARFS_SPLIT_FILES[split]}.txt"] = "".join(f"{name}\n" for name in names).encode()
    return members


def check_split(dataset, name: str, classes: int, class_of_value: dict[int, object]) -> None:
    """Check every item's shape, label, class and per-channel normalisation against the values it was written with."""
    spec = PAPER_DATASETS[name]
    mean, std = torch.tensor(spec.mean).view(3, 1, 1), torch.tensor(spec.std).view(3, 1, 1)
    assert len(set(dataset.labels)) == classes
    assert sorted(set(dataset.labels)) == list(range(classes))
    assert dataset.per_class == PER_CLASS
    assert len(dataset) == classes * PER_CLASS
    for index in range(len(dataset)):
        image, label = dataset[index]
        assert image.shape == (3, spec.image_size, spec.image_size)
        assert image.dtype == torch.float32
        assert label == dataset.labels[index]
        value = round(((image[0, 0, 0] * std[0, 0, 0] + mean[0, 0, 0]) * 255).item())
        assert dataset.classes[label] == class_of_value[value]
        expected = (torch.tensor([value, value + 1, value + 2], dtype=torch.float32).view(3, 1, 1) / 255 - mean) / std
        torch.testing.assert_close(image, expected.expand_as(image))


# ---------------------------------------------------------------------------------------------------------------------
# Local HTTP server


@dataclass
class ServerState:
    base_url: str = ""
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # URL path -> (body, Content-Type)
    requests: list[str] = field(default_factory=list)

    def serve(self, relpath: str, body: bytes, content_type: str = "application/octet-stream") -> None:
        self.files[f"/{relpath}"] = (body, content_type)


@pytest.fixture
def server() -> Iterator[ServerState]:
    state = ServerState()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            state.requests.append(self.path)
            if self.path not in state.files:
                self.send_error(404)
                return
            body, content_type = state.files[self.path]
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture(autouse=True)
def local_sources(server: ServerState, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Point every download URL at the local server and keep the cache and mirrors inside tmp_path."""
    for relpath in list(paper_data.DOWNLOAD_URLS):
        monkeypatch.setitem(paper_data.DOWNLOAD_URLS, relpath, (f"{server.base_url}/{relpath}",))
    monkeypatch.delenv("REPRO_MIRROR", raising=False)
    monkeypatch.setenv("REPRO_DATA", str(tmp_path / "default-cache"))


# ---------------------------------------------------------------------------------------------------------------------
# Table and argument checks


def test_paper_datasets_table() -> None:
    assert set(PAPER_DATASETS) == {"mini-imagenet", "cifarfs", "fc100"}
    assert PAPER_DATASETS["mini-imagenet"].image_size == 84
    assert PAPER_DATASETS["cifarfs"].image_size == 32
    assert PAPER_DATASETS["fc100"].image_size == 32
    assert dict(PAPER_DATASETS["mini-imagenet"].classes) == {"train": 64, "validation": 16, "test": 20}
    assert dict(PAPER_DATASETS["cifarfs"].classes) == {"train": 64, "validation": 16, "test": 20}
    assert dict(PAPER_DATASETS["fc100"].classes) == {"train": 60, "validation": 20, "test": 20}
    for spec in PAPER_DATASETS.values():
        assert spec.channels == 3
        assert len(spec.mean) == len(spec.std) == 3
        assert all(0 < value < 1 for value in spec.mean + spec.std)


def test_unknown_dataset_name_lists_valid() -> None:
    with pytest.raises(ValueError, match="Unknown dataset 'omniglot'") as raised:
        build_paper_splits("omniglot")
    for name in ("mini-imagenet", "cifarfs", "fc100"):
        assert repr(name) in str(raised.value)


@pytest.mark.parametrize("name", ["mini-imagenet", "cifarfs", "fc100"])
def test_download_without_sha256_rejected(name: str, server: ServerState, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs sha256=") as raised:
        build_paper_splits(name, cache_dir=tmp_path / "cache")
    assert "root=" in str(raised.value)
    assert "REPRO_MIRROR" in str(raised.value)
    assert server.requests == []


def test_mini_imagenet_sha256_needs_mapping(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'train'"):
        build_paper_splits("mini-imagenet", sha256="0" * 64, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="'test'"):
        build_paper_splits("mini-imagenet", sha256={"train": "0" * 64}, cache_dir=tmp_path / "cache")


def test_missing_root_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        build_paper_splits("fc100", root=tmp_path / "absent")


# ---------------------------------------------------------------------------------------------------------------------
# miniImageNet


def test_mini_imagenet_local_root(tmp_path: Path) -> None:
    class_of_value = write_mini_imagenet(tmp_path / "mini")
    splits = build_paper_splits("mini-imagenet", root=tmp_path / "mini", strict=False)
    assert set(splits) == set(SPLITS)
    for split in SPLITS:
        check_split(splits[split], "mini-imagenet", SPLIT_CLASSES[split], class_of_value)
    assert splits["train"].images.dtype == torch.uint8
    assert splits["train"].classes == [f"n{index:08d}" for index in range(6)]


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_mini_imagenet_pickle_protocols(protocol: int, tmp_path: Path) -> None:
    class_of_value = write_mini_imagenet(tmp_path / "mini", protocol=protocol)
    splits = build_paper_splits("mini-imagenet", root=tmp_path / "mini", strict=False)
    check_split(splits["test"], "mini-imagenet", SPLIT_CLASSES["test"], class_of_value)


def test_mini_imagenet_numpy1_module_names(tmp_path: Path) -> None:
    """Pickles written with numpy 1 name numpy.core.multiarray, which numpy 2 renamed to numpy._core.multiarray."""
    content = {"image_data": np.stack([constant_image(30, 84)] * 2), "class_dict": {"n01": [0, 1]}}
    data = pickle.dumps(content, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\n_reconstruct" in data
    path = tmp_path / "legacy.pkl"
    path.write_bytes(data)
    loaded = load_array_pickle(path)
    np.testing.assert_array_equal(loaded["image_data"], content["image_data"])
    assert loaded["class_dict"] == {"n01": [0, 1]}


def test_mini_imagenet_validation_alias(tmp_path: Path) -> None:
    folder = tmp_path / "mini"
    write_mini_imagenet(folder)
    (folder / "mini-imagenet-cache-validation.pkl").rename(folder / "mini-imagenet-cache-val.pkl")
    splits = build_paper_splits("mini-imagenet", root=folder, strict=False)
    assert splits["validation"].path.name == "mini-imagenet-cache-val.pkl"


def test_mini_imagenet_missing_file(tmp_path: Path) -> None:
    folder = tmp_path / "mini"
    write_mini_imagenet(folder)
    (folder / "mini-imagenet-cache-test.pkl").unlink()
    with pytest.raises(FileNotFoundError, match="mini-imagenet-cache-test.pkl not found"):
        build_paper_splits("mini-imagenet", root=folder, strict=False)


def test_mini_imagenet_image_in_no_class(tmp_path: Path) -> None:
    folder = tmp_path / "mini"
    write_mini_imagenet(folder)
    content = {"image_data": np.stack([constant_image(30, 84)] * 3), "class_dict": {"n01": [0, 1]}}
    (folder / "mini-imagenet-cache-train.pkl").write_bytes(pickle.dumps(content))
    with pytest.raises(ValueError, match="1 of 3 images are in no class"):
        build_paper_splits("mini-imagenet", root=folder, strict=False)


def test_mini_imagenet_wrong_image_shape(tmp_path: Path) -> None:
    folder = tmp_path / "mini"
    write_mini_imagenet(folder)
    content = {"image_data": np.zeros((2, 3, 84, 84), np.uint8), "class_dict": {"n01": [0, 1]}}
    (folder / "mini-imagenet-cache-train.pkl").write_bytes(pickle.dumps(content))
    with pytest.raises(ValueError, match=r"uint8 array of shape \(N, 84, 84, 3\)"):
        build_paper_splits("mini-imagenet", root=folder, strict=False)


def test_strict_checks_class_counts(tmp_path: Path) -> None:
    write_mini_imagenet(tmp_path / "mini")
    with pytest.raises(ValueError, match="train split of mini-imagenet .* has 6 classes, expected 64") as raised:
        build_paper_splits("mini-imagenet", root=tmp_path / "mini")
    assert "strict=False" in str(raised.value)


# ---------------------------------------------------------------------------------------------------------------------
# CIFAR-FS and FC100


def test_cifarfs_from_mirror_folder(server: ServerState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class_of_value: dict[int, object] = {}
    archive = write_zip(tmp_path / "mirror" / CIFARFS_ARCHIVE, cifarfs_members(class_of_value))
    monkeypatch.setenv("REPRO_MIRROR", str(tmp_path / "mirror"))
    cache = tmp_path / "cache"

    splits = build_paper_splits("cifarfs", sha256=sha256_of(archive), cache_dir=cache, strict=False)

    assert server.requests == []
    for split in SPLITS:
        check_split(splits[split], "cifarfs", SPLIT_CLASSES[split], class_of_value)
    assert splits["validation"].classes == ["class_06", "class_07", "class_08", "class_09", "class_10"]
    assert (cache / CIFARFS_ARCHIVE).read_bytes() == archive.read_bytes()
    assert sorted(path.name for path in (cache / "cifarfs" / "cifarfs").iterdir()) == ["cifar100", "processed"]
    assert not hasattr(splits["train"], "_bookkeeping_path")


def test_cifarfs_interrupted_copy_not_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure while learn2learn copies the split folders leaves no processed/ folder for the next run to trust."""
    class_of_value: dict[int, object] = {}
    raw = tmp_path / "l2l" / "cifarfs"
    with zipfile.ZipFile(write_zip(tmp_path / "cifar100.zip", cifarfs_members(class_of_value))) as archive:
        archive.extractall(raw)
    real_copytree = shutil.copytree
    copies = []

    def copytree_failing_on_third_call(source, target, *args, **kwargs):
        copies.append(target)
        if len(copies) == 3:
            raise OSError("disk full")
        return real_copytree(source, target, *args, **kwargs)

    monkeypatch.setattr(shutil, "copytree", copytree_failing_on_third_call)
    with pytest.raises(OSError, match="disk full"):
        build_paper_splits("cifarfs", root=tmp_path / "l2l", strict=False)
    assert sorted(path.name for path in raw.iterdir()) == ["cifar100"]

    monkeypatch.setattr(shutil, "copytree", real_copytree)
    splits = build_paper_splits("cifarfs", root=tmp_path / "l2l", strict=False)
    check_split(splits["train"], "cifarfs", SPLIT_CLASSES["train"], class_of_value)


def test_cifarfs_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="root/cifarfs/cifar100/data"):
        build_paper_splits("cifarfs", root=tmp_path, strict=False)

    members = cifarfs_members({})
    members["cifar100/splits/bertinetto/test.txt"] += b"class_00\n"
    with zipfile.ZipFile(write_zip(tmp_path / "shared.zip", members)) as archive:
        archive.extractall(tmp_path / "shared" / "cifarfs")
    with pytest.raises(ValueError, match="'class_00' is listed in both train.txt and test.txt"):
        build_paper_splits("cifarfs", root=tmp_path / "shared", strict=False)


def test_fc100_download_from_server(server: ServerState, tmp_path: Path) -> None:
    class_of_value: dict[int, object] = {}
    archive = write_zip(tmp_path / "fc100.zip", fc100_members(class_of_value))
    server.serve(FC100_ARCHIVE, archive.read_bytes())

    splits = build_paper_splits("fc100", sha256=sha256_of(archive), cache_dir=tmp_path / "cache", strict=False)

    assert server.requests == [f"/{FC100_ARCHIVE}"]
    for split in SPLITS:
        check_split(splits[split], "fc100", SPLIT_CLASSES[split], class_of_value)
    assert splits["train"].classes == [1, 6, 11, 16, 21, 26]
    assert (tmp_path / "cache" / "fc100" / "extracted" / "FC100_train.pickle").is_file()


def test_fc100_later_source_used(server: ServerState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = write_zip(tmp_path / "fc100.zip", fc100_members({}))
    server.serve("second/fc100.zip", archive.read_bytes())
    monkeypatch.setitem(paper_data.DOWNLOAD_URLS, FC100_ARCHIVE,
                        (f"{server.base_url}/first/fc100.zip", f"{server.base_url}/second/fc100.zip"))

    splits = build_paper_splits("fc100", sha256=sha256_of(archive), cache_dir=tmp_path / "cache", strict=False)

    assert server.requests == ["/first/fc100.zip", "/second/fc100.zip"]
    assert len(splits["test"]) == SPLIT_CLASSES["test"] * PER_CLASS


def test_fc100_pickles_in_subfolder(tmp_path: Path) -> None:
    folder = tmp_path / "root" / "FC100"
    folder.mkdir(parents=True)
    for name, content in fc100_members({}).items():
        (folder / name).write_bytes(content)
    splits = build_paper_splits("fc100", root=tmp_path / "root", strict=False)
    assert splits["train"].path == folder / "FC100_train.pickle"


# ---------------------------------------------------------------------------------------------------------------------
# Task sampling


def build_tiny(name: str, tmp_path: Path) -> dict:
    if name == "mini-imagenet":
        write_mini_imagenet(tmp_path / "mini")
        return build_paper_splits(name, root=tmp_path / "mini", strict=False)
    if name == "cifarfs":
        with zipfile.ZipFile(write_zip(tmp_path / "cifar100.zip", cifarfs_members({}))) as archive:
            archive.extractall(tmp_path / "l2l" / "cifarfs")
        return build_paper_splits(name, root=tmp_path / "l2l", strict=False)
    folder = tmp_path / "fc100"
    folder.mkdir()
    for file_name, content in fc100_members({}).items():
        (folder / file_name).write_bytes(content)
    return build_paper_splits(name, root=folder, strict=False)


@pytest.mark.parametrize("name", ["mini-imagenet", "cifarfs", "fc100"])
def test_task_sampler_draws_5_way_task(name: str, tmp_path: Path) -> None:
    splits = build_tiny(name, tmp_path)
    size = PAPER_DATASETS[name].image_size
    sampler = TaskSampler(splits["train"], TaskSpec(ways=5, shots=1, queries=3), "train", num_tasks=2, seed=0)
    support_x, support_y, query_x, query_y = sampler[0]
    assert support_x.shape == (5, 3, size, size)
    assert query_x.shape == (15, 3, size, size)
    assert support_y.tolist() == [0, 1, 2, 3, 4]
    assert query_y.tolist() == [label for label in range(5) for _ in range(3)]


def test_twenty_way_task_too_large(tmp_path: Path) -> None:
    splits = build_tiny("fc100", tmp_path)
    with pytest.raises(ValueError, match="20-way tasks need 20 classes, but the test split has 5"):
        TaskSampler(splits["test"], TaskSpec(ways=20, shots=1, queries=1), "test")


# ---------------------------------------------------------------------------------------------------------------------
# Restricted unpickling


# Each call would create the file {marker} if it ran (numpy.load would read it). Plain pickle.loads runs them.
FORBIDDEN_CALLS = [("os", "system", "touch {marker}"), ("builtins", "eval", "open({marker!r}, 'w')"), ("numpy", "load", "{marker}")]


@pytest.mark.parametrize("module, name, argument", FORBIDDEN_CALLS)
def test_forbidden_global_rejected(module: str, name: str, argument: str, tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    # Protocol 0 by hand: the global, a tuple with one string argument, then REDUCE calls it.
    evil = f"c{module}\n{name}\n(V{argument.format(marker=str(marker))}\ntR.".encode()
    folder = tmp_path / "mini"
    write_mini_imagenet(folder)
    (folder / "mini-imagenet-cache-validation.pkl").write_bytes(evil)

    with pytest.raises(UnsafePickleError) as raised:
        build_paper_splits("mini-imagenet", root=folder, strict=False)

    message = str(raised.value)
    assert str(folder / "mini-imagenet-cache-validation.pkl") in message
    assert f"{module}.{name}" in message
    assert not marker.exists()


def test_forbidden_global_in_fc100_archive(server: ServerState, tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    members = fc100_members({})
    members["FC100_test.pickle"] = f"cos\nsystem\n(Vtouch {marker}\ntR.".encode()
    archive = write_zip(tmp_path / "fc100.zip", members)
    server.serve(FC100_ARCHIVE, archive.read_bytes())

    with pytest.raises(UnsafePickleError, match="FC100_test.pickle references the global os.system"):
        build_paper_splits("fc100", sha256=sha256_of(archive), cache_dir=tmp_path / "cache", strict=False)
    assert not marker.exists()


def test_truncated_pickle_rejected(tmp_path: Path) -> None:
    path = tmp_path / "cut.pkl"
    path.write_bytes(pickle.dumps({"image_data": np.zeros((2, 84, 84, 3), np.uint8)})[:200])
    with pytest.raises(ValueError, match="cut.pkl is not a readable dataset pickle"):
        load_array_pickle(path)


# ---------------------------------------------------------------------------------------------------------------------
# Downloads and the cache


def mini_imagenet_checksums(folder: Path) -> dict[str, str]:
    return {split: sha256_of(folder / f"mini-imagenet-cache-{split}.pkl") for split in SPLITS}


@pytest.mark.parametrize("content_type", ["text/html; charset=utf-8", "application/octet-stream"])
def test_html_download_rejected_and_not_cached(content_type: str, server: ServerState, tmp_path: Path) -> None:
    source = tmp_path / "source"
    class_of_value = write_mini_imagenet(source)
    checksums = mini_imagenet_checksums(source)
    for split in SPLITS:
        relpath = f"mini-imagenet/mini-imagenet-cache-{split}.pkl"
        server.serve(relpath, (source / f"mini-imagenet-cache-{split}.pkl").read_bytes())
    server.serve(MINI_TRAIN, HTML_PAGE, content_type)
    cache = tmp_path / "cache"

    with pytest.raises(HTMLPageError, match="HTML page"):
        build_paper_splits("mini-imagenet", sha256=checksums, cache_dir=cache, strict=False)
    assert not (cache / MINI_TRAIN).exists()
    assert not (cache / (MINI_TRAIN + ".part")).exists()

    server.serve(MINI_TRAIN, (source / "mini-imagenet-cache-train.pkl").read_bytes())
    splits = build_paper_splits("mini-imagenet", sha256=checksums, cache_dir=cache, strict=False)
    check_split(splits["train"], "mini-imagenet", SPLIT_CLASSES["train"], class_of_value)
    assert (cache / MINI_TRAIN).read_bytes() == (source / "mini-imagenet-cache-train.pkl").read_bytes()


def test_html_file_in_root_rejected(tmp_path: Path) -> None:
    """learn2learn can leave a saved HTML page under the pickle's name, and loading it names the file and the cause."""
    folder = tmp_path / "mini"
    write_mini_imagenet(folder)
    (folder / "mini-imagenet-cache-train.pkl").write_bytes(b"\n  " + HTML_PAGE)
    with pytest.raises(HTMLPageError, match="mini-imagenet-cache-train.pkl is an HTML page"):
        build_paper_splits("mini-imagenet", root=folder, strict=False)
    assert (folder / "mini-imagenet-cache-train.pkl").exists()


def test_verified_cache_not_downloaded_again(server: ServerState, tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "cache" / FC100_ARCHIVE, fc100_members({}))
    content, modified = archive.read_bytes(), archive.stat().st_mtime_ns

    for _ in range(2):
        splits = build_paper_splits("fc100", sha256=sha256_of(archive), cache_dir=tmp_path / "cache", strict=False)
        assert len(splits["train"]) == SPLIT_CLASSES["train"] * PER_CLASS

    assert server.requests == []
    assert archive.read_bytes() == content
    assert archive.stat().st_mtime_ns == modified


def test_mismatched_cache_kept(server: ServerState, tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "cache" / CIFARFS_ARCHIVE, cifarfs_members({}))
    content = archive.read_bytes()
    with pytest.raises(ChecksumError, match="does not match the expected checksum"):
        build_paper_splits("cifarfs", sha256="0" * 64, cache_dir=tmp_path / "cache", strict=False)
    assert server.requests == []
    assert archive.read_bytes() == content

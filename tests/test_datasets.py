"""Real data sets from local files: fixtures in each exact format, errors, the task layer."""

import gzip
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from catapults.config import ConfigError, DataConfig
from catapults.data import DataError, load_dataset, make_dataset
from catapults.data import readers as datasets
from catapults.data.discovery import format_dataset_table, list_datasets
from catapults.data.images import CelebAImages
from catapults.data.readers import open_dataset, read_idx

REPO = Path(__file__).resolve().parents[1]
CELEBA_ATTRS = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
    "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
    "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes "
    "No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling "
    "Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace "
    "Wearing_Necktie Young"
).split()
SMILING = CELEBA_ATTRS.index("Smiling")


# ---- fixture writers (the exact on-disk formats) ---------------------------------------------
def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i2"): 0x0B, np.dtype(">f4"): 0x0D}
    header = bytes([0, 0, codes[array.dtype], array.ndim])
    header += np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)
    return path


def make_mnist(root: Path, sub: str = "MNIST/raw", gz: bool = False, n=(30, 20), seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for split, count in zip(("train", "t10k"), n):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = (np.arange(count) % 10).astype(np.uint8)
        write_idx(root / sub / f"{split}-images-idx3-ubyte", images, gz)
        write_idx(root / sub / f"{split}-labels-idx1-ubyte", labels, gz)
        out[split] = (images, labels)
    return out


def make_cifar(root: Path, per_batch: int = 4, n_test: int = 6, seed=0):
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    out = {"train": [], "test": []}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        count = n_test if name == "test_batch" else per_batch
        data = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        labels = [int(v) for v in (np.arange(count) + i) % 10]
        # as the real files: a protocol-2 pickle of a dict with bytes keys
        obj = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
               b"filenames": [f"img{j}.png".encode() for j in range(count)]}
        (d / name).write_bytes(pickle.dumps(obj, protocol=2))
        out["test" if name == "test_batch" else "train"].append((data, labels))
    return out


def make_svhn(root: Path, n=(12, 5), seed=0):
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    (root / "svhn").mkdir(parents=True, exist_ok=True)
    out = {}
    for split, count in zip(("train", "test"), n):
        X = rng.integers(0, 256, (32, 32, 3, count), dtype=np.uint8)
        y = (np.arange(count) % 10 + 1).astype(np.uint8).reshape(-1, 1)  # 1..10, 10 = digit 0
        savemat(root / "svhn" / f"{split}_32x32.mat", {"X": X, "y": y})
        out[split] = (X, y)
    return out


def make_celeba(root: Path, partitions=(0, 0, 0, 0, 1, 2, 2, 0, 2, 0), seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    d = root / "celeba"
    (d / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    n = len(partitions)
    attrs = rng.choice([-1, 1], size=(n, 40))
    attrs[:, SMILING] = [1 if i % 2 == 0 else -1 for i in range(n)]
    colours = []
    files = [f"{i + 1:06d}.jpg" for i in range(n)]
    for fname in files:
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        colours.append(colour)
        Image.new("RGB", (178, 218), colour).save(d / "img_align_celeba" / fname, quality=95)
    lines = [str(n), " ".join(CELEBA_ATTRS) + " "]
    lines += [f + " " + " ".join(f"{v:2d}" for v in row) for f, row in zip(files, attrs)]
    (d / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (d / "list_eval_partition.txt").write_text(
        "".join(f"{f} {p}\n" for f, p in zip(files, partitions)))
    return files, attrs, np.array(colours), np.array(partitions)


# ---- MNIST / Fashion-MNIST (IDX) -------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name,sub", [("mnist", "MNIST/raw"),
                                      ("fashion-mnist", "FashionMNIST/raw")])
def test_idx_datasets_read_back(tmp_path, gz, name, sub):
    ref = make_mnist(tmp_path, sub, gz=gz)
    for split, key in (("train", "train"), ("test", "t10k")):
        X, labels = load_dataset(name, root=tmp_path, split=split)
        images, labs = ref[key]
        assert X.shape == (len(labs), 1, 28, 28) and X.dtype == torch.float32
        assert labels.dtype == torch.int64 and labels.shape == (len(labs),)
        assert torch.equal(labels, torch.from_numpy(labs.astype(np.int64)))
        assert torch.allclose(X[:, 0], torch.from_numpy(images).float() / 255)
        assert 0.0 <= X.min() and X.max() <= 1.0


def test_read_idx_other_dtypes(tmp_path):
    a = (np.arange(24).reshape(2, 3, 4) - 5).astype(">i2")
    assert np.array_equal(read_idx(write_idx(tmp_path / "a", a)), a)
    f = np.linspace(0, 1, 6).astype(">f4")
    got = read_idx(write_idx(tmp_path / "f", f, gz=True))
    assert np.array_equal(got, f) and got.dtype.isnative


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated_and_corrupt(tmp_path, gz):
    make_mnist(tmp_path, gz=gz)
    d = tmp_path / "MNIST/raw"
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    path = d / name
    raw = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    # truncated payload
    cut = raw[: len(raw) - 100]
    path.write_bytes(gzip.compress(cut) if gz else cut)
    with pytest.raises(DataError, match="truncated") as err:
        load_dataset("mnist", root=tmp_path)
    assert str(path) in str(err.value)
    # bad magic number
    bad = b"\x12\x34" + raw[2:]
    path.write_bytes(gzip.compress(bad) if gz else bad)
    with pytest.raises(DataError, match="magic") as err:
        load_dataset("mnist", root=tmp_path)
    assert str(path) in str(err.value)
    # cut inside the header
    path.write_bytes(gzip.compress(raw[:6]) if gz else raw[:6])
    with pytest.raises(DataError) as err:
        load_dataset("mnist", root=tmp_path)
    assert str(path) in str(err.value)


def test_gzip_damage_is_a_data_error(tmp_path):
    make_mnist(tmp_path, gz=True)
    path = tmp_path / "MNIST/raw/train-labels-idx1-ubyte.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated gzip stream
    with pytest.raises(DataError, match="gzip") as err:
        load_dataset("mnist", root=tmp_path)
    assert str(path) in str(err.value)
    path.write_bytes(b"not gzip at all" * 10)
    with pytest.raises(DataError) as err:
        load_dataset("mnist", root=tmp_path)
    assert str(path) in str(err.value)


def test_idx_count_mismatch(tmp_path):
    make_mnist(tmp_path)
    write_idx(tmp_path / "MNIST/raw/train-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="30 images but .* 3 labels"):
        load_dataset("mnist", root=tmp_path)


# ---- CIFAR-10 -------------------------------------------------------------------------------
def test_cifar10_read_back(tmp_path):
    ref = make_cifar(tmp_path)
    X, labels = load_dataset("cifar10", root=tmp_path, split="train")
    data = np.concatenate([d for d, _ in ref["train"]])
    assert X.shape == (20, 3, 32, 32) and X.dtype == torch.float32
    assert torch.equal(labels, torch.tensor(sum((lab for _, lab in ref["train"]), [])))
    assert labels.dtype == torch.int64
    # the 3072 bytes of a row are the R plane, then G, then B, each row-major 32 x 32
    assert torch.allclose(X * 255, torch.from_numpy(data.reshape(-1, 3, 32, 32)).float())
    assert X[1, 2, 0, 5] * 255 == pytest.approx(float(data[1, 2048 + 5]))
    Xt, lt = load_dataset("cifar10", root=tmp_path, split="test")
    assert Xt.shape == (6, 3, 32, 32) and lt.tolist() == ref["test"][0][1]


def test_cifar10_corrupt_truncated_and_hostile(tmp_path):
    make_cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py/data_batch_3"
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", root=tmp_path)
    assert str(path) in str(err.value)
    path.write_bytes(b"\x00garbage" * 50)
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", root=tmp_path)
    assert str(path) in str(err.value)
    # a pickle that would run code is refused, not executed
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path.write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2))
    with pytest.raises(DataError, match="unexpected object") as err:
        load_dataset("cifar10", root=tmp_path)
    assert str(path) in str(err.value) and not marker.exists()
    # well-formed pickle with the wrong content
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DataError, match="3072") as err:
        load_dataset("cifar10", root=tmp_path)
    assert str(path) in str(err.value)


# ---- SVHN -----------------------------------------------------------------------------------
def test_svhn_read_back(tmp_path):
    ref = make_svhn(tmp_path)
    for split in ("train", "test"):
        X, labels = load_dataset("svhn", root=tmp_path, split=split)
        Xm, ym = ref[split]
        n = Xm.shape[3]
        assert X.shape == (n, 3, 32, 32) and X.dtype == torch.float32
        assert labels.dtype == torch.int64
        assert labels.tolist() == [int(v) % 10 for v in ym.ravel()]  # 10 -> 0
        # X[h, w, c, i] of the .mat is image i, channel c, row h, column w
        assert X[3, 1, 7, 20] * 255 == pytest.approx(float(Xm[7, 20, 1, 3]))
        assert torch.allclose(X * 255, torch.from_numpy(Xm.transpose(3, 2, 0, 1)).float())
    _, labels = load_dataset("svhn", root=tmp_path, split="train")
    assert labels.tolist()[8:11] == [9, 0, 1]  # stored 9, 10, 1


def test_svhn_corrupt_and_truncated(tmp_path):
    make_svhn(tmp_path)
    path = tmp_path / "svhn/train_32x32.mat"
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 3])
    with pytest.raises(DataError) as err:
        load_dataset("svhn", root=tmp_path)
    assert str(path) in str(err.value)
    path.write_bytes(b"garbage" * 100)
    with pytest.raises(DataError) as err:
        load_dataset("svhn", root=tmp_path)
    assert str(path) in str(err.value)
    from scipy.io import savemat

    savemat(path, {"X": np.zeros((3, 3), np.uint8), "y": np.zeros((1, 1))})
    with pytest.raises(DataError, match="32, 32, 3, N") as err:
        load_dataset("svhn", root=tmp_path)
    assert str(path) in str(err.value)


# ---- CelebA ---------------------------------------------------------------------------------
def test_celeba_read_back(tmp_path):
    files, attrs, colours, parts = make_celeba(tmp_path)
    for split, code in (("train", 0), ("valid", 1), ("test", 2)):
        X, labels = load_dataset("celeba", root=tmp_path, split=split)
        keep = np.nonzero(parts == code)[0]
        assert X.shape == (len(keep), 3, 218, 178) and X.dtype == torch.float32
        assert labels.shape == (len(keep), 40) and labels.dtype == torch.int64
        assert torch.equal(labels, torch.from_numpy((attrs[keep] > 0).astype(np.int64)))
        # solid-colour JPEGs decode back to their colour (up to JPEG rounding)
        mean = X.mean(dim=(2, 3)) * 255
        assert torch.allclose(mean, torch.from_numpy(colours[keep]).float(), atol=3)


def test_celeba_lazy_resize_grayscale(tmp_path, monkeypatch):
    files, attrs, colours, parts = make_celeba(tmp_path)
    images = open_dataset("celeba", root=tmp_path, split="train", image_size=16, grayscale=True)
    assert images.shape == (6, 1, 16, 16) and images.attributes[SMILING] == "Smiling"
    decoded = []
    original = CelebAImages._decode_one
    monkeypatch.setattr(CelebAImages, "_decode_one",
                        lambda self, p: decoded.append(p.name) or original(self, p))
    # an image outside the subset may even be unreadable: it is never decoded
    (tmp_path / "celeba/img_align_celeba" / images.files[0].name).write_bytes(b"broken")
    x = images[torch.tensor([2, 4])]
    assert x.shape == (2, 1, 16, 16) and len(decoded) == 2
    r, g, b = colours[np.nonzero(parts == 0)[0][2]]
    assert float(x[0].mean()) * 255 == pytest.approx(0.299 * r + 0.587 * g + 0.114 * b, abs=3)
    assert images[3].shape == (1, 16, 16)


def test_celeba_errors(tmp_path):
    make_celeba(tmp_path)
    d = tmp_path / "celeba"
    img = d / "img_align_celeba/000002.jpg"
    img.write_bytes(img.read_bytes()[:100])  # truncated JPEG
    with pytest.raises(DataError) as err:
        load_dataset("celeba", root=tmp_path)
    assert str(img) in str(err.value)
    img.unlink()
    with pytest.raises(DataError, match="not found") as err:
        load_dataset("celeba", root=tmp_path)
    assert str(img) in str(err.value)
    attr = d / "list_attr_celeba.txt"
    lines = attr.read_text().splitlines()
    attr.write_text("\n".join(lines[:-1] + [lines[-1][:30]]) + "\n")  # last row cut short
    with pytest.raises(DataError) as err:
        open_dataset("celeba", root=tmp_path)
    assert str(attr) in str(err.value)
    attr.write_text("\n".join(lines[:-1] + [lines[-1].replace(" 1", " x", 1)]) + "\n")
    with pytest.raises(DataError, match="-1 or 1") as err:
        open_dataset("celeba", root=tmp_path)
    assert str(attr) in str(err.value)
    attr.write_text("\n".join(lines[:-1]) + "\n")  # a row missing
    with pytest.raises(DataError, match="announces 10") as err:
        open_dataset("celeba", root=tmp_path)
    part = d / "list_eval_partition.txt"
    attr.write_text("\n".join(lines) + "\n")
    part.write_text("000001.jpg 7\n")
    with pytest.raises(DataError) as err:
        open_dataset("celeba", root=tmp_path)
    assert str(part) in str(err.value)


def test_load_all_refuses_huge(tmp_path):
    make_celeba(tmp_path)
    images = open_dataset("celeba", root=tmp_path)
    with pytest.raises(DataError, match="GiB"):
        images.load_all(max_bytes=1000)


# ---- missing files, names, splits ----------------------------------------------------------
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10", "svhn", "celeba"])
def test_missing_root_names_the_path(tmp_path, name, monkeypatch):
    root = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        load_dataset(name, root=root)
    msg = str(err.value)
    assert str(root) in msg and "does not exist" in msg and "obtain" in msg
    monkeypatch.setenv("CATAPULTS_DATA", str(root))
    with pytest.raises(DataError, match=str(root)):
        load_dataset(name)


def test_missing_file_names_path_and_source(tmp_path):
    make_mnist(tmp_path)
    path = tmp_path / "MNIST/raw/t10k-labels-idx1-ubyte"
    path.unlink()
    with pytest.raises(DataError) as err:
        load_dataset("mnist", root=tmp_path, split="test")
    assert str(path) in str(err.value) and "make data" in str(err.value)
    make_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py/data_batch_5").unlink()
    with pytest.raises(DataError, match="data_batch_5.*cifar-10-python.tar.gz"):
        load_dataset("cifar10", root=tmp_path)


def test_unknown_name_and_split(tmp_path):
    with pytest.raises(DataError, match="unknown data set"):
        load_dataset("imagenet", root=tmp_path)
    make_mnist(tmp_path)
    with pytest.raises(DataError, match="unknown split"):
        load_dataset("mnist", root=tmp_path, split="valid")


def test_digits_still_bundled():
    X, labels = load_dataset("digits")
    assert X.shape == (1797, 1, 8, 8) and labels.dtype == torch.int64


# ---- the task layer (make_dataset) ---------------------------------------------------------
def test_make_dataset_binary_and_onehot(tmp_path):
    ref = make_mnist(tmp_path, n=(100, 60))
    cfg = DataConfig(name="mnist", root=str(tmp_path), classes=[3, 7], n_train=12, n_test=8,
                     standardize=False, seed=1)
    ds = make_dataset(cfg)
    assert ds.X_train.shape == (12, 1, 28, 28) and ds.y_train.shape == (12, 1)
    assert ds.X_test.shape == (8, 1, 28, 28) and ds.task == "classification"
    assert set(ds.y_train.flatten().tolist()) <= {1.0, -1.0}
    # each sampled image is a class-3 (+1) or class-7 (-1) image of the training file
    images, labels = ref["train"]
    flat = torch.from_numpy(images.reshape(len(images), -1)).float() / 255
    for x, y in zip(ds.X_train, ds.y_train):
        i = int(torch.nonzero((flat == x.flatten()).all(1))[0])
        assert labels[i] in (3, 7) and (labels[i] == 3) == (float(y) == 1.0)
    again = make_dataset(cfg)
    assert torch.equal(again.X_train, ds.X_train)  # same seed, same subset
    oh = make_dataset(cfg.model_copy(update={"classes": [1, 2, 5], "encoding": "onehot"}))
    assert oh.y_train.shape == (12, 3) and torch.all(oh.y_train.sum(1) == 1)
    with pytest.raises(ConfigError, match="n_train"):
        make_dataset(cfg.model_copy(update={"n_train": 500}))


def test_make_dataset_grayscale_resize_standardise(tmp_path):
    make_cifar(tmp_path, per_batch=8, n_test=10)
    cfg = DataConfig(name="cifar10", root=str(tmp_path), n_train=30, n_test=10,
                     grayscale=True, image_size=8)
    ds = make_dataset(cfg)
    assert ds.X_train.shape == (30, 1, 8, 8) and ds.X_test.shape == (10, 1, 8, 8)
    assert ds.y_train.shape == (30, 10)  # all classes, one-hot
    flat = ds.X_train.reshape(30, -1)
    assert torch.allclose(flat.mean(0), torch.zeros(64), atol=1e-5)
    assert torch.allclose(flat.std(0), torch.ones(64), atol=1e-4)
    assert ds.info["image_shape"] == [1, 8, 8] and ds.in_dim == 64


def test_make_dataset_celeba_attribute(tmp_path, monkeypatch):
    files, attrs, _, parts = make_celeba(tmp_path)
    decoded = []
    original = CelebAImages._decode_one
    monkeypatch.setattr(CelebAImages, "_decode_one",
                        lambda self, p: decoded.append(p.name) or original(self, p))
    cfg = DataConfig(name="celeba", root=str(tmp_path), attribute="smiling", n_train=4,
                     n_test=2, image_size=12, standardize=False)
    ds = make_dataset(cfg)
    assert ds.X_train.shape == (4, 3, 12, 12) and ds.y_train.shape == (4, 1)
    assert len(decoded) == 6  # only the chosen subset is decoded
    assert ds.info["attribute"] == "Smiling"
    smiling = {f for f, a in zip(files, attrs) if a[SMILING] > 0}
    train_files = [decoded[i] for i in range(4)]
    expected = [1.0 if f in smiling else -1.0 for f in train_files]
    assert ds.y_train.flatten().tolist() == expected  # attribute present -> +1
    with pytest.raises(ConfigError, match="data.attribute"):
        make_dataset(cfg.model_copy(update={"attribute": "Purple_Hair"}))


# ---- discovery ------------------------------------------------------------------------------
def test_list_datasets_and_table(tmp_path):
    make_mnist(tmp_path, gz=True)
    make_svhn(tmp_path)
    make_celeba(tmp_path)
    rows = list_datasets(tmp_path)
    assert [r["name"] for r in rows] == list(datasets.NAMES)
    assert all(set(r) == {"name", "present", "path", "detail"} for r in rows)
    present = {r["name"]: r["present"] for r in rows}
    assert present == {"mnist": True, "fashion-mnist": False, "cifar10": False, "svhn": True,
                       "celeba": True, "digits": True}
    by_name = {r["name"]: r for r in rows}
    assert "train 30, test 20" in by_name["mnist"]["detail"]
    assert "make data" in by_name["fashion-mnist"]["detail"]
    table = format_dataset_table(rows)
    lines = table.splitlines()
    assert lines[0].split() == ["NAME", "PRESENT", "PATH", "DETAIL"] and len(lines) == 7
    assert any(ln.startswith("mnist ") and " yes " in ln for ln in lines)
    # a damaged header shows up as not present, naming the file
    (tmp_path / "MNIST/raw/t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"junkjunk"))
    row = list_datasets(tmp_path)[0]
    assert not row["present"] and "t10k-images-idx3-ubyte.gz" in row["detail"]
    missing = list_datasets(tmp_path / "nope")
    assert not missing[0]["present"] and "does not exist" in missing[0]["detail"]


def test_get_data_script_parses():
    script = REPO / "scripts/get_data.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


# ---- the real files, when present ----------------------------------------------------------
def _real_root() -> Path:
    return Path(os.environ.get("CATAPULTS_DATA", REPO / "data"))


@pytest.mark.skipif(not any((_real_root() / "MNIST/raw" / f).is_file()
                            for f in ("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz")),
                    reason="real MNIST files not present (run `make data`)")
def test_real_mnist():
    X, labels = load_dataset("mnist", root=_real_root(), split="train")
    assert X.shape == (60000, 1, 28, 28) and labels.shape == (60000,)
    assert labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert torch.bincount(labels).tolist()[:2] == [5923, 6742]
    Xt, lt = load_dataset("mnist", root=_real_root(), split="test")
    assert Xt.shape == (10000, 1, 28, 28) and lt[:5].tolist() == [7, 2, 1, 0, 4]
    assert float(X.min()) == 0.0 and float(X.max()) == 1.0


# ---- bad input: one clear error, before anything big is allocated ----------------------------
def test_idx_train_test_image_shapes_must_match(tmp_path):
    rng = np.random.default_rng()
    sub = tmp_path / "MNIST/raw"
    small = int(rng.integers(1, 28))
    for split, size in (("train", 28), ("t10k", small)):
        write_idx(sub / f"{split}-images-idx3-ubyte",
                  rng.integers(0, 256, (40, size, size), dtype=np.uint8))
        write_idx(sub / f"{split}-labels-idx1-ubyte", (np.arange(40) % 10).astype(np.uint8))
    cfg = DataConfig(name="mnist", root=str(tmp_path), classes=[0, 1], n_train=6, n_test=4)
    with pytest.raises(DataError) as err:
        make_dataset(cfg)
    msg = str(err.value)
    assert "train-images-idx3-ubyte" in msg and "t10k-images-idx3-ubyte" in msg
    assert "1x28x28" in msg and f"1x{small}x{small}" in msg
    # resized to a common size, the splits are usable
    ds = make_dataset(cfg.model_copy(update={"image_size": 6}))
    assert ds.X_train.shape == (6, 1, 6, 6) and ds.X_test.shape == (4, 1, 6, 6)


@pytest.mark.parametrize("shape", [(30, 0, 0), (30, 28, 0)])
def test_idx_empty_images_are_a_data_error(tmp_path, shape):
    make_mnist(tmp_path)
    path = write_idx(tmp_path / "MNIST/raw/train-images-idx3-ubyte", np.zeros(shape, np.uint8))
    with pytest.raises(DataError, match="empty images") as err:
        make_dataset(DataConfig(name="mnist", root=str(tmp_path), n_train=5, n_test=5))
    assert str(path) in str(err.value)


def test_image_size_too_large_is_refused_before_allocating(tmp_path):
    size = int(np.random.default_rng().integers(30_000, 10**6))  # > 4 GiB for 10 images
    with pytest.raises(ConfigError, match="data.image_size") as err:
        make_dataset(DataConfig(name="digits", image_size=size, n_train=10, n_test=10))
    assert str(size) in str(err.value) and "GiB" in str(err.value)
    make_mnist(tmp_path)
    with pytest.raises(ConfigError, match="data.image_size"):
        make_dataset(DataConfig(name="mnist", root=str(tmp_path), n_train=5, n_test=5,
                                image_size=size))
    ds = make_dataset(DataConfig(name="digits", image_size=16, classes=[0, 1], n_train=10,
                                 n_test=10))
    assert ds.X_train.shape == (10, 1, 16, 16)


def test_non_finite_synthetic_targets_are_config_errors():
    from catapults.data import synthetic_regression
    from catapults.data.targets import TargetError

    with pytest.raises(ConfigError, match="data.target: 'x1/0' gives non-finite"):
        make_dataset(DataConfig(name="synthetic", d=3, target="x1/0", n_train=8, n_test=8))
    with pytest.raises(ConfigError, match=r"'1e300\*x1' gives non-finite .* \(in float32\)"):
        make_dataset(DataConfig(name="synthetic", d=3, target="1e300*x1", n_train=8, n_test=8))
    assert make_dataset(DataConfig(name="synthetic", d=3, target="1e100*x1", n_train=8,
                                   n_test=8), dtype=torch.float64).y_train.isfinite().all()
    with pytest.raises(ConfigError, match=r"'1e300\*x1' gives values whose square \(the loss\) "
                       r"overflows on 8 of the 8 training inputs and 8 of the 8 test inputs"):
        make_dataset(DataConfig(name="synthetic", d=3, target="1e300*x1", n_train=8, n_test=8),
                     dtype=torch.float64)
    with pytest.raises(TargetError, match="non-finite"):
        synthetic_regression(lambda X: 1 / (X[:, 0] > 5).double() - 1, d=2, n_train=8, n_test=8)


# targets finite on parse_target's probe but not on the sampled training / test inputs (issue 16)
@pytest.mark.parametrize("target, dtype, what", [
    ("exp(30*x1)", torch.float32, "non-finite values"),    # exp overflows float32 past x1 ~ 2.96
    ("exp(20*x1)", torch.float32, "values whose square"),  # finite, but y**2 overflows float32
    ("sqrt(3.2-x1)", torch.float64, "non-finite values"),  # undefined only past x1 = 3.2
    ("3*exp(14*x1)", torch.float32, "values whose square"),
])
def test_target_checked_on_every_sampled_input(target, dtype, what):
    from catapults.data.targets import parse_target

    parse_target(target, 3)  # passes the 512-point probe
    cfg = DataConfig(name="synthetic", d=3, target=target, n_train=20_000, n_test=10, seed=1)
    with pytest.raises(ConfigError) as err:
        make_dataset(cfg, dtype=dtype)
    msg = str(err.value)
    assert msg.startswith("data.target: ") and what in msg and "training inputs" in msg, msg
    assert str(dtype).removeprefix("torch.") in msg


def test_target_checked_on_test_inputs_too():
    cfg = DataConfig(name="synthetic", d=3, target="sqrt(3.2-x1)", n_train=4, n_test=20_000)
    with pytest.raises(ConfigError, match=r"on \d+ of the 20000 test inputs"):
        make_dataset(cfg)


def test_noise_whose_square_overflows_is_refused():
    cfg = DataConfig(name="synthetic", d=3, target="x1", noise=1e30, n_train=8, n_test=8)
    with pytest.raises(ConfigError, match="data.noise: 1e\\+30 makes the squared training"):
        make_dataset(cfg)
    assert make_dataset(cfg, dtype=torch.float64).y_train.isfinite().all()


def test_agop_reference_of_a_target_undefined_on_some_samples(tmp_path):
    from catapults.config import config_from_dict
    from catapults.runs import check_config

    cfg = config_from_dict({"data": {"d": 3, "target": "sqrt(3.5-x1)", "n_train": 16,
                                     "n_test": 4},
                            "monitor": {"agop": {"enabled": True}}})
    with pytest.raises(ConfigError, match="data.target: the expected AGOP of 'sqrt"):
        check_config(cfg)

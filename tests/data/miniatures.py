"""Test helpers: a local HTTP file server with Range support and fault injection, and
miniature archives with each dataset's real layout (same folders and list files, a few
distinct ``MINI_SIDE`` x ``MINI_SIDE`` images, every class in both splits).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image
from scipy.io import savemat

# ---------------------------------------------------------------------------------------
# HTTP server


@dataclass
class FileServer:
    """Serves ``files`` at ``http://127.0.0.1:PORT/NAME``.

    ``drop_after[name] = [n1, n2, ...]``: the next responses for ``name`` announce the full
    length but close the connection after ``n1``, ``n2``... body bytes. ``ignore_range`` names
    files served whole (200) even when a Range is asked. ``requests`` logs (name, Range).
    """

    files: dict[str, bytes] = field(default_factory=dict)
    drop_after: dict[str, list[int]] = field(default_factory=dict)
    ignore_range: set[str] = field(default_factory=set)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    port: int = 0

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def count(self, name: str) -> int:
        return sum(1 for n, _ in self.requests if n == name)


def _handler(state: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            name = self.path.lstrip("/").split("?", 1)[0]
            asked = self.headers.get("Range")
            state.requests.append((name, asked))
            data = state.files.get(name)
            if data is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = 0
            if asked and name not in state.ignore_range:
                start = int(asked.removeprefix("bytes=").split("-", 1)[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            drops = state.drop_after.get(name)
            if drops:
                self.wfile.write(body[: drops.pop(0)])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


def start_server(state: FileServer) -> tuple[ThreadingHTTPServer, threading.Thread]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    return server, thread


# ---------------------------------------------------------------------------------------
# archive builders


MINI_SIDE = 24  # px: the validation suite's min_side for the miniatures


def tiny_image(seed: int = 0, fmt: str = "JPEG", side: int = MINI_SIDE) -> bytes:
    """Random noise: distinct seeds give distinct bytes (the suite checks train/test content)."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def make_tar(members: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def mat_bytes(data: dict) -> bytes:
    buf = io.BytesIO()
    savemat(buf, data)
    return buf.getvalue()


def lines(rows) -> bytes:
    return ("\n".join(" ".join(map(str, r)) for r in rows) + "\n").encode()


@dataclass
class Miniature:
    """Files as published (name -> bytes) and what the manifest must contain."""

    files: dict[str, bytes]
    num_classes: int
    train: int
    test: int
    class_name: str  # one class name that must appear

    def sha256(self, name: str) -> str:
        return hashlib.sha256(self.files[name]).hexdigest()


def mini_cub() -> Miniature:
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    m, images, labels, split = {}, [], [], []
    img_id = 0
    for c, folder in enumerate(classes, 1):
        for k in range(3):
            img_id += 1
            rel = f"{folder}/{folder[4:]}_{k:04d}_{img_id}.jpg"
            m[f"CUB_200_2011/images/{rel}"] = tiny_image(img_id)
            images.append((img_id, rel))
            labels.append((img_id, c))
            split.append((img_id, 1 if k < 2 else 0))
    m["CUB_200_2011/images.txt"] = lines(images)
    m["CUB_200_2011/image_class_labels.txt"] = lines(labels)
    m["CUB_200_2011/train_test_split.txt"] = lines(split)
    m["CUB_200_2011/classes.txt"] = lines(enumerate(classes, 1))
    m["attributes.txt"] = b"1 has_bill_shape::curved_(up_or_down)\n"
    return Miniature({"CUB_200_2011.tgz": make_tar(m)}, 3, 6, 3, "Laysan_Albatross")


def mini_nabirds() -> Miniature:
    leaf = {295: "Wood Duck (Breeding male)", 313: "Mallard (Female/Juvenile)", 817: "Snow Goose"}
    m, images, labels, split = {}, [], [], []
    for i, cid in enumerate(sorted(leaf)):
        for k in range(4):
            uuid = f"{i:08x}-0000-4000-8000-{k:012x}"
            rel = f"{cid:04d}/{uuid.replace('-', '')}.jpg"
            m[f"nabirds/images/{rel}"] = tiny_image(10 * i + k)
            images.append((uuid, rel))
            labels.append((uuid, cid))
            split.append((uuid, 1 if k < 2 else 0))
    m["nabirds/images.txt"] = lines(images)
    m["nabirds/image_class_labels.txt"] = lines(labels)
    m["nabirds/train_test_split.txt"] = lines(split)
    m["nabirds/classes.txt"] = lines([(0, "Birds"), (1, "Perching Birds")] + sorted(leaf.items()))
    m["nabirds/hierarchy.txt"] = lines([(1, 0)] + [(c, 1) for c in leaf])
    return Miniature({"nabirds.tar.gz": make_tar(m)}, 3, 6, 6, "Snow Goose")


def mini_dogs() -> Miniature:
    breeds = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02116738-African_hunting_dog"]
    images, lists = {}, {"train": ([], []), "test": ([], [])}
    for c, folder in enumerate(breeds, 1):
        for k in range(3):
            rel = f"{folder}/{folder.split('-')[0]}_{k}.jpg"
            images[f"Images/{rel}"] = tiny_image(c * 10 + k)
            files, labels = lists["train" if k < 2 else "test"]
            files.append(rel)
            labels.append(c)
    mats = {}
    for split, (files, labels) in lists.items():
        mats[f"{split}_list.mat"] = mat_bytes(
            {
                "file_list": np.array(files, dtype=object).reshape(-1, 1),
                "annotation_list": np.array([f[:-4] for f in files], dtype=object).reshape(-1, 1),
                "labels": np.array(labels, dtype=float).reshape(-1, 1),
            }
        )
    all_files = lists["train"][0] + lists["test"][0]
    mats["file_list.mat"] = mat_bytes(
        {"file_list": np.array(all_files, dtype=object).reshape(-1, 1)}
    )
    files = {"images.tar": make_tar(images, "w"), "lists.tar": make_tar(mats, "w")}
    return Miniature(files, 3, 6, 3, "Japanese_spaniel")


def mini_flowers() -> Miniature:
    n = 12  # 3 classes x 4 images: 1 trn, 1 val, 2 tst each
    labels = np.array([1 + (i % 3) for i in range(n)])
    images = {f"jpg/image_{i:05d}.jpg": tiny_image(i) for i in range(1, n + 1)}
    ids = np.arange(1, n + 1)
    setid = {"trnid": ids[:3], "valid": ids[3:6], "tstid": ids[6:]}
    files = {
        "102flowers.tgz": make_tar(images),
        "imagelabels.mat": mat_bytes({"labels": labels.reshape(1, -1)}),
        "setid.mat": mat_bytes({k: v.reshape(1, -1) for k, v in setid.items()}),
    }
    return Miniature(files, 3, 6, 6, "flower_002")


def mini_food() -> Miniature:
    classes = ["apple_pie", "baby_back_ribs", "waffles"]
    m, train, test = {}, [], []
    for c, name in enumerate(classes):
        for k in range(3):
            item = f"{name}/{100 + 10 * c + k}"
            m[f"food-101/images/{item}.jpg"] = tiny_image(10 * c + k)
            (train if k < 2 else test).append(item)
    m["food-101/meta/classes.txt"] = ("\n".join(classes) + "\n").encode()
    m["food-101/meta/labels.txt"] = (
        "\n".join(c.replace("_", " ").title() for c in classes) + "\n"
    ).encode()
    m["food-101/meta/train.txt"] = ("\n".join(train) + "\n").encode()
    m["food-101/meta/test.txt"] = ("\n".join(test) + "\n").encode()
    m["food-101/meta/train.json"] = json.dumps({}).encode()
    return Miniature({"food-101.tar.gz": make_tar(m)}, 3, 6, 3, "baby_back_ribs")


def mini_pets() -> Miniature:
    breeds = [("Abyssinian", 1, 1), ("american_bulldog", 2, 2), ("Bengal", 3, 1)]
    images, trainval, test = {}, [], []
    for name, cid, species in breeds:
        for k in range(1, 4):
            image_id = f"{name}_{k}"
            images[f"images/{image_id}.jpg"] = tiny_image(cid * 10 + k)
            (trainval if k < 3 else test).append((image_id, cid, species, cid))
    ann = {
        "annotations/trainval.txt": lines(trainval),
        "annotations/test.txt": lines(test),
        "annotations/list.txt": b"#Image CLASS-ID SPECIES BREED ID\n" + lines(trainval + test),
        "annotations/README": b"pets\n",
    }
    files = {"images.tar.gz": make_tar(images), "annotations.tar.gz": make_tar(ann)}
    return Miniature(files, 3, 6, 3, "American Bulldog")


def mini_inat17() -> Miniature:
    cats = [
        (0, "Abies concolor", "Plantae"),
        (1, "Danaus plexippus", "Insecta"),
        (2, "Pica pica", "Aves"),
    ]
    images, coco = {}, {"train": ([], []), "val": ([], [])}
    img_id = 0
    for cid, name, sup in cats:
        for k in range(3):
            img_id += 1
            rel = f"train_val_images/{sup}/{name}/{img_id:032x}.jpg"
            images[rel] = tiny_image(img_id)
            ims, anns = coco["train" if k < 2 else "val"]
            ims.append(
                {
                    "id": img_id,
                    "width": MINI_SIDE,
                    "height": MINI_SIDE,
                    "file_name": rel,
                    "license": 1,
                }
            )
            anns.append({"id": img_id, "image_id": img_id, "category_id": cid})
    categories = [{"id": c, "name": n, "supercategory": s} for c, n, s in cats]
    ann = {
        f"{split}2017.json": json.dumps(
            {"info": {"year": 2017}, "images": ims, "annotations": anns, "categories": categories}
        ).encode()
        for split, (ims, anns) in coco.items()
    }
    files = {"train_val_images.tar.gz": make_tar(images), "train_val2017.zip": make_zip(ann)}
    return Miniature(files, 3, 6, 3, "Danaus plexippus")


def mini_vegfru() -> Miniature:
    classes = [("veg200_images", "Chinese_artichoke", "v_14_01"), ("veg200_images", "Chinese_cabbage", "v_05_01"),
               ("fru92_images", "apple", "f_01_01")]  # fmt: skip
    m, lists = {}, {"train": [], "val": [], "test": []}
    for label, (top, name, prefix) in enumerate(classes):
        for k in range(4):
            rel = f"{top}/{name}/{prefix}_{k:04d}.jpg"
            m[f"vegfru-dataset/{rel}"] = tiny_image(10 * label + k)
            lists[["train", "train", "val", "test"][k]].append((rel, label))
    for split, rows in lists.items():
        m[f"vegfru-dataset/vegfru_list/vegfru_{split}.txt"] = lines(rows)
    m["vegfru-dataset/veg200_lists/veg_train.txt"] = b""
    return Miniature({"vegfru-dataset.zip": make_zip(m)}, 3, 9, 3, "apple")


def mini_dafb() -> Miniature:
    classes = ["hatsune_miku", "hakurei_reimu", "cirno"]
    images, rows = {}, {"train": [], "val": [], "test": []}
    for cid in range(len(classes)):
        for k in range(4):
            rel = f"{cid:04d}/{1000 * cid + k}.jpg"
            images[f"fullMin256/{rel}"] = tiny_image(10 * cid + k)
            rows[["train", "train", "val", "test"][k]].append(f"{cid},{rel}")
    labels = {f"labels/{s}.csv": ("\n".join(r) + "\n").encode() for s, r in rows.items()}
    labels["labels/classid_classname.csv"] = (
        "\n".join(f"{i},{c}" for i, c in enumerate(classes)) + "\n"
    ).encode()
    files = {"dafre_full.tar.gz": make_tar(images), "labels.tar.gz": make_tar(labels)}
    return Miniature(files, 3, 9, 3, "hakurei_reimu")


def mini_moe() -> Miniature:
    classes = ["000_hatsune_miku", "001_kinomoto_sakura", "002_suzumiya_haruhi"]
    m = {}
    for c, name in enumerate(classes):
        for k in range(5):
            m[f"moeimouto-faces/{name}/face_{10 * c + k}_{k}_{c}.png"] = tiny_image(
                10 * c + k, "PNG"
            )
        m[f"moeimouto-faces/{name}/color.csv"] = b"0,0,0\n"
    return Miniature(
        {"moeimouto_animefacecharacterdataset.tar.gz": make_tar(m)}, 3, 12, 3, "001_kinomoto_sakura"
    )


MINIATURES = {
    "cub": mini_cub,
    "dafb": mini_dafb,
    "dogs": mini_dogs,
    "flowers": mini_flowers,
    "food": mini_food,
    "inat17": mini_inat17,
    "moe": mini_moe,
    "nabirds": mini_nabirds,
    "pets": mini_pets,
    "vegfru": mini_vegfru,
}

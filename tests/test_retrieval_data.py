"""Retrieval data sets on tiny fixtures written in the real formats: IMDb-Face, IJB-C, DeepFashion2.

Images are real JPEGs with a red rectangle where the annotation's box is, so a correct crop is all red.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from nasx.data.crops import CropDataset, carve_records
from nasx.data.face import imdb_face_dataset, ijbc_dataset, load_ijbc, load_imdb_face
from nasx.data.fashion import (deepfashion2_dataset, fashion_classes, fashion_gallery, fashion_queries,
                               load_deepfashion2)
from nasx.errors import DatasetError

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)


def _jpeg(path: Path, size: tuple[int, int], red: tuple[int, int, int, int] | None = None,
          color: tuple[int, int, int] = BLUE) -> None:
    """A (w, h) JPEG of ``color`` with the (x1, y1, x2, y2) region painted red."""
    im = Image.new("RGB", size, color)
    if red is not None:
        im.paste(RED, red)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, quality=95, subsampling=0)


def _is(x: torch.Tensor, rgb: tuple[int, int, int]) -> bool:
    """Every pixel of x (3, H, W) in [0, 1] but the outermost ring is within JPEG noise of ``rgb`` (bilinear
    resampling blends the ring with the pixels just outside the box)."""
    target = torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1) / 255
    return bool(((x[:, 1:-1, 1:-1] - target).abs() < 0.15).all())


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------------------------- IMDb-Face

IMDB_HEADER = "name,index,image,rect,height width,url\n"


@pytest.fixture
def imdb(tmp_path):
    """Rect 40 20 120 60 in a 100x200 (h x w) frame. a.jpg was saved at twice the frame size, b.jpg at the frame
    size inside the identity's folder; c.jpg was never downloaded."""
    _jpeg(tmp_path / "img" / "a.jpg", (400, 200), red=(80, 40, 240, 120))
    _jpeg(tmp_path / "img" / "nm0000001" / "b.jpg", (200, 100), red=(40, 20, 120, 60))
    rows = ['Zed Z,nm0000002,a.jpg,40 20 120 60,100 200,http://x/a.jpg',
            '"Doe, Jane",nm0000001,b.jpg,"40 20 120 60","100 200",http://x/b.jpg',
            'Doe Jane,nm0000001,c.jpg,1 1 5 5,100 200,http://x/c.jpg']
    csv_path = _write(tmp_path / "IMDb-Face.csv", IMDB_HEADER + "\n".join(rows) + "\n")
    return csv_path, tmp_path / "img"


def test_imdb_face_labels_sorted_identities_and_missing_images_are_counted(imdb):
    data = load_imdb_face(*imdb)
    assert data.identities == ["nm0000001", "nm0000002"]
    assert [(im.path.name, im.identity, im.label) for im in data.images] == [("a.jpg", "nm0000002", 1),
                                                                          ("b.jpg", "nm0000001", 0)]
    assert data.missing == 1
    assert data.images[0].box == (40, 20, 120, 60) and data.images[0].frame == (100, 200)


def test_imdb_face_crop_scales_rect_from_frame_to_real_image_size(imdb):
    ds = imdb_face_dataset(load_imdb_face(*imdb).images, image_size=16)
    for i in range(2):
        x, label = ds[i]
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32
        assert _is(x, RED), f"image {i}: crop is not the red rectangle"
    assert [ds[i][1] for i in range(2)] == [1, 0]


def test_imdb_face_with_no_downloaded_image_is_an_error(imdb, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="none of the 3 images"):
        load_imdb_face(imdb[0], empty)


@pytest.mark.parametrize("row, line, problem", [
    ("A,nm1,a.jpg,40 20 120,100 200,u", 3, "'rect' must be 4 numbers"),
    ("A,nm1,a.jpg,40 20 120 60,100 200", 3, "expected 6 fields"),
    ("A,nm1,a.jpg,40 twenty 120 60,100 200,u", 3, "'rect' must be numbers"),
    ("A,nm1,a.jpg,40 20 120 60,100 wide,u", 3, "'height width' must be integers"),
    ("A,nm1,a.jpg,120 20 40 60,100 200,u", 3, "degenerate box"),
    ("A,nm1,a.jpg,300 20 400 60,100 200,u", 3, "lies outside the 100x200"),
    ("A,Aaron,a.jpg,40 20 120 60,100 200,u", 3, "IMDb person id"),
])
def test_imdb_face_malformed_row_names_file_and_line(tmp_path, row, line, problem):
    good = "B,nm2,b.jpg,1 1 5 5,100 200,u"
    path = _write(tmp_path / "IMDb-Face.csv", IMDB_HEADER + good + "\n" + row + "\n")
    with pytest.raises(DatasetError, match=problem) as err:
        load_imdb_face(path, tmp_path)
    assert f"IMDb-Face.csv' line {line}:" in str(err.value) and "\n" not in str(err.value)


def test_imdb_face_wrong_header_names_line_1(tmp_path):
    path = _write(tmp_path / "IMDb-Face.csv", "name,id,image,rect,size,url\n")
    with pytest.raises(DatasetError, match="IMDb-Face.csv' line 1: expected header"):
        load_imdb_face(path, tmp_path)


# ------------------------------------------------------------------------------------------------------- IJB-C

TID_MID = "1.jpg 1 10\n2.jpg 1 11\n3.jpg 2 20\n4.jpg 3 30\n"
PTS = "".join(f"{i}.jpg 30.5 40 60 40 45 55 35 70 55 70 0.{9 - i}\n" for i in range(1, 5))
PAIRS = "1 2 0\n1 3 1\n\n2 3 0\n"
G1 = "TEMPLATE_ID,SUBJECT_ID,FILENAME\n1,100,img/1.jpg\n1,100,img/2.jpg\n"
G2 = "TEMPLATE_ID,SUBJECT_ID,FILENAME\n2,200,img/3.jpg\n"
PROBE = "TEMPLATE_ID,SUBJECT_ID,FILENAME\n3,100,img/4.jpg\n2,200,img/3.jpg\n"


def _ijbc(root: Path, **override: str) -> Path:
    files = {"ijbc_face_tid_mid.txt": TID_MID, "ijbc_name_5pts_score.txt": PTS,
             "ijbc_template_pair_label.txt": PAIRS, "ijbc_1N_gallery_G1.csv": G1, "ijbc_1N_gallery_G2.csv": G2,
             "ijbc_1N_probe_mixed.csv": PROBE, **override}
    for name, text in files.items():
        _write(root / "meta" / name, text)
    for i, color in enumerate((RED, BLUE, GREEN, RED), 1):
        _jpeg(root / "loose_crop" / f"{i}.jpg", (48, 64), color=color)
    return root


def test_ijbc_images_templates_pairs_and_1n_maps(tmp_path):
    data = load_ijbc(_ijbc(tmp_path))
    assert [(im.path.name, im.template_id, im.media_id) for im in data.images] == [
        ("1.jpg", 1, 10), ("2.jpg", 1, 11), ("3.jpg", 2, 20), ("4.jpg", 3, 30)]
    assert data.images[0].landmarks == (30.5, 40, 60, 40, 45, 55, 35, 70, 55, 70)
    assert [im.score for im in data.images] == [0.8, 0.7, 0.6, 0.5]
    assert data.pairs.dtype == torch.int64 and data.pairs.tolist() == [[1, 2, 0], [1, 3, 1], [2, 3, 0]]
    assert data.gallery_g1 == {1: 100} and data.gallery_g2 == {2: 200} and data.probe == {3: 100, 2: 200}


def test_ijbc_dataset_returns_whole_crop_flipped_copy_and_index(tmp_path):
    root = _ijbc(tmp_path)
    half = Image.new("RGB", (48, 64), RED)
    half.paste(GREEN, (24, 0, 48, 64))
    half.save(root / "loose_crop" / "2.jpg", quality=95, subsampling=0)
    ds = ijbc_dataset(load_ijbc(root).images, image_size=16, flip=True)
    x, index = ds[1]
    assert x.shape == (2, 3, 16, 16) and index == 1
    assert _is(x[0, :, :, :8], RED) and _is(x[0, :, :, 8:], GREEN)
    assert torch.equal(x[1], x[0].flip(-1))
    batch, indices = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch.shape == (4, 2, 3, 16, 16) and indices.tolist() == [0, 1, 2, 3]
    assert _is(batch[0, 0], RED) and _is(batch[2, 0], GREEN)


@pytest.mark.parametrize("name, text, where, problem", [
    ("ijbc_face_tid_mid.txt", "1.jpg 1 10\n2.jpg 1\n", "line 2", "expected 3 fields"),
    ("ijbc_face_tid_mid.txt", "1.jpg 1 10\n2.jpg one 11\n", "line 2", "must be integers"),
    ("ijbc_face_tid_mid.txt", "1.jpg 1 10\n1.jpg 1 11\n", "line 2", "already listed on line 1"),
    ("ijbc_name_5pts_score.txt", PTS.replace(" 0.7\n", "\n"), "line 2", "expected 12 fields"),
    ("ijbc_name_5pts_score.txt", PTS.replace(" 0.6\n", " high\n"), "line 3", "must be numbers"),
    ("ijbc_name_5pts_score.txt", PTS + "9.jpg" + " 1" * 11 + "\n", "line 5", "image '9.jpg' is not in"),
    ("ijbc_face_tid_mid.txt", TID_MID + "5.jpg 4 40\n", "line 5", "image '5.jpg' has no line in"),
    ("ijbc_template_pair_label.txt", "1 2 0\n1 7 1\n", "line 2", "unknown template id 7"),
    ("ijbc_template_pair_label.txt", "1 2 0\n\n1 3 2\n", "line 3", "label must be 0 or 1"),
    ("ijbc_template_pair_label.txt", "1 2 0\n1 3\n", "line 2", "expected 3 fields"),
    ("ijbc_template_pair_label.txt", "1 2 0\n1 x 1\n", "line 2", "must be integers"),
    ("ijbc_1N_gallery_G1.csv", G1 + "9,100,img/9.jpg\n", "line 4", "unknown template id 9"),
    ("ijbc_1N_gallery_G2.csv", G2 + "2,201,img/3.jpg\n", "line 3", "template 2 has subject 201"),
    ("ijbc_1N_probe_mixed.csv", PROBE + "3\n", "line 4", "at least 2 columns"),
])
def test_ijbc_malformed_meta_names_file_and_line(tmp_path, name, text, where, problem):
    root = _ijbc(tmp_path, **{name: text})
    with pytest.raises(DatasetError, match=problem) as err:
        load_ijbc(root)
    assert f"{name}' {where}:" in str(err.value) and "\n" not in str(err.value)


def test_ijbc_missing_meta_file_names_it(tmp_path):
    root = _ijbc(tmp_path)
    (root / "meta" / "ijbc_1N_gallery_G2.csv").unlink()
    with pytest.raises(DatasetError, match="meta file missing: .*ijbc_1N_gallery_G2.csv"):
        load_ijbc(root)


# ------------------------------------------------------------------------------------------------ DeepFashion2

def _item(style: int, box: list, category: int = 1) -> dict:
    return {"category_id": category, "category_name": "short sleeve top", "style": style, "bounding_box": box,
            "landmarks": [0] * 3, "segmentation": [[0, 0, 1, 1, 1, 0]], "occlusion": 1}


def _anno(root: Path, name: str, source: str, pair_id: int, **items: dict) -> Path:
    return _write(root / "train" / "annos" / f"{name}.json",
                  json.dumps({"source": source, "pair_id": pair_id, **items}))


@pytest.fixture
def fashion(tmp_path):
    """Pair 1: a user image (style 1 top, style 0 item) and a shop image (styles 1 and 2); pair 2: a shop item.
    Every box is painted red in its image."""
    boxes = {"000001": [[10, 5, 30, 25], [40, 0, 60, 20]], "000002": [[0, 0, 20, 40], [30, 30, 64, 48]],
             "000003": [[5, 5, 15, 15]]}
    _anno(tmp_path, "000001", "user", 1, item1=_item(1, boxes["000001"][0]), item2=_item(0, boxes["000001"][1]))
    _anno(tmp_path, "000002", "shop", 1, item2=_item(2, boxes["000002"][1], 13), item1=_item(1, boxes["000002"][0]))
    _anno(tmp_path, "000003", "shop", 2, item1=_item(1, boxes["000003"][0], 7))
    for name, bs in boxes.items():
        im = Image.new("RGB", (64, 48), BLUE)
        for b in bs:
            im.paste(RED, tuple(b))
        (tmp_path / "train" / "image").mkdir(parents=True, exist_ok=True)
        im.save(tmp_path / "train" / "image" / f"{name}.jpg", quality=95, subsampling=0)
    return tmp_path


def test_deepfashion2_items_queries_gallery_and_pair_style_matching(fashion):
    items = load_deepfashion2(fashion, "train")
    assert [(it.path.name, it.item, it.source, it.pair_id, it.style, it.category_id) for it in items] == [
        ("000001.jpg", 1, "user", 1, 1, 1), ("000001.jpg", 2, "user", 1, 0, 1),
        ("000002.jpg", 1, "shop", 1, 1, 1), ("000002.jpg", 2, "shop", 1, 2, 13),
        ("000003.jpg", 1, "shop", 2, 1, 7)]
    queries, gallery = fashion_queries(items), fashion_gallery(items)
    assert [(q.path.stem, q.item) for q in queries] == [("000001", 1)]
    assert [(g.path.stem, g.item) for g in gallery] == [("000002", 1), ("000002", 2), ("000003", 1)]
    # correct = same pair_id and style: the same pair with another style, or another pair, is wrong
    assert [g.key == queries[0].key for g in gallery] == [True, False, False]
    classes = fashion_classes(items)
    assert classes == {(1, 1): 0, (1, 2): 1, (2, 1): 2}


def test_deepfashion2_crops_ground_truth_boxes_and_class_targets(fashion):
    items = [it for it in load_deepfashion2(fashion, "train") if it.style > 0]
    ds = deepfashion2_dataset(items, image_size=8, classes=fashion_classes(items))
    assert len(ds) == 4 and [ds[i][1] for i in range(4)] == [0, 0, 1, 2]
    assert all(_is(ds[i][0], RED) for i in range(4))
    assert [t for _, t in deepfashion2_dataset(items, 8)] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="no class"):
        deepfashion2_dataset(load_deepfashion2(fashion, "train"), 8, classes=fashion_classes(items))


def test_box_past_the_border_is_clamped(tmp_path):
    _jpeg(tmp_path / "a.jpg", (32, 32), red=(16, 0, 32, 32))
    x, _ = CropDataset([tmp_path / "a.jpg"], [(16, -10, 50, 40)], [0], image_size=8)[0]
    assert _is(x, RED)


@pytest.mark.parametrize("anno, key, problem", [
    ({"pair_id": 1, "item1": _item(1, [0, 0, 5, 5])}, "source", "missing key"),
    ({"source": "web", "pair_id": 1}, "source", "expected 'user' or 'shop'"),
    ({"source": "user", "pair_id": "1"}, "pair_id", "expected an integer"),
    ({"source": "user", "pair_id": 1, "item1": _item(1, [0, 0, 5, 5]), "item2": _item(1, [0, 0, 5])},
     "item2.bounding_box", "expected 4 numbers"),
    ({"source": "user", "pair_id": 1, "item1": _item(1, [0, 0, "5", 5])}, "item1.bounding_box",
     "expected 4 numbers"),
    ({"source": "user", "pair_id": 1, "item1": _item(1, [5, 0, 5, 5])}, "item1.bounding_box", "degenerate box"),
    ({"source": "user", "pair_id": 1, "item1": _item(1, [0, 0, 5, 5], 14)}, "item1.category_id", "in 1..13"),
    ({"source": "user", "pair_id": 1, "item1": _item(-1, [0, 0, 5, 5])}, "item1.style", ">= 0"),
    ({"source": "shop", "pair_id": 1, "item1": {"style": 1, "bounding_box": [0, 0, 5, 5]}}, "item1.category_id",
     "missing key"),
])
def test_deepfashion2_malformed_annotation_names_file_and_key(tmp_path, anno, key, problem):
    _write(tmp_path / "train" / "annos" / "000123.json", json.dumps(anno))
    with pytest.raises(DatasetError, match=problem) as err:
        load_deepfashion2(tmp_path, "train")
    assert f"annos/000123.json': {key}:" in str(err.value) and "\n" not in str(err.value)


def test_deepfashion2_not_json_and_missing_split_are_errors(tmp_path):
    with pytest.raises(DatasetError, match="no '.*validation/annos/\\*.json'"):
        load_deepfashion2(tmp_path, "validation")
    _write(tmp_path / "train" / "annos" / "000001.json", "{'source': 'user'")
    with pytest.raises(DatasetError, match="000001.json': not JSON"):
        load_deepfashion2(tmp_path, "train")


# --------------------------------------------------------------------------------------------------------- carve

def test_carve_is_seeded_disjoint_and_keeps_groups_together():
    records = [(i // 3, i) for i in range(30)]  # (group, id): ten groups of three
    rest, carved = carve_records(records, 0.1, seed=0)
    assert len(carved) == 3 and sorted(rest + carved) == records and carve_records(records, 0.1, 0) == (rest, carved)
    assert carve_records(records, 0.1, seed=1)[1] != carved
    rest, carved = carve_records(records, 0.2, seed=0, group=lambda r: r[0])
    assert len(carved) == 6 and {g for g, _ in carved}.isdisjoint(g for g, _ in rest)
    assert carved == sorted(carved)  # input order is kept

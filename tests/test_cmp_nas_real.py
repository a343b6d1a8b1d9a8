"""CMP-NAS on the real retrieval formats (IMDb-Face + IJB-C, DeepFashion2), on tiny fixture directories written in
those formats: the search rewards, the carve, the data modules and both pipelines end to end."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from conftest import compose
from PIL import Image
from test_retrieval_data import IMDB_HEADER, _item, _jpeg, _write

import nasx.evaluation.pairs as pairs_module
from nasx.evaluation.compatibility import CompatibilityEvaluator, RetrievalReward, VerificationReward
from nasx.evaluation.embedding import embed
from nasx.evaluation.pairs import verification_pairs
from nasx.data.retrieval import FaceDataModule, FashionDataModule, NormalisedCrops
from nasx.errors import DatasetError
from nasx.metrics.retrieval import pair_scores, tar_at_far, topk_retrieval

# ------------------------------------------------------------------------------------------------------- fixtures


def _color(i: int, k: int = 0) -> tuple[int, int, int]:
    return (37 * i + 5 * k) % 256, (255 - 53 * i) % 256, (90 + 71 * i + 3 * k) % 256


def write_imdb_face(root: Path, identities: int = 6, per_identity: int = 10) -> None:
    """IMDb-Face.csv + images/<nm…>/<name>.jpg, one colour per identity; rect 8 6 40 34 in a 40x48 (h x w) frame,
    its left part red (so a mirrored crop differs)."""
    rows = []
    for i in range(identities):
        nm = f"nm{i + 1:07d}"
        for k in range(per_identity):
            name = f"{nm}_{k}.jpg"
            _jpeg(root / "images" / nm / name, (48, 40), red=(8, 6, 18, 34), color=_color(i, k))
            rows.append(f"Person {i},{nm},{name},8 6 40 34,40 48,http://x/{name}")
    _write(root / "IMDb-Face.csv", IMDB_HEADER + "\n".join(rows) + "\n")


def write_ijbc(root: Path, subjects: int = 4, probes_per_subject: int = 5) -> None:
    """insightface's IJB-C layout: one gallery template per subject (the first half in G1, the rest in G2), several
    probe templates per subject (1-2 media each), and every template pair in the 1:1 list."""
    tid_mid, pts, templates = [], [], []
    g1, g2, probe = (["TEMPLATE_ID,SUBJECT_ID,FILENAME"] for _ in range(3))

    def template(subject: int, media: int) -> int:
        tid = len(templates) + 1
        for m in range(media):
            name = f"{len(tid_mid) + 1}.jpg"
            tid_mid.append(f"{name} {tid} {10 * tid + m}")
            pts.append(f"{name} 10 12 22 12 16 18 11 24 21 24 0.{9 - m}")
            _jpeg(root / "loose_crop" / name, (32, 32), color=_color(subject, m))
        templates.append((tid, subject))
        return tid

    for s in range(subjects):
        (g1 if s < subjects // 2 else g2).append(f"{template(s, 1)},{100 + s},img/{s}.jpg")
    for s in range(subjects):
        for k in range(probes_per_subject):
            probe.append(f"{template(s, 1 + k % 2)},{100 + s},img/p{s}_{k}.jpg")
    pairs = [f"{a} {b} {int(sa == sb)}" for i, (a, sa) in enumerate(templates) for b, sb in templates[i + 1:]]
    for name, lines in (("ijbc_face_tid_mid.txt", tid_mid), ("ijbc_name_5pts_score.txt", pts),
                        ("ijbc_template_pair_label.txt", pairs), ("ijbc_1N_gallery_G1.csv", g1),
                        ("ijbc_1N_gallery_G2.csv", g2), ("ijbc_1N_probe_mixed.csv", probe)):
        _write(root / "meta" / name, "\n".join(lines) + "\n")


def write_deepfashion2(root: Path, split: str, pair_ids: range) -> None:
    """Per pair: a user image (style 1 and a style-0 item), a user image (style 2), and two shop images (style 1;
    styles 2 and 1). Each box is painted in its (pair_id, style) colour."""
    n = 0
    for p in pair_ids:
        for source, styles in (("user", (1, 0)), ("user", (2,)), ("shop", (1,)), ("shop", (2, 1))):
            n += 1
            im = Image.new("RGB", (64, 48), (128, 128, 128))
            items = {}
            for k, style in enumerate(styles):
                box = [4 + 30 * k, 4, 30 + 30 * k, 44]
                im.paste(_color(p, style), tuple(box))
                items[f"item{k + 1}"] = _item(style, box, category=1 + p % 13)
            (root / split / "image").mkdir(parents=True, exist_ok=True)
            im.save(root / split / "image" / f"{n:06d}.jpg", quality=95)
            _write(root / split / "annos" / f"{n:06d}.json", json.dumps({"source": source, "pair_id": p, **items}))


def write_retrieval_data(root: Path) -> Path:
    """IMDb-Face, IJB-C and DeepFashion2 (train and validation) fixtures under ``root``, in the real layouts."""
    write_imdb_face(root / "imdb_face")
    write_ijbc(root / "ijbc")
    write_deepfashion2(root / "deepfashion2", "train", range(1, 11))
    write_deepfashion2(root / "deepfashion2", "validation", range(101, 106))
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_retrieval_data(tmp_path_factory.mktemp("data"))


def _face(data_dir: Path, **kw) -> FaceDataModule:
    return FaceDataModule(str(data_dir / "imdb_face"), str(data_dir / "ijbc"), image_size=16, **kw)


def _fashion(data_dir: Path, **kw) -> FashionDataModule:
    return FashionDataModule(str(data_dir / "deepfashion2"), image_size=16, **kw)


# ------------------------------------------------------------------------------------------------- search rewards

def test_verification_pairs_are_every_same_and_different_identity_pair_and_seeded():
    labels = torch.randint(0, 7, (40,), generator=torch.Generator().manual_seed(0))
    pairs, genuine = verification_pairs(labels, 10**6, 10**6, seed=0)
    same = labels[pairs[:, 0]] == labels[pairs[:, 1]]
    assert torch.equal(same.long(), genuine) and (pairs[:, 0] < pairs[:, 1]).all()
    n_same = sum(math.comb(int(c), 2) for c in torch.bincount(labels))
    assert int(genuine.sum()) == n_same and len(pairs) == 40 * 39 // 2  # all of them, each once
    assert len({tuple(p) for p in pairs.tolist()}) == len(pairs)


def test_verification_pairs_caps_are_deterministic_and_impostors_use_only_genuine_images():
    labels = torch.arange(60) // 4  # 15 identities of 4 images: 6 genuine pairs each
    pairs, genuine = verification_pairs(labels, 20, 50, seed=0)
    assert int(genuine.sum()) == 20 and int((genuine == 0).sum()) == 50
    assert torch.equal(pairs, verification_pairs(labels, 20, 50, seed=0)[0])
    assert not torch.equal(pairs, verification_pairs(labels, 20, 50, seed=1)[0])
    gen, imp = pairs[genuine == 1], pairs[genuine == 0]
    assert len(torch.unique(labels[gen])) == 4  # whole identities (the last one cut): 3 × 6 + 2
    assert set(imp.flatten().tolist()) <= set(gen.flatten().tolist())
    assert (labels[imp[:, 0]] != labels[imp[:, 1]]).all()


def test_verification_pairs_sample_distinct_impostors_when_too_many_to_enumerate(monkeypatch):
    monkeypatch.setattr(pairs_module, "ENUMERATE_PAIRS", 0)
    labels = torch.arange(60) // 4
    pairs, genuine = verification_pairs(labels, 10**6, 300, seed=0)
    imp = pairs[genuine == 0]
    assert len(imp) == 300 and len({tuple(p) for p in imp.tolist()}) == 300
    assert (labels[imp[:, 0]] != labels[imp[:, 1]]).all() and (imp[:, 0] < imp[:, 1]).all()


def test_face_reward_is_tar_at_far_of_first_image_as_query_against_second_as_gallery():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(40) // 5
    pairs, genuine = verification_pairs(labels, 10**6, 10**6, seed=0)
    q, gal = torch.randn(40, 8, generator=g), torch.randn(40, 8, generator=g)
    reward = VerificationReward(torch.zeros(40, 1), pairs, genuine, far=1e-2)
    m = reward.score(q, gal, "het")
    expected = tar_at_far(pair_scores(q[pairs[:, 0]], gal[pairs[:, 1]]), genuine, (1e-2,))[1e-2]
    swapped = tar_at_far(pair_scores(gal[pairs[:, 0]], q[pairs[:, 1]]), genuine, (1e-2,))[1e-2]
    assert m == {"het": expected, "far": 1e-2} and expected != swapped


def test_face_reward_falls_back_to_the_smallest_far_its_impostor_pairs_support(caplog):
    pairs, genuine = torch.tensor([[0, 1], [0, 2], [1, 2], [2, 3]]), torch.tensor([1, 0, 0, 0])
    with caplog.at_level(logging.WARNING, logger="nasx"):
        reward = VerificationReward(torch.zeros(4, 1), pairs, genuine, far=1e-3)
    assert reward.far == pytest.approx(1 / 3) and "cannot measure TAR@FAR=0.001" in caplog.text
    m = reward.score(torch.eye(4), torch.eye(4), "hom")
    assert m["far"] == pytest.approx(1 / 3) and 0 <= m["hom"] <= 1


def test_fashion_reward_is_top50_retrieval_with_pair_id_style_labels():
    g = torch.Generator().manual_seed(0)
    yq = torch.stack([torch.randint(0, 30, (40,), generator=g), torch.randint(1, 3, (40,), generator=g)], 1)
    yg = torch.stack([torch.randint(0, 30, (200,), generator=g), torch.randint(1, 3, (200,), generator=g)], 1)
    q, gal = torch.randn(40, 8, generator=g), torch.randn(200, 8, generator=g)
    m = RetrievalReward(q, yq, gal, yg, (1, 10, 20), 50).score(q, gal, "hom")
    assert m["hom"] == topk_retrieval(q, gal, yq, yg, ks=(50,))[50] == m["hom_top50"]
    # the same pair_id with another style is no match: with pair ids alone, more queries would hit
    assert m["hom"] < topk_retrieval(q, gal, yq[:, 0], yg[:, 0], ks=(50,))[50]


class _StubSupernet(torch.nn.Module):
    """``extract`` gives one fixed linear embedding network (no BN), whatever the arch."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def extract(self, arch):
        return self.net


class _Embedder(torch.nn.Module):
    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.linear, self.calls = torch.nn.Linear(12, 6), 0

    def forward_features(self, x):
        self.calls += 1
        return self.linear(x.flatten(1))

    forward = forward_features


def test_compatibility_evaluator_het_scores_phi_q_queries_against_phi_g_embedded_once():
    images = torch.randn(30, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    pairs, genuine = verification_pairs(torch.arange(30) // 3, 10**6, 10**6, seed=0)
    phi_q, phi_g = _Embedder(0), _Embedder(1)
    ev = CompatibilityEvaluator(_StubSupernet(phi_q), [], VerificationReward(images, pairs, genuine, 0.05), phi_g)
    m = ev.evaluate("arch")
    q, gal = embed(phi_q, images), embed(phi_g, images)
    tar = lambda a, b: tar_at_far(pair_scores(a[pairs[:, 0]], b[pairs[:, 1]]), genuine, (0.05,))[0.05]  # noqa: E731
    assert m["hom"] == tar(q, q) and m["het"] == tar(q, gal) and m["far"] == 0.05
    calls = phi_g.calls
    ev.evaluate("other arch")
    assert phi_g.calls == calls  # φg never runs again during the search


# -------------------------------------------------------------------------------------------------- data modules

def test_face_module_classes_carve_and_seeded_flips(data_dir):
    data = _face(data_dir, carve_fraction=0.3, seed=0, batch_size=16)
    data.check()
    assert data.num_classes == 6 and len(data._train) == 42 and len(data._val) == 18
    rs = data.reward_set()
    assert len(rs.crops) == 18 and rs.labels.tolist() == data._val.targets
    x, y = next(iter(data.train_dataloader()))
    assert x.shape == (16, 3, 16, 16) and y.dtype == torch.int64
    assert len(data.calibration_batches(2, 8)) == 2
    flips = NormalisedCrops(data._train, data.mean, data.std, train=True, seed=0)
    first = [flips[i][0] for i in range(6)]
    assert all(torch.equal(a, flips[i][0]) for i, a in enumerate(first))  # same (seed, epoch, index): same draw
    flips.set_epoch(1)
    assert any(not torch.equal(a, flips[i][0]) for i, a in enumerate(first))
    x, index = next(iter(data.test_dataloader()))
    assert x.shape[1:] == (2, 3, 16, 16) and torch.equal(x[:, 1], x[:, 0].flip(-1)) and index[0] == 0


def test_fashion_carve_keeps_each_pair_id_on_one_side(data_dir):
    data = _fashion(data_dir, carve_fraction=0.3, seed=0)
    data.check()
    queries, shop = data.reward_sets()
    carved = {it.pair_id for it in data._carved}
    assert len(carved) == 3 and len(data._carved) == 3 * 6  # round(0.3 × 10) pair_ids, all their items
    trained = {int(p) for p in torch.tensor([t for t in data._train.targets]).unique()}
    assert data.num_classes == 7 * 2 and len(trained) == 14
    assert set(queries.labels[:, 0].tolist()) == carved == set(shop.labels[:, 0].tolist())
    assert len(queries.crops) == 3 * 2 and len(shop.crops) == 3 * 3 and (queries.labels[:, 1] > 0).all()
    assert len(data.val_dataloader().dataset) == 0  # no carved class is a training class
    q_test, g_test = data.test_sets()
    assert len(q_test.crops) == 5 * 2 and len(g_test.crops) == 5 * 3


@pytest.mark.parametrize("make, remove, problem", [
    (_face, "imdb_face", "IMDb-Face not found: no directory '.*imdb_face'"),
    (_face, "imdb_face/IMDb-Face.csv", "IMDb-Face not found: no file '.*IMDb-Face.csv'"),
    (_face, "imdb_face/images", "IMDb-Face not found: no directory '.*images'"),
    (_face, "ijbc/loose_crop", "IJB-C not found: no directory '.*loose_crop' \\(expected .*meta/"),
    (_face, "ijbc/meta/ijbc_1N_probe_mixed.csv", "IJB-C meta file missing: '.*ijbc_1N_probe_mixed.csv'"),
    (_fashion, "deepfashion2/validation/annos", "DeepFashion2 not found: no directory '.*validation/annos' "
                                                "\\(expected .*\\{train,validation\\}"),
])
def test_missing_directory_fails_in_check_with_one_line_naming_path_and_layout(tmp_path, data_dir, make, remove,
                                                                                problem):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(data_dir, root)
    target = root / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(DatasetError, match=problem) as err:
        make(root).check()
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------------- end to end

TINY = ["space.stage_repeats=[1,1,1,1]", "space.input_size=32", "gallery.model.blocks=[1,1,1,1]",
        "gallery.model.width=8", "train.epochs=2", "train.warmup_epochs=1", "gallery.epochs=1", "retrain.epochs=1",
        "search.strategy.generations=2", "search.strategy.population=4", "search.strategy.top_k=2",
        "search.strategy.crossover_size=2", "search.bn_batches=1", "search.bn_batch_size=8", "data.batch_size=16",
        "data.num_workers=0", "data.carve_fraction=0.3", "progress=false"]


def _run(experiment: str, data_dir: Path, tmp_path: Path) -> dict:
    from nasx.runner import run

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    return run(compose([f"experiment={experiment}", f"paths.data_dir={data_dir}", *TINY], tmp_path))


@pytest.mark.slow
def test_cmp_nas_face_runs_every_stage_and_reports_ijbc_verification_and_identification(data_dir, tmp_path, capsys):
    r = _run("cmp_nas_face", data_dir, tmp_path)
    assert r["protocol"] == "face" and set(r["test"]) == {"query (retrained)", "paragon A(φg, φg)"}
    q, paragon = r["test"]["query (retrained)"], r["test"]["paragon A(φg, φg)"]
    for p in ("hom", "het"):
        assert all(0 <= q[f"{p}_{m}"] <= 1 for m in ("tar@far=0.01", "rank1", "rank5", "rank10", "tpir@fpir=0.1"))
        # 24 templates: 216 impostor pairs and 10 non-mated probes per gallery cannot measure these
        assert q[f"{p}_tar@far=0.0001"] is None and q[f"{p}_tpir@fpir=0.01"] is None
    assert paragon["hom_rank10"] == 1.0 and not any(k.startswith("het") for k in paragon)  # 4 subjects: rank ≤ 4
    s = r["search_metrics"]
    assert 1e-3 < s["far"] < 1 and r["search_reward"] == pytest.approx(0.5 * (s["hom"] + s["het"]))
    report = (tmp_path / "report.md").read_text()
    assert "TAR@FAR=1e-2" in report and "TPIR@FPIR=1e-1" in report and "paragon" in report
    from nasx.cli import print_table
    from nasx.methods.cmp_nas import CMPNAS

    print_table(CMPNAS().table(r))
    assert "rank-5" in capsys.readouterr().out


@pytest.mark.slow
def test_cmp_nas_fashion_runs_every_stage_and_reports_top_1_10_20(data_dir, tmp_path):
    r = _run("cmp_nas_fashion", data_dir, tmp_path)
    assert r["protocol"] == "fashion"
    q = r["test"]["query (retrained)"]
    assert {f"{p}_top{k}" for p in ("hom", "het") for k in (1, 10, 20)} == set(q)
    assert q["hom_top20"] == 1.0  # 15 gallery items
    s = r["search_metrics"]
    assert s["hom"] == s["hom_top50"] == 1.0 and r["search_reward"] == pytest.approx(0.5 * (s["hom"] + s["het"]))
    assert [m[1] for m in r["metrics"]] == ["top-1", "top-10", "top-20"]
    assert "top-20" in (tmp_path / "report.md").read_text()

"""Bad input, as a hostile user gives it: every case stops with exit status 2 and one stderr line that names the key
or file, a fresh run leaves no directory behind, and a resumed run is left exactly as it was (hash of every file).

Most cases run in this process through the CLI's entry function (``nasx.cli.main(argv)``); a handful go through a
real subprocess, as a user types them."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY
from nasx import artifacts

pytestmark = pytest.mark.slow  # one tiny finished run (~20 s) backs the resume cases; the cases themselves are fast

FRESH = ["experiment=quickstart", *TINY]


# -- helpers -----------------------------------------------------------------------------------------------------------
def tree_hash(root: Path) -> str:
    """Every file's path and bytes, and every directory, under ``root``."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode() + b"\0")
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run the console script in this process: (exit status, stdout, stderr)."""
    from nasx.cli import main

    saved = list(sys.argv)
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = saved
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error_line(code: int, err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, f"exit status {code}, stderr:\n{err[-3000:]}"
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{err[-3000:]}"
    assert lines[0].startswith("nasx: error: "), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny quickstart run, made through the CLI (so it has Hydra's .hydra/ files)."""
    from nasx.cli import main

    out = tmp_path_factory.mktemp("finished") / "outputs"
    saved = list(sys.argv)
    try:
        main([*FRESH, f"paths.output_dir={out}"])
    finally:
        sys.argv = saved
    (run_dir,) = list((out / "quickstart").iterdir())
    assert (run_dir / "results.json").exists()
    return run_dir


@pytest.fixture
def run_copy(finished, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(finished, dst)
    return dst


# -- arch files ----------------------------------------------------------------------------------------------------
GENES = {f"b{i}": 0 for i in range(5)} | {f"w{i}": 0 for i in range(5)}  # the TINY space has 5 layers


def arch_file(d: Path, name: str, content) -> str:
    p = d / name
    p.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(p)


ARCHS = {
    "unknown_gene": ({"space": "shufflenet_cpu", "genes": GENES | {"depth": 2}}, r"unknown gene 'depth'"),
    "out_of_range": ({"space": "shufflenet_cpu", "genes": GENES | {"w4": 12}}, r"gene 'w4' has choice 12"),
    "missing_gene": ({"space": "shufflenet_cpu", "genes": {k: v for k, v in GENES.items() if k != "b2"}},
                     r"b2"),
    "not_json": ("{not json", r"bad_not_json\.json"),
    "empty": ("", r"bad_empty\.json"),
    "a_list": ([1, 2, 3], r"bad_a_list\.json"),
    "over_budget": ({"space": "shufflenet_cpu", "genes": {f"b{i}": 3 for i in range(5)} | {f"w{i}": 9 for i in range(5)}},
                    r"arch: .*over the budget.*budget=none"),
}


# -- the table -------------------------------------------------------------------------------------------------------
# (id, extra argv for a fresh quickstart run, regex the error line must match). {d} is the test's directory.
FRESH_CASES = [
    ("budget_nan", ["budget.mflops=nan"], r"budget\.mflops must be a positive number"),
    ("budget_inf", ["budget.mflops=inf"], r"budget\.mflops must be a positive number"),
    ("budget_negative", ["budget.mflops=-1"], r"budget\.mflops must be a positive number"),
    ("budget_zero", ["budget.mflops=0"], r"budget\.mflops must be a positive number"),
    ("budget_text", ["budget.mflops=abc"], r"budget\.mflops must be a positive number"),
    ("budget_infeasible", ["budget.mflops=0.01"], r"infeasible.*smallest architecture"),
    ("params_negative", ["budget.params=-1"], r"budget\.params must be a positive number"),
    ("batch_fraction", ["data.batch_size=1.5"], r"data\.batch_size must be"),
    ("batch_zero", ["data.batch_size=0"], r"data\.batch_size must be"),
    ("batch_negative", ["data.batch_size=-3"], r"data\.batch_size must be"),
    ("batch_text", ["data.batch_size=abc"], r"data\.batch_size must be"),
    ("batch_one", ["data.batch_size=1"], r"data\.batch_size"),
    ("eval_batch_zero", ["data.eval_batch_size=0"], r"data\.eval_batch_size must be"),
    ("val_fraction_big", ["data.val_fraction=1.5"], r"data\.val_fraction"),
    ("val_fraction_zero", ["data.val_fraction=0"], r"data\.val_fraction"),
    ("test_fraction_one", ["data.test_fraction=1"], r"data\.test_fraction"),
    ("shift_negative", ["+data.shift=-1"], r"data\.shift"),
    ("seed_text", ["seed=abc"], r"seed must be an integer, got 'abc'"),
    ("seed_fraction", ["seed=1.5"], r"seed must be an integer"),
    ("devices_zero", ["trainer.devices=0"], r"trainer\.devices"),
    ("devices_negative", ["trainer.devices=-2"], r"trainer\.devices"),
    ("devices_text", ["trainer.devices=many"], r"trainer\.devices"),
    ("lr_negative", ["train.lr=-0.1"], r"train\.lr must be a positive number"),
    ("lr_zero", ["train.lr=0"], r"train\.lr must be a positive number"),
    ("lr_nan", ["train.lr=nan"], r"train\.lr must be a positive number"),
    ("retrain_lr_negative", ["retrain.lr=-1"], r"retrain\.lr must be a positive number"),
    ("epochs_fraction", ["train.epochs=2.5"], r"train\.epochs must be an integer >= 0"),
    ("epochs_text", ["train.epochs=ten"], r"train\.epochs must be an integer >= 0"),
    ("retrain_epochs_negative", ["retrain.epochs=-1"], r"retrain\.epochs must be an integer >= 0"),
    ("warmup_negative", ["train.warmup_epochs=-1"], r"train\.warmup_epochs"),
    ("momentum_big", ["train.momentum=1.5"], r"train\.momentum"),
    ("weight_decay_negative", ["train.weight_decay=-1"], r"train\.weight_decay"),
    ("schedule_unknown", ["train.schedule=sometimes"], r"train\.schedule must be one of"),
    ("retrain_init_unknown", ["retrain.init=borrowed"], r"retrain\.init"),
    ("population_zero", ["search.strategy.population=0"], r"search\.strategy\.population must be a positive"),
    ("generations_negative", ["search.strategy.generations=-1"], r"search\.strategy\.generations must be"),
    ("top_k_zero", ["search.strategy.top_k=0"], r"search\.strategy\.top_k"),
    ("bn_batches_zero", ["search.bn_batches=0"], r"search\.bn_batches"),
    ("strategy_foreign_key", ["search=random"], r"search\.strategy"),
    ("label_smoothing_big", ["train.loss.ce.label_smoothing=2"], r"train\.loss.*label_smoothing"),
    ("loss_all_off", ["+train.loss.ce.weight=0"], r"train\.loss"),
    ("stages_empty", ["stages=[]"], r"stages is empty"),
    ("stages_unknown", ["stages=[train,foo]"], r"stages: unknown stage 'foo'"),
    ("stages_not_a_list", ["stages=train"], r"stages must be a list"),
    ("input_size_zero", ["space.input_size=0"], r"(space|data)\.(input|image)_size"),
    ("arch_missing", ["arch={d}/nowhere.json"], r"arch: no such file '.*nowhere\.json'"),
    *[(f"arch_{k}", [f"arch={{d}}/bad_{k}.json", *(["budget.mflops=0.15"] if k == "over_budget" else [])], rx)
      for k, (_, rx) in ARCHS.items()],
    ("arch_string_bad", ["arch='shufflenet_cpu:b0=9'"], r"arch: gene"),
    ("cifar_missing", ["data=cifar10", "paths.data_dir={d}/nowhere"], r"nowhere/cifar10.*cifar-10-batches-py"),
    ("output_dir_is_a_file", ["paths.output_dir={d}/a_file"], r"paths\.output_dir=.*a_file.*is a file"),
    ("output_dir_under_a_file", ["paths.output_dir={d}/a_file/sub"], r"paths\.output_dir=.*a_file.*is a file"),
]


@pytest.mark.parametrize("case, extra, message", FRESH_CASES, ids=[c[0] for c in FRESH_CASES])
def test_a_bad_fresh_run_stops_with_one_line_and_leaves_no_directory(case, extra, message, tmp_path, capsys):
    d = tmp_path
    for k, (content, _) in ARCHS.items():
        arch_file(d, f"bad_{k}.json", content)
    (d / "a_file").write_text("not a directory\n")
    argv = [*FRESH, *[a.format(d=d) for a in extra]]
    if not any(a.startswith("paths.output_dir=") for a in argv):
        argv.append(f"paths.output_dir={d}/outputs")
    code, _, err = cli(argv, capsys)
    line = one_error_line(code, err)
    assert re.search(message, line), line
    assert not (d / "outputs").exists(), list((d / "outputs").rglob("*"))  # no run directory, no empty parents


# (id, mutation of a copy of the finished run, extra argv after resume=<run>, regex)
def _truncate(rel):
    def f(run):
        p = run / rel
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return f


def _write(rel, content: bytes):
    def f(run):
        (run / rel).write_bytes(content)
    return f


def _flip_middle(rel):
    def f(run):
        p = run / rel
        b = bytearray(p.read_bytes())
        i = len(b) // 2
        b[i:i + 64] = bytes((x ^ 0xFF) for x in b[i:i + 64])
        p.write_bytes(bytes(b))
    return f


def _garbage_history_line(run):
    p = run / "search" / "history.jsonl"
    lines = p.read_text().splitlines(keepends=True)
    lines.insert(3, "this is not json\n")
    p.write_text("".join(lines))


def _unfinish_retrain(run):
    (run / "retrain" / "done.json").unlink()
    (run / "retrain" / "model.pt").unlink()
    _truncate("retrain/last.ckpt")(run)


def _remove(rel):
    def f(run):
        (run / rel).unlink()
    return f


def _nothing(run):
    pass


RESUME_CASES = [
    ("truncated_train_ckpt", _truncate("train/last.ckpt"), [], r"train/last\.ckpt' is unreadable.*delete it and .*train/done\.json"),
    ("empty_state", _write("search/state.pt", b""), [], r"search/state\.pt' is unreadable.*delete it"),
    ("garbage_state", _write("search/state.pt", b"garbage" * 100), [], r"search/state\.pt' is unreadable.*delete it"),
    ("corrupt_model", _flip_middle("retrain/model.pt"), [], r"retrain/model\.pt' is (unreadable|corrupt).*delete it"),
    ("truncated_retrain_ckpt", _unfinish_retrain, [], r"retrain/last\.ckpt' is unreadable.*delete it"),
    ("garbage_history_line", _garbage_history_line, [], r"history\.jsonl' line 4 is not a JSON record"),
    ("garbage_best", _write("search/best.json", b"{oops"), [], r"search/best\.json' is not valid JSON.*delete it"),
    ("garbage_train_done", _write("train/done.json", b"\x00\x01"), [], r"train/done\.json' is not valid JSON"),
    ("garbage_results", _write("results.json", b"[1, 2"), [], r"results\.json' is not valid JSON"),
    ("overrides_unparsable", _write(".hydra/overrides.yaml", b"- a: [unclosed\n"), [],
     r"overrides\.yaml' is unreadable"),
    ("overrides_a_mapping", _write(".hydra/overrides.yaml", b"a: 1\n"), [], r"overrides\.yaml' is not a list"),
    ("overrides_missing", _remove(".hydra/overrides.yaml"), [], r"not a nasx run directory"),
    ("population_zero", _nothing, ["search.strategy.population=0"], r"search\.strategy\.population must be a positive"),
    ("stages_unknown", _nothing, ["stages=[foo]"], r"stages: unknown stage 'foo'"),
    ("stages_empty", _nothing, ["stages=[]"], r"stages is empty"),
    ("other_strategy", _nothing, ["search=random", "~search.strategy.top_k", "~search.strategy.crossover_size"],
     r"search: the saved state is of Evolution.*this run uses RandomSearch"),
    ("lr_negative", _nothing, ["train.lr=-0.1"], r"train\.lr must be a positive number"),
    ("budget_nan", _nothing, ["budget.mflops=nan"], r"budget\.mflops must be a positive number"),
    ("seed_text", _nothing, ["seed=abc"], r"seed must be an integer"),
    ("arch_over_budget", _nothing, ["arch={d}/bad_over_budget.json", "budget.mflops=0.15"], r"over the budget"),
    ("devices_zero", _nothing, ["trainer.devices=0"], r"trainer\.devices"),
]


@pytest.mark.parametrize("case, mutate, extra, message", RESUME_CASES, ids=[c[0] for c in RESUME_CASES])
def test_a_bad_resume_stops_with_one_line_and_leaves_the_run_as_it_was(case, mutate, extra, message, run_copy,
                                                                      tmp_path, capsys):
    for k, (content, _) in ARCHS.items():
        arch_file(tmp_path, f"bad_{k}.json", content)
    mutate(run_copy)
    before = tree_hash(run_copy)
    code, _, err = cli([f"resume={run_copy}", *[a.format(d=tmp_path) for a in extra]], capsys)
    line = one_error_line(code, err)
    assert re.search(message, line), line
    assert tree_hash(run_copy) == before, "the failed resume changed the run directory"


@pytest.mark.parametrize("target, message", [
    ("nowhere", r"resume=.*nowhere: no such directory"),
    ("a_file", r"resume=.*a_file: no such directory"),
    ("empty_dir", r"not a nasx run directory"),
])
def test_resume_of_something_that_is_not_a_run_is_one_line_and_exit_2(target, message, tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "empty_dir").mkdir()
    code, _, err = cli([f"resume={tmp_path / target}"], capsys)
    assert re.search(message, one_error_line(code, err))


def test_a_failed_resume_does_not_poison_the_next_one(run_copy, capsys):
    """Before: the failed resume rewrote .hydra/overrides.yaml with population=0, so the plain resume failed too."""
    code, _, err = cli([f"resume={run_copy}", "search.strategy.population=0"], capsys)
    one_error_line(code, err)
    code, _, err = cli([f"resume={run_copy}"], capsys)
    assert code == 0, err[-3000:]


def test_a_torn_last_history_line_is_reported_with_its_line_number_and_the_search_resumes(run_copy, capsys, caplog):
    history = run_copy / "search" / "history.jsonl"
    n = len(history.read_text().splitlines())
    with open(history, "a") as f:
        f.write('{"gen": 3, "round": 3, "arch": {"sp')  # a kill while appending
    code, out, err = cli([f"resume={run_copy}"], capsys)
    assert code == 0, err[-3000:]
    assert f"history.jsonl:{n + 1}: torn last line" in out + err + caplog.text


def test_stale_temporary_files_of_a_killed_write_are_gone_after_a_resume(run_copy, capsys):
    stale = run_copy / "search" / ".best.json.abc123.tmp"
    stale.write_text("{half")
    code, _, err = cli([f"resume={run_copy}"], capsys)
    assert code == 0, err[-3000:]
    assert not list(run_copy.rglob("*.tmp*"))


def test_a_write_the_machine_refuses_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    """A read-only or full disk (root ignores chmod, so it is simulated): one line, exit 2, the file named."""
    import nasx.artifacts

    def refuse(path, text):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(nasx.artifacts, "write_text", refuse)
    code, _, err = cli([*FRESH, f"paths.output_dir={tmp_path}/outputs"], capsys)
    assert re.search(r"config\.yaml': Permission denied", one_error_line(code, err))


# -- data on the test side is checked at setup, before any training ---------------------------------------------------
@pytest.fixture(scope="module")
def retrieval_data(tmp_path_factory):
    from test_cmp_nas_real import write_retrieval_data

    return write_retrieval_data(tmp_path_factory.mktemp("retrieval"))


def _ijbc_pairs_garbage(root):
    p = root / "ijbc" / "meta" / "ijbc_template_pair_label.txt"
    p.write_text(p.read_text() + "1 two 1\n")


def _ijbc_image_garbage(root):
    (root / "ijbc" / "loose_crop" / "3.jpg").write_bytes(b"not a jpeg")


def _ijbc_tid_mid_short(root):
    p = root / "ijbc" / "meta" / "ijbc_face_tid_mid.txt"
    p.write_text(p.read_text() + "99.jpg 1\n")


def _fashion_val_image_garbage(root):
    (root / "deepfashion2" / "validation" / "image" / "000002.jpg").write_bytes(b"\x00" * 10)


def _fashion_val_json_garbage(root):
    (root / "deepfashion2" / "validation" / "annos" / "000003.json").write_text("{\"source\": ")


def _fashion_val_image_missing(root):
    (root / "deepfashion2" / "validation" / "image" / "000004.jpg").unlink()


FACE = ["experiment=cmp_nas_face", "space.stage_repeats=[1,1,1,1]", "space.input_size=32",
        "gallery.model.blocks=[1,1,1,1]", "gallery.model.width=8", "train.epochs=1", "train.warmup_epochs=0",
        "gallery.epochs=1", "retrain.epochs=1", "search.strategy.generations=1", "search.strategy.population=4",
        "search.strategy.top_k=2", "search.strategy.crossover_size=2", "search.bn_batches=1", "data.batch_size=16",
        "data.num_workers=0", "data.carve_fraction=0.3", "progress=false"]
FASHION = [a.replace("cmp_nas_face", "cmp_nas_fashion") for a in FACE]

DATA_CASES = [
    ("ijbc_pairs_garbage", FACE, _ijbc_pairs_garbage, r"ijbc_template_pair_label\.txt.*line"),
    ("ijbc_tid_mid_short", FACE, _ijbc_tid_mid_short, r"ijbc_face_tid_mid\.txt.*line"),
    ("ijbc_image_garbage", FACE, _ijbc_image_garbage, r"loose_crop/3\.jpg"),
    ("fashion_val_image_garbage", FASHION, _fashion_val_image_garbage, r"validation/image/000002\.jpg"),
    ("fashion_val_image_missing", FASHION, _fashion_val_image_missing, r"validation/image/000004\.jpg"),
    ("fashion_val_json_garbage", FASHION, _fashion_val_json_garbage, r"validation/annos/000003\.json"),
    ("face_carve_leaves_one_image", [*FACE, "data.carve_fraction=0.99"], _nothing, r"data\.carve_fraction"),
]


@pytest.mark.parametrize("case, args, mutate, message", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_test_side_data_stops_the_run_at_setup(case, args, mutate, message, retrieval_data, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(retrieval_data, root)
    mutate(root)
    code, _, err = cli([*args, f"paths.data_dir={root}", f"paths.output_dir={tmp_path}/outputs"], capsys)
    line = one_error_line(code, err)
    assert re.search(message, line), line
    assert not (tmp_path / "outputs").exists()  # found before any training: no run directory


# -- a few as a user types them ------------------------------------------------------------------------------------
def nasx_subprocess(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "nasx", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("args, message", [
    (["seed=abc"], r"seed must be an integer"),
    (["train.lr=-0.1"], r"train\.lr must be a positive number"),
    (["paths.output_dir={d}/a_file"], r"is a file"),
])
def test_in_a_real_process_a_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    (tmp_path / "a_file").write_text("x")
    argv = [*FRESH, *[a.format(d=tmp_path) for a in args]]
    if not any(a.startswith("paths.output_dir=") for a in argv):
        argv.append(f"paths.output_dir={tmp_path}/outputs")
    proc = nasx_subprocess(*argv, cwd=tmp_path)
    line = one_error_line(proc.returncode, proc.stderr)
    assert re.search(message, line), line
    assert not (tmp_path / "outputs").exists()


def test_in_a_real_process_a_failed_resume_leaves_the_run_as_it_was(run_copy, tmp_path):
    _truncate("train/last.ckpt")(run_copy)
    before = tree_hash(run_copy)
    proc = nasx_subprocess(f"resume={run_copy}", cwd=tmp_path)
    assert re.search(r"last\.ckpt' is unreadable", one_error_line(proc.returncode, proc.stderr))
    assert tree_hash(run_copy) == before


def test_sweep_job_directories_start_with_the_swept_keys(tmp_path):
    """`nasx -m seed=1,2 ...`: the job directories are named seed=1,... and seed=2,..., the static overrides after
    (before: the sorted override list was cut at 120 characters and the swept key was lost)."""
    out = tmp_path / "outputs"
    proc = nasx_subprocess("-m", *FRESH, "seed=1,2", "stages=[train]", "train.epochs=1",
                           f"paths.output_dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = list((out / "quickstart").iterdir())
    names = sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit())
    assert [n.split("_", 1)[1].split(",")[0] for n in names] == ["seed=1", "seed=2"], names
    assert all(len(n) <= 130 for n in names)

"""The one runner: a method is a class named by ``_target_``, the runner runs any method's stages with no change under
``nasx/``, the shared layers never import a method, and under DDP only rank 0 goes past training."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, compose

from nasx import artifacts
from nasx.evaluation.base import FunctionEvaluator
from nasx.methods.base import Method, ResultsTable
from nasx.rewards import WeightedSum
from nasx.search import RandomSearch
from nasx.search.loop import run_search

NASX = Path(__file__).resolve().parent.parent / "nasx"


class ToyMethod(Method):
    """A method written only here: it 'trains' by measuring the data, searches for the cheapest arch by random
    search through the search loop, 'retrains' by recording its choice and evaluates by reporting it."""

    name = "toy"
    calls: list[str] = []

    def __init__(self, population: int = 5):
        self.population = population

    def setup(self, run) -> None:
        run.strategy = RandomSearch(run.space, run.budget, seed=run.cfg.seed, generations=2,
                                    population=self.population)

    def train(self, run) -> None:
        ToyMethod.calls.append("train")
        run.data.setup("fit")
        artifacts.write_json(run.dir / "train" / "done.json", {"batches": len(run.data.train_dataloader())})

    def search(self, run) -> None:
        ToyMethod.calls.append("search")
        cost = FunctionEvaluator(lambda a: {"mflops_neg": -run.space.cost(a).mflops})
        run_search(run.strategy, run.space, cost, WeightedSum({"mflops_neg": 1.0}), run.budget, run.dir / "search",
                   progress=False)

    def retrain(self, run) -> None:
        ToyMethod.calls.append("retrain")
        best = artifacts.read_json(run.dir / "search" / "best.json")
        artifacts.write_json(run.dir / "retrain" / "done.json", {"arch": best["arch_str"]})

    def evaluate(self, run) -> dict:
        ToyMethod.calls.append("evaluate")
        arch = artifacts.read_json(run.dir / "retrain" / "done.json")["arch"]
        results = {"experiment": run.cfg.name, "arch_str": arch, "batches":
                   artifacts.read_json(run.dir / "train" / "done.json")["batches"]}
        artifacts.write_json(run.dir / "results.json", results)
        return results

    def table(self, results: dict) -> ResultsTable:
        return ResultsTable("toy", ["arch", "batches"], [[results["arch_str"], str(results["batches"])]])


def test_a_method_defined_in_a_test_file_runs_all_four_stages_through_the_runner(tmp_path, capsys):
    from nasx.cli import print_table
    from nasx.runner import results_table, run

    ToyMethod.calls = []
    cfg = compose(["experiment=quickstart", *TINY, "method._target_=test_runner.ToyMethod", "+method.population=3"],
                  tmp_path)
    results = run(cfg)
    assert ToyMethod.calls == ["train", "search", "retrain", "evaluate"]
    history = artifacts.read_jsonl(tmp_path / "search" / "history.jsonl")
    assert len(history) == 2 * 3 and results["arch_str"] == min(history, key=lambda r: r["mflops"])["arch_str"]
    assert (tmp_path / "config.yaml").exists() and results["batches"] > 0
    print_table(results_table(cfg, results))
    assert results["arch_str"][:30] in capsys.readouterr().out.replace("\n", "")
    ToyMethod.calls = []
    run(compose(["experiment=quickstart", *TINY, "method._target_=test_runner.ToyMethod", "stages=[search]"],
                tmp_path))
    assert ToyMethod.calls == ["search"]  # only the stages asked for; the search resumed as finished


def test_a_method_target_that_is_not_a_config_is_one_config_error(tmp_path):
    from nasx.errors import ConfigError
    from nasx.runner import run

    with pytest.raises(ConfigError, match="method must be a config with a _target_"):
        run(compose(["experiment=quickstart", "~method"], tmp_path))


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("nasx")}


def _module(path: Path) -> str:
    rel = path.relative_to(NASX.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_shared_layers_never_import_a_method_and_nasx_has_no_import_cycle():
    graph = {_module(p): _imports(p) for p in NASX.rglob("*.py")}
    for mod, deps in graph.items():
        if not mod.startswith("nasx.methods"):
            assert not any(d.startswith("nasx.methods") for d in deps), f"{mod} imports a method"

    def resolve(dep: str) -> str | None:  # 'nasx.search' -> package init; 'nasx.search.loop.run_search' -> module
        while dep and dep not in graph:
            dep = dep.rpartition(".")[0]
        return dep or None

    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in filter(None, map(resolve, graph[m])):
            if d == m:
                continue
            assert state.get(d) != 1, "import cycle: " + " -> ".join(stack + [m, d])
            if d not in state:
                visit(d, stack + [m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_no_code_under_nasx_branches_on_the_method_name():
    import re

    branch = re.compile(r"""(\.get\(["']method["'][^)]*\)|\[["']method["']\]|cfg\.method) *(==|!=|in )""")
    for p in NASX.rglob("*.py"):
        assert not branch.search(p.read_text()), f"{p} branches on the method name"


TINY_BY_EXPERIMENT = {
    "cmp_nas_digits": ["space.stage_repeats=[1,1,1,1]", "space.input_size=16", "train.epochs=2",
                       "train.warmup_epochs=1", "gallery.epochs=1", "retrain.epochs=1", "search.strategy.generations=2",
                       "search.strategy.population=4", "search.strategy.top_k=2", "search.strategy.crossover_size=2",
                       "search.bn_batches=1", "progress=false"],
    "mixpath_digits": ["train.epochs=1", "search.strategy.generations=2", "search.strategy.population=4", "search.k=2",
                       "retrain.epochs=1", "search.bn_batches=1", "progress=false"],
    "nss_digits": ["train.epochs=2", "train.warmup_epochs=1", "retrain.epochs=1", "search.plot_samples=2",
                   "search.bn_batches=1", "search.strategy.repeats=2", "train.targets=[1.0]", "progress=false"],
}


@pytest.mark.slow
@pytest.mark.parametrize("experiment", sorted(TINY_BY_EXPERIMENT))
def test_under_ddp_the_worker_trains_and_searches_and_rank_zero_alone_writes(experiment, tmp_path):
    """``trainer=ddp_sim``: two CPU processes. The worker joins the supernet's fit, then scores its share of every
    search round (SPOS, CMP-NAS, MixPath; NSS searches on rank 0) and stops; the history is written once, and
    retrain and evaluate run once, in rank 0 (seen before the one runner: CMP-NAS's worker retrained and evaluated
    too)."""
    out = tmp_path / "outputs"
    proc = subprocess.run([sys.executable, "-m", "nasx", f"experiment={experiment}", *TINY_BY_EXPERIMENT[experiment],
                           "trainer=ddp_sim", f"paths.output_dir={out}"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=900, env={**os.environ, "WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    for stage in ("search", "retrain", "evaluate"):
        assert log.count(f"stage {stage}") == 1, f"stage {stage} ran {log.count(f'stage {stage}')} times"
    (run_dir,) = list((out / experiment).iterdir())
    results = json.loads((run_dir / "results.json").read_text())
    assert results["experiment"] == experiment
    if experiment != "nss_digits":  # NSS trains each target on one device: no worker is ever started
        assert artifacts.read_json(run_dir / "train" / "done.json")["world_size"] == 2
        history = artifacts.read_jsonl(run_dir / "search" / ("nsga2" if experiment == "mixpath_digits" else "")
                                       / "history.jsonl")
        first = {"cmp_nas_digits": 4, "mixpath_digits": 2 * 4}[experiment]  # NSGA-II's P0 ∪ Q0 = 2n
        assert sum(1 for r in history if r["gen"] == 0) == first  # written once, not once per rank
        worker_log = (run_dir / "train_ddp_process_1.log").read_text()
        assert "search: rank 1 of 2 scored" in worker_log


def test_every_package_under_nasx_is_listed_for_installation():
    """pyproject.toml lists the packages by hand (conf/ is mapped to nasx.conf): a forgotten one would be missing
    from a regular install."""
    import tomllib

    listed = set(tomllib.loads((NASX.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    present = {_module(p) for p in NASX.rglob("__init__.py")}
    assert present <= listed, f"not listed in pyproject.toml: {sorted(present - listed)}"


def test_arch_accepts_the_printed_string_as_well_as_a_json_file(tmp_path):
    """``arch=`` takes what nasx prints (``space:gene=choice,...``) or a JSON file, and both name the same arch."""
    import random

    from nasx.arch import Arch
    from nasx.errors import ArchError
    from nasx.methods.spos import SPOS
    from nasx.runner import Run

    cfg = compose(["experiment=quickstart", *TINY], tmp_path)
    space = Run(cfg, SPOS()).space
    arch = space.sample(random.Random(0))
    assert Arch.from_str(str(arch)) == arch
    (tmp_path / "a.json").write_text(arch.to_json())
    by_file = Run(compose(["experiment=quickstart", *TINY, f"arch={tmp_path / 'a.json'}"], tmp_path), SPOS())
    by_string = Run(compose(["experiment=quickstart", *TINY, f"arch='{arch}'"], tmp_path), SPOS())
    assert by_file.fixed_arch == by_string.fixed_arch == arch
    bad = str(arch).replace("b0=", "b9=")
    with pytest.raises(ArchError, match="unknown gene 'b9'"):
        Run(compose(["experiment=quickstart", *TINY, f"arch='{bad}'"], tmp_path), SPOS())

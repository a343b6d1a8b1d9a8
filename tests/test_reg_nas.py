"""REG-NAS [seed; METHODS.md §4]: containment-aware search never leaves the constraint, a budget below the reference's
cost fails in one line, the family's search leaves the reference's logits unchanged (it inherits its weights exactly),
R2 weighs top-1 against NFR, and a family search killed mid-way resumes to the same family."""
from __future__ import annotations

import json
import random
import shutil

import pytest
import torch

from conftest import compose
from nasx.arch import Budget
from nasx.errors import InfeasibleBudgetError
from nasx.rewards import make_reward
from nasx.search import Evolution
from nasx.search.containment import ContainingSpace
from nasx.spaces.ofa import OFAMobileNetV3Space
from test_ofa import CPU

SMALL = [  # the digits at 8x8: a tiny REG-NAS run in seconds
    "experiment=reg_nas_digits", "data=digits", "space.input_size=8", "method.budgets=[0.25,0.35,0.5]",
    "train.epochs=2", "train.phases=[{name:full,epochs:1},{name:expand,epochs:1,kernel:[3,5,7],depth:[2,3,4],"
    "expand:[3,4,6],subnets:2}]", "search.strategy.generations=2", "search.strategy.population=6",
    "search.strategy.top_k=2", "search.strategy.crossover_size=2", "search.bn_batches=2", "method.bootstrap=200",
    "progress=false"]


@pytest.fixture(scope="module")
def space():
    return OFAMobileNetV3Space(**CPU)


@pytest.mark.parametrize("seed", range(4))
def test_cas_sampling_mutation_crossover_and_repair_never_leave_the_containment(space, seed):
    rng = random.Random(seed)
    ref = space.sample(rng)
    cas = ContainingSpace(space, ref)
    budget = Budget(mflops=space.cost(ref).mflops * 1.3)
    pool = [cas.sample(rng) for _ in range(30)]
    for _ in range(300):
        a, b = rng.choice(pool), rng.choice(pool)
        for child in (cas.mutate(a, rng, 0.3), cas.crossover(a, b, rng), cas.sample(rng),
                      cas.repair(space.sample(rng), budget, rng)):
            assert space.contains(child, ref)
        fixed = cas.repair(space.largest(), budget, rng)
        assert space.contains(fixed, ref) and budget.admits(space.cost(fixed))
    # an evolution run on the wrapped space proposes only containing archs
    evo = Evolution(cas, budget, seed=seed, generations=3, population=8, top_k=3, crossover_size=3)
    while not evo.done:
        asked = evo.ask()
        assert all(space.contains(a, ref) for a in asked)
        from nasx.search.strategy import Outcome
        evo.tell([(a, Outcome((-space.cost(a).mflops,))) for a in asked])


def test_a_budget_below_the_references_cost_is_a_one_line_error(space):
    ref = space.from_values(kernel=5, expand=4, depth=3)
    cas = ContainingSpace(space, ref, label="A1 (the family's previous member)")
    with pytest.raises(InfeasibleBudgetError, match="below A1 \\(the family's previous member\\)'s cost") as e:
        Evolution(cas, Budget(mflops=space.cost(ref).mflops * 0.9), seed=0)
    assert "\n" not in str(e.value)


def test_r2_is_top1_minus_lambda_nfr():
    r2 = make_reward({"name": "r2", "lambda1": 1.0, "lambda2": 20.0})
    assert r2({"top1": 0.8, "nfr": 0.01}) == pytest.approx(0.8 - 0.2)
    assert make_reward({"name": "r2", "lambda2": 1.0})({"top1": 0.8, "nfr": 0.05}) == pytest.approx(0.75)


@pytest.mark.slow
def test_family_search_keeps_the_references_logits_and_resumes_after_a_kill(tmp_path, monkeypatch):
    from nasx.evaluation import flips as flips_module
    from nasx.runner import run

    whole = tmp_path / "whole"
    run(compose([*SMALL, "stages=[train,search]"], whole))
    family = json.loads((whole / "search" / "family.json").read_text())
    members = family["members"]
    assert [m["member"] for m in members] == ["A1", "A2", "A3"]
    assert all(m["contains_previous"] for m in members[1:])
    assert [m["mflops"] <= b for m, b in zip(members, family["budgets"])] == [True] * 3
    assert all("nfr" in m["val_metrics"] for m in members[1:])

    # the reference's logits inside the family's supernet are those of A1 extracted on its own
    from nasx.arch import Arch
    from nasx.stages import load_weights
    cfg = compose([*SMALL], whole)
    sp = OFAMobileNetV3Space(**{**CPU, "input_size": 8, "in_channels": 1})
    supernet = load_weights(sp.supernet(), whole / "train" / "last.ckpt", "test").eval()
    a1, a2 = (sp.validate(Arch.from_dict(m["arch"])) for m in members[:2])
    assert sp.contains(a2, a1)
    x = torch.randn(5, 1, 8, 8)
    alone = supernet.extract(a1).eval()
    with torch.no_grad():
        assert torch.allclose(supernet(x, a1), alone(x), atol=1e-5)
    del cfg

    # killed during A2's search, then resumed: the same family
    killed = tmp_path / "killed"
    shutil.copytree(whole / "train", killed / "train")
    original = flips_module.FlipEvaluator.score
    calls = {"n": 0}

    class Killed(Exception):
        pass

    def dying(self, arch, model):
        if self.reference is not None:
            calls["n"] += 1
            if calls["n"] == 4:
                raise Killed
        return original(self, arch, model)

    monkeypatch.setattr(flips_module.FlipEvaluator, "score", dying)
    with pytest.raises(Killed):
        run(compose([*SMALL, "stages=[search]"], killed))
    assert not (killed / "search" / "family.json").exists()
    monkeypatch.setattr(flips_module.FlipEvaluator, "score", original)
    run(compose([*SMALL, "stages=[search,evaluate]"], killed))
    again = json.loads((killed / "search" / "family.json").read_text())
    assert [m["arch"] for m in again["members"]] == [m["arch"] for m in members]
    results = json.loads((killed / "results.json").read_text())
    matrix = results["nfr_matrix"]
    assert matrix[0][0] is None and all(0 <= matrix[i][j] <= 1 for i in range(3) for j in range(i + 1, 3))
    assert (killed / "family.png").exists() and "NFR" in (killed / "report.md").read_text()

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
    "experiment=reg_nas_digits", "data=digits", "~data.scale", "~data.distractors", "~data.texture", "~data.rotation",
    "space.input_size=8", "method.budgets=[0.25,0.35,0.5]",
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


@pytest.mark.parametrize("seed", range(3))
def test_a_cost_floor_keeps_every_candidate_between_floor_and_budget_and_inside_the_containment(space, seed):
    """[nasx] method.cost_floor: sampled, mutated, crossed and repaired candidates cost at least the floor (here
    reachable) and at most the budget; with CAS on top they also contain the reference; an evolution proposes only
    such archs, and the same seed proposes the same ones."""
    from nasx.search.containment import CostFloorSpace

    rng = random.Random(seed)
    ref = space.smallest()
    budget = Budget(mflops=space.cost(space.largest()).mflops * 0.6)
    floor = 0.85 * budget.mflops
    floored = ContainingSpace(CostFloorSpace(space, floor, budget), ref)
    pool = [floored.sample(rng) for _ in range(20)]
    for _ in range(150):
        a, b = rng.choice(pool), rng.choice(pool)
        for child in (floored.mutate(a, rng, 0.3), floored.crossover(a, b, rng), floored.sample(rng),
                      floored.repair(space.largest(), budget, rng)):
            assert space.contains(child, ref)
            if budget.admits(space.cost(child)):  # (out-of-budget children are re-made or repaired by the strategy)
                assert space.cost(child).mflops >= floor, space.describe(child)
    plain = [space.cost(space.sample(random.Random(k))).mflops for k in range(50)]
    assert min(plain) < floor  # without the floor, cheaper archs are drawn

    def proposals(s):
        evo = Evolution(ContainingSpace(CostFloorSpace(space, floor, budget), ref), budget, seed=s, generations=3,
                        population=8, top_k=3, crossover_size=3)
        seen = []
        while not evo.done:
            asked = evo.ask()
            seen += asked
            from nasx.search.strategy import Outcome
            evo.tell([(a, Outcome((space.cost(a).mflops,))) for a in asked])
        return seen

    seen = proposals(seed)
    assert all(floor <= space.cost(a).mflops <= budget.mflops and space.contains(a, ref) for a in seen)
    assert seen == proposals(seed)


@pytest.mark.parametrize("bad", ["1.0", "-0.1", "true"])
def test_a_cost_floor_outside_0_1_is_a_one_line_error(bad, tmp_path):
    from nasx.errors import ConfigError
    from nasx.runner import run

    with pytest.raises(ConfigError, match="method.cost_floor must be a fraction") as e:
        run(compose([*SMALL, f"method.cost_floor={bad}"], tmp_path / "bad"))
    assert "\n" not in str(e.value)


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
    sp = OFAMobileNetV3Space(**{**CPU, "input_size": 8, "in_channels": 1})
    supernet = load_weights(sp.supernet(), whole / "train" / "last.ckpt", "test").eval()
    a1, a2 = (sp.validate(Arch.from_dict(m["arch"])) for m in members[:2])
    assert sp.contains(a2, a1)
    x = torch.randn(5, 1, 8, 8)
    alone = supernet.extract(a1).eval()
    with torch.no_grad():
        assert torch.allclose(supernet(x, a1), alone(x), atol=1e-5)

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


@pytest.mark.slow
@pytest.mark.parametrize("experiment,space", [
    ("reg_nas_ofa_mbv3", ["space.stem_channels=8", "space.first_channels=8", "space.stage_widths=[8,8,12,12,16]",
                          "space.final_expand=32", "space.feature_mix=32", "space.divisor=4",
                          "method.budgets=[0.3,0.4,0.6]"]),
    ("reg_nas_ofa_resnet", ["space.stage_widths=[16,16,32,32]", "space.stem_width=8", "space.divisor=4",
                            "method.budgets=[1.0,1.3,1.6,2.0]"]),
])
def test_paper_experiments_run_end_to_end_on_an_imagenet_fixture(experiment, space, tmp_path):
    """The paper's families on ImageNet folders (the real layout, written by the ImageNet tests' fixture), with the
    networks and schedules shrunk so that the whole pipeline runs in seconds."""
    from test_imagenet import make_imagenet

    from nasx.runner import run

    make_imagenet(tmp_path / "data" / "imagenet")
    overrides = [f"experiment={experiment}", *space, "space.input_size=32", f"paths.data_dir={tmp_path / 'data'}",
                 "data.batch_size=4", "data.eval_batch_size=4", "data.val_fraction=0.25", "data.num_workers=0",
                 "train.epochs=2", "train.phases=[{name:full,epochs:1},{name:last,epochs:1,depth:[" +
                 ("2,3,4" if experiment.endswith("mbv3") else "0,1,2") + "],subnets:2}]",
                 "search.strategy.generations=1", "search.strategy.population=4", "search.strategy.top_k=2",
                 "search.strategy.crossover_size=2", "search.bn_batches=1", "search.bn_batch_size=4",
                 "method.bootstrap=100", "progress=false"]
    results = run(compose(overrides, tmp_path / "run"))
    n = len(results["members"])
    assert n == (3 if experiment.endswith("mbv3") else 4)
    assert [m["member"] for m in results["members"]] == [f"A{i + 1}" for i in range(n)]
    assert results["test_samples"] == 6 and len(results["nfr_matrix"]) == n


@pytest.mark.slow
def test_baselines_train_the_familys_archs_standalone_and_ws_r0_searches_without_containment(tmp_path):
    """Tab. 2's rows as commands: weight sharing with R0 (no containment), and the independent and focal-distillation
    models of a family's archs (A1 the inherited reference, later members trained from scratch; FD from the
    previous member's model)."""
    from nasx.errors import ConfigError
    from nasx.runner import run

    ws = tmp_path / "ws"
    r = run(compose([*SMALL, "method.variant=ws_r0"], ws))
    fam = json.loads((ws / "search" / "family.json").read_text())
    assert fam["variant"] == "ws_r0" and fam["containment"] is False
    assert all(m["reward"] == "1·top1" for m in fam["members"]) and r["variant"] == "ws_r0"
    family, ckpt = ws / "search" / "family.json", ws / "train" / "last.ckpt"
    out = {}
    for models in ("independent", "focal_distillation"):
        d = tmp_path / models
        out[models] = run(compose([*SMALL, f"method.models={models}", f"method.family={family}",
                                   f"supernet.checkpoint={ckpt}", "retrain.epochs=1"], d))
        assert not (d / "train" / "last.ckpt").exists()  # the family's supernet, not a new one
        assert [m["arch"] for m in out[models]["members"]] == [m["arch"] for m in fam["members"]]
        assert not (d / "retrain" / "member_1").exists()  # A1 is the reference, with its inherited weights
        assert all((d / "retrain" / f"member_{i}" / "model.pt").exists() for i in (2, 3))
        saved = torch.load(d / "test_predictions.pt", weights_only=True)
        assert saved["predictions"].shape == (3, out[models]["test_samples"])
    # A1 is the same inherited model in every row
    assert out["independent"]["members"][0]["test_top1"] == out["focal_distillation"]["members"][0]["test_top1"] \
        == r["members"][0]["test_top1"]
    with pytest.raises(ConfigError, match="method.fd: temperature must be"):
        run(compose([*SMALL, "method.models=focal_distillation", f"method.family={family}",
                     f"supernet.checkpoint={ckpt}", "method.fd.temperature=0"], tmp_path / "bad"))
    with pytest.raises(ConfigError, match="give method.family=.* and supernet.checkpoint="):
        run(compose([*SMALL, "method.models=independent"], tmp_path / "bad2"))

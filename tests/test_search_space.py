"""Search-space files: the format, and one clear error (file + key path + fix) per kind of mistake."""
import pytest

from orchestrator.core.errors import ConfigError, SpaceError
from orchestrator.sweep.space import load_space, parse_space, resolve_base, to_param_space

GOOD = """
name: demo
metric: val_miou
mode: max
num_samples: 2
scheduler: {kind: asha, max_t: 4, grace_period: 1, reduction_factor: 2}
fixed:
  train.epochs: 4
  data.split: 16
parameters:
  ood.ratio: {grid: [0, 0.25, 0.5]}
  train.lr: {loguniform: [0.001, 0.1]}
  train.method: {choice: [unimatch, semiovs]}
  train.iters_per_epoch: {randint: [10, 20]}
  train.conf_thresh: {uniform: [0.8, 0.99]}
"""


def write(tmp_path, text, name="space.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_space_parses_with_every_distribution(tmp_path):
    space = load_space(write(tmp_path, GOOD))
    assert space.name == "demo" and space.num_samples == 2
    assert space.scheduler.kind == "asha" and space.scheduler.max_t == 4
    assert space.fixed == {"train.epochs": 4, "data.split": "16"}
    assert space.parameters["ood.ratio"].args == (0.0, 0.25, 0.5)
    assert space.num_trials() == 6
    assert space.swept_keys == ["ood.ratio", "train.lr", "train.method", "train.iters_per_epoch",
                                "train.conf_thresh"]


def test_param_space_maps_to_tune_domains(tmp_path):
    from ray import tune
    from ray.tune.search.sample import Categorical, Float, Integer

    ps = to_param_space(load_space(write(tmp_path, GOOD)))
    assert ps["ood.ratio"] == tune.grid_search([0.0, 0.25, 0.5])
    assert isinstance(ps["train.lr"], Float) and isinstance(ps["train.method"], Categorical)
    assert isinstance(ps["train.iters_per_epoch"], Integer) and ps["train.iters_per_epoch"].upper == 21


def test_name_defaults_to_file_stem(tmp_path):
    assert load_space(write(tmp_path, "parameters: {}\n", "my_sweep.yaml")).name == "my_sweep"


@pytest.mark.parametrize("text, message", [
    ("parameters: {ood.ratoi: {grid: [0, 1]}}",
     r"space.yaml: 'parameters.ood.ratoi.grid': unknown config key 'ood.ratoi'. Fix: did you mean 'ood.ratio'\?"),
    ("parameters: {ood.ratio: {normal: [0, 1]}}",
     r"'parameters.ood.ratio.normal': unknown distribution. Fix: use one of grid, choice, uniform"),
    ("parameters: {ood.ratio: {grid: [0, 2]}}", r"'ood.ratio': 2.0 is out of range"),
    ("parameters: {train.epochs: {uniform: [1, 5]}}",
     r"'parameters.train.epochs.uniform': 'train.epochs' is not a float key. Fix: use randint"),
    ("parameters: {train.lr: {loguniform: [0, 0.1]}}", r"low 0.0 must be > 0 for a log scale"),
    ("parameters: {train.lr: {uniform: [0.1, 0.01]}}", r"low 0.1 is not below high 0.01"),
    ("parameters: {train.method: {choice: [semiovs, fixmatch]}}", r"'fixmatch' is not a valid value"),
    ("fixed: {train.epochs: two}", r"'fixed.train.epochs': config key 'train.epochs' expects int"),
    ("scheduler: hyperband", r"'scheduler': .*hyperband.* is not a scheduler"),
    ("scheduler: {kind: asha, max_tt: 3}", r"'scheduler.max_tt': unknown key for asha"),
    ("num_samples: 0", r"'num_samples': 0 is not a positive integer"),
    ("mode: maximum", r"'mode': 'maximum' is not max or min"),
    ("paramters: {}", r"'paramters': unknown key. Fix: use only name"),
    ("fixed: {ood.ratio: 0.5}\nparameters: {ood.ratio: {grid: [0]}}", r"'fixed.ood.ratio': is both fixed and swept"),
    ("parameters: {ood.ratio: [0, 0.5]}", r"'parameters.ood.ratio': expected exactly one distribution"),
])
def test_bad_space_errors_name_the_key_path_and_the_fix(tmp_path, text, message):
    with pytest.raises(SpaceError, match=message) as info:
        load_space(write(tmp_path, text))
    assert str(tmp_path / "space.yaml") in str(info.value) and "Fix:" in str(info.value)


def test_invalid_yaml_names_line_and_column(tmp_path):
    with pytest.raises(SpaceError, match=r"space.yaml: not valid YAML at line \d+, column \d+"):
        load_space(write(tmp_path, "parameters:\n  ood.ratio: {grid: [0, 0.5\n"))


def test_missing_file_says_how_to_fix(tmp_path):
    with pytest.raises(SpaceError, match=r"does not exist. Fix: pass an existing file"):
        load_space(tmp_path / "nope.yaml")


def test_resolve_base_applies_fixed_then_overrides_and_refuses_swept_keys(tmp_path):
    space = parse_space({"fixed": {"train.epochs": 4}, "parameters": {"ood.ratio": {"grid": [0, 0.5]}}}, "s.yaml")
    base = resolve_base(space, {"train.epochs": 2, "seed": 3})
    assert base["train.epochs"] == 2 and base["seed"] == 3
    with pytest.raises(ConfigError, match=r"'ood.ratio' is swept by s.yaml"):
        resolve_base(space, {"ood.ratio": 0.1})


def test_shipped_spaces_are_valid():
    from pathlib import Path

    files = sorted(Path(__file__).parent.parent.joinpath("search_spaces").glob("*.yaml"))
    assert {"smoke.yaml", "ood_ratio.yaml"} <= {f.name for f in files}
    for f in files:
        load_space(f)


OPTUNA = """
search: optuna
seed: 5
num_samples: 8
scheduler: {kind: asha, max_t: 3, grace_period: 1, reduction_factor: 2}
parameters:
  train.lr: {loguniform: [0.001, 0.3]}
  ood.teacher_thresh: {uniform: [0.0, 0.9]}
  train.method: {choice: [unimatch, semiovs]}
"""


@pytest.mark.parametrize("text, message", [
    ("search: hyperopt", r"'search': 'hyperopt' is not a searcher. Fix: use one of random, optuna"),
    ("search: optuna\nparameters: {ood.ratio: {grid: [0, 0.5]}}",
     r"'parameters.ood.ratio.grid': search: optuna cannot run a grid. Fix: write choice"),
    ("search: optuna", r"'parameters': search: optuna needs at least one swept key"),
])
def test_bad_searcher_errors_name_the_key_and_the_fix(tmp_path, text, message):
    with pytest.raises(SpaceError, match=message):
        load_space(write(tmp_path, text))


def proposals(space, results: list[float]) -> list[dict]:
    """What the space's searcher proposes when trial i ends with results[i] (real Optuna, no Ray cluster)."""
    from orchestrator.sweep.space import make_search_alg

    searcher = make_search_alg(space, max_concurrent=1)
    assert searcher.set_search_properties("val_miou", "max", to_param_space(space))
    out = []
    for i, value in enumerate(results):
        out.append(searcher.suggest(f"t{i}"))
        searcher.on_trial_complete(f"t{i}", {"val_miou": value, "training_iteration": 1})
    return out


def test_optuna_search_is_seeded_and_learns_from_results(tmp_path):
    from orchestrator.sweep.space import tpe_startup_trials

    space = load_space(write(tmp_path, OPTUNA))
    assert space.search == "optuna" and space.num_trials() == 8 and tpe_startup_trials(8) == 2
    first = proposals(space, [float(i) for i in range(8)])
    assert first == proposals(space, [float(i) for i in range(8)])          # same seed, same results: same trials
    assert all(0.001 <= p["train.lr"] <= 0.3 and 0 <= p["ood.teacher_thresh"] <= 0.9 for p in first)
    # after the 2 random start-up trials, other results lead TPE to other proposals
    other = proposals(space, [float(-i) for i in range(8)])
    assert other[:2] == first[:2] and other[2:] != first[2:]
    reseeded = load_space(write(tmp_path, OPTUNA.replace("seed: 5", "seed: 6")))
    assert proposals(reseeded, [0.0])[0] != first[0]


def test_optuna_search_runs_under_asha_in_tune(ray_session, tmp_path):
    """The sweep's own TuneConfig (TPE + ASHA) on real Tune; a quick function stands in for training."""
    from ray import tune

    from orchestrator.core.config import build_config, flatten
    from orchestrator.sweep.driver import _tune_config

    space = load_space(write(tmp_path, OPTUNA.replace("num_samples: 8", "num_samples: 2")))

    def objective(config):
        for epoch in range(1, 4):   # a lower lr scores better; the seeded second draw is worse: ASHA stops it
            tune.report({"epoch": epoch, "val_miou": epoch - 100 * config["train.lr"]})   # ASHA counts epochs

    tuner = tune.Tuner(objective, param_space=to_param_space(space),
                       tune_config=_tune_config(space, flatten(build_config()), 1),
                       run_config=tune.RunConfig(storage_path=str(tmp_path / "runs"), verbose=0))
    grid = tuner.fit()
    iterations = sorted(r.metrics["training_iteration"] for r in grid)
    assert len(grid) == 2 and not grid.errors
    assert iterations[0] < 3 and iterations[-1] == 3, iterations          # ASHA stopped some trials early

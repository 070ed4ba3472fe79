"""Search-space files: parse and validate a sweep definition before anything starts.

Format (YAML):

    name: ood_ratio                # sweep name = MLflow experiment (default: the file's stem)
    metric: val_miou               # default val_miou; also picks each trial's best checkpoint and model
    mode: max                      # max | min
    log_models: all                # MLflow models: every trial's best (all) | none | the k best trials' (topK)
    num_samples: 1                 # repeats of the grid (random draws for non-grid parameters)
    max_concurrent_trials: 1       # optional; default from the cluster's CPUs
    search: random                 # random: every grid value × num_samples random draws | optuna: TPE
    seed: 0                        # seed of the search (random draws, or Optuna's TPE sampler)
    scheduler: {kind: asha, max_t: 6, grace_period: 2, reduction_factor: 2}   # or: fifo
    fixed: {train.epochs: 4}       # dotted config keys -> values
    parameters:                    # dotted config keys -> one distribution
      ood.ratio: {grid: [0, 0.25, 0.5, 0.75]}
      train.lr: {loguniform: [0.001, 0.1]}

Parsing is pure; `to_param_space` and `make_search_alg` are the only places that touch Ray Tune.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestrator.core.config import CONFIG_KEYS, build_config, coerce_value, flatten
from orchestrator.core.names import name_problem, shown
from orchestrator.core.selection import ModelPolicy, Selection
from orchestrator.core.errors import ConfigError, SpaceError

DISCRETE = ("grid", "choice")
CONTINUOUS = ("uniform", "loguniform", "randint")
DISTRIBUTIONS = DISCRETE + CONTINUOUS
TOP_KEYS = ("name", "description", "metric", "mode", "num_samples", "max_concurrent_trials",
            "scheduler", "fixed", "parameters", "seed", "search", "log_models")
# random: Tune's variant generator (every grid value, the other distributions drawn at random);
# optuna: Optuna's TPE proposes each trial from the results so far (num_samples = trials in all)
SEARCHERS = ("random", "optuna")
SCHEDULER_KEYS = {"fifo": ("kind",), "asha": ("kind", "max_t", "grace_period", "reduction_factor")}


@dataclass(frozen=True)
class Distribution:
    kind: str                   # one of DISTRIBUTIONS
    args: tuple                 # grid/choice: the values; uniform/loguniform/randint: (low, high)


@dataclass(frozen=True)
class Scheduler:
    kind: str = "fifo"
    max_t: int | None = None    # asha: max epochs a trial may run (default: train.epochs)
    grace_period: int = 1
    reduction_factor: int = 2


@dataclass(frozen=True)
class SearchSpace:
    name: str
    source: str
    metric: str = "val_miou"
    mode: str = "max"
    num_samples: int = 1
    max_concurrent_trials: int | None = None
    seed: int = 0
    scheduler: Scheduler = field(default_factory=Scheduler)
    search: str = "random"      # one of SEARCHERS
    log_models: ModelPolicy = field(default_factory=ModelPolicy)
    fixed: dict[str, Any] = field(default_factory=dict)
    parameters: dict[str, Distribution] = field(default_factory=dict)

    @property
    def swept_keys(self) -> list[str]:
        return list(self.parameters)

    @property
    def selection(self) -> Selection:
        """Which epoch of a trial, and which trial of the sweep, is best."""
        return Selection(self.metric, self.mode)

    def num_trials(self) -> int:
        if self.search == "optuna":
            return self.num_samples
        grid = 1
        for dist in self.parameters.values():
            if dist.kind == "grid":
                grid *= len(dist.args)
        return grid * self.num_samples


def load_space(path: str | Path) -> SearchSpace:
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"search space file '{path}' does not exist. "
                         f"Fix: pass an existing file, e.g. --space search_spaces/smoke.yaml.")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise SpaceError(f"{path}: not valid YAML{at}: {getattr(err, 'problem', err)}. "
                         f"Fix: correct the YAML syntax there.") from None
    return parse_space(doc, source=str(path), default_name=path.stem)


def parse_space(doc: Any, source: str, default_name: str = "sweep") -> SearchSpace:
    def fail(where: str, problem: str, fix: str):
        raise SpaceError(f"{source}: '{where}': {problem}. Fix: {fix}.")

    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        fail("<top level>", "expected a mapping of keys", "write 'name:', 'parameters:' and so on")
    for key in doc:
        if key not in TOP_KEYS:
            fail(str(key), "unknown key", "use only " + ", ".join(TOP_KEYS))

    name = str(doc.get("name") or default_name)
    problem = name_problem(name)   # the sweep's folder, Tune experiment and MLflow experiment
    if problem:
        fail("name", f"{shown(name)} {problem}", "rename the sweep (letters, digits, spaces, - _ . ')")
    metric = doc.get("metric", "val_miou")
    if not isinstance(metric, str) or not metric:
        fail("metric", f"{metric!r} is not a metric name", "use e.g. val_miou")
    mode = doc.get("mode", "max")
    if mode not in ("max", "min"):
        fail("mode", f"{mode!r} is not max or min", "use max or min")
    num_samples = _positive_int(doc.get("num_samples", 1), "num_samples", fail)
    concurrent = doc.get("max_concurrent_trials")
    if concurrent is not None:
        concurrent = _positive_int(concurrent, "max_concurrent_trials", fail)
    seed = doc.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        fail("seed", f"{seed!r} is not an integer", "use an integer seed")
    try:
        log_models = ModelPolicy.parse(doc.get("log_models", "all"))
    except ValueError:
        fail("log_models", f"{doc.get('log_models')!r} is not a model policy", f"use {ModelPolicy.TEXT}")

    fixed = _parse_fixed(doc.get("fixed") or {}, source, fail)
    parameters = _parse_parameters(doc.get("parameters") or {}, source, fail)
    both = sorted(set(fixed) & set(parameters))
    if both:
        fail(f"fixed.{both[0]}", "is both fixed and swept", "keep it in only one of fixed: or parameters:")
    scheduler = _parse_scheduler(doc.get("scheduler", "fifo"), fail)
    search = _parse_search(doc.get("search", "random"), parameters, fail)

    # Build a config with every discrete value (and both ends of each range), so range and cross-field
    # errors show now rather than in trial 17.
    try:
        for key, dist in parameters.items():
            for value in dist.args:
                build_config({**fixed, key: value}, f"{source}: 'parameters.{key}.{dist.kind}'")
        build_config(fixed, f"{source}: 'fixed'")
    except ConfigError as err:
        raise SpaceError(str(err)) from None
    return SearchSpace(name=name, source=source, metric=metric, mode=mode, num_samples=num_samples,
                       max_concurrent_trials=concurrent, seed=seed, scheduler=scheduler,
                       fixed=fixed, parameters=parameters, search=search, log_models=log_models)


def _positive_int(value: Any, where: str, fail) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        fail(where, f"{value!r} is not a positive integer", "use an integer >= 1")
    return value


def _parse_fixed(fixed: Any, source: str, fail) -> dict[str, Any]:
    if not isinstance(fixed, dict):
        fail("fixed", "expected a mapping of dotted config keys to values", "write e.g. 'train.epochs: 4'")
    out = {}
    for key, value in fixed.items():
        out[str(key)] = _coerce(str(key), value, f"fixed.{key}", source)
    return out


def _parse_parameters(params: Any, source: str, fail) -> dict[str, Distribution]:
    if not isinstance(params, dict):
        fail("parameters", "expected a mapping of dotted config keys to distributions",
             "write e.g. 'ood.ratio: {grid: [0, 0.5]}'")
    out = {}
    for key, spec in params.items():
        where = f"parameters.{key}"
        if not isinstance(spec, dict) or len(spec) != 1:
            fail(where, f"expected exactly one distribution, got {spec!r}",
                 "write one of " + ", ".join(f"{{{d}: ...}}" for d in DISTRIBUTIONS))
        kind, args = next(iter(spec.items()))
        if kind not in DISTRIBUTIONS:
            fail(f"{where}.{kind}", "unknown distribution", "use one of " + ", ".join(DISTRIBUTIONS))
        if not isinstance(args, list) or not args:
            fail(f"{where}.{kind}", f"expected a non-empty list, got {args!r}", f"write {kind}: [...]")
        key = str(key)
        if kind in DISCRETE:
            values = tuple(_coerce(key, v, f"{where}.{kind}", source) for v in args)
            out[key] = Distribution(kind, values)
            continue
        if len(args) != 2:
            fail(f"{where}.{kind}", f"expected [low, high], got {args!r}", f"write {kind}: [low, high]")
        want = CONFIG_KEYS.get(key)
        _coerce(key, args[0], f"{where}.{kind}", source)  # unknown key / wrong type named here
        if kind == "randint" and want is not int:
            fail(f"{where}.{kind}", f"'{key}' is not an integer key", "use uniform or choice for it")
        if kind != "randint" and want is not float:
            fail(f"{where}.{kind}", f"'{key}' is not a float key", "use randint, grid or choice for it")
        low, high = (_coerce(key, v, f"{where}.{kind}", source) for v in args)
        if not low < high:
            fail(f"{where}.{kind}", f"low {low} is not below high {high}", "give [low, high] with low < high")
        if kind == "loguniform" and low <= 0:
            fail(f"{where}.{kind}", f"low {low} must be > 0 for a log scale", "use a positive low bound")
        out[key] = Distribution(kind, (low, high))
    return out


def _coerce(key: str, value: Any, where: str, source: str) -> Any:
    try:
        return coerce_value(key, value, f"{source}: '{where}'")
    except ConfigError as err:
        raise SpaceError(str(err)) from None


def _parse_scheduler(spec: Any, fail) -> Scheduler:
    if isinstance(spec, str):
        spec = {"kind": spec}
    if not isinstance(spec, dict) or spec.get("kind") not in SCHEDULER_KEYS:
        fail("scheduler", f"{spec!r} is not a scheduler", "use fifo or {kind: asha, max_t: ..., ...}")
    allowed = SCHEDULER_KEYS[spec["kind"]]
    for key in spec:
        if key not in allowed:
            fail(f"scheduler.{key}", f"unknown key for {spec['kind']}", "use only " + ", ".join(allowed))
    if spec["kind"] == "fifo":
        return Scheduler()
    knobs = {k: _positive_int(spec[k], f"scheduler.{k}", fail)
             for k in ("max_t", "grace_period", "reduction_factor") if k in spec}
    if knobs.get("reduction_factor", 2) < 2:
        fail("scheduler.reduction_factor", "must be >= 2", "use 2, 3 or 4")
    return Scheduler(kind="asha", **knobs)


def _parse_search(search: Any, parameters: dict[str, Distribution], fail) -> str:
    if search not in SEARCHERS:
        fail("search", f"{search!r} is not a searcher", "use one of " + ", ".join(SEARCHERS))
    if search == "optuna":
        grids = [key for key, dist in parameters.items() if dist.kind == "grid"]
        if grids:   # TPE proposes points; it cannot be told to run every value of a grid
            fail(f"parameters.{grids[0]}.grid", "search: optuna cannot run a grid",
                 "write choice: [...] instead (TPE then picks among the values), or use search: random")
        if not parameters:
            fail("parameters", "search: optuna needs at least one swept key", "add parameters: or use search: random")
    return search


def resolve_base(space: SearchSpace, overrides: dict[str, Any], source: str = "--set") -> dict[str, Any]:
    """The flat config every trial starts from: defaults ← space `fixed:` ← `--set` overrides."""
    for key in overrides:
        if key in space.parameters:
            raise ConfigError(f"{source}: '{key}' is swept by {space.source} (parameters.{key}). "
                              f"Fix: drop it from --set, or remove it from parameters:.")
    return flatten(build_config({**space.fixed, **overrides}, f"{space.source} + {source}"))


def to_param_space(space: SearchSpace) -> dict[str, Any]:
    """Ray Tune param_space holding only the swept keys (the base config travels separately)."""
    from ray import tune

    makers = {
        "grid": lambda a: tune.grid_search(list(a)),
        "choice": lambda a: tune.choice(list(a)),
        "uniform": lambda a: tune.uniform(*a),
        "loguniform": lambda a: tune.loguniform(*a),
        "randint": lambda a: tune.randint(a[0], a[1] + 1),  # YAML bounds are inclusive; Tune's high is not
    }
    return {key: makers[d.kind](d.args) for key, d in space.parameters.items()}


def tpe_startup_trials(num_samples: int) -> int:
    """Random trials before TPE models the results: Optuna's 10 would leave a 16-trial budget nearly
    random, so a quarter of the budget, at least 2 and at most Optuna's 10."""
    return max(2, min(10, num_samples // 4))


def make_search_alg(space: SearchSpace, max_concurrent: int):
    """The Tune searcher of the space, holding at most `max_concurrent` trials at once."""
    if space.search == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        import optuna

        # metric and mode come from the TuneConfig; the seed makes TPE's proposals reproducible
        sampler = optuna.samplers.TPESampler(seed=space.seed, n_startup_trials=tpe_startup_trials(space.num_samples))
        return ConcurrencyLimiter(OptunaSearch(sampler=sampler), max_concurrent=max_concurrent)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # the limit goes on the generator: Tune ignores max_concurrent_trials when it is given a generator instance
    return BasicVariantGenerator(random_state=space.seed, max_concurrent=max_concurrent)


def describe_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)

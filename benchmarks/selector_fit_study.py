"""Why do fitted selectors keep the static profile? The fit of ``training.selector_fit`` varied.

The benchmark's ``dyn-around-*`` rows make a trained static mixed-precision model dynamic around
its profile and fit the selectors to a per-image choice table of training crops; on the
hyperprior they choose the static profile for every crop although the per-image oracle gains on
held-out crops. This study measures the choice table of one such model once (cached under
``--work``) and fits the selectors with other optimisation settings and the scale-aware
selector, to tell an under-fitted selector (it gains on its own training crops with more steps)
from features that do not predict which crops gain (it gains on training crops, not on held-out
ones), and a ridge regression of the RD-cost changes on the selectors' inputs (``ridge``).
``table`` gives, per layer and candidate, the mean and spread over crops of the RD-cost change of
moving that one layer from the base profile. Per variant, on the held-out crops: the mean RD-cost
change of the fitted selectors, of the best single profile and of the per-image oracle at the
selectors' cost, and the share of the oracle's gain over the single profile the selectors reach.

    python benchmarks/selector_fit_study.py [--method dyn-around-mixed-bitops6-image-range-capped]
        --steps 200 [--quality 3] [--seed 0] [--variants default,long,fast,long-fast,scale-long-fast,ridge]
    -> benchmarks/results/selector_fit_study.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional

os.environ.setdefault("OMP_NUM_THREADS", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

import bench_methods  # noqa: E402
import run as bench_run  # noqa: E402
from dynaquant_brevitas.io.checkpoint import load_model  # noqa: E402
from dynaquant_brevitas.io.files import write_json  # noqa: E402
from dynaquant_brevitas.training.selector_fit import (  # noqa: E402
    ChoiceTable, choices_at_price, fit_selectors, score_choices, split_rows)
from dynaquant_brevitas.transform import DECODER, ENCODER, bit_cost, dynaquant_state, unfreeze  # noqa: E402

#: fit_selectors settings per variant; "selector" picks the selector type of the dynamic model
VARIANTS: Dict[str, Dict[str, Any]] = {
    "default": {},
    "long": {"steps": 3000},
    "fast": {"lr": 1e-2},
    "long-fast": {"steps": 3000, "lr": 1e-2, "weight_decay": 0.0},
    "scale-long-fast": {"selector": "scale-aware", "steps": 3000, "lr": 1e-2, "weight_decay": 0.0},
    "ridge": {"ridge": 10.0},  # no selector: predicted RD-cost changes, then the cheapest per crop at a price
}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="dyn-around-mixed-bitops6-image-range-capped",
                   help="a benchmark method with a selector fit (benchmarks/bench_methods.py)")
    p.add_argument("--quality", type=int, default=3, help="reference quality (benchmarks/config.yaml)")
    p.add_argument("--references", help="comma-separated reference checkpoints, as for run.py")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, help="fine-tuning steps of the trained model, as run.py's --steps (the "
                   "committed dyn-around rows: 200)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--fit-steps", type=int,
                   help="Adam steps of every variant's fit (smoke tests; default: the variant's)")
    p.add_argument("--quick", action="store_true", help="smoke test on run.py --quick's settings (runs/bench-quick)")
    p.add_argument("--work", type=Path, help="the benchmark's work folder (default: runs/bench, --quick: "
                   "runs/bench-quick/work)")
    p.add_argument("--output", type=Path, help="default: benchmarks/results/selector_fit_study.json "
                   "(--quick: runs/bench-quick/selector_fit_study.json)")
    args = p.parse_args(argv)
    unknown = sorted(set(args.variants.split(",")) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    quick = bench_run.ROOT / "runs" / "bench-quick"
    args.work = args.work or (quick / "work" if args.quick else bench_run.ROOT / "runs" / "bench")
    args.output = args.output or (quick if args.quick else HERE / "results") / "selector_fit_study.json"
    return args


def study_model(args: argparse.Namespace):
    """``(run, trained static checkpoint, settings)`` of the method at the quality, trained (or
    taken from the benchmark's cache) like ``run.py`` does."""
    bench_args = bench_run.parse_args(["--methods", args.method, "--no-timing"] + (["--quick"] if args.quick else [])
                                      + (["--steps", str(args.steps)] if args.steps else [])
                                      + (["--references", args.references] if args.references else []))
    settings = bench_run.load_settings(bench_args)
    refs = [r for r in bench_run.references(settings, bench_args) if r["quality"] == args.quality]
    if not refs or not refs[0]["available"]:
        raise SystemExit(f"no reference checkpoint of quality {args.quality}")
    run = bench_run.Run(bench_methods.BY_NAME[args.method], refs[0], args.seed, settings, args.work)
    cfg = run.config()
    got = bench_methods.obtain_model(run.trained_as, run.ref, cfg, int(settings["train"]["calibration_batches"]),
                                     settings["ptq"])
    return run, cfg, got["checkpoint"], settings


def cached_table(run, cfg, checkpoint: str, settings: Dict[str, Any], work: Path) -> ChoiceTable:
    """The choice table of the method's dynamic model, measured once per run key."""
    path = work / "selector_fit_study" / f"{run.method.name}-q{run.ref['quality']}-s{run.seed}-{run.key[:8]}.pt"
    if path.exists():
        return ChoiceTable(**torch.load(path, weights_only=False))
    _, table = bench_methods.selector_table(run.method, checkpoint, run.ref, cfg, settings["selector_fit"])
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(asdict(table), path)
    return table


def dynamic_model(run, checkpoint: str, selector: Optional[str] = None):
    """The trained static model made dynamic around its profile, its fresh selectors initialised
    from ``run.seed`` (so that a fit starts alike whether the table was measured or cached)."""
    config = run.method.config if selector is None else dataclasses.replace(run.method.config, selector=selector)
    torch.manual_seed(run.seed)
    return unfreeze(load_model(checkpoint), load_model(run.ref["checkpoint"]), config, widen=True)


def ridge_prediction(model, table: ChoiceTable, train: torch.Tensor, ridge: float) -> Dict[str, Any]:
    """Each crop's RD-cost changes predicted from what its side's selector reads (per-channel mean,
    log spread, log energy grid, standardised) by ridge regression fitted on the ``train`` rows;
    with the share of their variance over crops it explains on the other rows (held-out R^2)."""
    state = dynaquant_state(model)
    predicted = torch.zeros_like(table.delta)
    test = torch.tensor(sorted(set(range(len(table.delta))) - set(train.tolist())))
    r2: Dict[str, float] = {}
    start = 0
    for side in (ENCODER, DECODER):
        if side not in state.selectors:
            continue
        mean, spread, energy = (t.double() for t in table.statistics[side])
        x = torch.cat([mean, torch.log(spread + 1e-4), torch.log(energy + 1e-4)], dim=1)
        x = (x - x[train].mean(0)) / (x[train].std(0) + 1e-8)
        x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
        part = slice(start, start + len(state.layer_names[side]))
        start = part.stop
        y = table.delta[:, part].reshape(len(x), -1)
        gram = x[train].T @ x[train] + ridge * torch.eye(x.shape[1], dtype=x.dtype)
        weights = torch.linalg.solve(gram, x[train].T @ y[train])
        predicted[:, part] = (x @ weights).view_as(table.delta[:, part])
        residual = ((y[test] - x[test] @ weights) ** 2).sum()
        r2[side] = float(1 - residual / ((y[test] - y[train].mean(0)) ** 2).sum())
    return {"predicted": predicted, "held_out_r2": r2}


def regression_variant(model, table: ChoiceTable, budget: float, cost: str, seed: int, ridge: float = 10.0
                       ) -> Dict[str, Any]:
    """Choose per crop from predicted RD-cost changes (:func:`ridge_prediction`) at a bit price found
    by bisection so that the training crops average at most ``budget``; scored like a fit."""
    train, test = split_rows(len(table.delta), 0.25, seed)
    prediction = ridge_prediction(model, table, train, ridge)
    state = dynaquant_state(model)

    def spent(choices: torch.Tensor) -> float:
        onehot = torch.nn.functional.one_hot(choices, len(table.candidates)).double()
        record = {"probs": onehot, "weights": onehot, "candidates": state.config.pairs, "costs": state.costs}
        return float(bit_cost(record, cost).mean())

    low, high = 0.0, 1.0
    while spent(choices_at_price(model, table, prediction["predicted"][train], high, cost)) > budget:
        low, high = high, high * 2
        if high > 1e6:
            raise ValueError(f"no price brings the predicted choices to {budget} bits")
    for _ in range(40):
        mid = (low + high) / 2
        if spent(choices_at_price(model, table, prediction["predicted"][train], mid, cost)) > budget:
            low = mid
        else:
            high = mid
    predicted = prediction["predicted"]
    report = score_choices(model, table, test, choices_at_price(model, table, predicted[test], high, cost), cost)
    train_choices = choices_at_price(model, table, predicted[train], high, cost)
    report.update(base_rd=float(table.reference[test].mean()), budget=budget, cost=cost, price=high,
                  held_out_r2=prediction["held_out_r2"],
                  train=score_choices(model, table, train, train_choices, cost)["dynamic"])
    return report


def table_summary(table: ChoiceTable) -> Dict[str, Any]:
    """The base profile and, per layer and candidate, the mean and spread over all crops of the
    RD-cost change of moving that one layer there."""
    mean, spread = table.delta.mean(0), table.delta.std(0)
    return {
        "base": {name: list(pair) for name, pair in table.base.items()},
        "crops": len(table.delta),
        "delta_rd": {name: {f"{w}/{a}": [round(float(mean[l, k]), 5), round(float(spread[l, k]), 5)]
                            for k, (w, a) in enumerate(table.candidates)}
                     for l, name in enumerate(table.layers)},
    }


def share_of_oracle(report: Dict[str, Any]) -> Optional[float]:
    """The share of the oracle's gain over the single profile that the fitted selectors reach."""
    room = report["static"]["delta_rd"] - report["oracle"]["delta_rd"]
    return (report["static"]["delta_rd"] - report["dynamic"]["delta_rd"]) / room if room > 0 else None


def _earlier_variants(output: Path, run) -> Dict[str, Any]:
    """The variants an earlier run wrote to ``output`` for the same method, quality and seed."""
    if not output.exists():
        return {}
    earlier = json.loads(output.read_text())
    same = (earlier.get("method"), earlier.get("quality"), earlier.get("seed")) == (
        run.method.name, run.ref["quality"], run.seed)
    return earlier.get("variants", {}) if same else {}


def _print(name: str, report: Dict[str, Any]) -> None:
    dynamic = report["dynamic"]
    print(f"{name}: held-out dynamic {dynamic['delta_rd']:+.5f} (diversity {dynamic.get('diversity_encoder', 0):.2f}/"
          f"{dynamic.get('diversity_decoder', 0):.2f}), single {report['static']['delta_rd']:+.5f}, oracle "
          f"{report['oracle']['delta_rd']:+.5f}; training crops {report['train']['delta_rd']:+.5f}", flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    run, cfg, checkpoint, settings = study_model(args)
    table = cached_table(run, cfg, checkpoint, settings, args.work)
    model = dynamic_model(run, checkpoint)
    results: Dict[str, Any] = {}
    for name in args.variants.split(","):
        options = dict(VARIANTS[name])
        if "ridge" in options:
            report = regression_variant(model, table, float(run.method.fit["budget"]), str(run.method.fit["cost"]),
                                        args.seed, options["ridge"])
            results[name] = dict(report, settings=VARIANTS[name], share_of_oracle=share_of_oracle(report))
            _print(name, report)
            continue
        selector = options.pop("selector", None)
        if args.fit_steps:
            options["steps"] = args.fit_steps
        fitted = dynamic_model(run, checkpoint, selector)
        start = time.time()
        report = fit_selectors(fitted, table, float(run.method.fit["budget"]), str(run.method.fit["cost"]),
                               seed=args.seed, **options)
        report.update(settings=VARIANTS[name], seconds=round(time.time() - start, 1),
                      share_of_oracle=share_of_oracle(report))
        results[name] = report
        _print(name, report)
    command = "python benchmarks/selector_fit_study.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results = {**_earlier_variants(args.output, run), **{name: dict(r, command=command) for name, r in results.items()}}
    write_json(args.output, {
        "command": command,
        "method": run.method.name, "quality": run.ref["quality"], "seed": args.seed,
        "reference": bench_run._rel(run.ref["checkpoint"]), "base_rd": next(iter(results.values()))["base_rd"],
        "machine": "the project's 2-core CPU machine, one torch thread",
        "table": table_summary(table),
        "variants": results,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())

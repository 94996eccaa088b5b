"""The ``aggregate`` stage: every dataset's current evaluation reports -> ``reports/results.*``
(Table 4, the ablation tables, where the crop lands, the LR searches) and one MLflow run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from glsim import runs
from glsim.config import Params, for_dataset
from glsim.errors import RunError
from glsim.eval.ledger import build_ledger, ledger_table, render_ledger
from glsim.eval.report import ablation_table, crop_zooms, localisation_table, lr_table
from glsim.eval.tables import aggregate, load_reports, render_table
from glsim.protocol.specs import final_spec, variant_params, variant_spec
from glsim.runs import RunSpec
from glsim.utils import atomic_write_json, atomic_write_text


def current_report(params: Params, spec: RunSpec) -> dict[str, Any]:
    """The evaluation report of ``spec``, refused (:class:`RunError`, one line) unless it
    was computed for the run's current key: a report of an earlier configuration (other
    data, backbone, code or params) is never averaged with today's."""
    path = spec.report_path(params)
    (report,) = load_reports([path])
    key = runs.run_key(params, spec)
    if report.get("run_key") != key:
        raise RunError(
            f"{path}: computed for run key {report.get('run_key')}, but the run's current key "
            f"is {key} (its data, backbone, code or params changed since); re-run its train "
            "and evaluate stages (dvc repro)"
        )
    return report


def aggregate_reports(params: Params, *, track: bool = True) -> list[Path]:
    """Write ``results.json``, ``results.md`` and ``results.tex`` under ``reports/``, the
    table's rows for ``dvc plots`` (``reports/plots/results.json``) and the reproduction
    ledger (``reports/ledger.{json,md}``, :mod:`glsim.eval.ledger`; also logged to MLflow
    as a table).

    ``results.json``: ``{dataset: {model: {top1_mean, top1_std, seeds, lr}}}`` for the main
    models (Table 4); ablation variants are under ``{dataset: {"ablations": {variant: ...}}}``.
    The plot's rows: ``{run: "<dataset>/<model>", dataset, model, top1_mean, top1_std}``.
    """
    models, seeds = list(params.protocol.models), list(params.protocol.seeds)
    main, variant_reports, ablation, lr_reports = [], [], {}, []
    main_stages, variant_stages = [], []  # the DVC stage that wrote each report (the ledger's)
    for dataset in params.data.datasets:
        p = for_dataset(params, dataset)  # its own protocol.seeds
        finals = [final_spec(p, m, s) for m in models for s in p.protocol.seeds]
        main += [current_report(p, spec) for spec in finals]
        main_stages += [runs.report_stage(dataset, spec) for spec in finals]
        specs = [
            (v, variant_spec(p, v, s)) for v in params.ablations.variants for s in p.protocol.seeds
        ]
        variants = [current_report(variant_params(p, v), spec) for v, spec in specs]
        variant_stages += [runs.report_stage(dataset, spec) for _, spec in specs]
        variant_reports += variants
        ablation[dataset] = aggregate(variants).get(dataset, {}) if variants else {}
        lr_reports += [
            json.loads(runs.lr_report(p, m).read_text())
            for m in models
            if runs.lr_report(p, m).is_file()
        ]
    table4 = aggregate(main)  # the main models only (Table 4)
    results: dict[str, Any] = {d: dict(per_model) for d, per_model in table4.items()}
    for dataset, entries in ablation.items():
        if entries:
            results.setdefault(dataset, {})["ablations"] = entries

    md = [
        f"# Results: top-1 (%) mean ± std over seeds {seeds}",
        "",
        render_table(table4, models),
        "Bold: best; underlined: second best. Std: sample std over seeds.",
        "",
    ]
    cropping = [m for m in models if m == "glsim"] + [
        v for v, variant in params.ablations.variants.items() if variant.model == "glsim"
    ]  # the runs whose localisation is their own crop
    zooms = crop_zooms(main + variant_reports, params.data.datasets, cropping)
    for dataset in params.data.datasets:
        cells = {**table4.get(dataset, {}), **ablation.get(dataset, {})}
        for spec in params.ablations.tables.values():
            md += [ablation_table(spec, cells, dataset, zooms[dataset])]
    loc = localisation_table(main + variant_reports)
    if loc:
        md += ["## Where the crop lands (test split; GLS boxes for models without a crop)", "", loc]
    lrs = lr_table(lr_reports)
    if lrs:
        md += ["## LR search (val split)", "", lrs]
    ledger = build_ledger(
        main + variant_reports, main_stages + variant_stages,
        pretrain=_pretrain_record(params), pretrain_stage=runs.PRETRAIN_STAGE,
    )  # fmt: skip
    out, ledger_out = runs.results_paths(params), runs.ledger_paths(params)
    bars = [
        {"run": f"{dataset}/{model}", "dataset": dataset, "model": model,
         "top1_mean": entry["top1_mean"], "top1_std": entry["top1_std"]}
        for dataset, per_model in table4.items()
        for model, entry in per_model.items()
    ]  # fmt: skip
    paths = [
        atomic_write_json(out["json"], results),
        atomic_write_text(out["md"], "\n".join(md)),
        atomic_write_text(out["tex"], render_table(table4, models, fmt="latex")),
        atomic_write_json(out["plot"], bars),
        atomic_write_json(ledger_out["json"], ledger),
        atomic_write_text(ledger_out["md"], render_ledger(ledger)),
    ]
    if track:
        from glsim.tracking.mlflow import CONTENT_TAG, Tracker, content_digest, logged_before

        logged = {"datasets": list(params.data.datasets), "models": models, "seeds": seeds}
        tags = {"stage": "aggregate", CONTENT_TAG: content_digest(*paths, extra=logged)}
        if logged_before(params.base.experiment, tags):  # the same tables logged already
            return paths
        with Tracker(experiment=params.base.experiment, run_name="aggregate", tags=tags) as tracker:
            tracker.log_params(logged)
            for dataset, per_model in table4.items():
                for model, entry in per_model.items():
                    tracker.log_metrics(
                        {
                            f"{dataset}/{model}/top1_mean": entry["top1_mean"],
                            f"{dataset}/{model}/top1_std": entry["top1_std"],
                        }
                    )
            for p in paths:
                tracker.log_artifact(p, artifact_path="tables")
            tracker.log_table(ledger_table(ledger), artifact_file="tables/ledger_table.json")
    return paths


def _pretrain_record(params: Params) -> dict[str, Any] | None:
    """The pretraining report when this pipeline pretrained the backbone the runs start
    from (``pretrain.stages``), else None (a weights file from elsewhere)."""
    path = runs.pretrain_report(params)
    if not params.pretrain.stages or not path.is_file():
        return None
    return json.loads(path.read_text())

"""The dataset validation suite (great-expectations 1.x) over a manifest and its shards.

One table is built per dataset, a row per manifest row, joined with the shards'
``samples.csv`` (key, shard, sha256) and with what PIL made of each image read back
from the shards (width, height, decode error). Three great-expectations suites run on it
in an ephemeral context, through one pandas dataframe asset:

- ``dataset`` (all rows): labels in ``[0, num_classes)``; the expected class count; every
  manifest row is in the shards (same path, split and label); every image decodes; every
  image's shorter side is at least ``min_side``.
- ``train`` (train rows): the expected size; every class present.
- ``test`` (test rows): the expected size; no image whose content (sha256) is in train.

Decoding streams each shard with :func:`glsim.data.loader.open_shards` (one image in
memory at a time per process) and runs one process per shard group when ``workers > 1``.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image
from webdataset.tariterators import group_by_keys

from glsim.config import ExpectedCounts
from glsim.data.loader import image_member, image_problem, open_shards, source_file
from glsim.data.manifest import read_manifest
from glsim.data.shards import ShardError, read_index, read_samples
from glsim.progress import progress
from glsim.utils import atomic_write_text

MAX_ROWS_IN_MESSAGE = 10


class ValidationFailed(RuntimeError):
    """The dataset failed its suite; ``report`` has every failed expectation and row."""

    def __init__(self, report: ValidationReport):
        self.report = report
        super().__init__(report.summary())


@dataclass
class ExpectationOutcome:
    """One expectation's result: what was checked, whether it held, and the rows that broke it."""

    suite: str
    expectation: str
    description: str
    success: bool
    observed: Any = None
    unexpected_count: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ValidationReport:
    """The outcome of :func:`validate_dataset`."""

    success: bool
    manifest: str
    shards_dir: str
    results: list[ExpectationOutcome]

    @property
    def failed(self) -> list[ExpectationOutcome]:
        return [r for r in self.results if not r.success]

    @property
    def offending_rows(self) -> list[dict[str, Any]]:
        """Every offending row of every failed expectation: path, label, split, problem."""
        return [row for r in self.failed for row in r.rows]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str) + "\n"

    def write(self, path: str | Path) -> Path:
        return atomic_write_text(path, self.to_json())

    def summary(self, limit: int = MAX_ROWS_IN_MESSAGE) -> str:
        if self.success:
            return f"{self.manifest}: all {len(self.results)} expectations passed"
        lines = [
            f"{self.manifest} (shards {self.shards_dir}) failed {len(self.failed)} expectation(s):"
        ]
        for r in self.failed:
            lines.append(
                f"  - [{r.suite}] {r.description} ({r.expectation}): observed {r.observed}"
            )
        rows = self.offending_rows
        if rows:
            lines.append(f"offending rows ({len(rows)}, first {min(limit, len(rows))}):")
            lines += [f"  - {row}" for row in rows[:limit]]
        lines.append(
            "Fix the dataset (or data.expected in params.yaml), re-run prepare and shards."
        )
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# decoding


def _decode_shard(url: str, entry: dict[str, Any]) -> list[tuple[str, float, float, str | None]]:
    """(key, width, height, error) for each sample of one shard, one image in memory at a time."""
    out = []
    try:
        for sample in group_by_keys(open_shards([{"url": url}], {url: entry})):
            try:
                with Image.open(io.BytesIO(image_member(sample))) as image:
                    image.load()
                    out.append((sample["__key__"], float(image.width), float(image.height), None))
            except Exception as err:
                problem = f"does not decode: {image_problem(err)}"
                out.append((sample["__key__"], float("nan"), float("nan"), problem))
    except ShardError as err:
        out.append(("", float("nan"), float("nan"), str(err)))  # the caller marks the shard's rows
    return out


def _decode_all(shards_dir: Path, index: dict[str, Any], workers: int) -> pd.DataFrame:
    entries = [
        (str(shards_dir / s["name"]), s)
        for split in index["splits"].values()
        for s in split["shards"]
    ]
    urls, shard_entries = [u for u, _ in entries], [e for _, e in entries]
    if workers > 1 and len(entries) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(entries))) as pool:
            decoded = pool.map(_decode_shard, urls, shard_entries, chunksize=4)
            per_shard = list(progress(decoded, total=len(entries), desc="validate", unit="shard"))
    else:
        per_shard = [
            _decode_shard(u, e) for u, e in progress(entries, desc="validate", unit="shard")
        ]
    rows, broken = [], {}
    for url, results in zip(urls, per_shard, strict=True):
        for key, width, height, error in results:
            if key == "":
                broken[Path(url).name] = error
            else:
                rows.append((Path(url).name, key, width, height, error))
    decoded = pd.DataFrame(rows, columns=["shard", "key", "width", "height", "decode_error"])
    decoded.attrs["broken_shards"] = broken
    return decoded


def build_table(
    manifest_path: str | Path, shards_dir: str | Path, *, workers: int = 1
) -> pd.DataFrame:
    """Manifest rows joined with the shards' per-sample table and the decode results."""
    shards_dir = Path(shards_dir)
    manifest = read_manifest(manifest_path)
    index = read_index(shards_dir)
    samples = read_samples(shards_dir)
    decoded = _decode_all(shards_dir, index, workers)
    table = manifest.merge(
        samples[["path", "split", "label", "key", "shard", "sha256"]],
        on=["path", "split", "label"],
        how="left",
    ).merge(decoded, on=["shard", "key"], how="left")
    for shard, error in decoded.attrs["broken_shards"].items():
        table.loc[table["shard"] == shard, "decode_error"] = error
    in_shards = table["sha256"].notna()
    missing = in_shards & table["width"].isna() & table["decode_error"].isna()
    table.loc[missing, "decode_error"] = "in samples.csv but not found in its shard"
    table["min_side"] = table[["width", "height"]].min(axis=1, skipna=False)
    table["decode_error"] = (
        table["decode_error"].astype(object).where(table["decode_error"].notna(), None)
    )
    # the image file as the user knows it (/data/birds/x.jpg), for the offending rows
    table["file"] = [source_file(p, Path(manifest_path).parent) for p in table["path"]]
    return table


# ---------------------------------------------------------------------------------------
# the suites


def _quiet_great_expectations():
    """An ephemeral context without progress bars or INFO chatter."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return context


def _suites(
    table: pd.DataFrame, expected: ExpectedCounts, min_side: int
) -> dict[str, list[tuple[Any, str]]]:
    import great_expectations.expectations as gxe

    num_classes = expected.num_classes or int(table["label"].nunique())
    train_hashes = sorted(set(table.loc[table["split"] == "train", "sha256"].dropna()))
    dataset = [
        (
            gxe.ExpectColumnValuesToBeBetween(
                column="label", min_value=0, max_value=num_classes - 1
            ),
            f"labels in [0, {num_classes})",
        ),
        (gxe.ExpectColumnValuesToNotBeNull(column="sha256"), "every manifest row is in the shards"),
        (gxe.ExpectColumnValuesToBeNull(column="decode_error"), "every image decodes"),
        (
            gxe.ExpectColumnValuesToBeBetween(column="min_side", min_value=min_side),
            f"every image's shorter side >= {min_side} px",
        ),
    ]
    if expected.num_classes is not None:
        dataset.insert(
            0,
            (
                gxe.ExpectColumnUniqueValueCountToBeBetween(
                    column="label", min_value=expected.num_classes, max_value=expected.num_classes
                ),
                f"{expected.num_classes} classes",
            ),
        )
    train = [
        (
            gxe.ExpectColumnDistinctValuesToContainSet(
                column="label", value_set=list(range(num_classes))
            ),
            "every class present in train",
        )
    ]
    test = [
        (
            gxe.ExpectColumnValuesToNotBeInSet(column="sha256", value_set=train_hashes),
            "no test image in train",
        )
    ]
    for split, checks in (("train", train), ("test", test)):
        count = getattr(expected, split)
        if count is not None:
            checks.insert(
                0, (gxe.ExpectTableRowCountToEqual(value=count), f"{count} {split} images")
            )
    return {"dataset": dataset, "train": train, "test": test}


def _row(table: pd.DataFrame, i: Any, problem: str) -> dict[str, Any]:
    r = table.loc[i]
    return {"path": r["file"], "label": int(r["label"]), "split": r["split"], "problem": problem}


def _offending_rows(
    table: pd.DataFrame,
    result: Any,
    description: str,
    train_by_hash: dict[str, str],
    class_name: dict[int, str],
) -> list[dict[str, Any]]:
    config = result.expectation_config
    kind = config.type
    info = result.result or {}
    if kind == "expect_column_distinct_values_to_contain_set":
        missing = sorted(set(config.kwargs["value_set"]) - set(table["label"]))
        return [
            {
                "path": None,
                "label": v,
                "split": "train",
                "problem": f"class {v} ({class_name.get(v, 'no name')}) has no train image",
            }
            for v in missing
        ]
    rows = []
    column = config.kwargs.get("column")
    for i in info.get("unexpected_index_list") or []:
        value = table.loc[i, column] if column else None
        if kind == "expect_column_values_to_not_be_in_set":
            problem = f"same image content (sha256 {value[:12]}) as train image {train_by_hash.get(value)}"
        elif kind == "expect_column_values_to_not_be_null":
            problem = "not in the shards (same path, split and label): re-run the shards stage"
        elif kind == "expect_column_values_to_be_null":
            problem = str(value)
        elif column == "min_side":
            row, min_side = table.loc[i], int(config.kwargs["min_value"])
            problem = (
                f"image is {int(row['width'])}x{int(row['height'])}, shorter side < {min_side} px"
            )
        else:
            problem = f"{column}={value!r} breaks: {description}"
        rows.append(_row(table, i, problem))
    return rows


def run_suites(
    table: pd.DataFrame, expected: ExpectedCounts, *, min_side: int
) -> list[ExpectationOutcome]:
    """Run the three suites on ``table`` (see :func:`build_table`); one outcome per expectation."""
    import great_expectations as gx

    context = _quiet_great_expectations()
    asset = context.data_sources.add_pandas("glsim").add_dataframe_asset("dataset")
    batch = asset.add_batch_definition_whole_dataframe("whole")
    train = table[table["split"] == "train"]
    train_by_hash = dict(zip(train["sha256"], train["file"], strict=True))
    class_name = {int(k): v for k, v in zip(table["label"], table["class_name"], strict=True)}
    frames = {
        "dataset": table,
        "train": table[table["split"] == "train"],
        "test": table[table["split"] == "test"],
    }
    outcomes = []
    for name, checks in _suites(table, expected, min_side).items():
        suite = context.suites.add(gx.ExpectationSuite(name=name))
        descriptions = {}
        for expectation, description in checks:
            added = suite.add_expectation(expectation)
            descriptions[added.id] = description
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch, suite=suite)
        )
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # GE's own deprecation chatter; failures are in the result
            result = definition.run(
                batch_parameters={"dataframe": frames[name]},
                result_format={"result_format": "COMPLETE", "return_unexpected_index_query": False},
            )
        for r in result.results:
            if r.exception_info and r.exception_info.get("raised_exception"):
                raise RuntimeError(
                    f"great-expectations could not evaluate {r.expectation_config.type} in suite {name}: "
                    f"{r.exception_info.get('exception_message')}"
                )
            description = descriptions[r.expectation_config.id]
            info = r.result or {}
            rows = (
                []
                if r.success
                else _offending_rows(frames[name], r, description, train_by_hash, class_name)
            )
            outcomes.append(
                ExpectationOutcome(
                    suite=name,
                    expectation=r.expectation_config.type,
                    description=description,
                    success=bool(r.success),
                    observed=_plain(
                        info.get("observed_value", f"{info.get('unexpected_count', 0)} unexpected")
                    ),
                    unexpected_count=int(info.get("unexpected_count") or len(rows)),
                    rows=rows,
                )
            )
    return outcomes


def _plain(value: Any) -> Any:
    """JSON-friendly: numpy scalars and long lists trimmed."""
    if isinstance(value, list):
        return [_plain(v) for v in value[:50]]
    return value.item() if hasattr(value, "item") else value


def validate_dataset(
    manifest_path: str | Path,
    shards_dir: str | Path,
    expected: ExpectedCounts,
    *,
    min_side: int,
    workers: int = 1,
    report_path: str | Path | None = None,
    raise_on_failure: bool = True,
) -> ValidationReport:
    """Validate a prepared dataset and its shards (see the module docstring).

    Args:
        manifest_path: ``manifest.csv``.
        shards_dir: Folder written by :func:`glsim.data.shards.write_shards`.
        expected: Class count and split sizes (None: not checked).
        min_side: Minimum shorter image side in pixels (``data.min_image_side``).
        workers: Processes decoding shards (1: in this process).
        report_path: Also write the report as JSON here (before raising).
        raise_on_failure: Raise :class:`ValidationFailed` when any expectation fails.

    Returns:
        The report; ``report.success`` is True when every expectation held.
    """
    table = build_table(manifest_path, shards_dir, workers=workers)
    results = run_suites(table, expected, min_side=min_side)
    report = ValidationReport(
        success=all(r.success for r in results),
        manifest=str(manifest_path),
        shards_dir=str(shards_dir),
        results=results,
    )
    if report_path is not None:
        report.write(report_path)
    if raise_on_failure and not report.success:
        raise ValidationFailed(report)
    return report

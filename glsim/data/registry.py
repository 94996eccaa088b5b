"""``@register_dataset`` / ``get_dataset`` / ``prepare_dataset``: one entry per dataset.

An entry (:class:`DatasetSpec`) knows its files (:class:`RemoteFile`: URL, checksum, whether
it is an archive, whether its licence needs a manual download), how to parse the extracted
official layout into the manifest (``parse``), or, for a generated dataset, how to build it
(``generate``). :func:`prepare_dataset` runs download -> verify -> extract -> parse and writes
``ROOT/NAME/manifest.csv``. Folder layout per dataset::

    ROOT/NAME/downloads/FILE            verified downloads (+ FILE.verified.json stamps)
    ROOT/NAME/extracted/...             archive contents
    ROOT/NAME/manifest.csv              path (relative to ROOT/NAME), label, split, class_name

Mirrors: a YAML file (env ``GLSIM_REGISTRY_OVERRIDES`` or params ``data.registry_overrides``)
replaces any file's source and checksum::

    cub:
      CUB_200_2011.tgz: {url: https://mirror/CUB_200_2011.tgz, sha256: ...}

Giving ``sha256`` or ``md5`` replaces the entry's checksums; giving only ``url`` keeps them
(a mirror of the same file). A URL for a manual-download file makes it downloadable.
"""

from __future__ import annotations

import difflib
import importlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import yaml

from glsim.config import ExpectedCounts
from glsim.data.download import Checksums, download_file, verify_file
from glsim.data.extract import extract_archive, is_archive, is_extracted
from glsim.data.manifest import read_manifest, write_manifest
from glsim.utils import atomic_write_json

if TYPE_CHECKING:
    from glsim.config import Params

OVERRIDES_ENV = "GLSIM_REGISTRY_OVERRIDES"
MANIFEST = "manifest.csv"
SOURCE_STAMP = "source.json"
_OVERRIDE_KEYS = {"url", "sha256", "md5", "size"}


class DatasetError(RuntimeError):
    """A dataset cannot be prepared; the message says what is missing and what to do."""


class UnknownDataset(DatasetError, KeyError):
    """No registered dataset has this name (also a ``KeyError``, as a registry lookup)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ManualDownloadRequired(DatasetError):
    """A file must be fetched by hand (licence); the message says what and where to put it."""


@dataclass(frozen=True)
class RemoteFile:
    """One published file of a dataset.

    Attributes:
        name: file name as published (the key used in overrides).
        url: where to fetch it; None when only a manual download is possible.
        md5 / sha256: published checksums (None when the publisher gives none).
        size: size in bytes, if published.
        extract: unpack into ``extracted/`` (archives); else used from ``downloads/``.
        manual: the licence requires the user to fetch it (see ``DatasetSpec.manual_steps``).
    """

    name: str
    url: str | None = None
    md5: str | None = None
    sha256: str | None = None
    size: int | None = None
    extract: bool = True
    manual: bool = False

    @property
    def checksums(self) -> Checksums:
        return Checksums(sha256=self.sha256, md5=self.md5, size=self.size)


Parser = Callable[[Path], pd.DataFrame]
Generator = Callable[[Path, "Params"], "pd.DataFrame | None"]


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset.

    Attributes:
        name: registry key (``glsim data prepare NAME``; params ``data.dataset``).
        description: one line for ``glsim data list``.
        files: what to download/place, in order.
        parse: ``parse(dataset_dir) -> manifest DataFrame`` (paths relative to dataset_dir).
        generate: for generated datasets: ``generate(dataset_dir, params)`` writes the images
            and returns the manifest DataFrame (or writes ``manifest.csv`` and returns None).
        expected: counts the validation suite checks (Table 9, with release differences).
        large: over 50,000 train images (LR search uses a 20/80 train/val split).
        manual: the licence requires a manual download.
        manual_steps: what to download, from where (printed with the target folder).
        homepage: the publisher's page.
        notes: release differences and split choices, for the docs and ``data list``.
        parametric: takes a source after a colon (``imagefolder:PATH``).
    """

    name: str
    description: str = ""
    files: tuple[RemoteFile, ...] = ()
    parse: Parser | None = None
    generate: Generator | None = None
    expected: ExpectedCounts = field(default_factory=ExpectedCounts)
    large: bool = False
    manual: bool = False
    manual_steps: str = ""
    homepage: str = ""
    notes: str = ""
    parametric: bool = False
    expected_for: Callable[[Any], ExpectedCounts] | None = None  # generated sets: from params

    def expected_counts(self, params: Any = None) -> ExpectedCounts:
        """Counts to validate against: the entry's, or derived from params for generated sets."""
        if self.expected_for is not None and params is not None:
            return self.expected_for(params)
        return self.expected

    def file(self, name: str) -> RemoteFile:
        for f in self.files:
            if f.name == name:
                return f
        valid = ", ".join(f.name for f in self.files) or "(none)"
        raise KeyError(f"dataset {self.name!r} has no file {name!r} (files: {valid})")


_DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(
    name: str, *, generated: bool = False, **spec: Any
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated function as a dataset's parser (or generator).

    Usage (as timm's ``@register_model``)::

        @register_dataset("cub", files=(RemoteFile(...),), expected=ExpectedCounts(...))
        def parse_cub(dataset_dir: Path) -> pd.DataFrame: ...

        @register_dataset("synthetic_fg", generated=True)
        def build(dataset_dir: Path, params: Params) -> pd.DataFrame: ...

    Args:
        name: registry key.
        generated: the function is a generator ``(dataset_dir, params)`` rather than a parser.
        **spec: the other :class:`DatasetSpec` fields.
    """

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _DATASETS:
            raise ValueError(f"dataset {name!r} is registered twice")
        key = "generate" if generated else "parse"
        _DATASETS[name] = DatasetSpec(name=name, **{key: fn}, **spec)
        return fn

    return wrap


def _ensure_loaded() -> None:
    """Import the modules that register datasets (built-in families, the generated one)."""
    importlib.import_module("glsim.data.datasets")
    try:
        importlib.import_module("glsim.data.synthetic")
    except ModuleNotFoundError as err:
        if err.name != "glsim.data.synthetic":
            raise


def list_datasets() -> list[str]:
    _ensure_loaded()
    return sorted(_DATASETS)


def registered_specs() -> list[DatasetSpec]:
    """Every registered entry as registered (parametric ones unbound), sorted by name."""
    _ensure_loaded()
    return [_DATASETS[name] for name in sorted(_DATASETS)]


def get_dataset(name: str) -> DatasetSpec:
    """The spec for ``name``; ``family:SOURCE`` binds a parametric entry to its source.

    Raises:
        UnknownDataset: unknown name or a missing/extra source (the message suggests the fix).
    """
    _ensure_loaded()
    family, _, source = name.partition(":")
    spec = _DATASETS.get(family)
    if spec is None:
        close = difflib.get_close_matches(family, list(_DATASETS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownDataset(
            f"unknown dataset {family!r}{hint} (registered: {', '.join(sorted(_DATASETS))}; "
            "your own data: source imagefolder:PATH or csv:FILE)"
        )
    if spec.parametric:
        if not source:
            raise UnknownDataset(
                f"dataset {family!r} needs a source: use '{family}:PATH' (e.g. "
                f"'{family}:/data/my_birds'{' or a CSV file' if family == 'csv' else ''})"
            )
        assert spec.parse is not None
        return replace(spec, name=name, parse=partial(spec.parse, source=Path(source)))
    if source:
        raise UnknownDataset(f"dataset {family!r} takes no ':SOURCE' suffix (got {name!r})")
    return spec


def canonical_source(source: str) -> str:
    """``family:PATH`` with PATH made absolute (two spellings of one source compare equal)."""
    family, sep, rest = source.partition(":")
    if not sep:
        return source
    return f"{family}:{Path(rest).expanduser().resolve()}"


def default_name(source: str) -> str:
    """A plain folder name for a source: the name itself, or for ``family:PATH``
    ``family-<stem>-<hash of the absolute path>``, so two sources never share a folder."""
    family, sep, rest = source.partition(":")
    if not sep:
        return source
    import hashlib

    canonical = canonical_source(source)
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(rest).stem).strip("_") or "source"
    return f"{family}-{stem}-{hashlib.sha256(canonical.encode()).hexdigest()[:8]}"


def dataset_dir(name: str, root: str | Path) -> Path:
    """``ROOT/NAME``: every dataset's folder is its plain name (see :func:`default_name`)."""
    if ":" in name or "/" in name or name in ("", ".", ".."):
        raise DatasetError(
            f"{name!r} is a source, not a dataset name; name it (e.g. "
            f"data.datasets: {{mydata: {{source: '{name}'}}}}, or --name on the command line)"
        )
    return Path(root) / name


def manifest_path(name: str, root: str | Path) -> Path:
    return dataset_dir(name, root) / MANIFEST


# ---------------------------------------------------------------------------------------
# overrides


def load_overrides(path: str | Path) -> dict[str, dict[str, dict[str, Any]]]:
    """Read and check an overrides YAML ``{dataset: {file: {url, sha256, md5, size}}}``."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(
            f"registry overrides file not found: {path} (from {OVERRIDES_ENV} or data.registry_overrides)"
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise DatasetError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: must map dataset names to files, got {type(data).__name__}")
    for ds, files in data.items():
        if not isinstance(files, dict):
            raise DatasetError(f"{path}: '{ds}' must map file names to {{url, sha256, md5, size}}")
        for fname, entry in files.items():
            if not isinstance(entry, dict):
                raise DatasetError(
                    f"{path}: '{ds}.{fname}' must be a mapping with url/sha256/md5/size"
                )
            unknown = set(entry) - _OVERRIDE_KEYS
            if unknown:
                raise DatasetError(
                    f"{path}: '{ds}.{fname}' has unknown key(s) {sorted(unknown)}; valid: {sorted(_OVERRIDE_KEYS)}"
                )
    return data


def resolve_overrides(
    overrides: str | Path | dict | None = None, params: Params | None = None
) -> dict[str, dict[str, dict[str, Any]]]:
    """Explicit argument, else env ``GLSIM_REGISTRY_OVERRIDES``, else ``data.registry_overrides``."""
    if isinstance(overrides, dict):
        return overrides
    if overrides is None:
        overrides = os.environ.get(OVERRIDES_ENV) or (
            params.data.registry_overrides if params is not None else None
        )
    return load_overrides(overrides) if overrides else {}


def apply_overrides(
    spec: DatasetSpec, overrides: dict[str, dict[str, dict[str, Any]]]
) -> DatasetSpec:
    """The spec with its files' url/checksums replaced; unknown file names are an error."""
    entries = overrides.get(spec.name) or overrides.get(spec.name.partition(":")[0]) or {}
    if not entries:
        return spec
    files = {f.name: f for f in spec.files}
    for fname, entry in entries.items():
        if fname not in files:
            close = difflib.get_close_matches(fname, list(files), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise DatasetError(
                f"registry overrides: dataset {spec.name!r} has no file {fname!r}{hint} "
                f"(files: {', '.join(files) or '(none)'})"
            )
        new = dict(url=entry.get("url", files[fname].url))
        if "sha256" in entry or "md5" in entry:
            new.update(sha256=entry.get("sha256"), md5=entry.get("md5"))
        if "size" in entry:
            new["size"] = entry["size"]
        files[fname] = replace(files[fname], **new)
    return replace(spec, files=tuple(files.values()))


# ---------------------------------------------------------------------------------------
# status and prepare


def dataset_status(spec: DatasetSpec, root: str | Path) -> str:
    """``prepared`` (manifest present), ``downloaded`` (all files present), ``partial`` or ``missing``.

    Cheap (no hashing): ``prepare`` verifies the files.
    """
    ddir = dataset_dir(spec.name, root)
    if (ddir / MANIFEST).is_file():
        return "prepared"
    if not spec.files:
        return "missing"
    downloads = ddir / "downloads"
    have = [(downloads / f.name).is_file() for f in spec.files]
    if all(have):
        return "downloaded"
    return "partial" if any(have) or any(downloads.glob("*.part")) else "missing"


def _manual_message(spec: DatasetSpec, missing: list[RemoteFile], downloads: Path) -> str:
    lines = [
        f"Dataset {spec.name!r} must be downloaded by hand (its licence does not allow an "
        "automatic download).",
        spec.manual_steps.strip(),
        "Place these file(s) exactly here:",
        *[f"  {downloads / f.name}" for f in missing],
        f"then run again: glsim data prepare {spec.name} --root {downloads.parent.parent}",
        f"(or set a mirror URL for them in a registry overrides file, {OVERRIDES_ENV}).",
    ]
    return "\n".join(line for line in lines if line)


def fetch_files(spec: DatasetSpec, ddir: Path, *, progress: bool | None = None) -> list[Path]:
    """Download (or find the placed) files of ``spec`` into ``ddir/downloads`` and verify them."""
    downloads = ddir / "downloads"
    missing_manual = [f for f in spec.files if f.url is None and not (downloads / f.name).is_file()]
    if missing_manual:
        raise ManualDownloadRequired(_manual_message(spec, missing_manual, downloads))
    paths = []
    for f in spec.files:
        dest = downloads / f.name
        if f.url is None:  # placed by hand: verify only
            verify_file(dest, f.checksums, source="manual download")
        else:
            download_file(f.url, dest, f.checksums, progress=progress)
        paths.append(dest)
    return paths


def read_source_stamp(ddir: Path) -> str | None:
    """The source a dataset folder was prepared from (None: no stamp, an older layout)."""
    try:
        return json.loads((ddir / SOURCE_STAMP).read_text()).get("source")
    except (OSError, json.JSONDecodeError):
        return None


def prepare_dataset(
    source: str,
    root: str | Path,
    *,
    name: str | None = None,
    overrides: str | Path | dict | None = None,
    params: Params | None = None,
    force: bool = False,
    progress: bool | None = None,
    allowed_roots: list[str | Path] | None = None,
) -> Path:
    """Download -> verify -> extract -> parse; write and return ``ROOT/NAME/manifest.csv``.

    Args:
        source: a registered dataset (``list_datasets()``), or ``imagefolder:PATH`` / ``csv:FILE``.
        root: the raw-data root (params ``data.raw_dir``).
        name: the dataset's plain name, its folder under ``root`` (default:
            :func:`default_name` of the source). ``ROOT/NAME/source.json`` records the
            source, so a folder is never silently reused for another source.
        overrides: overrides YAML path or dict (default: env, then params).
        params: the params tree, passed to generated datasets.
        force: re-parse even if the manifest exists (downloads are reused when verified).
        progress: show download progress bars (default: on a terminal).
        allowed_roots: for ``imagefolder:``/``csv:`` sources, folders besides the source's
            own where images may lie (default: params ``data.allowed_roots``); any other
            image is refused, symlinks followed.

    Raises:
        ManualDownloadRequired: a licence-restricted file is not in place (says where).
        ChecksumError / DownloadError / UnsafeArchiveError / DatasetError.
    """
    spec = apply_overrides(get_dataset(source), resolve_overrides(overrides, params))
    name = name or default_name(source)
    ddir = dataset_dir(name, root)
    manifest = ddir / MANIFEST
    canonical = canonical_source(source)
    if manifest.is_file() and not force:
        stamped = read_source_stamp(ddir)
        if stamped is not None and stamped != canonical:
            raise DatasetError(
                f"{ddir} holds dataset {name!r} prepared from {stamped}, not {canonical}; "
                "give this source another name, or prepare again with --force to replace it"
            )
        return manifest
    if spec.generate is not None:
        ddir.mkdir(parents=True, exist_ok=True)  # other sources make it when they write
        if params is None:
            from glsim.config import Params

            params = Params()
        df = spec.generate(ddir, params)
        if df is None:
            if not manifest.is_file():
                raise DatasetError(
                    f"generator of {source!r} returned no manifest and wrote none at {manifest}"
                )
            read_manifest(manifest)
        else:
            write_manifest(df, manifest)
    else:
        for path, f in zip(fetch_files(spec, ddir, progress=progress), spec.files, strict=True):
            if f.extract and is_archive(path) and not is_extracted(path, ddir / "extracted"):
                extract_archive(path, ddir / "extracted")
        if spec.parse is None:
            raise DatasetError(f"dataset {source!r} has neither a parser nor a generator")
        if spec.parametric:
            if allowed_roots is None:
                allowed_roots = list(params.data.allowed_roots) if params is not None else []
            df = spec.parse(ddir, allowed_roots=[Path(r) for r in allowed_roots])
        else:
            df = spec.parse(ddir)
        write_manifest(df, manifest)
    stamp = {"name": name, "source": canonical}
    if spec.parametric:
        stamp["roots"] = df.attrs.get("roots", [])
    atomic_write_json(ddir / SOURCE_STAMP, stamp)
    return manifest


def read_image_roots(ddir: Path) -> list[Path] | None:
    """The folders a user dataset's images must lie in (``source.json``'s ``roots``, written
    by :func:`prepare_dataset`); None for a built-in dataset or an older stamp."""
    try:
        roots = json.loads((ddir / SOURCE_STAMP).read_text()).get("roots")
    except (OSError, json.JSONDecodeError):
        return None
    return [Path(r) for r in roots] if isinstance(roots, list) and roots else None

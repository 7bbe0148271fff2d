"""Inputs -> an ordered list of corpus units, and units -> chunks of documents.

An input (`--input`) is one of:
  * a local .txt / .jsonl / .parquet file (.txt and .jsonl may be compressed: .zst, .gz), a
    directory searched recursively for them, or a glob ("data/**/*.jsonl.zst"); always sorted,
    hidden files skipped, so the order, and therefore the output bytes, never depend on `ls`;
  * the same as an fsspec URL: a file, folder or glob under hf://datasets/..., s3://, gs://, ...
    (e.g. "hf://datasets/cerebras/SlimPajama-627B/train/**/*.jsonl.zst");
  * a JSONL manifest of files: a .jsonl whose first record has a "path" field and no text field,
    one {"path": ..., "split": "train" | "val" (optional)} per line, relative paths resolved
    against the manifest's folder. "split" pins that file to a split (existing splits are kept);
  * a directory written by `datasets.save_to_disk` (a Dataset or a DatasetDict);
  * otherwise a Hugging Face Hub dataset name such as "roneneldan/TinyStories" or
    "HuggingFaceFW/fineweb-edu" (+ `dataset_config`, `split`, `streaming`).

Each unit carries `split`: "train" / "val" when the source says so, None when `prepare` should
carve the validation set out by hashing the document's text.

`shard_units` gives task `rank` of `world` its part of the corpus: every world-th file, and its
1/world share of each Hub / saved dataset. Units are picklable (a loaded dataset is dropped and
reopened by the task), so they travel to datatrove's worker processes and Slurm/Ray tasks.

One module (~500 lines): every kind of input (local files, globs, URLs, file manifests, Hub and saved
datasets) resolves to the same Unit and is read through the same iter_chunks; readers.py decodes files.
"""

from __future__ import annotations

import glob as _glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from .readers import (
    CorpusError,
    HubReader,
    JsonlReader,
    ParquetReader,
    ReadStats,
    TextFileReader,
    decode_utf8,
)

FORMATS = {".txt": "txt", ".text": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
# Stream compressions (fsspec names), for .txt and .jsonl: "x.jsonl.zst" is zstd-compressed JSONL.
COMPRESSIONS = {".zst": "zstd", ".zstd": "zstd", ".gz": "gzip"}
_GLOB_CHARS = "*?["
# Names under which datasets publish a validation split, in order of preference. "test" is
# deliberately absent: it stays held out for final evaluation.
VAL_SPLIT_NAMES = ("validation", "valid", "val", "dev")
_SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val"}


@dataclass(frozen=True)
class ReadOptions:
    text_field: str = "text"  # JSONL / Parquet / Hub field holding the document
    sample_by: str = "paragraph"  # how .txt files split into documents (see TextFileReader)
    dataset_config: str | None = None  # Hub dataset configuration ("sample-10BT" ...)
    split: str | None = None  # Hub split to read; None = all train + validation splits
    val_split: str | None = None  # Hub split to use as validation; None = auto-detect
    streaming: bool = False  # stream Hub datasets instead of downloading them first


@dataclass
class Unit:
    """One sequentially read piece of the corpus."""

    kind: str  # "txt" | "jsonl" | "parquet" | "hub"
    label: str  # path, URL or "name[split]", for messages and the manifest
    split: str | None  # "train" | "val" | None (carve by hash)
    path: Path | None = None  # a local file
    dataset: Any = None  # datasets.Dataset / IterableDataset for kind == "hub"
    compression: str | None = None  # "zstd" | "gzip" for .zst / .gz files
    url: str | None = None  # a remote (fsspec) file instead of `path`
    # How to reopen `dataset` in another process: ("hub", name, config, split, streaming) or
    # ("disk", path, split_or_None).
    reopen: tuple | None = None

    def __getstate__(self) -> dict[str, Any]:
        # A loaded dataset (Arrow tables, open streams) does not travel to worker processes; the
        # task reopens it from `reopen`, which is cheap (metadata only when streaming).
        state = dict(self.__dict__)
        if self.reopen is not None:
            state["dataset"] = None
        return state

    def identity(self) -> dict[str, Any]:
        """What must not change between an interrupted run and its resume."""
        ident: dict[str, Any] = {"kind": self.kind, "label": self.label, "split": self.split}
        if self.path is not None:
            st = self.path.stat()
            ident.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
        elif self.dataset is not None:
            ident["fingerprint"] = getattr(self.dataset, "_fingerprint", None)
            ident["rows"] = _len_or_none(self.dataset)
        return ident

    def open_dataset(self) -> Any:
        if self.dataset is None and self.reopen is not None:
            import datasets

            if self.reopen[0] == "hub":
                _, name, config, split, streaming = self.reopen
                self.dataset = datasets.load_dataset(name, config, split=split, streaming=streaming)
            else:
                _, path, split = self.reopen
                ds = datasets.load_from_disk(path)
                self.dataset = ds[split] if split is not None else ds
        return self.dataset

    def reader(self, options: ReadOptions, stats: ReadStats, start: Any = None):
        source = self.url if self.url is not None else self.path
        if self.kind == "txt":
            return TextFileReader(source, options.sample_by, stats, start, self.compression)  # type: ignore[arg-type]
        if self.kind == "jsonl":
            return JsonlReader(source, options.text_field, stats, start, self.compression)  # type: ignore[arg-type]
        if self.kind == "parquet":
            return ParquetReader(source, options.text_field, start)  # type: ignore[arg-type]
        return HubReader(self.open_dataset(), options.text_field, self.label, start)


def shard_units(units: list[Unit], rank: int, world: int) -> list[Unit]:
    """Task `rank`'s part of the corpus: files rank, rank + world, ... and a 1/world share of
    every dataset (contiguous rows of a map-style dataset; `split_dataset_by_node` when streaming,
    which assigns whole files when their number divides evenly, else every world-th example)."""
    mine: list[Unit] = []
    files = [u for u in units if u.kind != "hub"]
    mine += files[rank::world]
    for u in units:
        if u.kind != "hub":
            continue
        ds = u.open_dataset()
        if world > 1:
            if _len_or_none(ds) is None:
                from datasets.distributed import split_dataset_by_node

                ds = split_dataset_by_node(ds, rank=rank, world_size=world)
            else:
                ds = ds.shard(num_shards=world, index=rank, contiguous=True)
        mine.append(Unit("hub", f"{u.label}#{rank}/{world}", u.split, dataset=ds))
    return mine


def _len_or_none(ds: Any) -> int | None:
    try:
        return len(ds)
    except TypeError:  # IterableDataset
        return None


def resolve_inputs(inputs: Sequence[str], options: ReadOptions) -> tuple[list[Unit], list[dict[str, Any]]]:
    """Expand `inputs` into units (in reading order) and one description per input for the manifest."""
    if not inputs:
        raise CorpusError("no input given: pass --input FILE_OR_DIR_OR_DATASET (one or more).")
    units: list[Unit] = []
    described: list[dict[str, Any]] = []
    for raw in inputs:
        new, desc = _resolve_one(raw, options)
        units += new
        described.append(desc)
    return units, described


def _resolve_one(raw: str, options: ReadOptions) -> tuple[list[Unit], dict[str, Any]]:
    if "://" in raw:
        units = _remote_units(raw)
        return units, {"input": raw, "kind": "remote", "url": raw, "files": len(units),
                       "formats": sorted({u.kind for u in units})}
    path = Path(raw).expanduser()
    if not path.exists() and any(c in raw for c in _GLOB_CHARS):
        found = sorted(Path(p) for p in _glob.glob(str(path), recursive=True))
        files = [p for p in found if p.is_file() and _supported(p.name)]
        if not files:
            raise CorpusError(f"the glob {raw!r} matches no {'/'.join(sorted(FORMATS))} files. "
                              "Check the pattern (quote it so the shell does not expand it).")
        units = [_file_unit(f, None) for f in files]
        return units, _local_desc(raw, path, units, kind="glob")
    if path.is_dir():
        if _is_saved_dataset(path):
            import datasets

            ds = datasets.load_from_disk(str(path))
            units = _hub_units(ds, str(path), options, reopen_from=str(path.resolve()))
            desc = {"input": raw, "kind": "saved_dataset", "path": str(path.resolve()),
                    "splits": _split_desc(units)}
            return units, desc
        files = _files_under(path)
        if not files:
            raise CorpusError(
                f"no {'/'.join(sorted(FORMATS))} files under directory {path}. Point --input at "
                "the folder holding the corpus files."
            )
        units = [_file_unit(f, None) for f in files]
        return units, _local_desc(raw, path, units)
    if path.is_file():
        fmt, compression = _format_of(path)
        if fmt == "jsonl" and compression is None and _is_path_manifest(path, options.text_field):
            units = _manifest_units(path)
            return units, _local_desc(raw, path, units, kind="file_manifest")
        units = [_file_unit(path, None)]
        return units, _local_desc(raw, path, units)
    if _split_suffix(path.name)[0] or raw.startswith((".", "/", "~")) or os.sep + os.sep in raw:
        raise CorpusError(f"input {raw!r} does not exist. Check the path.")
    units = _load_hub(raw, options)
    return units, {
        "input": raw,
        "kind": "hub",
        "name": raw,
        "config": options.dataset_config,
        "streaming": options.streaming,
        "splits": _split_desc(units),
    }


def _remote_units(url: str) -> list[Unit]:
    """Files of an fsspec URL: one file, every supported file under a folder, or a glob."""
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(url)
        if any(c in root for c in _GLOB_CHARS):
            paths = fs.glob(root)
        elif fs.isdir(root):
            paths = fs.find(root)
        else:
            paths = [root] if fs.exists(root) else []
    except Exception as e:  # fsspec backends raise many types for "cannot reach it"
        raise CorpusError(f"cannot list {url}: {type(e).__name__}: {e}. Check the URL, the network "
                          "and credentials (`huggingface-cli login` for gated hf:// datasets).") from e
    paths = sorted(p for p in paths if _supported(p.rsplit("/", 1)[-1]))
    if not paths:
        raise CorpusError(f"{url} holds no {'/'.join(sorted(FORMATS))} files (optionally .zst/.gz). "
                          "Check the URL or glob.")
    units = []
    for p in paths:
        full = fs.unstrip_protocol(p)
        kind, compression = _format_of(Path(p.rsplit("/", 1)[-1]))
        units.append(Unit(kind=kind, label=full, split=None, url=full, compression=compression))
    return units


def _local_desc(raw: str, path: Path, units: list[Unit], kind: str = "local") -> dict[str, Any]:
    return {
        "input": raw,
        "kind": kind,
        "path": str(path.resolve()) if kind != "glob" else raw,
        "files": len(units),
        "bytes": sum(u.path.stat().st_size for u in units if u.path is not None),
        "formats": sorted({u.kind for u in units}),
    }


def _split_desc(units: list[Unit]) -> dict[str, str]:
    return {u.label: (u.split or "train+val by hash") for u in units}


def _split_suffix(name: str) -> tuple[str | None, str | None]:
    """"a.jsonl.zst" -> ("jsonl", "zstd"); unsupported -> (None, None)."""
    stem, dot, ext = name.lower().rpartition(".")
    compression = COMPRESSIONS.get("." + ext) if dot else None
    if compression is not None:
        stem, dot, ext = stem.rpartition(".")
    fmt = FORMATS.get("." + ext) if dot else None
    if fmt == "parquet" and compression is not None:
        return None, None  # Parquet compresses internally; a compressed .parquet file is a mistake
    return fmt, compression


def _supported(name: str) -> bool:
    return not name.startswith(".") and _split_suffix(name)[0] is not None


def _format_of(path: Path) -> tuple[str, str | None]:
    fmt, compression = _split_suffix(path.name)
    if fmt is None:
        raise CorpusError(
            f"{path}: unsupported file type {path.suffix!r}; supported: {sorted(FORMATS)}, .txt and "
            ".jsonl also compressed (.zst, .gz). Convert it, or list supported files in a JSONL manifest."
        )
    return fmt, compression


def _file_unit(path: Path, split: str | None) -> Unit:
    kind, compression = _format_of(path)
    return Unit(kind=kind, label=str(path), split=split, path=path, compression=compression)


def _files_under(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if _supported(name):
                found.append(Path(dirpath) / name)
    return found


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (
        (path / "dataset_info.json").is_file() and (path / "state.json").is_file()
    )


def _first_record(path: Path) -> Any:
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                try:
                    return json.loads(decode_utf8(line)[0])
                except json.JSONDecodeError:
                    return None
    return None


def _is_path_manifest(path: Path, text_field: str) -> bool:
    first = _first_record(path)
    return isinstance(first, dict) and "path" in first and text_field not in first


def _manifest_units(manifest: Path) -> list[Unit]:
    units: list[Unit] = []
    with open(manifest, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{manifest}:{lineno}"
            try:
                entry = json.loads(line)
                target = Path(entry["path"]).expanduser()
            except (json.JSONDecodeError, KeyError, TypeError):
                raise CorpusError(
                    f'{where}: expected {{"path": "...", "split": "train"|"val"}} per line.'
                ) from None
            split = entry.get("split")
            if split is not None:
                if split not in _SPLIT_ALIASES:
                    raise CorpusError(
                        f"{where}: split {split!r} is not one of {sorted(_SPLIT_ALIASES)}."
                    )
                split = _SPLIT_ALIASES[split]
            if not target.is_absolute():
                target = manifest.parent / target
            if target.is_dir():
                files = _files_under(target)
                if not files:
                    raise CorpusError(f"{where}: no corpus files under {target}.")
                units += [_file_unit(p, split) for p in files]
            elif target.is_file():
                units.append(_file_unit(target, split))
            else:
                raise CorpusError(f"{where}: {target} does not exist. Fix the manifest entry.")
    if not units:
        raise CorpusError(f"{manifest}: the file manifest lists no files.")
    return units


def _load_hub(name: str, options: ReadOptions) -> list[Unit]:
    import datasets

    def load(split: str | None) -> Any:
        try:
            return datasets.load_dataset(
                name, options.dataset_config, split=split, streaming=options.streaming
            )
        except Exception as e:  # the datasets library raises many types for "can't get it"
            raise CorpusError(
                f"could not load dataset {name!r} (config={options.dataset_config!r}, "
                f"split={split!r}) from the Hugging Face Hub: {type(e).__name__}: {e}. "
                "If it is a local path, check that it exists; if this machine is offline, "
                "download the dataset elsewhere (`datasets.load_dataset(...).save_to_disk(DIR)` or "
                "its parquet/jsonl files) and pass that folder as --input."
            ) from e

    ds = load(options.split)
    units = _hub_units(ds, name, options)
    if options.split is not None and options.val_split is not None and len(units) == 1:
        # Both splits named: read them as train and val (no carving).
        units[0].split = "train"
        units.append(Unit("hub", f"{name}[{options.val_split}]", "val", dataset=load(options.val_split),
                          reopen=("hub", name, options.dataset_config, options.val_split, options.streaming)))
    for u in units:  # the split key each unit was taken from is in its label: "name[key]" or name
        key = u.label[len(name) + 1 : -1] if u.label != name else options.split
        u.reopen = ("hub", name, options.dataset_config, key, options.streaming)
    return units


def _hub_units(ds: Any, name: str, options: ReadOptions, reopen_from: str | None = None) -> list[Unit]:
    """Units for a loaded dataset, keeping its own train/validation splits when it has them.

    `reopen_from`: the save_to_disk folder `ds` came from (units then record how to reload it)."""
    units = _hub_units_of(ds, name, options)
    if reopen_from is not None:
        import datasets

        is_dict = isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict))
        for u in units:
            u.reopen = ("disk", reopen_from, u.label[len(name) + 1 : -1] if is_dict else None)
    return units


def _hub_units_of(ds: Any, name: str, options: ReadOptions) -> list[Unit]:
    import datasets

    # A DatasetDict / IterableDatasetDict is a dict subclass: test for the datasets classes
    # explicitly. (The previous system tested for a plain dict and so treated a DatasetDict as one
    # split, carving validation out of train while the real validation split went unused.)
    if not isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        label = f"{name}[{options.split}]" if options.split else name
        return [Unit("hub", label, None, dataset=ds)]
    splits = list(ds.keys())
    for wanted in (options.split, options.val_split):
        if wanted is not None and wanted not in ds:
            raise CorpusError(f"{name}: no split {wanted!r}; available splits: {splits}.")
    if options.split is not None:
        if options.val_split is None:
            return [Unit("hub", f"{name}[{options.split}]", None, dataset=ds[options.split])]
        return [
            Unit("hub", f"{name}[{options.split}]", "train", dataset=ds[options.split]),
            Unit("hub", f"{name}[{options.val_split}]", "val", dataset=ds[options.val_split]),
        ]
    val_name = options.val_split or next((s for s in VAL_SPLIT_NAMES if s in ds), None)
    if "train" in ds:
        train_name = "train"
    elif len(splits) == 1 or (len(splits) == 2 and val_name is not None):
        train_name = next(s for s in splits if s != val_name)
    else:
        raise CorpusError(
            f"{name}: no 'train' split among {splits}; pass --split NAME to choose the split to read."
        )
    if val_name is None:
        return [Unit("hub", f"{name}[{train_name}]", None, dataset=ds[train_name])]
    return [
        Unit("hub", f"{name}[{train_name}]", "train", dataset=ds[train_name]),
        Unit("hub", f"{name}[{val_name}]", "val", dataset=ds[val_name]),
    ]


def count_known_documents(units: list[Unit]) -> int | None:
    """Total records when every unit knows its length up front (map-style datasets), else None."""
    total = 0
    for u in units:
        n = _len_or_none(u.dataset) if u.kind == "hub" else None
        if n is None:
            return None
        total += n
    return total


@dataclass
class Cursor:
    """Where reading stands: unit index and that unit's reader position."""

    unit: int = 0
    pos: Any = None

    def to_json(self) -> dict[str, Any]:
        return {"unit": self.unit, "pos": self.pos}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Cursor":
        return cls(unit=int(d["unit"]), pos=d["pos"])


@dataclass
class Chunk:
    texts: list[str]
    splits: list[str | None]  # per document: the unit's split or None (carve by hash)
    records: int  # records read, empty ones included
    skipped_empty: int
    replacements: int  # undecodable byte sequences replaced in this chunk's records
    cursor: Cursor  # position after the chunk's last record


def iter_chunks(
    units: list[Unit],
    options: ReadOptions,
    stats: ReadStats,
    *,
    start: Cursor | None = None,
    chunk_chars: int = 1_000_000,
) -> Iterator[Chunk]:
    """Documents grouped into chunks of about `chunk_chars` characters, resumable at any chunk end."""
    start = start or Cursor()
    texts: list[str] = []
    splits: list[str | None] = []
    chars = records = skipped = 0
    seen_replacements = stats.replacements
    for ui in range(start.unit, len(units)):
        unit = units[ui]
        reader = unit.reader(options, stats, start.pos if ui == start.unit else None)
        for text in reader.documents():
            records += 1
            if text is None:
                skipped += 1
            else:
                texts.append(text)
                splits.append(unit.split)
                chars += len(text)
            if chars >= chunk_chars:
                replaced, seen_replacements = stats.replacements - seen_replacements, stats.replacements
                yield Chunk(texts, splits, records, skipped, replaced, Cursor(ui, reader.position()))
                texts, splits, chars, records, skipped = [], [], 0, 0, 0
    if records:
        replaced = stats.replacements - seen_replacements
        yield Chunk(texts, splits, records, skipped, replaced, Cursor(len(units), None))

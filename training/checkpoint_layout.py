"""The on-disk contract of a training checkpoint, shared by training/ and eval/ (standard library only:
importing it loads no torch, accelerate or DeepSpeed, so eval/ may use it): every name in the
directory, where a checkpoint lives, how its trainer state reads, and the "complete" and "intact"
rules. What each file holds, and what writes and reads it: docs/formats.md, section 3.

    OUT/checkpoints/iter_000123/    CHECKPOINTS_DIR, checkpoint_dir(OUT, 123); written to iter_000123.tmp/
                                    (staging_dir) and renamed when complete
        accelerate/                 ACCELERATE_DIR: accelerator.save_state (model, optimizer/ZeRO shards, RNG)
        data_state_rank{r}.json     data_state_name(r): the loader position of rank r
        scheduler_state.json        SCHEDULER_STATE: the LR schedule's position (JSON: nothing of ours is pickled)
        model/                      MODEL_DIR: DecoderForCausalLM.save_pretrained (safetensors) + the tokenizer
        hf/                         HF_DIR: (optional) native transformers export
        trainer_state.json          TRAINER_STATE: iteration, tokens, world size, LR schedule (read_trainer_state)
        manifest.json               MANIFEST: size + sha256 of every other file; written last, just before
                                    the rename from iter_000123.tmp/, so its presence means "complete"
A complete checkpoint is *intact* when every file it lists still has its recorded size and sha256.
Completeness is a directory listing; intactness reads every byte (about 1.2 s per GiB per process
on one core of a 2-core CI machine: `python -m training.checkpoint_layout --bench`), so callers
verify the checkpoint they are about to load, not every checkpoint they list.

What the manifest protects against: disk/copy corruption, truncation, a half-copied directory, and a
file swapped or planted after the save. It does not authenticate: whoever can write the checkpoint
can also rewrite manifest.json to match a tampered file. Training state from an untrusted source
must not be resumed (see README, "Resume").
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Iterable, Optional

# The names inside a run's out_dir and a checkpoint directory (module docstring). Changing one changes
# the on-disk format: older checkpoints would no longer resume or evaluate.
CHECKPOINTS_DIR = "checkpoints"  # OUT/checkpoints/
ITER_DIR = re.compile(r"^iter_(\d+)$")  # a complete checkpoint's name: iter_ + the iteration, 6+ digits
TMP_SUFFIX = ".tmp"  # iter_N.tmp/: a save in progress (or cut short), never resumed
ACCELERATE_DIR = "accelerate"
MODEL_DIR = "model"
HF_DIR = "hf"
TRAINER_STATE = "trainer_state.json"
SCHEDULER_STATE = "scheduler_state.json"
DATA_STATE_PREFIX = "data_state_rank"  # + rank + ".json": data_state_name
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
# Files named after the rank that wrote them (DeepSpeed optimizer/model shards, accelerate RNG states,
# our data states): that rank hashes them, while they are still in its page cache.
_RANK_IN_NAME = re.compile(rf"(?:zero_pp_rank_|random_states_|{DATA_STATE_PREFIX}|_rank)(\d+)")
_CHUNK = 16 << 20  # 16 MiB reads: hashlib releases the GIL on large updates


class CheckpointIntegrityError(ValueError):
    """A checkpoint that is incomplete, or whose files no longer match its manifest."""


def data_state_name(rank: int) -> str:
    """The file holding rank `rank`'s data-loader position: data_state_rank{rank}.json."""
    return f"{DATA_STATE_PREFIX}{rank}.json"


def checkpoint_dir(out_dir: str | os.PathLike, iteration: int) -> Path:
    """Where the checkpoint of `iteration` lives (complete or not): OUT/checkpoints/iter_000123."""
    return Path(out_dir) / CHECKPOINTS_DIR / f"iter_{iteration:06d}"


def staging_dir(ckpt: Path) -> Path:
    """Where a save of `ckpt` is written before its rename: iter_000123.tmp beside it."""
    return Path(ckpt).with_name(Path(ckpt).name + TMP_SUFFIX)


def checkpoint_iteration(path: Path) -> Optional[int]:
    m = ITER_DIR.match(Path(path).name)
    return int(m.group(1)) if m else None


def is_complete(path: Path) -> bool:
    """The one "complete checkpoint" rule: named iter_N (a .tmp directory is still being written) and
    holding the manifest, which the save writes last."""
    path = Path(path)
    return checkpoint_iteration(path) is not None and (path / MANIFEST).is_file()


def list_checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under out_dir/checkpoints, oldest first (not verified: see verify)."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [(checkpoint_iteration(p), p) for p in root.iterdir() if is_complete(p)]
    return [p for _, p in sorted(found)]




def read_trainer_state(ckpt: str | os.PathLike) -> dict:
    """The JSON object in ckpt/trainer_state.json (FileNotFoundError when absent); CheckpointIntegrityError
    naming the file and line when it is not one. Verify the checkpoint first: this reads, it does not check."""
    path = Path(ckpt) / TRAINER_STATE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointIntegrityError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); the checkpoint is "
                                       "damaged: use another checkpoint") from exc
    except UnicodeDecodeError as exc:
        raise CheckpointIntegrityError(f"{path}: not UTF-8 text ({exc.reason}); the checkpoint is damaged: "
                                       "use another checkpoint") from exc
    if not isinstance(state, dict):
        raise CheckpointIntegrityError(f"{path}: expected a JSON object, got {type(state).__name__}; the checkpoint "
                                       "is damaged: use another checkpoint")
    return state


def hash_file(path: Path) -> dict:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": h.hexdigest()}


def files_under(root: Path, exclude: Iterable[str] = (MANIFEST,)) -> list[str]:
    """Every regular file under root as a sorted relative POSIX path."""
    root = Path(root)
    skip = set(exclude)
    out = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if rel not in skip:
                out.append(rel)
    return sorted(out)


def owner_rank(rel: str) -> Optional[int]:
    m = _RANK_IN_NAME.search(Path(rel).name)
    return int(m.group(1)) if m else None


def share_of(files: dict[str, int], rank: int, world_size: int, owned: bool = True,
             spare_rank0: bool = False) -> list[str]:
    """The files (rel path -> size) this rank hashes: a deterministic split every rank computes alike.

    owned: a file named after a rank goes to that rank (it wrote it; the bytes are in its page cache).
    The rest go, largest first, to the least-loaded rank; spare_rank0 keeps rank 0 out of that
    balancing when it has its own files still to write (model/, hf/)."""
    load = [0] * world_size
    mine: list[str] = []
    rest = []
    for rel, size in files.items():
        r = owner_rank(rel) if owned else None
        if r is not None and r < world_size:
            load[r] += size
            if r == rank:
                mine.append(rel)
        else:
            rest.append((size, rel))
    pool = [r for r in range(world_size) if not (spare_rank0 and world_size > 1 and r == 0)]
    for size, rel in sorted(rest, key=lambda t: (-t[0], t[1])):
        r = min(pool, key=lambda q: (load[q], q))
        load[r] += size
        if r == rank:
            mine.append(rel)
    return sorted(mine)


def write_manifest(ckpt: Path, entries: dict[str, dict]) -> Path:
    """Atomically (temp file, fsync, rename) write the manifest; call it last, before the commit rename."""
    body = json.dumps({"format": MANIFEST_FORMAT, "files": dict(sorted(entries.items()))}, indent=1) + "\n"
    tmp = Path(ckpt) / f".{MANIFEST}.tmp"
    with open(tmp, "w") as f:
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, Path(ckpt) / MANIFEST)
    return Path(ckpt) / MANIFEST


def read_manifest(ckpt: Path) -> dict[str, dict]:
    """rel path -> {"size", "sha256"}; CheckpointIntegrityError naming the file when unreadable."""
    path = Path(ckpt) / MANIFEST
    if not path.is_file():
        raise CheckpointIntegrityError(
            f"{path} is missing: the save did not finish (or the checkpoint predates integrity manifests)")
    try:
        data = json.loads(path.read_text())
        files = data["files"]
        if data.get("format") != MANIFEST_FORMAT or not all(
                isinstance(v.get("size"), int) and isinstance(v.get("sha256"), str) for v in files.values()):
            raise ValueError("unexpected format")
    except (ValueError, KeyError, AttributeError, TypeError, UnicodeDecodeError) as exc:
        raise CheckpointIntegrityError(f"{path} is corrupt ({exc})") from exc
    return files


def check_files(ckpt: Path, manifest: dict[str, dict], names: Iterable[str]) -> list[str]:
    """Problems (one line each, naming the file) among `names`; [] when they all match the manifest."""
    ckpt = Path(ckpt)
    problems = []
    for rel in names:
        want, path = manifest[rel], ckpt / rel
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            problems.append(f"{path} is missing")
            continue
        if size != want["size"]:
            problems.append(f"{path} has {size} bytes, the manifest says {want['size']} (truncated or overwritten)")
            continue
        got = hash_file(path)["sha256"]
        if got != want["sha256"]:
            problems.append(f"{path} does not match its sha256 in the manifest (corrupted or modified after the save)")
    return problems


def unlisted(ckpt: Path, manifest: dict[str, dict], under: str = ACCELERATE_DIR) -> list[str]:
    """Files under ckpt/<under> that the manifest does not list. There, unlike next to the checkpoint
    (eval results), an extra file is refused: accelerate and DeepSpeed load those directories by name
    pattern, and a planted pickle must not be loaded."""
    return [f"{Path(ckpt) / under / rel} is not in the manifest (added after the save)"
            for rel in files_under(Path(ckpt) / under, exclude=()) if f"{under}/{rel}" not in manifest]


def verify(ckpt: Path, names: Optional[Iterable[str]] = None) -> list[str]:
    """Single-process verification of `names` (default: every listed file, plus no unlisted file
    under accelerate/). Problems as one line each; [] when intact."""
    try:
        manifest = read_manifest(ckpt)
    except CheckpointIntegrityError as exc:
        return [str(exc)]
    if names is None:
        return check_files(ckpt, manifest, sorted(manifest)) + unlisted(ckpt, manifest)
    missing = [f"{Path(ckpt) / n} is not in the manifest" for n in names if n not in manifest]
    return missing + check_files(ckpt, manifest, [n for n in names if n in manifest])


def directory_bytes(path: Path) -> int:
    return sum((Path(dp) / n).stat().st_size for dp, _, ns in os.walk(path) for n in ns)


if __name__ == "__main__":  # python -m training.checkpoint_layout --bench [FILE]: sha256 seconds per GiB here
    import sys
    import tempfile
    import time

    target = Path(sys.argv[2]) if len(sys.argv) > 2 else None
    with tempfile.TemporaryDirectory() as d:
        if target is None:
            target = Path(d) / "bench.bin"
            with open(target, "wb") as f:
                for _ in range(64):
                    f.write(os.urandom(16 << 20))  # 1 GiB, then in the page cache as after a save
        start = time.perf_counter()
        size = hash_file(target)["size"]
        print(f"sha256: {(time.perf_counter() - start) / (size / 2**30):.2f} s per GiB ({size / 2**30:.2f} GiB)")

"""Ranks that resolve --resume=auto to different checkpoints (a stale or node-local out_dir) are
stopped before anything loads, on every rank; ranks that agree go on. Two real gloo processes."""

import types

import torch.distributed as dist
import torch.multiprocessing as mp

from training.distributed import agree_on_resume


def _rank(rank: int, init_file: str, views: list, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        agreed = agree_on_resume(types.SimpleNamespace(num_processes=2), views[rank])
        results.put((rank, "ok", str(agreed)))
    except ValueError as exc:
        results.put((rank, "error", str(exc)))
    finally:
        dist.destroy_process_group()


def _run(tmp_path, views):
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, str(tmp_path / "pg"), views, results)) for r in range(2)]
    for p in procs:
        p.start()
    out = dict((r, (kind, msg)) for r, kind, msg in (results.get(timeout=120) for _ in procs))
    for p in procs:
        p.join(timeout=60)
    return out


def test_ranks_that_disagree_on_the_checkpoint_all_stop(tmp_path):
    out = _run(tmp_path, ["runs/x/checkpoints/iter_000200", "runs/x/checkpoints/iter_000100"])
    for rank in (0, 1):
        kind, msg = out[rank]
        assert kind == "error" and "ranks disagree" in msg and "shared" in msg
        assert "iter_000200" in msg and "iter_000100" in msg


def test_ranks_that_agree_go_on(tmp_path):
    out = _run(tmp_path, ["runs/x/checkpoints/iter_000200"] * 2)
    assert out == {0: ("ok", "runs/x/checkpoints/iter_000200"), 1: ("ok", "runs/x/checkpoints/iter_000200")}

"""Sharded, atomic, resumable generation: every request answered exactly once, kill or no kill.

The ordered request list is cut into shards of ``shard_size`` consecutive requests; shard ``i``
belongs to rank ``i % world_size`` (rank/world from ``RANK``/``WORLD_SIZE`` under torchrun, or
``SLURM_PROCID``/``SLURM_NTASKS`` under ``srun`` without torchrun). A shard is generated in one
backend call and written as ``shard-00007.jsonl`` by rename (``atomic_write_jsonl``), so a shard
file either holds all its rows or does not exist. A restarted run skips the shards it finds,
which is what makes "killed mid-way, restarted" end with every request answered exactly once.

``plan.json`` pins the request ids (their hash), the requests' content (messages, state, adapter),
the shard size, the sampling and the backend; a restart with a different request list, prompt
content or shard size is an error (mixing two plans would duplicate or lose rows), naming the fix
(a new output folder, or delete it). What the backend itself was built from (model, adapter
weights, backend settings) is checked one level up, by the stage folder's provenance
(``aigp_train.outputs``).

Under several ranks each rank generates its shards and rank 0 alone reads the result:
``wait_for_generations`` waits (up to the stage's ``wait_for_ranks_s``) until every rank's shards
are there and checks each request is answered exactly once over all ranks. Every generation
stage (teacher, judge, candidates, infer) ends that way, so a manifest never says done while
another node is still generating. Rank 0's progress line (``aigp_train.progress``) counts every
rank's finished shards; under several ranks its last line ("done in ...") comes from that wait,
after the last rank's last shard (``GenerationResult.progress``, passed to ``wait_for_generations``).

Preemption (SLURM's USR1 warning, ``launch/_common.sh``; SIGTERM): the rank exits at once with 75
(``aigp_train.train.signals.stop_at_once``): the shard in flight is dropped, the written ones stay, and
the requeued job generates only the missing shards.

Fault injection: ``AIGP_FAULT_AFTER_WRITE=shard-0000k.jsonl`` SIGKILLs the process right after
shard ``k`` is written (only the rank owning it dies; ``aigp_train.outputs.fault_point``); with
``AIGP_FAULT_ACTION=hold`` the process waits there for SIGUSR1/SIGTERM instead, so a preemption test
signals it at exactly that point.

A backend exception in one shard does not lose the others: the runner writes
``shard-00007.error.txt`` (the traceback), carries on with the remaining shards, then raises
``GenerationError`` naming every failed shard. A rerun retries exactly the failed shards.

Rows: ``{"request_id", "shard", "completions": [n strings], "decision_forced": [n bools], "backend",
"act_only", "adapter"}`` (``decision_forced`` from the backend's ``last_forced``, all false for a
backend that forces nothing) plus whatever the caller's ``extra(request)`` returns (e.g. ``sku_id``, ``d_prev``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from aigp_train.llm.backends.base import Backend, GenerationRequest, SamplingConfig
from aigp_train.outputs import atomic_write_json, atomic_write_jsonl, claim, read_jsonl
from aigp_train.progress import Progress
from aigp_train.train.signals import stop_at_once

__all__ = ["GenerationError", "GenerationResult", "rank_and_world", "run_generation", "read_generations",
           "shard_path", "wait_for_generations"]

PLAN = "plan.json"


class GenerationError(RuntimeError):
    """One or more shards failed; the others are written and a rerun retries only the failed ones."""


@dataclass
class GenerationResult:
    num_shards: int
    written: list[int]  # shards this call generated
    skipped: list[int]  # shards found finished from an earlier run
    rank: int
    world_size: int
    seconds: float
    # rank 0's progress line under several ranks, still open: ``wait_for_generations`` ends it once every
    # rank's shards are there (rank 0's own shards being done says nothing of the other nodes)
    progress: Progress | None = None


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) from torchrun's env, else SLURM's, else (0, 1)."""
    for rank_key, world_key in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if rank_key in os.environ and world_key in os.environ:
            rank, world = int(os.environ[rank_key]), int(os.environ[world_key])
            if not 0 <= rank < world:
                raise ValueError(f"{rank_key}={rank} is outside [0, {world_key}={world}); the launcher env is broken.")
            return rank, world
    return 0, 1


def shard_path(out_dir: str | Path, index: int) -> Path:
    return Path(out_dir) / f"shard-{index:05d}.jsonl"


def _error_path(out_dir: Path, index: int) -> Path:
    return out_dir / f"shard-{index:05d}.error.txt"


def _requests_done(out_dir: Path, num_requests: int, shard_size: int) -> int:
    """Requests in all ranks' finished shards (a shared file system); the last shard may be short."""
    return sum(min(shard_size, num_requests - i * shard_size)
               for i in range(-(-num_requests // shard_size)) if shard_path(out_dir, i).is_file())


def _plan(requests: Sequence[GenerationRequest], shard_size: int, sampling: SamplingConfig, backend: str) -> dict:
    ids = [r.request_id for r in requests]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"request ids must be unique; repeated: {dup}. Fix the request builder.")
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    return {"num_requests": len(ids), "request_ids_sha256": digest, "requests_sha256": _content_hash(requests),
            "shard_size": shard_size, "num_shards": -(-len(ids) // shard_size), "sampling": asdict(sampling),
            "backend": backend}


def _content_hash(requests: Sequence[GenerationRequest]) -> str:
    """sha256 of what each request asks (messages, state, adapter, mode): a rerun whose prompts
    changed under the same ids must not reuse the old answers. Built one request at a time, so a
    lazy sequence (the judge's) never holds every request at once."""
    digest = hashlib.sha256()
    for i in range(len(requests)):
        r = requests[i]
        digest.update(json.dumps([r.request_id, r.messages, r.state, r.adapter, r.act_only], sort_keys=True,
                                 default=str).encode())
    return digest.hexdigest()


def _check_plan(out_dir: Path, plan: dict) -> None:
    """Write the plan on first run; on restart insist it is the same plan."""
    path = out_dir / PLAN
    if path.is_file():
        old = json.loads(path.read_text())
        diff = sorted(k for k in plan if old.get(k) != plan[k])
        if diff:
            raise ValueError(
                f"{out_dir} holds shards of a different generation plan (differs in: {', '.join(diff)}). "
                f"Resuming would mix two plans; use a new output folder or delete {out_dir}.")
    else:
        # Several ranks may race to write the same plan: same bytes, atomic rename, harmless.
        atomic_write_json(path, plan)


def run_generation(
    requests: Sequence[GenerationRequest],
    backend: Backend,
    sampling: SamplingConfig,
    out_dir: str | Path,
    shard_size: int,
    extra: Callable[[GenerationRequest], dict] | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    log: Callable[[str], None] | None = None,
    label: str = "generation",
    window_s: float | None = None,
) -> GenerationResult:
    """Generate this rank's unfinished shards of ``requests`` into ``out_dir``. Rank 0 prints a progress
    line (``aigp_train.progress``) over every rank's finished shards, against ``window_s`` if given."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}.")
    if rank is None or world_size is None:
        rank, world_size = rank_and_world()
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = _plan(requests, shard_size, sampling, backend.name)
    _check_plan(out, plan)
    start = time.perf_counter()
    written, skipped, failed = [], [], []

    def requests_done() -> int:
        return _requests_done(out, len(requests), shard_size)

    progress = Progress(label, len(requests), "prompts", window_s=window_s, start_done=requests_done(), log=log) \
        if rank == 0 else None
    with stop_at_once(f"{out}: the written shards stay; the requeued run generates the missing ones"):
        for index in range(rank, plan["num_shards"], world_size):
            path = shard_path(out, index)
            if path.is_file():
                skipped.append(index)
                continue
            chunk = list(requests[index * shard_size:(index + 1) * shard_size])
            try:
                completions = backend.generate(chunk, sampling)
                if len(completions) != len(chunk) or any(len(c) != sampling.n for c in completions):
                    raise RuntimeError(f"backend {backend.name!r} returned {[len(c) for c in completions]} completions "
                                       f"for {len(chunk)} requests with n={sampling.n}; expected n per request.")
            except Exception:  # one bad shard must not lose the others
                claim(_error_path(out, index))
                _error_path(out, index).write_text(traceback.format_exc())
                failed.append(index)
                log(f"[generation] shard {index} failed on rank {rank}; traceback in {_error_path(out, index)}")
                continue
            forced = getattr(backend, "last_forced", None) or [[False] * sampling.n for _ in chunk]
            rows = []
            for req, outs, flags in zip(chunk, completions, forced):
                row = {"request_id": req.request_id, "shard": index, "completions": list(outs),
                       "decision_forced": [bool(f) for f in flags], "backend": backend.name,
                       "act_only": req.act_only, "adapter": req.adapter}
                if extra is not None:
                    row.update(extra(req))
                rows.append(row)
            atomic_write_jsonl(path, rows)
            _error_path(out, index).unlink(missing_ok=True)
            written.append(index)
            if progress is not None:
                progress.update(requests_done())
    if progress is not None and world_size == 1:
        progress.update(requests_done(), final=True)
    if failed:
        raise GenerationError(
            f"{len(failed)} shard(s) failed on rank {rank}: {failed} (tracebacks in {out}/shard-*.error.txt); "
            f"{len(written) + len(skipped)} other shard(s) are written and kept. Fix the cause and rerun: only "
            f"the failed shards are regenerated.")
    return GenerationResult(plan["num_shards"], written, skipped, rank, world_size, time.perf_counter() - start,
                            progress if world_size > 1 else None)


def read_generations(out_dir: str | Path) -> list[dict]:
    """All rows of a finished generation, in request order; errors if a shard is missing or a row
    repeats (a rank still running, a failed shard, or two plans mixed)."""
    out = Path(out_dir)
    plan_path = out / PLAN
    if not plan_path.is_file():
        raise FileNotFoundError(f"{out} has no {PLAN}: no generation was run there.")
    plan = json.loads(plan_path.read_text())
    missing = [i for i in range(plan["num_shards"]) if not shard_path(out, i).is_file()]
    if missing:
        raise GenerationError(f"{out} is missing {len(missing)} of {plan['num_shards']} shards (first: {missing[:5]}); "
                              f"another rank may still be running, or a shard failed: rerun the stage.")
    rows = [row for i in range(plan["num_shards"]) for row in read_jsonl(shard_path(out, i))]
    ids = [r["request_id"] for r in rows]
    if len(ids) != plan["num_requests"] or len(set(ids)) != len(ids):
        raise GenerationError(f"{out} holds {len(ids)} rows ({len(set(ids))} distinct) for {plan['num_requests']} "
                              f"requests; delete the folder and rerun.")
    return rows


def wait_for_generations(out_dir: str | Path, timeout_s: float, progress: Progress | None = None) -> list[dict]:
    """All rows of a generation once every rank's shards are written (``read_generations``: each
    request exactly once), waiting up to ``timeout_s`` for the other ranks; a failed shard ends the wait.
    ``progress`` (rank 0's line, ``GenerationResult.progress``) goes on over the other ranks' shards and
    prints its last line once all are there."""
    out = Path(out_dir)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            rows = read_generations(out)
        except GenerationError:
            if time.monotonic() > deadline or list(out.glob("shard-*.error.txt")):
                raise
            if progress is not None:
                plan = json.loads((out / PLAN).read_text())
                progress.update(_requests_done(out, plan["num_requests"], plan["shard_size"]))
            time.sleep(2.0)
            continue
        if progress is not None:
            progress.update(len(rows), final=True)
        return rows

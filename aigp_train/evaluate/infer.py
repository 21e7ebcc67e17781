"""The inference path: prompts -> backend (full reasoning) -> Ψ -> decisions as Parquet.

``aigp infer`` (one night's SKUs), the LLM policies of ``aigp evaluate`` and every LLM group of
``aigp abtest`` go through ``run_inference``, so what is evaluated is what would be deployed.

Deployment mode (paper §3.4): the ``[ACT_ONLY]`` control token is removed and the model writes
its reasoning, then the JSON action; prompts flagged ``act_only`` are refused here. ``aigp evaluate``
also runs its LLM rows in decision-only mode (``decision_only``: ``[ACT_ONLY]`` prompts only, the
JSON action alone, the mode candidates and DPO use) through the same path. Each output
goes through ``parse_action`` (Ψ projection; a failure holds the price), and the counts of
failures and projections are returned with the decisions. A decision the backend had to append
after the reasoning (``backend.*.force_decision``) is flagged ``decision_forced`` and counted.

Crash safety: generation runs through the sharded runner (``aigp_train.llm.generation``), which
writes each shard of requests once, atomically, and skips finished shards on restart. Each
shard's decisions are then written as ``decisions/part-<shard>.parquet`` (atomically; skipped when
present). A kill at any point therefore loses at most the shard in flight and never writes a
decision twice; ``read_decisions`` checks exactly-once against the plan.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from aigp_train.llm.backends.base import GenerationRequest
from aigp_train.llm.generation import run_generation, shard_path, wait_for_generations
from aigp_train.outputs import atomic_write_bytes, read_jsonl
from aigp_train.pricing import ParseStats, parse_action

DECISION_SCHEMA = pa.schema([
    ("prompt_id", pa.string()),
    ("sku_id", pa.string()),
    ("date", pa.int32()),
    ("day", pa.int16()),
    ("d_prev", pa.float64()),
    ("action", pa.float64()),       # a_t after Ψ (0.0 hold on failure)
    ("discount", pa.float64()),     # d_t = d_prev + a_t, what the platform applies tomorrow
    ("raw_action", pa.float64()),   # as written, before Ψ (null on failure)
    ("projected", pa.bool_()),
    ("failure", pa.string()),       # null or the parse failure reason
    ("decision_forced", pa.bool_()),  # the backend appended the action after the reasoning (force_decision)
    ("adapter", pa.string()),
    ("response", pa.string()),      # the full reasoning text, for audit and the judge
])


@dataclass
class InferenceResult:
    decisions: pa.Table
    stats: ParseStats
    num_shards_written: int
    num_shards_skipped: int
    rank: int = 0  # rank 0 holds every rank's decisions; another rank only its own

    def parse_summary(self) -> dict:
        """The parse counts and how many decisions the backend had to force (``num_decision_forced``)."""
        forced = sum(bool(f) for f in self.decisions.column("decision_forced").to_pylist())
        return {**self.stats.to_dict(), "num_decision_forced": forced}


def build_requests(prompts: list[dict], adapter: str | None, decision_only: bool = False) -> list[GenerationRequest]:
    """Requests from prompt records (``prompt_id``, ``messages``, ``state``, ...): full-reasoning ones, or
    with ``decision_only`` the ``[ACT_ONLY]`` ones (a prompt of the other mode is refused)."""
    requests = []
    for p in prompts:
        if bool(p.get("act_only")) != decision_only:
            mode = "decision-only ([ACT_ONLY])" if decision_only else "deployment (full reasoning)"
            raise ValueError(f"prompt {p.get('prompt_id')} is {'' if p.get('act_only') else 'not '}an [ACT_ONLY] "
                             f"prompt; this inference runs in {mode} mode. Build prompts with act_only "
                             f"{str(decision_only).lower()} for it (infer and abtest deploy: act_only false).")
        missing = [k for k in ("prompt_id", "sku_id", "d_prev", "messages", "state") if k not in p]
        if missing:
            raise ValueError(f"prompt record {p.get('prompt_id', '?')} lacks {missing}; it must come from "
                             f"aigp_train.llm.prompts (the prompts stage).")
        requests.append(GenerationRequest(str(p["prompt_id"]), p["messages"], p["state"], decision_only, adapter))
    return requests


def _decisions(rows: list[dict], by_id: dict[str, dict], pricing, stats: ParseStats) -> pa.Table:
    cols: dict[str, list] = {name: [] for name in DECISION_SCHEMA.names}
    for row in rows:
        p = by_id[row["request_id"]]
        text = row["completions"][0]
        parsed = stats.add(parse_action(text, float(p["d_prev"]), pricing))
        cols["prompt_id"].append(row["request_id"])
        cols["sku_id"].append(str(p["sku_id"]))
        cols["date"].append(int(p.get("date", -1)))
        cols["day"].append(int(p.get("day", -1)))
        cols["d_prev"].append(float(p["d_prev"]))
        cols["action"].append(parsed.action)
        cols["discount"].append(parsed.discount)
        cols["raw_action"].append(parsed.raw_action)
        cols["projected"].append(parsed.projected)
        cols["failure"].append(parsed.failure)
        cols["decision_forced"].append(bool(row.get("decision_forced", [False])[0]))
        cols["adapter"].append(row.get("adapter"))
        cols["response"].append(text if isinstance(text, str) else None)
    return pa.table(cols, schema=DECISION_SCHEMA)


def _write_parquet(path: Path, table: pa.Table) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    atomic_write_bytes(path, buf.getvalue())


def run_inference(prompts: list[dict], backend, sampling, adapter: str | None, pricing, out_dir: str | Path,
                  shard_size: int, wait_for_ranks_s: float = 0.0, label: str = "inference",
                  window_s: float | None = None, decision_only: bool = False) -> InferenceResult:
    """Decisions for ``prompts`` into ``out_dir`` (resumable); returns them with parse counts.

    Under several ranks (RANK/WORLD_SIZE or SLURM) each rank generates its own shards and returns
    their decisions; rank 0 then waits up to ``wait_for_ranks_s`` for every rank's shards, checks
    exactly-once over all of them and returns every decision (what the manifest records).
    """
    if sampling.n != 1:
        raise ValueError(f"inference takes one decision per SKU: sampling.n must be 1, got {sampling.n}.")
    out = Path(out_dir)
    gen_dir, dec_dir = out / "generations", out / "decisions"
    by_id = {str(p["prompt_id"]): p for p in prompts}
    if len(by_id) != len(prompts):
        raise ValueError("prompt ids repeat; each SKU must have one prompt per day.")
    result = run_generation(build_requests(prompts, adapter, decision_only), backend, sampling, gen_dir, shard_size,
                            label=label, window_s=window_s)
    if result.rank == 0:  # every rank's shards, each request exactly once, before a decision is returned
        wait_for_generations(gen_dir, wait_for_ranks_s if result.world_size > 1 else 0.0, result.progress)
        shards = range(result.num_shards)
    else:
        shards = range(result.rank, result.num_shards, result.world_size)
    stats = ParseStats()
    tables = []
    for index in shards:
        part = dec_dir / f"part-{index:05d}.parquet"
        # Re-derived from the generation shard even when the part exists, so the parse counts are
        # complete after a resume; the part itself is only written once.
        table = _decisions(read_jsonl(shard_path(gen_dir, index)), by_id, pricing, stats)
        if not part.is_file():
            _write_parquet(part, table)
        tables.append(table)
    decisions = pa.concat_tables(tables) if tables else DECISION_SCHEMA.empty_table()
    return InferenceResult(decisions, stats, len(result.written), len(result.skipped), result.rank)


def read_decisions(out_dir: str | Path) -> pa.Table:
    parts = sorted((Path(out_dir) / "decisions").glob("part-*.parquet"))
    if not parts:
        raise FileNotFoundError(f"{out_dir}/decisions holds no parts; run aigp infer first.")
    table = pa.concat_tables([pq.read_table(p, schema=DECISION_SCHEMA) for p in parts])
    ids = table.column("prompt_id").to_pylist()
    if len(set(ids)) != len(ids):
        raise ValueError(f"{out_dir}/decisions holds a prompt twice; the folder mixes two runs. Delete it and rerun.")
    return table

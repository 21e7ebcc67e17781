"""The sharded generation runner: exactly once across a real SIGKILL, crashed shards, ranks, plans."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from aigp_train.llm.backends import BackendConfig, GenerationRequest, HFBackendConfig, SamplingConfig, make_backend
from aigp_train.llm.generation import (
    GenerationError,
    rank_and_world,
    read_generations,
    run_generation,
    shard_path,
)
from aigp_train.llm.models import REPO_ROOT, load_model_recipe
from aigp_train.llm.tokenizer import ACT_ONLY
from aigp_train.outputs import FAULT_AFTER_WRITE

TINY = "recipes/models/tiny-qwen3-moe.yaml"
NUM_REQUESTS = 6
SAMPLING = dict(n=2, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=8, seed=3)

# The worker a test kills: the real runner, the real hf backend, the tiny model, one request per shard.
WORKER = """
import sys
from aigp_train.llm.backends import BackendConfig, GenerationRequest, HFBackendConfig, SamplingConfig, make_backend
from aigp_train.llm.generation import run_generation
from aigp_train.llm.models import load_model_recipe
sys.path.insert(0, {tests!r})
from test_generation import requests, SAMPLING
backend = make_backend(BackendConfig(kind="hf", hf=HFBackendConfig(batch_size=1, device="cpu",
                                                                   constrain_act_only="none", force_decision="none")),
                       load_model_recipe({tiny!r}))
print("ready", flush=True)
run_generation(requests(), backend, SamplingConfig(**SAMPLING), sys.argv[1], shard_size=1,
               extra=lambda r: {{"sku": r.state["sku"]}})
"""


def requests(adapter: dict[int, str] | None = None) -> list[GenerationRequest]:
    adapter = adapter or {}
    return [GenerationRequest(f"p{i:03d}", [{"role": "user", "content": f"sku {i} price {10 + i}.5 {ACT_ONLY}"}],
                              {"sku": f"s{i}"}, True, adapter.get(i)) for i in range(NUM_REQUESTS)]


@pytest.fixture(scope="module")
def hf():
    return make_backend(BackendConfig(kind="hf", hf=HFBackendConfig(batch_size=1, device="cpu",
                                                                    constrain_act_only="none", force_decision="none")),
                        load_model_recipe(TINY))


def _spawn(out: Path, **env: str) -> subprocess.Popen:
    code = WORKER.format(tests=str(Path(__file__).parent), tiny=TINY)
    return subprocess.Popen([sys.executable, "-c", code, str(out)], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RANK": "0", "WORLD_SIZE": "1", **env})


@pytest.mark.slow
def test_sigkill_mid_run_then_restart_answers_every_request_exactly_once(tmp_path, hf):
    out = tmp_path / "gen"
    # the fault hook SIGKILLs the worker right after shard 2: mid-run on any box, however quiet or busy
    proc = _spawn(out, **{FAULT_AFTER_WRITE: "shard-00002.jsonl"})
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    done_before = sorted(out.glob("shard-*.jsonl"))
    assert [p.name for p in done_before] == [shard_path(out, i).name for i in range(3)]
    kept = {p.name: p.read_bytes() for p in done_before}
    for p in done_before:  # every shard on disk is whole: it parses and has its one row
        assert len([json.loads(line) for line in p.read_text().splitlines()]) == 1
    with pytest.raises(GenerationError, match="missing"):
        read_generations(out)  # an unfinished run is never mistaken for a finished one

    restart = _spawn(out)
    _, err = restart.communicate(timeout=300)
    assert restart.returncode == 0, err[-2000:]
    rows = read_generations(out)
    assert [r["request_id"] for r in rows] == [f"p{i:03d}" for i in range(NUM_REQUESTS)]  # once each, in order
    assert [r["sku"] for r in rows] == [f"s{i}" for i in range(NUM_REQUESTS)]
    assert all(len(r["completions"]) == 2 and r["backend"] == "hf" for r in rows)
    for name, data in kept.items():  # finished shards were skipped, not regenerated
        assert (out / name).read_bytes() == data
    assert not list(out.glob(".*tmp"))  # no temp files left behind

    # Same completions as one uninterrupted run: the kill changed nothing but the time taken.
    ref = tmp_path / "ref"
    run_generation(requests(), hf, SamplingConfig(**SAMPLING), ref, shard_size=1,
                   extra=lambda r: {"sku": r.state["sku"]})
    assert [r["completions"] for r in read_generations(ref)] == [r["completions"] for r in rows]


def test_crashed_shard_is_reported_and_the_rest_kept(tmp_path, hf):
    """A real backend failure (the adapter folder of request 5 does not exist) fails its shard only;
    once the adapter exists, a rerun regenerates that shard and nothing else."""
    from peft import LoraConfig, get_peft_model

    from aigp_train.llm.models import build_model

    out, adapter = tmp_path / "gen", tmp_path / "adapter"
    reqs = requests({5: str(adapter)})
    greedy = SamplingConfig(n=1, temperature=0.0, top_k=0, top_p=1.0, max_new_tokens=4, seed=0)
    logs: list[str] = []
    with pytest.raises(GenerationError, match=r"1 shard\(s\) failed on rank 0: \[2\]") as err:
        run_generation(reqs, hf, greedy, out, shard_size=2, log=logs.append)
    assert "2 other shard(s) are written and kept" in str(err.value)
    assert sorted(p.name for p in out.glob("shard-*.jsonl")) == ["shard-00000.jsonl", "shard-00001.jsonl"]
    assert "adapter" in (out / "shard-00002.error.txt").read_text()  # the traceback, for the operator
    assert any("shard 2 failed" in line for line in logs)

    get_peft_model(build_model(load_model_recipe(TINY), "cpu"),
                   LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.jsonl")}
    result = run_generation(reqs, hf, greedy, out, shard_size=2)
    assert (result.written, result.skipped) == ([2], [0, 1])
    assert all((out / n).stat().st_mtime_ns == t for n, t in mtimes.items())
    assert not (out / "shard-00002.error.txt").exists()
    rows = read_generations(out)
    assert [r["request_id"] for r in rows] == [r.request_id for r in reqs]
    assert rows[5]["adapter"] == str(adapter)


def test_ranks_split_shards_and_together_cover_everything(tmp_path, hf):
    out = tmp_path / "gen"
    greedy = SamplingConfig(n=1, temperature=0.0, top_k=0, top_p=1.0, max_new_tokens=2, seed=0)
    r1 = run_generation(requests(), hf, greedy, out, shard_size=2, rank=1, world_size=2)
    assert r1.written == [1] and r1.num_shards == 3
    with pytest.raises(GenerationError, match="missing 2 of 3 shards"):
        read_generations(out)
    r0 = run_generation(requests(), hf, greedy, out, shard_size=2, rank=0, world_size=2)
    assert r0.written == [0, 2]
    assert len(read_generations(out)) == NUM_REQUESTS


def test_a_different_plan_is_refused(tmp_path, hf):
    out = tmp_path / "gen"
    greedy = SamplingConfig(n=1, temperature=0.0, top_k=0, top_p=1.0, max_new_tokens=2, seed=0)
    run_generation(requests()[:2], hf, greedy, out, shard_size=2)
    with pytest.raises(ValueError, match="differs in: num_shards, shard_size"):
        run_generation(requests()[:2], hf, greedy, out, shard_size=1)
    with pytest.raises(ValueError, match="num_requests"):
        run_generation(requests()[:3], hf, greedy, out, shard_size=2)
    # same ids, other prompt text (prompts rebuilt from other logs) or another adapter: never the old answers
    reworded = [dataclasses.replace(r, messages=[{"role": "user", "content": "other"}]) for r in requests()[:2]]
    with pytest.raises(ValueError, match="differs in: requests_sha256"):
        run_generation(reworded, hf, greedy, out, shard_size=2)
    with pytest.raises(ValueError, match="differs in: requests_sha256"):
        run_generation(requests({0: "runs/other/adapter"})[:2], hf, greedy, out, shard_size=2)
    dup = requests()[:2] + requests()[:1]
    with pytest.raises(ValueError, match="unique"):
        run_generation(dup, hf, greedy, tmp_path / "other", shard_size=2)
    assert shard_path(out, 0).is_file()


def test_rank_and_world_from_torchrun_or_slurm(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    assert rank_and_world() == (0, 1)
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    assert rank_and_world() == (1, 2)  # srun without torchrun (one vLLM replica per node)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert rank_and_world() == (3, 4)  # torchrun's view wins
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="outside"):
        rank_and_world()

"""The progress line: steady interval, rate over this run's work only, ETA, the window verdict, plain text."""

from __future__ import annotations

import os

import pytest

from aigp_train.progress import Progress, duration


class _Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_interval_rate_eta_and_window():
    clock, lines = _Clock(), []
    p = Progress("infer", 1000, "prompts", every_s=30, window_s=7 * 3600, start_done=100, log=lines.append,
                 clock=clock)
    clock.t += 10
    assert p.update(200) is not None  # the first line at once
    clock.t += 10
    assert p.update(300) is None  # within the interval: nothing
    clock.t += 20  # 40 s in, 400 done this run (the 100 of a previous run are not in the rate)
    line = p.update(500)
    assert line == ("[aigp] infer: 500/1,000 prompts (50.0 %), 10.00 prompts/s, ETA 50s; projected 1m30s of the "
                    "7h00m window: within")
    assert "\r" not in line and "\n" not in line  # a log file without a TTY reads it as it is
    slow = Progress("infer", 200_000, "prompts", window_s=7 * 3600, log=lines.append, clock=clock)
    clock.t += 3600
    assert slow.update(6400).endswith("projected 31h15m of the 7h00m window: OVER")
    clock.t += 1
    assert p.update(1000, final=True).endswith("done in 1h00m")  # 3,641 s since it started
    assert p.update(1000, final=True) is None  # the end is said once, whoever calls it again
    assert len(lines) == 4


def test_eta_for_lines_a_trainer_writes():
    clock = _Clock()
    p = Progress("sft", 100, "steps", start_done=20, log=lambda line: None, clock=clock)  # resumed at step 20
    clock.t += 60
    assert p.eta(40) == "ETA 3m00s"  # 20 steps a minute this run, 60 to go
    assert p.eta(100) == "done in 1m00s"


def test_duration():
    assert [duration(s) for s in (5, 75, 3 * 3600 + 5 * 60)] == ["5s", "1m15s", "3h05m"]


def test_generation_prints_rank0_progress_over_all_shards(tmp_path):
    from aigp_train.llm.backends import BackendConfig, GenerationRequest, SamplingConfig, make_backend
    from aigp_train.llm.generation import run_generation
    from aigp_train.pricing import load_pricing_config

    settings = {"role": "teacher", "action_noise_std": 0.0, "wrong_number_rate": 0.0, "omitted_factor_rate": 0.0,
                "incoherent_rate": 0.0, "contradiction_rate": 0.0, "malformed_json_rate": 0.0,
                "unsafe_action_rate": 0.0}
    backend = make_backend(BackendConfig(kind="scripted", scripted=settings), None, load_pricing_config())
    state = {"d_prev": 0.9, "day": 0, "units_1d": None, "current_price": 45.0, "competitor_price_mean": 50.0}
    requests = [GenerationRequest(f"r{i}", [], dict(state), True) for i in range(10)]
    sampling = SamplingConfig(n=1, temperature=0.0, top_k=0, top_p=1.0, max_new_tokens=16, seed=0)
    lines: list[str] = []
    run_generation(requests, backend, sampling, tmp_path / "g", 4, rank=0, world_size=1, log=lines.append,
                   label="teacher")
    assert lines[0].startswith("[aigp] teacher: 4/10 prompts (40.0 %)")  # the first shard, at once
    assert lines[-1].startswith("[aigp] teacher: 10/10 prompts (100.0 %)") and "done in" in lines[-1]


def _progress_lines(text: str, label: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"[aigp] {label}: ")]


def test_simulate_prints_the_progress_line(tmp_path):
    """SKUs of the written parts as the one progress line, no tqdm bar (prompts: the 2-rank test below)."""
    import re
    import subprocess
    import sys

    from tests.conftest import REPO

    sim = subprocess.run([sys.executable, "-m", "aigp_train.cli", "simulate", "recipes/tiny/market.yaml",
                          f"output_dir={tmp_path / 'market'}", "num_skus=40", "logging.skus_per_part=20"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert sim.returncode == 0, sim.stderr[-3000:]
    lines = _progress_lines(sim.stderr, "simulate")
    assert lines[0].startswith("[aigp] simulate: 20/40 SKUs (50.0 %)") and "ETA" in lines[0]  # the first part, at once
    assert re.fullmatch(r"\[aigp\] simulate: 40/40 SKUs \(100\.0 %\), [\d.]+ SKUs/s, done in \d+s", lines[-1])
    assert "\r" not in sim.stderr  # no tqdm bar: a SLURM log file shows it as garbage


STAGES_ON_TWO_RANKS = {
    # stage, recipe, overrides (4 shards: rank 0 writes shards 0 and 2, rank 1 shards 1 and 3), unit total
    "prompts": ("recipes/tiny/prompts.yaml", ["selection.max_prompts=8", "shard_size=2", "variants=[act_only]"], 8),
    "teacher": ("recipes/tiny/teacher.yaml", ["max_prompts=8", "shard_size=2", "variants=[act_only]"], 8),
}


@pytest.mark.parametrize("stage", sorted(STAGES_ON_TWO_RANKS))
def test_two_ranks_rank0_last_line_comes_after_every_rank(stage, tiny_market, tiny_prompts, tmp_path):
    """Rank 0 runs alone until its own shards are written; its line must not say done until rank 1 (started
    only then) has written the other half."""
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    recipe, overrides, total = STAGES_ON_TWO_RANKS[stage]
    out = tmp_path / stage
    inputs = f"market_dir={tiny_market}" if stage == "prompts" else f"prompts_dir={tiny_prompts}"
    cmd = [sys.executable, "-m", "aigp_train.cli", stage, recipe, inputs, f"output_dir={out}", *overrides,
           "wait_for_ranks_s=600"]
    shards = out / "act_only" if stage == "prompts" else out / "responses"
    logs = {r: tmp_path / f"rank{r}.err" for r in (0, 1)}

    def start(rank: int) -> subprocess.Popen:
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", TORCHELASTIC_RUN_ID="two-ranks")
        with open(logs[rank], "w") as err:
            return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)

    rank0 = start(0)
    try:
        deadline = time.time() + 300
        while not all((shards / f"shard-{i:05d}.jsonl").is_file() for i in (0, 2)):
            assert rank0.poll() is None and time.time() < deadline, logs[0].read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(3.0)  # rank 0 is now waiting for rank 1's shards (a wait polls every 2 s)
        before = _progress_lines(logs[0].read_text(), stage)
        assert before and not any("done in" in line or "100.0 %" in line for line in before), before
        rank1 = start(1)
        assert rank1.wait(timeout=600) == 0, logs[1].read_text()[-3000:]
        assert rank0.wait(timeout=600) == 0, logs[0].read_text()[-3000:]
    finally:
        for proc in (rank0, locals().get("rank1")):
            if proc is not None and proc.poll() is None:
                proc.kill()
    lines = _progress_lines(logs[0].read_text(), stage)
    assert lines[-1].startswith(f"[aigp] {stage}: {total}/{total} prompts (100.0 %)") and "done in" in lines[-1]
    assert sum("done in" in line for line in lines) == 1
    assert _progress_lines(logs[1].read_text(), stage) == []  # rank 0 alone prints the line

"""The progress line: steady interval, rate over this run's work only, ETA, the window verdict, plain text."""

from __future__ import annotations

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

"""Every bench script runs at a smoke size through its own ``main()`` and prints its one JSON line.

The figures of a smoke run mean nothing (tiny sizes, a busy CI box: ``--allow-busy``); what is checked is
that each script still runs end to end and prints what docs/benchmarks.md reads: metric, unit, ours, the
named reference and the ratio, and for the two-sided benches the per-round ratios' median and spread and
the load before and after (``bench/rounds.py``).
"""

from __future__ import annotations

import argparse
import importlib
import json

import pytest

from bench.rounds import REFUSED_EXIT, per_round, withhold_if_busy

SMOKE = {
    "simulate": ["--num-skus", "200", "--workers", "1", "--loop-sample", "5"],
    "fuzz_parse": ["--n", "2000"],
    "ltve": ["--transitions", "2000", "--batch", "32", "--hidden", "16", "16", "--chunk", "5", "--rounds", "2",
             "--allow-busy"],
    "dpo": ["--prompts", "2", "--pairs-per-prompt", "1", "--prompt-tokens", "64", "--batch", "2", "--steps", "1",
            "--warmup", "1", "--rounds", "1", "--threads", "1", "--allow-busy"],
    "sft": ["--steps", "3", "--examples", "12", "--context-lines", "2", "--rounds", "1", "--trl-configs",
            "padding_free", "--no-partitioned", "--allow-busy"],
}
TWO_SIDED = ("ltve", "dpo", "sft")


@pytest.mark.parametrize("name", list(SMOKE))
def test_bench_runs_at_smoke_size(name, capsys):
    status = importlib.import_module(f"bench.{name}").main(SMOKE[name])
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert status == 0
    assert {"metric", "unit", "ours", "reference", "ratio"} <= set(line), sorted(line)
    assert line["ours"] > 0 and line["reference"]["name"] and line["reference"]["value"] > 0 and line["ratio"] > 0
    if name in TWO_SIDED:
        lo, hi = line["ratio_spread"]
        median = line["ratio_per_round_median"] if name == "ltve" else line["ratio"]
        assert lo <= median <= hi
        assert set(line["load_avg_1m"]) >= {"before", "after", "max_load"}


def test_per_round_ratio_is_the_median_of_the_rounds_with_its_spread():
    assert per_round([2.0, 3.0, 10.0], [1.0, 1.0, 2.0]) == {"ratio": 3.0, "ratio_spread": [2.0, 5.0],
                                                           "ratio_per_round": [2.0, 3.0, 5.0]}
    with pytest.raises(ValueError):
        per_round([1.0], [1.0, 2.0])


def test_a_busy_box_withholds_the_ratio_unless_asked():
    def line():
        return {"metric": "m", "ours": 2.0, "reference": {"name": "r", "value": 1.0}, "ratio": 2.0,
                "ratio_spread": [1.5, 2.5]}

    quiet = argparse.Namespace(max_load=1.0, allow_busy=False)
    ok = line()
    assert withhold_if_busy(ok, 0.4, 2.5, 2, quiet) == 0 and ok["ratio"] == 2.0  # after: own 2 threads allowed
    busy = line()
    assert withhold_if_busy(busy, 3.0, 3.0, 2, quiet) == REFUSED_EXIT
    assert busy["ratio"] is None and busy["ratio_spread"] is None and "--allow-busy" in busy["refused"]
    assert busy["ours"] == 2.0 and busy["load_avg_1m"]["before"] == 3.0  # the sides' own figures stay
    allowed = line()
    assert withhold_if_busy(allowed, 3.0, 3.0, 2, argparse.Namespace(max_load=1.0, allow_busy=True)) == 0
    assert allowed["ratio"] == 2.0 and allowed["busy"] is True

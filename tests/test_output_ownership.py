"""Output folders through the real CLI: ``--force`` removes only what the stage wrote, a folder that
holds anything else (or is an input, or holds one) is refused naming what is in the way, and one run
holds a folder at a time (``aigp_train.outputs``)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MARKET = ["simulate", "recipes/tiny/market.yaml", "num_skus=60"]


def _aigp(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aigp_train.cli", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "WANDB_MODE": "disabled", **(env or {})}, timeout=300)


def _snapshot(folder: Path) -> dict[str, str]:
    """Every path under ``folder`` with its content's hash (folders as 'dir')."""
    return {str(p.relative_to(folder)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def market(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ownership") / "market"
    proc = _aigp(*MARKET, f"output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _user_recipe_beside_data(root: Path, market: Path) -> Path:
    folder = root / "mine"
    folder.mkdir()
    (folder / "recipe.yaml").write_text("my: own recipe\n")
    (folder / "data.csv").write_text("sku,price\na,1\n")
    return folder


def _project(root: Path, market: Path) -> Path:
    folder = root / "project"
    (folder / ".git").mkdir(parents=True)
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (folder / "src").mkdir()
    (folder / "src" / "main.py").write_text("print('mine')\n")
    (folder / "notes.md").write_text("notes\n")
    return folder


def _finished_run_plus_notes(root: Path, market: Path) -> Path:
    folder = root / "run"
    assert _aigp(*MARKET, f"output_dir={folder}").returncode == 0
    (folder / "notes.md").write_text("my notes about this run\n")
    return folder


def _market_itself(root: Path, market: Path) -> Path:
    return market


def _above_market(root: Path, market: Path) -> Path:
    return market.parent


# (id, make the folder, stage args (the folder is {out}, the market {market}), names the message must hold)
CASES = [
    ("user_recipe_beside_data", _user_recipe_beside_data, MARKET, ["data.csv", "recipe.yaml"]),
    ("project_with_git", _project, MARKET, [".git/", "src/", "notes.md"]),
    ("user_notes_in_a_finished_run", _finished_run_plus_notes, [*MARKET, "num_skus=70"], ["notes.md"]),
    ("prompts_into_its_market_dir", _market_itself,
     ["prompts", "recipes/tiny/prompts.yaml", "market_dir={market}"], ["market_dir", "is this stage's input"]),
    ("prompts_above_its_market_dir", _above_market,
     ["prompts", "recipes/tiny/prompts.yaml", "market_dir={market}"], ["market_dir", "holds this stage's input"]),
    ("prompts_into_a_simulate_folder", _finished_run_plus_notes,
     ["prompts", "recipes/tiny/prompts.yaml", "market_dir={market}"], ["logs/", "skus.parquet"]),
]


@pytest.mark.parametrize("force", [True, False], ids=["force", "no_force"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_folder_with_what_aigp_did_not_write_is_refused_and_kept(case, force, market, tmp_path):
    name, make, args, needles = case
    folder = make(tmp_path, market)
    before, market_before = _snapshot(folder), _snapshot(market)
    filled = [a.format(market=market) for a in args]
    proc = _aigp(*filled, f"output_dir={folder}", *(["--force"] if force else []))
    assert proc.returncode == 2, proc.stderr[-3000:]
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith(f"aigp {args[0]}: ") and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for needle in needles:
        assert needle in message, message
    assert "rerun with --force" not in message  # --force would not help: never recommended here
    assert _snapshot(folder) == before and _snapshot(market) == market_before


def test_force_removes_only_what_the_stage_wrote(tmp_path):
    """A changed recipe under --force starts over: the stage's own entries go, an empty folder and a
    nested run of another stage stay."""
    out = tmp_path / "run"
    assert _aigp(*MARKET, f"output_dir={out}").returncode == 0
    (out / "empty").mkdir()
    nested = out / "nested_market"
    assert _aigp(*MARKET, f"output_dir={nested}").returncode == 0
    nested_before = _snapshot(nested)
    refused = _aigp(*MARKET, f"output_dir={out}", "seed=5")
    assert refused.returncode == 2 and "rerun with --force" in refused.stderr  # only aigp's own pieces: --force helps
    proc = _aigp(*MARKET, f"output_dir={out}", "seed=5", "--force")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "empty").is_dir() and _snapshot(nested) == nested_before
    assert "seed: 5" in (out / "recipe.yaml").read_text()


def _wait_for(predicate, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_two_runs_into_one_folder_the_second_is_refused(tmp_path):
    out = tmp_path / "run"
    lock = out / ".aigp.lock"
    first = subprocess.Popen([sys.executable, "-m", "aigp_train.cli", *MARKET, "num_skus=2000", f"output_dir={out}"],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: lock.is_file() and "pid" in lock.read_text() or first.poll() is not None)
        os.kill(first.pid, signal.SIGSTOP)  # hold the first run inside its lock while the second starts
        try:
            second = _aigp(*MARKET, "num_skus=2000", f"output_dir={out}", "--force")
        finally:
            os.kill(first.pid, signal.SIGCONT)
        _, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert second.returncode == 2, second.stderr[-3000:]
    assert f"pid {first.pid}" in second.stderr and "in use by another aigp run" in second.stderr
    assert first.returncode == 0, err[-3000:]
    assert lock.read_text() == ""  # released on exit: a later run finds no stale holder


def test_a_killed_runs_lock_is_named_and_taken_over(tmp_path):
    out = tmp_path / "run"
    killed = _aigp(*MARKET, f"output_dir={out}", "logging.skus_per_part=20",
                   env={"AIGP_FAULT_AFTER_WRITE": "part-00001.parquet"})
    assert killed.returncode == -signal.SIGKILL
    holder = (out / ".aigp.lock").read_text().strip()
    assert holder.startswith("pid ")
    stale = [out / "logs" / ".part-00002.parquet.k1ll3d00.tmp", out / "logs" / ".part-00003.parquet.k1ll3d01.tmp"]
    for path in stale:  # what writes killed before their rename leave
        path.write_bytes(b"half a file")
    again = _aigp(*MARKET, f"output_dir={out}", "logging.skus_per_part=20")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"last locked by {holder}, which is gone" in again.stderr
    assert not any(path.exists() for path in stale)  # swept on resume

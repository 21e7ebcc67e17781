"""RL baselines as pricing policies: ``RLPolicy.decide(ctx) -> Decisions`` (after Ψ).

The interface of ``aigp_train.evaluate.policies`` (Price-Sales, LLM): a context is what is known
before the day-t decision (calendar, d_{t-1}, yesterday's log row as ``prev_*``). The baselines'
state is the LTVE's state s_t (``aigp_train.ltve.features.state_features``), which also needs the
SKU's price history since launch (reference-price gaps), and DT reads the SKU's last days as a
sequence. So the policy keeps the SKU-day rows it has seen (``History``): logged rows handed to
``add_logs`` (offline evaluation on held-out states) and the contexts it decided itself, completed
with the outcomes the next day's context carries (a closed loop such as the A/B test). Nothing here
reads a simulator: the same code prices ingested real logs.

* DDPG / SAC: the actor's deterministic action (SAC: the mean, squashed) × max_step, then Ψ.
* DT: conditioned on a return-to-go target (a quantile of the training returns, the recipe's
  ``dt.target_quantile``), reduced by the eq.-3 rewards the SKU has earned since launch; its
  action × max_step, then Ψ.
* DT + LTVE (paper Table 2's online row): DT's actions under the K targets of
  ``dt.candidate_quantiles`` are the candidates (after Ψ); the LTVE's Q (min of the twin critics)
  picks one; ties go to the first target.
* LTVE-greedy (``LTVEGreedyPolicy``): the argmax of the LTVE's Q over the safe grid on the same
  states, what the critic alone would do (the room DPO could gain, in the paired A/B).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from aigp_train.baselines.models import load_model, read_header
from aigp_train.evaluate.policies import Contexts, Decisions
from aigp_train.ltve.features import LAGGED_COLUMNS, READ_COLUMNS, Normalizer, state_features
from aigp_train.ltve.model import load_ltve
from aigp_train.ltve.trainer import intra_op_threads
from aigp_train.pricing import project_action
from aigp_train.pricing.reward import References, rewards_from_arrays, roi

__all__ = ["History", "LTVEGreedyPolicy", "RLPolicy"]

# yesterday's outcome columns of a state that a context carries as prev_<name> (roi is recomputed)
_FROM_CONTEXT = tuple(c for c in (*LAGGED_COLUMNS, "competitor_price_mean", "competitor_price_min") if c != "roi")
_OUTCOMES = (*LAGGED_COLUMNS, "competitor_price_mean", "competitor_price_min")


class History:
    """SKU-day rows (the columns of ``state_features``), one per (sku_id, day).

    A later row replaces an earlier one, except that a row without outcomes (today's context) never
    replaces one with them (a logged row): held-out states of one SKU on several days share the log.
    """

    def __init__(self):
        self.cols: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return 0 if self.cols is None else len(self.cols["sku_id"])

    @staticmethod
    def _key(sku: np.ndarray, day: np.ndarray) -> np.ndarray:
        return np.char.add(np.char.add(sku.astype(str), "\x00"), day.astype(str))

    def add(self, rows: dict[str, np.ndarray]) -> None:
        rows = {c: np.asarray(rows[c]) for c in (*READ_COLUMNS, "has_outcome")}
        rows["sku_id"] = rows["sku_id"].astype(str)
        rows["category"] = rows["category"].astype(str)
        both = rows if self.cols is None else {c: np.concatenate([self.cols[c], rows[c]]) for c in rows}
        key = self._key(both["sku_id"], both["day"])
        # per (sku, day): a row with its outcomes (a logged row) beats one without (a context), then the later one
        order = np.lexsort((np.arange(len(key)), both["has_outcome"].astype(bool), key))
        last = np.r_[key[order][1:] != key[order][:-1], True]
        self.cols = {c: v[np.sort(order[last])] for c, v in both.items()}

    def set_outcomes(self, sku: np.ndarray, day: np.ndarray, values: dict[str, np.ndarray]) -> None:
        if self.cols is None:
            return
        key = self._key(self.cols["sku_id"], self.cols["day"])
        pos = {k: i for i, k in enumerate(key.tolist())}
        idx = np.array([pos.get(k, -1) for k in self._key(sku, day).tolist()], dtype=np.int64)
        hit = idx >= 0
        for c, v in values.items():
            self.cols[c] = self.cols[c].astype(np.float64)
            self.cols[c][idx[hit]] = np.asarray(v, dtype=np.float64)[hit]
        self.cols["has_outcome"][idx[hit]] = True

    def upto(self, sku: np.ndarray, day: np.ndarray) -> dict[str, np.ndarray]:
        """Rows of these SKUs up to each one's decision day (earlier rows only feed the states)."""
        last = dict(zip(sku.tolist(), day.tolist()))
        hs, hd = self.cols["sku_id"], self.cols["day"]
        limit = np.array([last.get(s, -1) for s in hs.tolist()], dtype=np.int64)
        sel = np.flatnonzero(hd <= limit)
        return {c: v[sel] for c, v in self.cols.items()}


def _rows_of_logs(logs) -> dict[str, np.ndarray]:
    cols = {c: (logs.column(c).to_numpy(zero_copy_only=False) if hasattr(logs, "column") else np.asarray(logs[c]))
            for c in READ_COLUMNS}
    cols["has_outcome"] = np.ones(len(cols["sku_id"]), dtype=bool)
    return cols


def _today_rows(ctx: Contexts) -> dict[str, np.ndarray]:
    n = len(ctx["sku_id"])
    rows = {"sku_id": np.asarray(ctx["sku_id"]).astype(str), "category": np.asarray(ctx["category"]).astype(str),
            "day": np.asarray(ctx["day"], np.int64), "day_of_week": np.asarray(ctx["day_of_week"], np.int64),
            "is_promotion": np.asarray(ctx["is_promotion"], bool), "list_price": np.asarray(ctx["list_price"], float),
            "discount_prev": np.asarray(ctx["d_prev"], float), "has_outcome": np.zeros(n, bool)}
    rows.update({c: np.zeros(n) for c in _OUTCOMES})  # unknown until tomorrow's context (zeros, never read)
    return rows


class RLPolicy:
    """One trained baseline of ``aigp baselines`` (``<output>/<dt|ddpg|sac>/model.safetensors``)."""

    is_text = False

    def __init__(self, model_path: str | Path, pricing, name: str, ltve=None):
        path = Path(model_path)
        path = path / "model.safetensors" if path.is_dir() else path
        self.algo, self.header, extra = load_model(path)
        self.kind, self.pricing, self.name, self.ltve = self.header["kind"], pricing, name, ltve
        if abs(float(self.header["max_step"]) - pricing.max_step) > 1e-12:
            raise ValueError(f"baseline {path} was trained with max_step {self.header['max_step']}, the recipe's "
                             f"pricing.max_step is {pricing.max_step}; use the same pricing block.")
        if ltve is not None and self.kind != "dt":
            raise ValueError(f"{name}: the LTVE picks among DT's candidates; {self.kind} proposes one action.")
        self.normalizer = Normalizer(extra["normalizer.mean"].numpy(), extra["normalizer.std"].numpy())
        self.categories = list(self.header["categories"])
        self.gmv_tier = dict(self.header["gmv_tier"])
        self.history = History()
        self.logs = None
        if self.kind == "dt":
            self.references = References.load(path.parent / "references.json")
            self.transformer = self.algo.impl.modules.transformer.eval()

    def add_logs(self, logs) -> "RLPolicy":
        """Logged SKU-day rows (a pyarrow Table or a mapping of columns) whose history the states need, e.g.
        the held-out SKUs' earlier days. Only the rows of the SKUs a ``decide`` call prices are read from it."""
        self.logs = logs if hasattr(logs, "filter") else pa.table({c: np.asarray(logs[c]) for c in READ_COLUMNS})
        return self

    def _pull_logged(self, sku: np.ndarray) -> None:
        if self.logs is None:
            return

        mask = pc.is_in(self.logs.column("sku_id"), value_set=pa.array(np.unique(sku).tolist(), pa.string()))
        rows = self.logs.filter(mask)
        if rows.num_rows:
            self.history.add(_rows_of_logs(rows))

    def decide(self, ctx: Contexts, prompts=None) -> Decisions:
        # the recipe's cpu_threads (tiny: 1): a 600-sequence DT forward took 0.26 s on 2 threads of the shared
        # 2-core box and 0.03 s on 1
        with intra_op_threads(self.header.get("cpu_threads")):
            return self._decide(ctx)

    def _decide(self, ctx: Contexts) -> Decisions:
        self._pull_logged(np.asarray(ctx["sku_id"]).astype(str))
        table, today = states_of(self.history, ctx, self.pricing)
        d_prev = np.asarray(ctx["d_prev"], np.float64)
        if len(today) == 0:
            return Decisions(np.zeros(0))
        sku = np.asarray(ctx["sku_id"]).astype(str)
        if self.kind in ("ddpg", "sac"):
            obs = self.normalizer(state_features(table, self.categories, self.gmv_tier, rows=today))
            raw = np.asarray(self.algo.predict(obs), np.float64)[:, 0] * self.pricing.max_step
            return Decisions(self._psi(raw, d_prev))
        targets = ([self.header["target_return"]] if self.ltve is None else list(self.header["candidate_returns"]))
        cand = self._psi(self._dt_actions(table, today, targets), d_prev[:, None])
        if self.ltve is None:
            return Decisions(cand[:, 0])
        q = self.ltve.q(self.ltve.features(table, rows=today), cand)
        return Decisions(cand[np.arange(len(sku)), q.argmax(1)])

    def _psi(self, a: np.ndarray, d_prev: np.ndarray) -> np.ndarray:
        # two decimals, the unit the prompts write; Ψ last, so the result is always in A_safe
        return project_action(np.round(a, 2), d_prev, self.pricing)

    @torch.no_grad()
    def _dt_actions(self, table: dict, today: np.ndarray, targets: list[float]) -> np.ndarray:
        """``[N, K]``: DT's action at each ``today`` row for each return-to-go target (its SKU's last L days as the
        sequence; the K targets share the sequence and run as one batch)."""
        L = int(self.header["config"]["context_size"])
        sku, day = table["sku_id"], table["day"].astype(np.int64)
        feats = self.normalizer(state_features(table, self.categories, self.gmv_tier))
        has_out = table["has_outcome"].astype(bool)
        r = np.zeros(len(sku))
        if has_out.any():
            r[has_out] = rewards_from_arrays(table["category"][has_out], day[has_out], table["gmv"][has_out],
                                             table["marketing_spend"][has_out], self.references, self.pricing)
        row_of = {(s, d): i for i, (s, d) in enumerate(zip(sku.tolist(), day.tolist()))}
        n, F = len(today), feats.shape[1]
        obs, act = np.zeros((n, L, F), np.float32), np.zeros((n, L, 1), np.float32)
        spent, steps, mask = np.zeros((n, L, 1), np.float32), np.zeros((n, L), np.int64), np.zeros((n, L), np.float32)
        d_prev = table["discount_prev"].astype(np.float64)
        for i, t_row in enumerate(today):
            s, t = sku[t_row], int(day[t_row])
            chain = [row_of[(s, k)] for k in range(t + 1)]  # state_features has checked the history is complete
            earned = np.concatenate([[0.0], np.cumsum(r[chain[:-1]])])  # eq.-3 reward before each day
            days = range(max(0, t - L + 1), t + 1)
            off = L - len(days)
            for j, k in enumerate(days):
                obs[i, off + j] = feats[chain[k]]
                spent[i, off + j, 0] = earned[k]
                steps[i, off + j] = k + 1
                mask[i, off + j] = 1.0
                if k < t:  # a_k = d_k - d_{k-1}; today's slot is the one DT fills
                    act[i, off + j, 0] = (d_prev[chain[k + 1]] - d_prev[chain[k]]) / self.pricing.max_step
        k = len(targets)
        rtg = (np.asarray(targets, np.float32)[None, :, None, None] - spent[:, None]) * mask[:, None, :, None]
        rep = lambda x: torch.from_numpy(np.repeat(x, k, axis=0))  # noqa: E731  row i*K + j: state i, target j
        out = self.transformer(rep(obs), rep(act), torch.from_numpy(rtg.reshape(n * k, L, 1)), rep(steps),
                               rep(1.0 - mask))
        return out[:, -1, 0].double().numpy().reshape(n, k) * self.pricing.max_step


def states_of(history: History, ctx: Contexts, pricing) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Record the contexts (and yesterday's outcomes they carry) in ``history``; return the rows the states
    need and the row of each context's decision day in them."""
    sku, day = np.asarray(ctx["sku_id"]).astype(str), np.asarray(ctx["day"], np.int64)
    has = np.asarray(ctx["has_prev"], bool)
    if has.any():  # yesterday's outcomes of SKUs this policy priced itself
        values = {c: np.asarray(ctx[f"prev_{c}"], np.float64)[has] for c in _FROM_CONTEXT}
        values["roi"] = roi(values["gmv"], values["marketing_spend"], pricing.roi_spend_floor)
        history.set_outcomes(sku[has], day[has] - 1, values)
    history.add(_today_rows(ctx))
    table = history.upto(sku, day)
    pos = {k: i for i, k in enumerate(History._key(table["sku_id"], table["day"]).tolist())}
    return table, np.array([pos[k] for k in History._key(sku, day).tolist()], dtype=np.int64)


class LTVEGreedyPolicy:
    """What the critic alone would do: argmax of the LTVE's Q over the safe grid, on states built from the
    SKUs' own history (a closed loop such as the A/B test; no simulator read)."""

    is_text = False

    def __init__(self, ltve, pricing, name: str):
        self.ltve, self.pricing, self.name, self.history = ltve, pricing, name, History()

    def decide(self, ctx: Contexts, prompts=None) -> Decisions:
        table, today = states_of(self.history, ctx, self.pricing)
        if len(today) == 0:
            return Decisions(np.zeros(0))
        return Decisions(self.ltve.greedy(self.ltve.features(table, rows=today), np.asarray(ctx["d_prev"], float),
                                          self.pricing))


def rl_policy(spec, pricing) -> RLPolicy:
    """The policy of an ``aigp evaluate`` row or ``aigp abtest`` group of kind ``rl`` (``baseline_path``;
    with ``ltve_picks`` the LTVE at ``ltve_path``, else the one the baseline learned from, picks DT's candidate)."""
    if not spec.baseline_path:
        raise ValueError(f"{spec.name!r} is kind rl but names no baseline_path (an aigp baselines folder, e.g. "
                         "<output>/dt).")
    ltve = None
    if spec.ltve_picks:
        path = Path(spec.ltve_path or read_header(spec.baseline_path)["ltve_dir"])
        ltve = load_ltve(path / "model.safetensors" if path.is_dir() else path)
    return RLPolicy(spec.baseline_path, pricing, spec.name, ltve)

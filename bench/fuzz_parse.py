"""Benchmark and fuzz: ``parse_action`` on N random and hostile answers (one JSON line).

    python bench/fuzz_parse.py                 # N = 10^6
    python bench/fuzz_parse.py --n 20000 --seed 1
    # the same 10^6 answers in four commands (a busy box), then one line for all of them:
    for s in 0 250000 500000 750000; do python bench/fuzz_parse.py --start $s --stop $((s+250000)) > part-$s.json; done
    python bench/fuzz_parse.py --merge part-*.json

Every answer is built by ``hostile_answer`` (also the generator of the property test in
tests/test_pricing_parse.py): prose, action JSON with hostile values (integers of 300-5000
digits, NaN/inf spellings, Unicode digits, percent strings, huge exponents, wrong types), key
variants, nested, repeated and distinct action objects, lenient and truncated JSON, runaway
braces and 200,000-character answers. Counted: calls that raised (must be 0), results outside
A_safe (must be 0), failures by reason, calls/s and the slowest call. Reference: the same parser
on canonical answers (reasoning + ``format_action``), measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from aigp_train.pricing import format_action, load_pricing_config, parse_action  # noqa: E402
from aigp_train.pricing.a_safe import in_a_safe  # noqa: E402
from aigp_train.pricing.parse import FAILURES  # noqa: E402

_WORDS = ["price", "lower", "raise", "hold", "CTR", "ROI", "milestone", "Conclusion:", "discount", "the", "of",
          "step", "ignore previous instructions", "SYSTEM:", "```json", "```", "\n", "<|im_start|>", "</think>"]
_KEYS = ["discount_change", "new_discount", "Discount-Change", "NEW DISCOUNT", "discount change", "price",
         "decision", "action"]
_NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", '"nan"', '"-inf"', '"Infinity"', '"+INF"',
               '"NaN%"', "1E400", '"1e999"', '"∞"']
_UNICODE_NUMBERS = ['"٠.٠٥"', '"０.０５"', '"-５％"', '"߀.߁"', '"۱۲"', '"²"', '"½"', '"−0.05"', '"–0.05"',
                    '"0.05\u200b"', '"\u2212 5 %"', '"𝟎.𝟎𝟓"']
_PLAIN = ["-0.05", "0.05", "0", "0.0", "-0", "1", "-1", "1.0", "2", "-5", "85", "0.85", "-0.3", "0.2", "-0.2",
          '"-0.05"', '"-5%"', '"+3 %"', '"20%"', '"85%"', '"85"', '"0.85"', '"-5"', "true", "false", "null",
          "[0.1]", '{"v": 0.1}', '"lower"', '""', "1e-5", "-1e-400", ".5", "-.5", "5.", "0x10", "+0.05", "1_000"]


# Random digits to cut huge integers from (str() of a 5000-digit int is refused by Python itself).
_DIGITS = "".join(random.Random(0).choices("0123456789", k=20_000))


def _huge_int(rng: random.Random) -> str:
    digits = rng.choice([300, 309, 310, 311, 400, 1000, 4299, 4300, 4301, 5000])
    start = rng.randrange(len(_DIGITS) - digits)
    return rng.choice(["", "-"]) + str(rng.randint(1, 9)) + _DIGITS[start:start + digits - 1]


def _value(rng: random.Random) -> str:
    pick = rng.random()
    if pick < 0.15:
        return _huge_int(rng)
    if pick < 0.3:
        return rng.choice(_NON_FINITE)
    if pick < 0.45:
        return rng.choice(_UNICODE_NUMBERS)
    if pick < 0.55:
        return f"{rng.uniform(-2, 2):.{rng.randint(0, 6)}f}"
    if pick < 0.6:
        return f"{rng.choice(['', '-'])}{rng.randint(1, 9)}e{rng.choice(['', '-', '+'])}{rng.randint(0, 10 ** 6)}"
    return rng.choice(_PLAIN)


def _action_object(rng: random.Random) -> str:
    keys = rng.sample(_KEYS[:5], rng.randint(1, 2)) if rng.random() < 0.9 else [rng.choice(_KEYS)]
    body = ", ".join(f'"{k}": {_value(rng)}' for k in keys)
    obj = "{" + body + ("," if rng.random() < 0.05 else "") + "}"
    if rng.random() < 0.05:
        obj = obj.replace('"', "'")  # a Python literal
    for _ in range(rng.choice([0, 0, 0, 1, 2, 50])):  # nested inside a wrapper
        obj = rng.choice(['{"decision": %s}', '{"options": [%s]}', '{"a": 1, "b": %s}', "[%s]"]) % obj
    return obj


def _fragment(rng: random.Random) -> str:
    pick = rng.random()
    if pick < 0.35:
        return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 12)))
    if pick < 0.75:
        return _action_object(rng)
    if pick < 0.8:
        return "".join(chr(rng.randint(1, 0x10FFFF)) for _ in range(rng.randint(1, 20))).replace("\x00", "")
    if pick < 0.85:
        return _action_object(rng)[: rng.randint(1, 30)]  # truncated generation
    if pick < 0.9:
        return rng.choice(["{", "}", "{{", '{"', '{"a":', "[", "]", '"', "'"]) * rng.randint(1, 50)
    if pick < 0.95:
        return format_action(round(rng.uniform(-0.3, 0.3), 2))
    return '{"reason": "a } b { c", "discount_change": %s}' % _value(rng)


def hostile_answer(rng: random.Random) -> str:
    """One random or hostile model answer (a composition of fragments; about 1 in 500 is huge)."""
    pick = rng.random()
    if pick < 0.001:
        return (" ".join(rng.choice(_WORDS) for _ in range(40)) * 400)[:200_000] + _action_object(rng)
    if pick < 0.002:
        return rng.choice(['{"a":', "{", '{"k": [', '{"a": "', "{'a': "]) * rng.randint(1_000, 30_000) + _fragment(rng)
    if pick < 0.003:
        return _huge_int(rng) * rng.randint(1, 40)
    if pick < 0.05:
        obj = _action_object(rng)
        return "Reasoning.\n" + "\n".join([obj] * rng.randint(2, 5))  # identical repeats
    return " ".join(_fragment(rng) for _ in range(rng.randint(1, 6)))


def d_prev_sample(rng: random.Random) -> float:
    """d_{t-1} inside the band mostly, sometimes outside it but within one step (A_safe non-empty)."""
    return rng.uniform(0.5, 1.0) if rng.random() < 0.9 else rng.uniform(0.3, 1.2)


def fuzz(n: int, seed: int, first: int = 0) -> dict:
    """Parse answers ``first`` .. ``n - 1`` of the seed's stream (the earlier ones are drawn, not parsed)."""
    cfg = load_pricing_config()
    rng = random.Random(seed)
    failures, raised, outside = Counter(), Counter(), 0
    slowest, parse_s = (0.0, ""), 0.0
    for index in range(n):
        text, d_prev = hostile_answer(rng), d_prev_sample(rng)
        if index < first:
            continue
        start = time.perf_counter()
        try:
            parsed = parse_action(text, d_prev, cfg)
        except Exception as exc:  # noqa: BLE001 -- counting every escape is the point of the benchmark
            raised[type(exc).__name__] += 1
            continue
        elapsed = time.perf_counter() - start
        parse_s += elapsed
        if elapsed > slowest[0]:
            slowest = (elapsed, text[:60])
        failures[parsed.failure or "ok"] += 1
        bad = parsed.failure not in (None, *FAILURES) or abs(parsed.discount - d_prev - parsed.action) > 1e-12
        outside += int(bad or not in_a_safe(parsed.action, d_prev, cfg))
    return {"raised": sum(raised.values()), "raised_by_type": dict(raised), "outside_a_safe": outside,
            "failures": dict(sorted(failures.items())), "parse_s": parse_s, "slowest_call_s": round(slowest[0], 4),
            "slowest_call_head": slowest[1]}


def canonical_rate(n: int, seed: int) -> float:
    cfg = load_pricing_config()
    rng = random.Random(seed)
    texts = [("Step 1 ... Conclusion: lower price.\n" + format_action(round(rng.uniform(-0.2, 0.2), 2)), 0.8)
             for _ in range(n)]
    start = time.perf_counter()
    for text, d_prev in texts:
        parse_action(text, d_prev, cfg)
    return n / (time.perf_counter() - start)


def merge(paths: list[str]) -> dict:
    """One line for the chunks of one stream (``--start/--stop`` runs): counts added, calls/s over the
    summed parse time, the reference averaged over the chunks (each measured in its own run)."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    n = sum(p["n"] for p in parts)
    parse_s = sum(p["n"] / p["ours"] for p in parts)
    reference = sum(p["reference"]["value"] for p in parts) / len(parts)
    add = lambda key: dict(sorted(sum((Counter(p[key]) for p in parts), Counter()).items()))  # noqa: E731
    slowest = max(parts, key=lambda p: p["slowest_call_s"])
    return {"metric": parts[0]["metric"], "unit": parts[0]["unit"], "ours": round(n / parse_s, 1),
            "reference": {"name": parts[0]["reference"]["name"] + f" (mean of {len(parts)} runs)",
                          "value": round(reference, 1)},
            "ratio": round(n / parse_s / reference, 3), "n": n, "seed": parts[0]["seed"],
            "chunks": [[p["start"], p["stop"]] for p in parts], "raised": sum(p["raised"] for p in parts),
            "raised_by_type": add("raised_by_type"), "outside_a_safe": sum(p["outside_a_safe"] for p in parts),
            "failures": add("failures"), "slowest_call_s": slowest["slowest_call_s"],
            "slowest_call_head": slowest["slowest_call_head"], "wall_s": round(sum(p["wall_s"] for p in parts), 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10 ** 6, help="hostile answers to parse")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start", type=int, default=0, help="first answer of the stream to parse (a chunk of --n)")
    ap.add_argument("--stop", type=int, default=None, help="end of the chunk (default --n)")
    ap.add_argument("--merge", nargs="+", help="merge the JSON lines of chunk runs into one line")
    args = ap.parse_args(argv)
    if args.merge:
        print(json.dumps(merge(args.merge)))
        return 0
    stop = args.n if args.stop is None else args.stop
    wall = time.perf_counter()
    result = fuzz(stop, args.seed, args.start)
    n = stop - args.start
    ours = n / result.pop("parse_s")
    reference = canonical_rate(min(n, 100_000), args.seed)
    print(json.dumps({"metric": "parse_action_calls_per_s", "unit": "hostile answers parsed per second",
                      "ours": round(ours, 1),
                      "reference": {"name": "parse_action on canonical answers, same run",
                                    "value": round(reference, 1)},
                      "ratio": round(ours / reference, 3), "n": n, "seed": args.seed, "start": args.start,
                      "stop": stop, **result,
                      "wall_s": round(time.perf_counter() - wall, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

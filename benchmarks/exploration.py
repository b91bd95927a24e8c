"""Exploration in a closed loop (issue 6): greedy, epsilon-greedy, UCB, Thompson sampling, LinUCB, and
repeated-exposure weighting, on the simulator's ad market.

    python benchmarks/exploration.py [--seeds 1 2 3] [--policies ...] [--rounds 60]
    python benchmarks/exploration.py --report

Market (untwine.sim.market, world seed 2024): 5,000 users, 1,500 ads, 300 live at the start, 15 new
ads per round, budgets of 60 clicks x bid, 60 rounds of 2,000 requests (4 hours each), 20 candidates
per request, one slot. Every policy serves round 0 at random; then the model (DNN [64, 32] over user
demographics + external vector and ad id / category / advertiser / external vector; a bootstrap
ensemble of 5) retrains after every round on it plus 4,000 replayed impressions. Seeds change the
request stream, the clicks and the models' initialisation. ``*_rew``: the same policy trained with
repeated-exposure weights w(n) = min(4, 1 + ln(1 + n)) on negatives. ``--setting cold`` hides the ad's
content (category, advertiser, external vector) from the model: ads are known by id only, so every
new ad starts cold and exploration has something to find. Writes
benchmarks/results/exploration/ (runs/*.json, exploration.md, regret.png).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, load_runs, machine, mean_std, write_json  # noqa: E402

OUT = RESULTS / "exploration"
POLICIES = ["random", "greedy", "epsilon_greedy", "ucb", "thompson", "linucb", "greedy_rew", "thompson_rew"]


SETTINGS = {"content": ("ad_id", "category", "advertiser", "ad_ext"), "cold": ("ad_id",)}


def config(policy: str, seed: int, rounds: int, setting: str = "content"):
    from untwine.explore.loop import LoopConfig
    from untwine.explore.uncertainty import UncertaintyConfig
    from untwine.sim.market import MarketConfig
    from untwine.sim.world import SimConfig
    from untwine.train.losses import RepeatExposureWeight

    base = policy.removesuffix("_rew")
    market = MarketConfig(world=SimConfig(n_users=5000, n_ads=1500, days=14, seed=2024), rounds=rounds, seed=seed)
    return LoopConfig(market=market, policy=base, uncertainty=UncertaintyConfig(members=5, seed=seed),
                      item_features=SETTINGS[setting],
                      rew=RepeatExposureWeight(tasks=(0,), alpha=1.0, form="log", cap=4.0) if policy.endswith("_rew") else None)


def plot(recs: list[dict], path: Path, setting: str) -> None:
    from untwine.analysis.collapse import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    fig.suptitle(f"setting: {setting} ({'ads by id only' if setting == 'cold' else 'ad id and content features'})",
                 fontsize=9)
    for p in POLICIES:
        rs = [r for r in recs if r["policy"] == p]
        if not rs:
            continue
        cum = np.array([np.cumsum([x["regret"] for x in r["rounds"]]) for r in rs])
        m, s = cum.mean(0), cum.std(0)
        x = np.arange(1, cum.shape[1] + 1)
        style = "--" if p.endswith("_rew") else "-"
        (line,) = axes[0].plot(x, m, style, label=p)
        axes[0].fill_between(x, m - s, m + s, color=line.get_color(), alpha=0.15)
        new = np.array([[y["new_ad_impressions"] / y["requests"] for y in r["rounds"]] for r in rs]).mean(0)
        rep = np.array([[y["repeat_rate"] for y in r["rounds"]] for r in rs]).mean(0)
        axes[1].plot(x, new, style, label=p)
        axes[2].plot(x, rep, style, label=p)
    axes[0].set_title("cumulative regret vs the oracle (eCPM), mean ± std", fontsize=9)
    axes[1].set_title("share of impressions won by ads that entered later", fontsize=9)
    axes[2].set_title("repeat-exposure rate (user saw the ad in the last 3 days)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("round (2,000 requests)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def table(all_recs: list[dict]) -> str:
    lines = ["# Exploration in a closed loop (issue 6)", "", "`python benchmarks/exploration.py [--setting cold]`", "",
             f"Machine: {json.dumps(machine())}. Sums over rounds 1..{len(all_recs[0]['rounds']) - 1} (round 0 is served "
             "at random by every policy), mean ± std over seeds. Regret: oracle eCPM - chosen eCPM with the true "
             "pCTR; expected revenue: bid x true pCTR of the chosen ads; new-ad share: impressions won by ads "
             "that entered after round 0; repeat rate: impressions of an ad the user saw in the last 3 days "
             "(whose true CTR fatigue lowers). Plots: regret_<setting>.png.", ""]
    for setting in SETTINGS:
        recs = [r for r in all_recs if r.get("setting", "content") == setting]
        if recs:
            lines += [f"## {setting}", ""] + _rows(recs) + [""]
    return "\n".join(lines)


def _rows(recs: list[dict]) -> list[str]:
    lines = ["| policy | seeds | cumulative regret | expected revenue | clicks | new-ad share | repeat rate | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for p in POLICIES:
        rs = [r for r in recs if r["policy"] == p]
        if not rs:
            continue
        agg = lambda key: [sum(x[key] for x in r["rounds"][1:]) for r in rs]  # noqa: E731
        share = [sum(x["new_ad_impressions"] for x in r["rounds"][1:]) / sum(x["requests"] for x in r["rounds"][1:])
                 for r in rs]
        rep = [statistics.mean(x["repeat_rate"] for x in r["rounds"][1:]) for r in rs]
        fmt = lambda xs, d=1: (f"{statistics.mean(xs):,.{d}f} ± {statistics.stdev(xs):,.{d}f}"  # noqa: E731
                               if len(xs) > 1 else f"{xs[0]:,.{d}f}")
        lines.append(f"| {p} | {len(rs)} | {fmt(agg('regret'))} | {fmt(agg('expected_revenue'))} | "
                     f"{fmt(agg('clicks'), 0)} | {mean_std(share)} | {mean_std(rep)} | "
                     f"{statistics.mean(r['seconds'] for r in rs):,.0f} |")
    return lines


def load() -> list[dict]:
    return load_runs(OUT / "runs")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--policies", nargs="+", choices=POLICIES)
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--setting", choices=list(SETTINGS), default="content")
    ap.add_argument("--report", action="store_true")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)  # the loop runs single-threaded; machine() in the table reports it
    if not a.report:
        from untwine.explore.loop import run_loop

        for seed in a.seeds:
            for p in a.policies or POLICIES:
                t0 = time.perf_counter()
                rounds = run_loop(config(p, seed, a.rounds, a.setting))
                rec = {"policy": p, "seed": seed, "setting": a.setting, "rounds": rounds,
                       "seconds": time.perf_counter() - t0}
                prefix = "" if a.setting == "content" else f"{a.setting}_"
                write_json(OUT / "runs" / f"{prefix}{p}_s{seed}.json", rec)
                print(p, seed, f"regret {sum(r['regret'] for r in rounds[1:]):.1f}",
                      f"revenue {sum(r['expected_revenue'] for r in rounds[1:]):.1f}", f"{rec['seconds']:.0f}s", flush=True)
    recs = load()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "exploration.md").write_text(table(recs))
    for setting in SETTINGS:
        rs = [r for r in recs if r.get("setting", "content") == setting]
        if rs:
            plot(rs, OUT / f"regret_{setting}.png", setting)
    print((OUT / "exploration.md").read_text())


if __name__ == "__main__":
    main()

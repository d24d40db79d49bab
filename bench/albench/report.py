"""Tables, verdicts and plots of the label-efficiency benchmark (bench.albench.harness).

Statistics: every arm is compared with a reference arm (random, and entropy for the EEM arms) as a
paired difference per seed (same seed set, seed model and schedule). A difference is reported as
better / worse only when |mean| exceeds the standard deviation of the paired differences over
seeds (ddof = 1); otherwise it is "no difference" (=). One seed gives no verdict.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from segxal import imageio

METRICS = (("miou", "mIoU"), ("near_miou", "near-field mIoU"))
BACKGROUND = ("road", "sidewalk", "building", "vegetation", "sky", "terrain")
VULNERABLE = ("person", "rider", "bicycle", "motorcycle")


def _by(runs: list[dict], protocol: str) -> dict[str, dict[float, dict[int, dict]]]:
    """arm -> budget -> seed -> record."""
    out: dict = {}
    for r in runs:
        if r["protocol"] == protocol:
            out.setdefault(r["arm"], {}).setdefault(r["budget"], {})[r["seed"]] = r
    return out


def _std(v: list[float]) -> float:
    return float(np.std(v, ddof=1)) if len(v) > 1 else float("nan")


def paired(table: dict, arm: str, ref: str, budget: float, metric: str) -> dict | None:
    """Paired difference arm - ref over the seeds both have, in points of the metric (x 100)."""
    a, b = table.get(arm, {}).get(budget, {}), table.get(ref, {}).get(budget, {})
    seeds = sorted(set(a) & set(b))
    d = [100 * (a[s][metric] - b[s][metric]) for s in seeds
         if a[s][metric] is not None and b[s][metric] is not None]
    if not d:
        return None
    mean, std = float(np.mean(d)), _std(d)
    return {"mean": mean, "std": std, "wins": sum(x > 0 for x in d), "n": len(d), "verdict": _verdict(d)}


def _verdict(d: list[float]) -> str:
    """The module's rule for paired differences d (one per seed): better / worse only beyond the spread."""
    mean, std = float(np.mean(d)), _std(d)
    if len(d) < 2:
        return "n=1"
    return "better" if mean > std else "worse" if mean < -std else "="


_MARK = {"better": "▲", "worse": "▼", "=": "=", "n=1": ""}


def pooled(table: dict, arm: str, ref: str, metric: str, budgets: list[float]) -> dict | None:
    """Arm - ref over the whole curve: per seed, the paired difference averaged over the budgets
    (the area between the curves), then mean and std over seeds; and the sign test over every
    (seed, budget) pair: wins of N and the one-sided binomial p of that many wins or more when
    neither arm is better (p = 0.5 per pair; pairs of one seed are not independent, so p is a
    rough guide, not a test to publish)."""
    per_seed: dict[int, list[float]] = {}
    for b in budgets:
        a, r = table.get(arm, {}).get(b, {}), table.get(ref, {}).get(b, {})
        for seed in set(a) & set(r):
            per_seed.setdefault(seed, []).append(100 * (a[seed][metric] - r[seed][metric]))
    per_seed = {k: v for k, v in per_seed.items() if len(v) == len(budgets)}
    if not per_seed:
        return None
    curve = [float(np.mean(v)) for v in per_seed.values()]
    pairs = [x for v in per_seed.values() for x in v]
    wins, n = sum(x > 0 for x in pairs), len(pairs)
    p = sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n
    return {"mean": float(np.mean(curve)), "std": _std(curve), "seeds_won": sum(x > 0 for x in curve),
            "seeds": len(curve), "wins": wins, "n": n, "p": p, "verdict": _verdict(curve)}


def _pooled_rows(table: dict, budgets: list[float], ref: str, arms: list[str]) -> list[str]:
    out = []
    for arm in arms:
        cells = []
        for metric, _ in METRICS:
            q = pooled(table, arm, ref, metric, budgets)
            if q is None:
                cells.append("-")
                continue
            std = "" if np.isnan(q["std"]) else f"±{q['std']:.1f}"
            cells.append(f"{q['mean']:+.2f}{std} ({q['seeds_won']}/{q['seeds']}) {_MARK[q['verdict']]}; pairs won "
                         f"{q['wins']}/{q['n']}, p {q['p']:.2f}")
        out.append(f"| {arm} | " + " | ".join(cells) + " |")
    return out


def _cell(vals: list[float]) -> str:
    v = [100 * x for x in vals if x is not None and np.isfinite(x)]
    if not v:
        return "-"
    return f"{np.mean(v):.1f}±{np.std(v, ddof=1):.1f}" if len(v) > 1 else f"{v[0]:.1f}"


def _diff_cell(p: dict | None) -> str:
    if p is None:
        return "-"
    std = "" if np.isnan(p["std"]) else f"±{p['std']:.1f}"
    return f"{p['mean']:+.1f}{std} ({p['wins']}/{p['n']}) {_MARK[p['verdict']]}"


def _eem_arms(table: dict) -> list[str]:
    return [a for a in table if a.startswith("eem") or a == "pae"]


def best_eem(table: dict, budgets: list[float]) -> str | None:
    """The EEM variant with the highest mean paired gain over random, averaged over budgets."""
    best, best_gain = None, -np.inf
    for arm in _eem_arms(table):
        gains = [p["mean"] for b in budgets if (p := paired(table, arm, "random", b, "miou"))]
        if gains and np.mean(gains) > best_gain:
            best, best_gain = arm, float(np.mean(gains))
    return best


def verdicts(report: dict) -> list[str]:
    """One line per protocol: does the best EEM variant beat random and entropy beyond the spread?"""
    lines = []
    for protocol in ("frame", "region"):
        table = _by(report["runs"], protocol)
        if not table:
            continue
        budgets = sorted({b for arm in table.values() for b in arm})
        best = best_eem(table, budgets)
        if best is None:
            continue
        for metric, label in METRICS:
            parts = []
            for ref in ("random", "entropy"):
                if ref not in table:
                    continue
                ps = [(b, paired(table, best, ref, b, metric)) for b in budgets]
                wins = [f"{100 * b:g}%" for b, p in ps if p and p["verdict"] == "better"]
                losses = [f"{100 * b:g}%" for b, p in ps if p and p["verdict"] == "worse"]
                parts.append(f"vs {ref}: better beyond the spread at {len(wins)} of {len(budgets)} budgets"
                             f"{' (' + ', '.join(wins) + ')' if wins else ''}"
                             f"{'; worse at ' + ', '.join(losses) if losses else ''}")
            lines.append(f"- {protocol} protocol, best EEM variant `{best}`, {label}: " + "; ".join(parts))
    return lines


def _schedule(cfg: dict) -> str:
    if cfg.get("budget_steps"):
        return "steps per budget point " + " / ".join(str(s) for s in cfg["budget_steps"])
    return f"{cfg['steps']} steps at every budget point"


def _share(d: dict, names) -> float:
    return float(sum(d.get(n, 0.0) for n in names))


def markdown(report: dict, title: str = "Label-efficiency benchmark", note: str = "") -> str:
    """The report as Markdown; `note` (Markdown, e.g. what changed since the last run and why) goes
    right after the configuration paragraph."""
    cfg = report["config"]
    out = [f"# {title}", "",
           f"{report['n_train']} training frames (seed set {cfg['seed_frames']}, the rest is the pool), "
           f"{report['n_val']} validation frames, {cfg['size'][0]}x{cfg['size'][1]}, U-Net width {cfg['width']} "
           f"depth {cfg['unet_depth']} (bottleneck dropout {cfg['dropout']}), seeds {cfg['seeds']}, "
           f"{_schedule(cfg)} (batch {cfg['batch_size']}) from the seed model, "
           f"device {cfg['device']}. Wall time {report.get('seconds', 0) / 60:.1f} min, "
           f"loadavg at the end: {report.get('loadavg', 'n/a')}.", ""]
    if note:
        out += [note.strip(), ""]
    c0 = report["cycle0"]
    if c0:
        out.append("Seed model (cycle 0, no acquisition): mIoU "
                   f"{_cell([c['miou'] for c in c0])}, near-field {_cell([c['near_miou'] for c in c0])}.")
        out.append("")
    out.append("Cells: mean±std over seeds; Δ = paired difference with random per seed, mean±std "
               "(seeds won / seeds); ▲ / ▼ beyond the spread, = inside it (no difference).")
    out.append("")
    for protocol, unit in (("frame", "% of pool frames"), ("region", "% of pool pixels")):
        table = _by(report["runs"], protocol)
        if not table:
            continue
        budgets = sorted({b for arm in table.values() for b in arm})
        for metric, label in METRICS:
            out += [f"## {protocol} protocol: {label} (budget in {unit})", ""]
            head = "| arm | " + " | ".join(f"{100 * b:g}% | Δ {100 * b:g}%" for b in budgets) + " |"
            out += [head, "|" + "---|" * (1 + 2 * len(budgets))]
            for arm in table:
                cells = []
                for b in budgets:
                    vals = [r[metric] for r in table[arm].get(b, {}).values()]
                    cells.append(_cell(vals))
                    cells.append("" if arm == "random" else _diff_cell(paired(table, arm, "random", b, metric)))
                out.append(f"| {arm} | " + " | ".join(cells) + " |")
            out.append("")
        eems = [a for a in _eem_arms(table) if "entropy" in table]
        if eems:
            out += [f"### {protocol} protocol: EEM variants vs entropy (paired Δ mIoU / Δ near-field)", ""]
            out += ["| arm | " + " | ".join(f"{100 * b:g}%" for b in budgets) + " |",
                    "|" + "---|" * (1 + len(budgets))]
            for arm in eems:
                out.append(f"| {arm} | " + " | ".join(
                    f"{_diff_cell(paired(table, arm, 'entropy', b, 'miou'))} / "
                    f"{_diff_cell(paired(table, arm, 'entropy', b, 'near_miou'))}" for b in budgets) + " |")
            out.append("")
        others = [a for a in table if a != "random"]
        if "random" in table and others and len(budgets) > 1:
            out += [f"### {protocol} protocol over the whole curve (Δ averaged over the budgets, per seed)", "",
                    "Mean±std over seeds of each seed's average paired difference (seeds won), ▲ / ▼ when "
                    "|mean| > std; and the (seed, budget) pairs won with a one-sided sign-test p. With 3 seeds a "
                    "single ▲ in the tables above appears by chance for about 1 comparison in 9 (t > √3 at 2 "
                    "degrees of freedom), and there are many comparisons: read a difference as real only "
                    "where it holds over the curve and over seeds.", "",
                    "| arm | Δ mIoU vs random | Δ near-field vs random |", "|---|---|---|"]
            out += _pooled_rows(table, budgets, "random", others)
            eems = _eem_arms(table)
            if "entropy" in table and eems:
                out += ["", "| EEM arm | Δ mIoU vs entropy | Δ near-field vs entropy |", "|---|---|---|"]
                out += _pooled_rows(table, budgets, "entropy", eems)
            out.append("")
        last = budgets[-1]
        out += [f"### {protocol} protocol at {100 * last:g}%: vulnerable classes (IoU %) and annotation cost", "",
                "| arm | " + " | ".join(VULNERABLE) + " | frames | regions | human pixels |",
                "|" + "---|" * (4 + len(VULNERABLE))]
        for arm in table:
            recs = list(table[arm].get(last, {}).values())
            if not recs:
                continue
            vul = [_cell([r["vulnerable"][c] for r in recs]) for c in VULNERABLE]
            cost = [f"{np.mean([r['cost'][k] for r in recs]):.0f}" for k in ("frames", "regions", "pixels")]
            out.append(f"| {arm} | " + " | ".join(vul + cost) + " |")
        out.append("")
        out += _diagnosis(protocol, table, budgets)
    sched = _by(report.get("schedule", []), "frame").get("random")
    main = _by(report["runs"], "frame").get("random")
    if sched and main:
        out += ["## Is the schedule long enough? (frame protocol, random arm, mIoU)", "",
                "Long enough when the paired change from doubling the steps is smaller than the spread of "
                "random over seeds (its std at the benchmark's steps).", "",
                (f"| budget | {cfg['steps']} steps | {2 * cfg['steps']} steps |" if not cfg.get("budget_steps")
                 else "| budget | the schedule | 2 x the schedule |") + " Δ (paired) | Δ inside the spread? |",
                "|---|---|---|---|---|"]
        for b in sorted(sched):
            a = [main.get(b, {}).get(s, {}).get("miou") for s in sched[b]]
            z = [r["miou"] for r in sched[b].values()]
            d = [100 * (y - x) for x, y in zip(a, z) if x is not None]
            spread = _std([100 * x for x in a if x is not None])
            ok = "n/a" if np.isnan(spread) else ("yes" if abs(np.mean(d)) < spread else "no") if d else "-"
            out.append(f"| {100 * b:g}% | {_cell(a)} | {_cell(z)} | "
                       f"{np.mean(d):+.1f}±{_std(d):.1f} | {ok} |" if d else f"| {100 * b:g}% | - | - | - | - |")
        out.append("")
    out += ["## Verdict", ""] + verdicts(report) + [""]
    if report.get("skipped"):
        out += [f"Skipped by the deadline: {len(report['skipped'])} (seed, arm) runs.", ""]
    return "\n".join(out)


def _diagnosis(protocol: str, table: dict, budgets: list[float]) -> list[str]:
    """What each arm picks: drive-log diversity, where its top pixels sit (predicted classes, no
    ground truth), and (after the fact, from ground truth) how much of a rare class it got labeled."""
    out = [f"### {protocol} protocol: what each arm picks (mean over seeds and cycles)", ""]
    if protocol == "frame":
        out += ["| arm | distinct drive logs per 10 picks | top-5 % map pixels on road/sidewalk/building/"
                "vegetation/sky/terrain (predicted) | new labeled pixels that are person/rider/bicycle/"
                "motorcycle (ground truth, after the fact) | pool frames with a constant CAM | first picks "
                "shared with entropy | rank correlation with entropy (cycle 1) |",
                "|---|---|---|---|---|---|---|"]
    else:
        out += ["| arm | mean region (px) | regions per cycle | frames per cycle | new labeled pixels that are "
                "person/rider/bicycle/motorcycle (ground truth, after the fact) |", "|---|---|---|---|---|"]
    for arm, by_b in table.items():
        recs = [r for b in budgets for r in by_b.get(b, {}).values()]
        vul = np.mean([_share(r["diag"]["gt_class_share_of_new_labels"], VULNERABLE) for r in recs])
        if protocol == "frame":
            seq = np.mean([10 * r["diag"]["sequences"] / max(1, len(r["picks"])) for r in recs])
            tops = [_share(r["diag"]["top_pixel_pred_classes"], BACKGROUND) for r in recs
                    if "top_pixel_pred_classes" in r["diag"]]
            top = f"{100 * np.mean(tops):.0f} %" if tops else "-"
            dead = np.mean([r["diag"].get("cam_dead_share", np.nan) for r in recs])
            first = budgets[0]
            shared, corr = [], []
            for seed, r in by_b.get(first, {}).items():
                ent = table.get("entropy", {}).get(first, {}).get(seed)
                if ent is not None and r["picks"]:
                    shared.append(len(set(r["picks"]) & set(ent["picks"])) / len(r["picks"]))
                if "rank_corr_with_entropy" in r["diag"]:
                    corr.append(r["diag"]["rank_corr_with_entropy"])
            sh = f"{100 * np.mean(shared):.0f} %" if shared else "-"
            co = f"{np.mean(corr):+.2f}" if corr else "-"
            out.append(f"| {arm} | {seq:.1f} | {top} | {100 * vul:.1f} % | {100 * dead:.0f} % | {sh} | {co} |")
        else:
            d = [r["diag"] for r in recs]
            out.append(f"| {arm} | {np.mean([x['mean_region_px'] for x in d]):.0f} | "
                       f"{np.mean([x['regions_this_cycle'] for x in d]):.0f} | "
                       f"{np.mean([x['frames_this_cycle'] for x in d]):.0f} | {100 * vul:.1f} % |")
    out.append("")
    pseudo = []  # arms with pseudo-labels: what the machine oracle returned, per budget point
    for arm, by_b in table.items():
        cells = []
        for b in budgets:
            d = [r["diag"] for r in by_b.get(b, {}).values() if "pseudo_labeled_share" in r["diag"]]
            if d:
                taus = [x["tau"] for x in d if x.get("tau") is not None]
                tau = f"{np.mean(taus):.2f}" if taus else "none"
                cells.append(f"{100 * b:g}%: tau {tau}, {100 * np.mean([x['pseudo_labeled_share'] for x in d]):.0f} %")
        if cells:
            pseudo.append(f"- `{arm}`: " + "; ".join(cells))
    if pseudo:
        out += ["Pseudo-labels (tau used, mean over seeds; share of a pseudo-labeled frame's pixels that got a "
                "label; tau 'none': no threshold reached the precision):", ""] + pseudo + [""]
    return out


def plot(report: dict, out_dir: Path) -> list[Path]:
    """mIoU and near-field mIoU against % labeled, one mean ± std band per arm, one PNG per protocol;
    plus the schedule check. Returns the files written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    written = []
    for protocol, xlabel in (("frame", "% of pool frames labeled"), ("region", "% of pool pixels labeled")):
        table = _by(report["runs"], protocol)
        if not table:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100)
        cmap = plt.get_cmap("tab20")
        for k, arm in enumerate(table):
            budgets = sorted(table[arm])
            for ax, (metric, label) in zip(axes, METRICS):
                x = [100 * np.mean([r["x"] for r in table[arm][b].values()]) for b in budgets]
                ys = [[100 * r[metric] for r in table[arm][b].values()] for b in budgets]
                m = np.array([np.mean(y) for y in ys])
                s = np.array([np.std(y, ddof=1) if len(y) > 1 else 0.0 for y in ys])
                style = "-" if arm in ("random", "entropy") or arm.startswith("eem") else "--"
                ax.plot(x, m, style, marker="o", ms=3, color=cmap(k % 20), label=arm,
                        lw=2.2 if arm in ("random", "entropy") else 1.2)
                ax.fill_between(x, m - s, m + s, color=cmap(k % 20), alpha=0.15)
                ax.set_xlabel(xlabel)
                ax.set_ylabel(f"val {label} (%)")
                ax.set_xscale("log")
                ax.set_xticks(x, [f"{v:.3g}" for v in x])
                ax.minorticks_off()
                ax.grid(alpha=0.3)
        axes[1].legend(fontsize=7, ncol=2)
        fig.suptitle(f"{protocol} protocol (bands: ±1 std over seeds)")
        fig.tight_layout()
        written.append(_save(fig, out_dir / f"al_{protocol}.png", plt))
    sched = _by(report.get("schedule", []), "frame").get("random")
    main = _by(report["runs"], "frame").get("random")
    if sched and main:
        fig, ax = plt.subplots(figsize=(5.5, 4), dpi=100)
        steps = report["config"]["steps"]
        for arm_t, lab in ((main, f"{steps} steps"), (sched, f"{2 * steps} steps")):
            b = sorted(arm_t)
            y = [[100 * r["miou"] for r in arm_t[v].values()] for v in b]
            m = np.array([np.mean(v) for v in y])
            s = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in y])
            ax.plot([100 * v for v in b], m, marker="o", label=lab)
            ax.fill_between([100 * v for v in b], m - s, m + s, alpha=0.2)
        ax.set_xlabel("% of pool frames labeled (random)")
        ax.set_ylabel("val mIoU (%)")
        ax.set_title("schedule check: N vs 2N steps")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        written.append(_save(fig, out_dir / "al_schedule.png", plt))
    return written


def _save(fig, path: Path, plt) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    imageio.atomic_write_bytes(path, buf.getvalue())
    return path

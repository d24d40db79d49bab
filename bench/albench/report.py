"""Tables, verdicts and plots of the label-efficiency benchmark (bench.albench.harness).

The statistics (bench.albench.stats) are fixed before the run: one primary endpoint per protocol
(stats.PRIMARY_ENDPOINT), paired over seeds, 95 % t intervals, Holm per family, the equivalence
margin stats.EQUIVALENCE_MARGIN. Per-budget cells are descriptive (mean and SD over seeds); no
verdict is drawn from them.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from bench.albench import stats
from segxal import imageio

VULNERABLE = ("person", "rider", "bicycle", "motorcycle")
REFERENCES = ("random", "entropy")
# Secondary questions, fixed before the run (one Holm family per protocol): does the product's EEM
# fusion beat the paper's, does EEM add to diversity, does diversity add to EEM
SECONDARY = (("eem", "eem-add"), ("eem+div", "coreset"), ("eem+div", "eem"),
             ("eem-ebugrad", "eem"), ("eem-clsbal", "eem"),  # CAM targets against the shipped one (issue 32;
             ("eem-clsagn", "eem"),  # eem-clsbal: cam_targets/al.md's run, when eem was class-agnostic)
             ("eem-hires", "eem"))  # the CAM method: HiResCAM against the shipped GradCAM (docs/cam.md)


def curves(runs: list[dict], protocol: str, metric: str = "miou") -> dict[str, dict[int, list[list[float]]]]:
    """arm -> seed -> curves (one per draw) of `metric` in points, budget order; incomplete curves dropped."""
    budgets = sorted({r["budget"] for r in runs if r["protocol"] == protocol})
    by: dict = {}
    for r in runs:
        if r["protocol"] == protocol:
            by.setdefault(r["arm"], {}).setdefault(r["seed"], {}).setdefault(r.get("draw", 0), {})[r["budget"]] = \
                100 * r[metric] if r[metric] is not None else float("nan")
    out: dict = {}
    for arm, seeds in by.items():
        for seed, draws in seeds.items():
            full = [[d[b] for b in budgets] for d in draws.values() if all(b in d for b in budgets)]
            if full:
                out.setdefault(arm, {})[seed] = full
    return out


def key_arms(report: dict, protocol: str) -> list[str]:
    """The key arms of the run (every seed), in run order."""
    from bench.albench.harness import ALL_ARMS
    names = {r["arm"] for r in report["runs"] if r["protocol"] == protocol}
    return [a.name for a in ALL_ARMS if a.protocol == protocol and a.key and a.name in names]


def comparisons(report: dict, protocol: str, metric: str = "miou") -> dict[str, list[stats.Comparison]]:
    """reference -> the Holm-corrected comparisons of every other arm with it on the primary endpoint
    (key arms one family, exploratory arms another)."""
    cur = curves(report["runs"], protocol, metric)
    keys = set(key_arms(report, protocol))
    out = {}
    for ref in REFERENCES:
        if ref not in cur:
            continue
        fams: dict[str, list[stats.Comparison]] = {"key": [], "exploratory": []}
        for arm in cur:
            if arm == ref:
                continue
            fam = "key" if arm in keys else "exploratory"
            d = stats.whole_curve_differences(cur[arm], cur[ref])
            fams[fam].append(stats.paired_comparison(arm, ref, list(d.values()), fam))
        out[ref] = stats.compare_family(fams["key"]) + stats.compare_family(fams["exploratory"])
    return out


def secondary(report: dict, protocol: str, metric: str = "miou") -> list[stats.Comparison]:
    """The SECONDARY comparisons both arms of which ran in `protocol`, Holm-corrected as one family."""
    cur = curves(report["runs"], protocol, metric)
    cs = [stats.paired_comparison(a, b, list(stats.whole_curve_differences(cur[a], cur[b]).values()), "secondary")
          for a, b in SECONDARY if a in cur and b in cur]
    return stats.compare_family(cs)


def _fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "-"
    return f"{p:.3f}" if p >= 0.001 else "<0.001"


def _comparison_rows(cs: list[stats.Comparison], with_reference: bool = False) -> list[str]:
    out = ["| arm | " + ("reference | " if with_reference else "") + "family | seeds | Δ mean | 95 % CI | p (t) | "
           "p Holm | p (Wilcoxon) | power at ±0.5 | seeds for 80 % | verdict |",
           "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if with_reference else "")]
    for c in cs:
        ci = f"[{c.ci_low:+.2f}, {c.ci_high:+.2f}]" if math.isfinite(c.ci_low) else "-"
        pw = f"{100 * c.power:.0f} %" if math.isfinite(c.power) else "-"
        need = "-" if c.seeds_needed is None and not math.isfinite(c.sd) else str(c.seeds_needed or ">1000")
        out.append(f"| {c.arm} | " + (f"{c.ref} | " if with_reference else "") + f"{c.family} | {c.n} | {c.mean:+.2f} | {ci} | {_fmt_p(c.p_t)} | {_fmt_p(c.p_holm)} | "
                   f"{_fmt_p(c.p_wilcoxon)} | {pw} | {need} | **{c.verdict}** |")
    return out


def _cell(v: list[float]) -> str:
    v = [x for x in v if x is not None and math.isfinite(x)]
    if not v:
        return "-"
    return f"{np.mean(v):.1f}±{np.std(v, ddof=1):.1f}" if len(v) > 1 else f"{v[0]:.1f}"


def _by(runs: list[dict], protocol: str) -> dict[str, dict[float, list[dict]]]:
    out: dict = {}
    for r in runs:
        if r["protocol"] == protocol:
            out.setdefault(r["arm"], {}).setdefault(r["budget"], []).append(r)
    return out


def _rendering_commit() -> str:
    from bench.albench.harness import git_commit
    c = git_commit()
    return c["commit"][:12] + (" + uncommitted changes" if c["dirty"] else "")


def header(report: dict) -> list[str]:
    """The run's setting, commit, and the statistics fixed before it."""
    cfg = report["config"]
    commit = report.get("commit", {})
    dirty = commit.get("dirty") or []
    seeds = sorted({c["seed"] for c in report["cycle0"]})
    return [
        f"Run at commit `{commit.get('commit', 'unknown')}`"
        + (f" (uncommitted changes in: {', '.join(dirty)})" if dirty else " (the benchmark's code clean at it)")
        + f"; tables rendered from its report (al.json.gz) by bench/albench/report.py at `{_rendering_commit()}`"
        + f"; all arms in one invocation: wall time {report.get('seconds', 0) / 60:.1f} min on "
          f"{report.get('jobs', 1)} worker process(es) of {cfg['threads']} torch thread(s), device {cfg['device']}"
          f"{', deadline %g min' % (cfg['deadline_s'] / 60) if cfg.get('deadline_s') else ''}; loadavg at the end "
          f"{report.get('loadavg', 'n/a')}.",
        "",
        f"Setting: {report['n_train']} training frames ({cfg['seed_frames']} seed frames, the rest is the pool), "
        f"numbers on the **{report.get('report_split', 'test')} split** ({report['n_test']} frames, unseen by any "
        f"arm's design; val was used for design only), {cfg['size'][0]}x{cfg['size'][1]}, U-Net width "
        f"{cfg['width']} depth {cfg['unet_depth']} whose body (all but the last decoder stage and the head) was "
        f"trained {cfg['encoder_steps']} steps on the {cfg.get('body_labels', 'classes')} of a disjoint labelled "
        f"dataset and frozen; per budget point the last decoder stage and the 19-class head train {cfg['steps']} "
        f"steps (batch {cfg['batch_size']}, lr {cfg['lr']:g}) from model 0 ({cfg['seed_steps']} steps on the "
        f"seed set; bench/albench/frozen.py). Frame budgets "
        f"{', '.join(f'{100 * b:g} %' for b in cfg['frame_budgets'])} of the pool's frames; region budgets "
        f"{', '.join(f'{100 * b:g} %' for b in cfg['pixel_budgets'])} of its pixels in {cfg['cell_px']}x"
        f"{cfg['cell_px']} cells ({cfg['cells_per_frame']} per picked frame per cycle). Seeds: {len(seeds)} "
        f"({seeds[0] if seeds else '-'}-{seeds[-1] if seeds else '-'}) for key arms, the first "
        f"{cfg['exploratory_seeds']} for exploratory arms; random: {cfg['random_draws']} draws per seed, averaged. "
        f"BALD: {cfg['mc_samples']} MC-dropout samples of the head-input dropout ({cfg['head_dropout']}).",
        "",
        "**Primary endpoints (fixed before the run, bench/albench/stats.py).** "
        f"Frame protocol: {stats.PRIMARY_ENDPOINT['frame']}. Region protocol: {stats.PRIMARY_ENDPOINT['region']}. "
        f"Each arm is compared with random and with entropy: mean of the per-seed differences, 95 % CI from "
        f"Student's t, paired t-test p, Holm-corrected across the arms compared with that reference (key arms one "
        f"family, exploratory arms another), Wilcoxon signed-rank p as a check, and the power a paired t-test "
        f"with these seeds has against a true ±{stats.EQUIVALENCE_MARGIN} mIoU at the observed SD. Verdicts: "
        f"better / worse where Holm p < {stats.ALPHA}; **no difference** only where the whole CI lies inside "
        f"±{stats.EQUIVALENCE_MARGIN} mIoU (the equivalence margin); otherwise **inconclusive**.",
        "",
    ]


def markdown(report: dict, title: str = "Label-efficiency benchmark", note: str = "") -> str:
    """The report as Markdown; `note` (the reading, Markdown) goes after the header."""
    cfg = report["config"]
    out = [f"# {title}", ""] + header(report)
    if note:
        out += [note.strip(), ""]
    c0 = report["cycle0"]
    if c0:
        out += [f"Model 0 (seed set only): test mIoU {_cell([100 * c['miou'] for c in c0])}, near-field "
                f"{_cell([100 * c['near_miou'] for c in c0])} (mean±SD over seeds).", ""]
    for protocol, unit, budgets in (("frame", "% of pool frames", cfg["frame_budgets"]),
                                    ("region", "% of pool pixels", cfg["pixel_budgets"])):
        by = _by(report["runs"], protocol)
        if not by:
            continue
        comps = comparisons(report, protocol)
        out += [f"## {protocol} protocol: primary endpoint (whole-curve Δ test mIoU, points)", ""]
        for ref, cs in comps.items():
            out += [f"vs {ref}:", ""] + _comparison_rows(cs) + [""]
        sec = secondary(report, protocol)
        if sec:
            out += ["Secondary comparisons (fixed before the run, one Holm family; `arm` minus the row's reference):",
                    ""] + _comparison_rows(sec, with_reference=True) + [""]
        out += [f"### {protocol} protocol: test mIoU per budget ({unit}; mean±SD over seeds, descriptive)", "",
                "| arm | seeds | " + " | ".join(f"{100 * b:g} %" for b in budgets) + " |",
                "|---|---|" + "---|" * len(budgets)]
        cur = curves(report["runs"], protocol)
        for arm, seeds in cur.items():
            per_seed = {s: np.mean(np.asarray(v), axis=0) for s, v in seeds.items()}  # draws averaged
            cells = [_cell([float(v[j]) for v in per_seed.values()]) for j in range(len(budgets))]
            out.append(f"| {arm} | {len(per_seed)} | " + " | ".join(cells) + " |")
        out.append("")
        near = curves(report["runs"], protocol, "near_miou")
        out += [f"### {protocol} protocol: near-field test mIoU (< {cfg['near_m']:g} m), whole-curve mean", "",
                "| arm | near-field mIoU (mean over budgets, mean±SD over seeds) |", "|---|---|"]
        for arm, seeds in near.items():
            out.append(f"| {arm} | {_cell([float(np.mean(v)) for v in seeds.values()])} |")
        out.append("")
        last = budgets[-1]
        out += [f"### {protocol} protocol at {100 * last:g} %: vulnerable classes (test IoU %) and annotation cost", "",
                "| arm | " + " | ".join(VULNERABLE) + " | frames touched | regions | human pixels | target pixels "
                "| shortfall | drive logs per 10 frames picked |", "|" + "---|" * (7 + len(VULNERABLE))]
        h, w = cfg["size"]
        for arm, bb in by.items():
            recs = bb.get(last, [])
            if not recs:
                continue
            vul = [_cell([100 * (r["vulnerable"][c] or 0) for r in recs]) for c in VULNERABLE]
            cost = [f"{np.mean([r['cost'][k] for r in recs]):.0f}" for k in ("frames", "regions", "pixels")]
            target = np.mean([r["target"] * (h * w if protocol == "frame" else 1) for r in recs])
            short = max(r["shortfall"] for b2 in bb.values() for r in b2)  # over every budget point
            logs = [10 * r["diag"]["logs"] / max(1, r["diag"].get("n_picks", r["diag"].get("frames_this_cycle", 0)))
                    for b2 in bb.values() for r in b2]
            out.append(f"| {arm} | " + " | ".join(vul + cost) + f" | {target:.0f} | "
                       + ("none" if short == 0 else f"**{short}**") + f" | {np.mean(logs):.1f} |")
        out.append("")
    out += schedule_section(report)
    if report.get("skipped_seeds"):
        out += [f"Seeds not started (deadline): {report['skipped_seeds']}.", ""]
    return "\n".join(out)


def schedule_check(report: dict) -> stats.Comparison | None:
    """Random (draw 0) at 2 x steps minus at the run's steps, paired whole-curve over seeds."""
    sched = curves(report.get("schedule", []), "frame").get("random")
    main = curves([r for r in report["runs"] if r.get("draw", 0) == 0], "frame").get("random")
    if not sched or not main:
        return None
    d = stats.whole_curve_differences(sched, {s: v[:1] for s, v in main.items()})
    return stats.paired_comparison("random at 2 x steps", "random", list(d.values()), "schedule")


def schedule_section(report: dict) -> list[str]:
    c = schedule_check(report)
    if c is None:
        return []
    cfg = report["config"]
    converged = math.isfinite(c.ci_low) and c.ci_low <= 0 <= c.ci_high
    within = math.isfinite(c.ci_low) and -stats.EQUIVALENCE_MARGIN < c.ci_low and c.ci_high < stats.EQUIVALENCE_MARGIN
    return ["## Is the schedule long enough? (frame protocol, random draw 0)", "",
            f"Paired whole-curve change of test mIoU from {cfg['steps']} to {2 * cfg['steps']} decoder steps over "
            f"{c.n} seeds: {c.mean:+.2f} points, 95 % CI [{c.ci_low:+.2f}, {c.ci_high:+.2f}] -> "
            + ("**converged** by the paired criterion (the CI holds 0)" if converged else
               "**not converged** by the paired criterion (the CI excludes 0)")
            + ("; the whole CI lies inside the ±" f"{stats.EQUIVALENCE_MARGIN} margin: what more steps would add "
               "is below the smallest difference this benchmark reads." if within else
               f"; the CI leaves the ±{stats.EQUIVALENCE_MARGIN} margin."), ""]


def plot(report: dict, out_dir: Path) -> list[Path]:
    """al_frame.png / al_region.png: test mIoU vs budget, mean over seeds with a 95 % t band."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats as sps
    written = []
    cfg = report["config"]
    for protocol, budgets in (("frame", cfg["frame_budgets"]), ("region", cfg["pixel_budgets"])):
        cur = curves(report["runs"], protocol)
        if not cur:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        x = [100 * b for b in budgets]
        keys = set(key_arms(report, protocol))
        colours = plt.get_cmap("tab20").colors
        for j, (arm, seeds) in enumerate(cur.items()):
            ys = np.stack([np.mean(np.asarray(v), axis=0) for v in seeds.values()])  # [seeds, budgets]
            m = ys.mean(0)
            # key arms solid with their band; exploratory arms (3 seeds: bands as wide as the plot) dashed
            ax.plot(x, m, marker="o", color=colours[j % 20], linestyle="-" if arm in keys else "--",
                    label=f"{arm} (n={len(ys)})")
            if len(ys) > 1 and arm in keys:
                half = sps.t.ppf(0.975, len(ys) - 1) * ys.std(0, ddof=1) / math.sqrt(len(ys))
                ax.fill_between(x, m - half, m + half, alpha=0.12, color=colours[j % 20])
        ax.set_xscale("log")
        ax.set_xlabel("% of pool frames" if protocol == "frame" else "% of pool pixels")
        ax.set_ylabel("test mIoU (%)")
        ax.set_title(f"{protocol} protocol: mean over seeds (key arms: 95 % t band; exploratory: dashed)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(_save(fig, out_dir / f"al_{protocol}.png", plt))
    return written


def _save(fig, path: Path, plt) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    imageio.atomic_write_bytes(path, buf.getvalue())
    return path

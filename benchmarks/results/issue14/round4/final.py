"""The corrections benchmark's headline files on today's defaults (round 24's adaptation, the segmenter fine-tuned for
50 steps at the adaptation's rate, the review's peak order since corrections round 4): each seed's curves taken from
the runs on the same adapted models (listed in ``merged_from``), "uncertain" being the review's order (peak),
"uncertain_coverage" the order before it, "random" random slices that show anatomy. Writes
``benchmarks/results/corrections_{C,A1}.json`` and their plots.

    python benchmarks/results/issue14/round4/final.py
"""
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parents[1]
sys.path.insert(0, str(RESULTS.parent))
import corrections  # noqa: E402

SOURCES = {
    "C": [RESULTS / "issue14/finetune_parts/order_check/corrections_C_seed0.json",
          RESULTS / "issue14/finetune_parts/order_check/corrections_C_seed2.json",
          HERE / "corrections_C_seed1.json", HERE / "peak_C_seed0.json", HERE / "peak_C_seed1.json",
          HERE / "peak_C_seed2.json"],
    "A1": [RESULTS / "issue14/finetune_parts/corrections_A1.json", HERE / "corrections_A1_seed2.json",
           HERE / "peak_A1_seed0.json", HERE / "peak_A1_seed1.json", HERE / "k8_A1_seeds01.json",
           HERE / "k8_A1_seed2.json"],
}
RENAME = {"uncertain_peak": "uncertain", "uncertain": "uncertain_coverage", "random": "random"}


def build(protocol: str) -> dict:
    runs, commits, commands = {}, set(), []
    for path in SOURCES[protocol]:
        doc = json.loads(path.read_text())
        commits.add(doc["commit"])
        commands.append(doc["command"] if isinstance(doc["command"], str) else " | ".join(doc["command"]))
        for seed, run in doc["runs"].items():
            r = runs.setdefault(seed, {"curves": {}, "finetune_s": [], "adapt_s": run.get("adapt_s")})
            for name, curve in run["curves"].items():
                if name in RENAME:
                    r["curves"].setdefault(RENAME[name], {}).update(curve)
            r["finetune_s"] += run.get("finetune_s", [])
    ks = sorted({int(k) for r in runs.values() for c in r["curves"].values() for k in c})
    for seed, r in runs.items():  # every curve on the same ks on every seed
        for name, curve in r["curves"].items():
            missing = [k for k in ks if str(k) not in curve]
            if missing:
                raise SystemExit(f"{protocol} seed {seed} {name}: no k = {missing}")
    runs = dict(sorted(runs.items(), key=lambda kv: int(kv[0])))
    doc = {"protocol": protocol, **corrections.summarise(runs), "ks": ks,
           "curve_meaning": {"uncertain": "the review's order (peak, the default since corrections round 4)",
                             "uncertain_coverage": "the coverage order (the default before)",
                             "random": "random slices that show anatomy"},
           "device": "cpu (1 thread a run, 2-4 runs on 2 cores)", "steps": 600, "finetune_steps": 50,
           "finetune": "segmenter, 50 steps, the adaptation's rate (1e-4)", "batch_size": 8, "model": "tiny",
           "commits": sorted(commits), "command": " | ".join(commands),
           "merged_from": [str(p.relative_to(RESULTS.parents[1])) for p in SOURCES[protocol]], "runs": runs}
    return doc


def main() -> None:
    for protocol in SOURCES:
        doc = build(protocol)
        out = RESULTS / f"corrections_{protocol}.json"
        out.write_text(json.dumps(doc, indent=1))
        corrections.svg_plot(doc, RESULTS / f"corrections_{protocol}.svg")
        print(protocol, json.dumps(doc["curves"]))


if __name__ == "__main__":
    main()

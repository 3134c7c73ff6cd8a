"""The corrections benchmark's headline files on today's defaults (the adaptation trained by round 24's recipe and
predicted with round 25's, the segmenter fine-tuned for 50 steps at the adaptation's rate, the review's peak order on
the network's own entropy since corrections round 5): each seed's curves taken from the runs on the same cached adapted
models (listed in ``merged_from``), "uncertain" being the review (peak, own entropy), "uncertain_shown" the review on
the smoothed entropy (round 25 to round 5), "random" random slices that show anatomy. Writes
``benchmarks/results/corrections_{C,A1}.json`` and their plots.

    python benchmarks/results/issue14/round5/final.py
"""
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parents[1]
sys.path.insert(0, str(RESULTS.parent))
import corrections  # noqa: E402

SOURCES = {
    "C": [RESULTS / "issue14/round25/corrections_C.json", HERE / "own_C.json"],
    "A1": [HERE / f"corrections_A1_seed{s}.json" for s in (0, 1, 2)] + [HERE / f"own_A1_seed{s}.json" for s in (0, 1, 2)],
}
RENAME = {"uncertain_own": "uncertain", "uncertain": "uncertain_shown", "random": "random"}


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
           "curve_meaning": {"uncertain": "the review (peak order) on the network's own entropy, the default since "
                                            "corrections round 5",
                             "uncertain_shown": "the review (peak order) on the smoothed entropy shown (round 25 to "
                                                "corrections round 5)",
                             "random": "random slices that show anatomy"},
           "device": "cpu (1 thread a run, 2-3 runs on 2 cores)", "steps": 600, "finetune_steps": 50,
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

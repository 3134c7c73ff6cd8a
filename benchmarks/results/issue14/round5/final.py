"""The corrections benchmark's headline files on today's defaults (the adaptation trained by round 24's recipe and
predicted with round 25's, the segmenter fine-tuned for 50 steps at the adaptation's rate, the review's peak order on
the network's own entropy since corrections round 5): each seed's curves taken from the runs on the same cached adapted
models (listed in ``merged_from``), "uncertain" being the review (peak, own entropy), "uncertain_shown" the review on
the smoothed entropy (round 25 to round 5), "random" random slices that show anatomy. Writes
``benchmarks/results/corrections_{C,A1}.json`` and their plots.

    python benchmarks/results/issue14/round5/final.py
"""
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
MEANING = {"uncertain": "the review (peak order) on the network's own entropy, the default since corrections round 5",
           "uncertain_shown": "the review (peak order) on the smoothed entropy shown (round 25 to corrections round 5)",
           "random": "random slices that show anatomy"}
SETTINGS = {"device": "cpu (1 thread a run, 2-3 runs on 2 cores)", "steps": 600, "finetune_steps": 50,
            "finetune": "segmenter, 50 steps, the adaptation's rate (1e-4)", "batch_size": 8, "model": "tiny"}


def build(protocol: str) -> dict:
    return corrections.join_renamed(protocol, SOURCES[protocol], RENAME, MEANING, SETTINGS)


def main() -> None:
    for protocol in SOURCES:
        corrections.write_headline(build(protocol), RESULTS)


if __name__ == "__main__":
    main()

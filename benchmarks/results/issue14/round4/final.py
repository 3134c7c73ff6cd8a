"""The corrections benchmark's headline files on today's defaults (round 24's adaptation, the segmenter fine-tuned for
50 steps at the adaptation's rate, the review's peak order since corrections round 4): each seed's curves taken from
the runs on the same adapted models (listed in ``merged_from``), "uncertain" being the review's order (peak),
"uncertain_coverage" the order before it, "random" random slices that show anatomy. Writes
``benchmarks/results/corrections_{C,A1}.json`` and their plots.

    python benchmarks/results/issue14/round4/final.py
"""
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
MEANING = {"uncertain": "the review's order (peak, the default since corrections round 4)",
           "uncertain_coverage": "the coverage order (the default before)",
           "random": "random slices that show anatomy"}
SETTINGS = {"device": "cpu (1 thread a run, 2-4 runs on 2 cores)", "steps": 600, "finetune_steps": 50,
            "finetune": "segmenter, 50 steps, the adaptation's rate (1e-4)", "batch_size": 8, "model": "tiny"}


def build(protocol: str) -> dict:
    return corrections.join_renamed(protocol, SOURCES[protocol], RENAME, MEANING, SETTINGS)


def main() -> None:
    for protocol in SOURCES:
        corrections.write_headline(build(protocol), RESULTS)


if __name__ == "__main__":
    main()

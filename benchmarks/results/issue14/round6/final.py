"""The corrections benchmark's headline files on today's defaults since corrections round 6 (the adaptation trained
by round 24's recipe and predicted with round 25's; every module fine-tuned for 50 steps at the adaptation's rate; the
review's peak order on the network's own entropy): each seed's curves from the runs on the same adapted models,
k = 1, 2, 4 from round 6's gate runs (commit 6690454, where the fine-tune of every module was the variant ``@all``)
and k = 8 from the runs after it (commit ace9eae, where it is the default and keeps the strategy's name); C's seed 2,
k = 1, 2, 4, 8, from one run after it (commit 9073133, 2026-12-03). C and A1 have seeds 0-2. Writes
``benchmarks/results/corrections_{C,A1}.json`` and their plots.

    python benchmarks/results/issue14/round6/final.py
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parents[1]
sys.path.insert(0, str(RESULTS.parent))
import corrections  # noqa: E402

GATE = {"uncertain@all": "uncertain", "random@all": "random"}  # round 6's runs: the default was the segmenter
AFTER = {"uncertain": "uncertain", "random": "random"}  # after ace9eae: every module is the default
SOURCES = {
    "C": ([HERE / f"corrections_C_seed{s}.json" for s in (0, 1)] + [HERE / "corrections_C_k8.json",
                                                                   HERE / "corrections_C_seed2.json"],
          [GATE, GATE, AFTER, AFTER]),
    "A1": ([HERE / f"corrections_A1_seed{s}.json" for s in (0, 1, 2)] + [HERE / "corrections_A1_k8.json"],
           [GATE, GATE, GATE, AFTER]),
}
MEANING = {"uncertain": "the review (peak order) on the network's own entropy, every module fine-tuned (corrections "
                        "round 6)",
           "random": "random slices that show anatomy, every module fine-tuned"}
SETTINGS = {"device": "cpu (1 thread a run, 2-5 runs on 2 cores)", "steps": 600, "finetune_steps": 50,
            "finetune": "every module, 50 steps, the adaptation's rate (1e-4)", "batch_size": 8, "model": "tiny"}


def build(protocol: str) -> dict:
    paths, renames = SOURCES[protocol]
    return corrections.join_renamed(protocol, paths, renames, MEANING, SETTINGS)


def main() -> None:
    for protocol in SOURCES:
        corrections.write_headline(build(protocol), RESULTS)


if __name__ == "__main__":
    main()

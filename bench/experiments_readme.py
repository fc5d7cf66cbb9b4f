"""The README's "Results so far" block, written from the same record and verdicts as
docs/EXPERIMENTS.md (bench/experiments_doc.py), so the README follows the tables instead of being
typed beside them."""

from __future__ import annotations

import json
from pathlib import Path

from hdsu_ray.store import write_text_atomic

from bench.experiments_doc import EFFECTS, REPO, STUDY_METHOD, ablation_counts, verdict, wall_time

README_BEGIN, README_END = "<!-- experiments:begin -->", "<!-- experiments:end -->"


def readme_block(results: dict[str, dict], tuned_on: str) -> list[str]:
    lines = [README_BEGIN, "## Results so far", "",
             f"Written by `python bench/experiments.py` from the runs behind [docs/EXPERIMENTS.md]"
             f"(docs/EXPERIMENTS.md) ({len(results)} of 4 studies run; settings tuned on {tuned_on} only, the same "
             "protocol for every method, intervals over items). All on a 3.67M-parameter memoriser with no "
             "language ability: they say how methods forget memorised rows, not what happens to a clinical "
             "model.", ""]
    wins = 0
    for name, res in results.items():
        for v in verdict(res):
            if "best tuned baseline" in v:
                lines.append(f"- {name}: " + v[2:].replace("Against the best tuned baseline here", "against the "
                             "best tuned baseline"))
                wins += " forgets more " in v and "keeps less" not in v
            elif v.startswith(("- Over-forgetting", "- Nearest", "- Highest forget quality")):
                lines.append(f"- {name}: " + v[2].lower() + v[3:])
    lines.append(f"- {STUDY_METHOD} forgets more than the best tuned baseline, without keeping less, in {wins} of "
                 f"{len(results)} studies.")
    ablations = ablation_line(results)
    if ablations:
        lines.append(ablations + " See the tables for the intervals, and [docs/ROBUSTNESS.md](docs/ROBUSTNESS.md) "
                     "for what quantisation and relearning recover.")
    return lines + [README_END]


def ablation_line(results: dict[str, dict]) -> str:
    """"<ablation>: forgets more in 3 of 4; ..." over every study that ran the ablation."""
    parts = []
    for ab, row in ablation_counts(results).items():
        n = row["studies"]
        counted = [f"{e} in {row[e]} of {n}" for e in EFFECTS if row[e]]
        parts.append(f"{ab}: {', '.join(counted) if counted else f'no difference the items show in any of {n}'}")
    return f"- Ablations, each against {STUDY_METHOD}: " + "; ".join(parts) + "." if parts else ""


def write_readme(results: dict[str, dict], tuned_on: str, out_root: Path, path: Path | None = None) -> None:
    path = path or REPO / "README.md"
    text = path.read_text()
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < 0 or not results:
        return
    block = readme_block(results, tuned_on)
    main = out_root / "main-job" / "results.json"
    if main.is_file():
        wall = wall_time(out_root / "main-job", json.loads(main.read_text()))
        block.insert(-1, f"\nThe main job (`hdsu-ray run workflows/mhqa.yaml`) took {wall / 60:.1f} min from a cold "
                         "cache on this project's 2-core machine (docs/EXPERIMENTS.md, the main job section).")
    write_text_atomic(path, text[:start] + "\n".join(block) + text[end + len(README_END):])

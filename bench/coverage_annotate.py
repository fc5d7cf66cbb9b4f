"""Coverage of the default forget-target lists on the project's studies (single process).

    cd /work/main && PYTHONPATH=. .venv/bin/python bench/coverage_annotate.py

Studies: MHQA-gold with forget = Anxiety / Depression / Trauma (retain = the other three
domains), MedMCQA dev with forget = subject Surgery (retain = all other subjects). For each, the
fraction of forget items with at least one targeted token, the same on retain items, and token
counts per label and level. Writes bench/out/coverage.json and prints a table.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_annotate import OUT, mhqa_rows, train_tokenizer  # noqa: E402

from hdsu_ray.data.loaders import load_records  # noqa: E402
from hdsu_ray.hierarchy.build import data_root  # noqa: E402
from hdsu_ray.stages.annotate import ConceptSpec, annotate_rows, coverage, qa_rows  # noqa: E402


def medmcqa_rows() -> list[dict]:
    records = load_records("medmcqa", data_root() / "medmcqa" / "dev.jsonl")
    return qa_rows(records, lambda r: "forget" if r.fields["subject_name"] == "Surgery" else "retain")


STUDIES = {  # name: (rows, target preset)
    "mhqa-anxiety": (lambda: mhqa_rows("Anxiety"), "mhqa-anxiety"),
    "mhqa-depression": (lambda: mhqa_rows("Depression"), "mhqa-depression"),
    "mhqa-trauma": (lambda: mhqa_rows("Trauma"), "mhqa-trauma"),
    "medmcqa-surgery": (medmcqa_rows, "medmcqa-surgery"),
}


def main() -> int:
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (make_rows, preset) in STUDIES.items():
            rows = make_rows()
            tok = train_tokenizer([r["prompt"] + r["answer"] for r in rows], Path(tmp) / name)
            cov = coverage(annotate_rows(rows, tok, ConceptSpec(targets=[f"preset:{preset}"])))
            report[name] = cov
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "coverage.json").write_text(json.dumps(report, indent=2))
    print(f"{'study':<17}{'forget':>8}{'retain':>8}{'ratio':>7}  tokens neutral/preserve/targeted"
          "  by level 0/1/2/3/4")
    for name, c in report.items():
        lab, lev = c["tokens"]["by_label"], c["tokens"]["by_level"]
        print(f"{name:<17}{c['forget_targeted_fraction']:>8.3f}{c['retain_targeted_fraction']:>8.3f}"
              f"{c['forget_retain_ratio']:>7.2f}  {lab['neutral']}/{lab['preserve']}/{lab['targeted']}"
              f"  {'/'.join(str(lev[str(k)]) for k in range(5))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

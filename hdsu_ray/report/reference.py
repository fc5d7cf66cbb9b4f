"""The paper's reported operating point, shown only as a labelled reference marker.

arXiv 2511.19498 reports forget rate 82.7 % and knowledge preservation 88.5 % at ~0.1 % of the
parameters, on another model, split and protocol (../shared/notes/paper.md). Every report draws it
as "paper (reported)" and says in words that it is not a result of the run.
"""

from __future__ import annotations

PAPER_POINT = (0.827, 0.885)  # (forget_rate, knowledge_preservation) as reported in the paper
PAPER_FRACTION = 0.001        # the paper's parameter budget
PAPER_LABEL = "paper (reported)"
PAPER_NOTE = (f"Reference only (marked \"{PAPER_LABEL}\" in the plots): the paper reports forget rate "
              f"{PAPER_POINT[0]} and knowledge preservation {PAPER_POINT[1]}. These are the paper's numbers, "
              "not a result of this run.")

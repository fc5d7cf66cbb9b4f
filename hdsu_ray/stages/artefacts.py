"""Shared artefacts of the unlearn stage: budget masks, retain basis and reference tensors.

They are computed once per learned model and setting, kept on disk (keyed by content) for reruns
and in the Ray object store for every consumer. One protocol serves the CLI's method runs and the
sweep's trials alike: the driver asks :class:`SharedArtefacts` for the bundle of every variant the
runs will need, and hands the runs a :class:`PrebuiltBundles` (object refs only, cheap to pickle),
which each run asks for its bundle by :func:`bundle_key`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hdsu_ray.config.schema import Workflow
from hdsu_ray.methods import METHODS
from hdsu_ray.store import arrays_digest, content_key, load_npz, save_npz_atomic

log = logging.getLogger(__name__)

# How many times each shared artefact was computed in this process (a counter, for tests/reports).
COMPUTE_COUNTS: dict[str, int] = {}


def _count(kind: str) -> None:
    COMPUTE_COUNTS[kind] = COMPUTE_COUNTS.get(kind, 0) + 1


def _disk_cached(path: Path, compute) -> dict[str, np.ndarray]:
    """Load ``path`` (.npz) or compute and save it atomically; the counter sees real computes only."""
    if path.is_file():
        return load_npz(path)
    value = compute()
    save_npz_atomic(path, value)
    return value


def bundle_key(params, settings: dict) -> str:
    """What decides a run's bundle besides the learned model and the workflow: its budget, the
    hidden layer it reads (RMU) and whether it projects. Runs with equal keys share one bundle."""
    method = METHODS[params.name]
    projects = bool(method.projects and getattr(params, "projection", False))
    return content_key("bundle", settings["budget"], settings["param_budget"], sorted(settings["budget_exclude"]),
                       settings["row_cap"], getattr(params, "layer", None), projects)


class Bundles(Protocol):
    """What a run needs of the shared artefacts: the learned model and its bundle's object ref."""

    learned_dir: Path

    def bundle(self, params, settings: dict) -> Any: ...


class PrebuiltBundles:
    """Bundles the driver built, looked up by :func:`bundle_key`: what runs and trials receive."""

    def __init__(self, learned_dir: Path, refs: dict[str, Any]):
        self.learned_dir, self.refs = Path(learned_dir), dict(refs)

    def bundle(self, params, settings: dict) -> Any:
        key = bundle_key(params, settings)
        if key not in self.refs:  # a bug: the driver must build every variant before runs start
            raise KeyError(f"no prebuilt bundle for {settings['label']} (budget {settings['budget']} "
                           f"{settings['param_budget']}, row_cap {settings['row_cap']})")
        return self.refs[key]


class SharedArtefacts:
    """Per-learned-model cache of masks, bases and reference tensors: computed once per key, kept
    on disk for reruns and in the Ray object store for every consumer (runs and Tune trials)."""

    def __init__(self, workflow: Workflow, learned_dir: Path, arrays: dict[str, dict],
                 cache_root: Path | None = None):
        self.wf, self.learned_dir, self.arrays = workflow, Path(learned_dir), arrays
        self.root = cache_root or Path(workflow.cache_dir) / "shared" / learned_dir.name
        self._model = None
        self._lora_models: dict[str, Any] = {}
        self._refs: dict[str, Any] = {}

    def for_workflow(self, workflow: Workflow) -> "SharedArtefacts":
        """The same caches (model, disk, object refs) serving another variant of the workflow,
        e.g. a sweep's, whose basis is built at the largest rank it samples."""
        other = object.__new__(SharedArtefacts)
        other.__dict__.update(self.__dict__)
        other.wf = workflow
        return other

    def model(self):
        if self._model is None:
            from hdsu_ray.models.build import load_model_dir
            self._model, _ = load_model_dir(self.learned_dir)
        return self._model

    def masks(self, budget: str, fraction: float, exclude: list[str] | None = None, row_cap: int | None = None
              ) -> dict[str, np.ndarray] | None:
        """Fisher-ratio masks; ``exclude`` (default ``unlearn.budget_exclude``) is never selected, and
        no matrix row holds more than ``row_cap`` (default ``unlearn.row_cap``; 0: no cap) entries."""
        if budget == "full" or fraction >= 1.0:
            return None
        u = self.wf.unlearn
        exclude = sorted(u.budget_exclude if exclude is None else exclude)
        row_cap = u.row_cap if row_cap is None else row_cap
        key = content_key("fisher", fraction, u.fisher_samples, u.fisher_eps, self.wf.seed, self.arrays["digest"],
                          exclude, row_cap, *([u.per_sample_chunk] if u.per_sample_chunk else []))

        def compute():
            from hdsu_ray.train.prepare import ForgetReference, fisher_masks
            _count("masks")
            log.info(f"[prepare] Fisher-ratio mask, budget {fraction}")
            # the batched forget Fisher's forward passes are the reference's, when they cover every row
            # (the one-row path hands over no logits)
            ref_path = self._reference_path(None)
            fill = (ForgetReference(self.arrays["forget"], u.anchor_topk)
                    if u.per_sample_chunk and not ref_path.is_file() else None)
            masks = fisher_masks(self.model(), self.arrays["forget"], self.arrays["retain"], fraction=fraction,
                                 samples=u.fisher_samples, eps=u.fisher_eps, seed=self.wf.seed,
                                 exclude=tuple(exclude), row_cap=row_cap, chunk=u.per_sample_chunk,
                                 on_forget_logits=fill)
            ref = fill.result() if fill is not None else None
            if ref is not None:
                _count("reference")
                log.info("[prepare] reference log-probs of the learned model, from the Fisher's forward passes")
                save_npz_atomic(ref_path, ref)
            return masks
        return _disk_cached(self.root / f"mask-{key}.npz", compute)

    def lora_plan(self, fraction: float, exclude: list[str], key: str) -> dict[str, Any]:
        """The adapters of a ``budget: lora`` run (:func:`hdsu_ray.train.lora.plan_lora`); the
        module Fisher ratios are computed (and cached on disk) only when not every target fits."""
        from hdsu_ray.train.lora import plan_lora

        u = self.wf.unlearn
        fkey = content_key("module-fisher", u.fisher_samples, u.fisher_eps, self.wf.seed, self.arrays["digest"],
                           *([u.per_sample_chunk] if u.per_sample_chunk else []))

        def scores() -> dict[str, float]:
            def compute():
                from hdsu_ray.train.prepare import module_fisher_scores
                _count("masks")
                log.info("[prepare] Fisher ratio of each linear module (LoRA targets)")
                s = module_fisher_scores(self.model(), self.arrays["forget"], self.arrays["retain"],
                                         samples=u.fisher_samples, eps=u.fisher_eps, seed=self.wf.seed,
                                         chunk=u.per_sample_chunk)
                return {"names": np.array(list(s)), "scores": np.array(list(s.values()), np.float64)}
            z = _disk_cached(self.root / f"module-fisher-{fkey}.npz", compute)
            return dict(zip(z["names"].tolist(), z["scores"].tolist()))

        plan = plan_lora(self.model(), rank=u.lora_rank, targets=list(u.lora_targets), exclude=sorted(exclude),
                         fraction=fraction, seed=self.wf.seed, scores=scores, key=key)
        log.info(f"[prepare] LoRA rank {plan['rank']} on {len(plan['modules'])} modules: {plan['n_params']:,} "
                 f"of {plan['n_base']:,} parameters ({plan['n_params'] / plan['n_base']:.6f})")
        return plan

    def lora_model(self, plan: dict[str, Any]):
        """A fresh copy of the learned model wrapped by ``plan`` (the workers wrap theirs the same
        way); the unwrapped :meth:`model` stays as it is for the reference tensors."""
        from hdsu_ray.models.build import load_model_dir
        from hdsu_ray.train.lora import wrap_lora

        key = content_key("lora", plan)
        if key not in self._lora_models:
            self._lora_models[key] = wrap_lora(load_model_dir(self.learned_dir)[0], plan)
        return self._lora_models[key]

    def basis(self, masks, fraction: float, max_rank: int, lora: dict[str, Any] | None = None) -> np.ndarray:
        """``U [n_selected, R]`` at the largest rank any consumer needs; consumers slice columns.
        With ``lora`` (a plan), over the flattened adapter weights of the wrapped model."""
        p = self.wf.unlearn.projection
        if lora is not None:  # the plan fixes names, shapes and the A initialisation
            mask_id = content_key("lora", lora)
        else:
            mask_id = arrays_digest([{n: np.packbits(m) for n, m in masks.items()}]) if masks is not None else "full"
        chunk = self.wf.unlearn.per_sample_chunk
        key = content_key("basis", fraction, max_rank, p.method, p.energy, p.basis_samples, p.basis_batch,
                          self.wf.seed, self.arrays["digest"], mask_id, *([chunk] if chunk else []))

        def compute():
            from hdsu_ray.train.prepare import basis_from_gradients, full_masks, retain_gradient_matrix
            _count("basis")
            log.info(f"[prepare] retain-gradient basis, rank {max_rank}")
            model = self.lora_model(lora) if lora is not None else self.model()
            m = masks if masks is not None else full_masks(model)
            G = retain_gradient_matrix(model, self.arrays["retain"], m, samples=p.basis_samples,
                                       batch=p.basis_batch, seed=self.wf.seed, chunk=chunk)
            return {"U": basis_from_gradients(G, rank=max_rank, method=p.method, energy=p.energy,
                                              seed=self.wf.seed)}
        return _disk_cached(self.root / f"basis-{key}.npz", compute)["U"]

    def _reference_path(self, hidden_layer: int | None) -> Path:
        key = content_key("ref", self.wf.unlearn.anchor_topk, hidden_layer, self.arrays["digest"])
        return self.root / f"ref-{key}.npz"

    def reference(self, hidden_layer: int | None) -> dict[str, np.ndarray]:
        def compute():
            from hdsu_ray.train.prepare import reference_tensors
            _count("reference")
            log.info("[prepare] reference log-probs of the learned model")
            return reference_tensors(self.model(), self.arrays["forget"], self.arrays["retain"],
                                     topk=self.wf.unlearn.anchor_topk, hidden_layer=hidden_layer)
        return _disk_cached(self._reference_path(hidden_layer), compute)

    def bundle(self, params, settings: dict) -> Any:
        """Object ref of everything one run's workers read; the same ref for the same inputs."""
        import ray

        layer = getattr(params, "layer", None)
        projects = METHODS[params.name].projects and getattr(params, "projection", False)
        rank = self.wf.unlearn.projection.rank
        exclude = settings["budget_exclude"]  # resolved(): the method's, else the section's
        # The same bundle at another basis rank is another object (a sweep builds at its top rank).
        key = (bundle_key(params, settings), self.wf.unlearn.projection.rank)
        if key not in self._refs:
            lora = None
            if settings["budget"] == "lora":
                lora = self.lora_plan(settings["param_budget"], exclude, self._budget_key(params))
                from hdsu_ray.train.lora import lora_masks
                masks = lora_masks(self.lora_model(lora))  # cheap: names and shapes only
            else:
                masks = self.masks(settings["budget"], settings["param_budget"], exclude, settings["row_cap"])
            forget, retain = dict(self.arrays["forget"]), dict(self.arrays["retain"])
            ref = self.reference(layer)
            forget.update(ref_logp=ref["forget_ref_logp"], ref_topk_idx=ref["forget_ref_topk_idx"],
                          ref_topk_logp=ref["forget_ref_topk_logp"])
            if "retain_ref_hidden" in ref:
                retain["ref_hidden"] = ref["retain_ref_hidden"]
            basis = self.basis(masks, settings["param_budget"], rank, lora) if projects else None
            self._refs[key] = ray.put({"forget": forget, "retain": retain, "masks": masks, "basis": basis,
                                       "lora": lora, "eval": self.arrays.get("eval")})
        return self._refs[key]

    def _budget_key(self, params) -> str:
        """The YAML key path that set this run's ``param_budget`` (for error messages)."""
        if params.param_budget is None:
            return "unlearn.param_budget"
        for i, spec in enumerate(self.wf.unlearn.methods):
            if (spec.get("label") or spec.get("name")) == params.display:
                return f"unlearn.methods[{i}].param_budget"
        sweep = self.wf.sweep
        return "sweep.space.param_budget" if sweep and "param_budget" in sweep.space else "sweep.method.param_budget"

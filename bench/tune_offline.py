"""Offline tuning harness: the unlearn loop's maths in one process (no Ray), on the cached
learned model of a workflow, with full-set evaluation at chosen steps.

    python bench/tune_offline.py workflows/mhqa.yaml '[{"name": "hdsu", "forget_loss": "ga", "lr": 0.03,
        "_metric": "adam", "_eval": [10, 20, 30]}, {"name": "graddiff", "lr": 0.03}]' unlearn.steps=30

Each spec is a method mapping plus optional `_eval` (steps to evaluate), `_metric` ("adam" for the
Adam-metric projection), `_rank` and `_diag` (print how the budget covers the forget answers). The
learned model must exist (run the workflow once). The figures quoted in docs/method.md about the NPO form and the Fisher ratio come from this script
and bench/fisher_stats.py.
"""
import sys, json, time, itertools, numpy as np, torch
sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parents[1]))
from hdsu_ray.config.loader import load_workflow
from hdsu_ray.data.select import select_data
from hdsu_ray.stages.learn import learned_key
from hdsu_ray.stages.tensors import unlearn_arrays
from hdsu_ray.stages.unlearn import SharedArtefacts
from hdsu_ray.methods import METHODS, parse_method, resolved, wants_options
from hdsu_ray.methods.view import StepView
from hdsu_ray.models.build import load_model_dir
from hdsu_ray.train.adapter import TorchAdapter, step_gradient
from hdsu_ray.train.lora import lora_masks, wrap_lora
from hdsu_ray.train.common import batch_tensors, option_tensors, shard_batches
from hdsu_ray.eval.mcq import mcq_correct
from pathlib import Path
torch.set_num_threads(2)
wf = load_workflow(sys.argv[1], sys.argv[3:] if len(sys.argv) > 3 else [])
data = select_data(wf)
learned = Path(wf.cache_dir) / 'learned' / learned_key(wf)
import pickle, os
os.makedirs(Path(__file__).resolve().parent / "out", exist_ok=True)
cp = str(Path(__file__).resolve().parent / 'out' / ('tune_arrays_%s_%s.pkl')) % (wf.name, learned.name)
if os.path.exists(cp): arrays = pickle.load(open(cp,'rb'))
else:
    arrays = unlearn_arrays(wf, data, learned, Path(__file__).resolve().parent / 'out' / 'tune_run', log=lambda *a: None); pickle.dump(arrays, open(cp,'wb'))
shared = SharedArtefacts(wf, learned, arrays, log=print)
_, tok = load_model_dir(learned)
def acc(model, recs): return float(mcq_correct(model, tok, recs, max_len=128, batch_size=128).mean())
m0, _ = load_model_dir(learned)
bf, br = acc(m0, data.forget), acc(m0, data.retain)
print(f'before forget {bf:.3f} retain {br:.3f}', flush=True)
specs = json.loads(sys.argv[2])
for spec in specs:
    t0 = time.time()
    p = parse_method({k: v for k, v in spec.items() if not k.startswith('_')}, 'm', None); s = resolved(p, wf.unlearn); meth = METHODS[p.name]
    lora = shared.lora_plan(s['param_budget'], s['budget_exclude'], 'm.param_budget') if s['budget'] == 'lora' else None
    masks = lora_masks(shared.lora_model(lora)) if lora else shared.masks(s['budget'], s['param_budget'], s['budget_exclude'], s['row_cap'])
    proj = meth.projects and getattr(p, 'projection', False)
    ref = shared.reference(getattr(p, 'layer', None))
    fa = dict(arrays['forget']); fa.update(ref_logp=ref['forget_ref_logp'], ref_topk_idx=ref['forget_ref_topk_idx'], ref_topk_logp=ref['forget_ref_topk_logp'])
    ra = dict(arrays['retain'])
    if 'retain_ref_hidden' in ref: ra['ref_hidden'] = ref['retain_ref_hidden']
    U = torch.from_numpy(shared.basis(masks, s['param_budget'], wf.unlearn.projection.rank, lora)[:, :spec.get('_rank', wf.unlearn.projection.rank)]) if proj else None
    model, _ = load_model_dir(learned)
    if lora: model = wrap_lora(model, lora)
    model.train()
    ad = TorchAdapter(model, masks, s['lr'], 1)
    def it(a, salt):
        e = 0
        while True:
            yield from shard_batches(len(a['input_ids']), wf.unlearn.batch_size, 0, 1, wf.seed*1000+salt, e); e += 1
    itf, itr = it(fa, 1), it(ra, 2)
    evals = spec.get('_eval', [s['steps']])
    for step in range(s['steps']):
        rows = next(itf)
        batches = {'forget': batch_tensors(fa, rows, 'cpu'), 'retain': batch_tensors(ra, next(itr), 'cpu')}
        if wants_options(p): batches['forget_options'] = option_tensors(fa, rows, 'cpu')
        view = StepView(model, batches, hidden_layer=getattr(p, 'layer', None))
        terms = meth.losses(p, view, s['retain_weight'])
        g = step_gradient(ad, terms, U if proj else None, spec.get('_metric', 'euclidean'))
        ad.apply(g)
        if step + 1 in evals:
            right = mcq_correct(model, tok, data.forget, max_len=128, batch_size=128).astype(bool)
            af, ar = float(right.mean()), acc(model, data.retain)
            if spec.get('_diag') and masks is not None:
                # coverage: selected embedding entries on each forget answer's tokens, for the
                # questions still answered right against those forgotten (docs/method.md, row_cap)
                per_row = masks['model.embed_tokens.weight'].sum(1)
                cov = np.array([per_row[fa['input_ids'][i][np.asarray(fa['labels'][i]) != -100]].sum()
                                for i in range(len(right))])
                print(f'  embedding rows with entries {int((per_row > 0).sum())}, most in one row {int(per_row.max())}; '
                      f'still right: {int(right.sum())}, of them with no entry on their answer tokens '
                      f'{int((cov[right] == 0).sum())}', flush=True)
            print(f'{json.dumps({k: v for k, v in spec.items()})} step {step+1}: FR {1-af:.3f} KP {ar/br:.3f} ({time.time()-t0:.0f}s)', flush=True)

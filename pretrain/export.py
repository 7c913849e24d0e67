"""``python -m pretrain.export``: run folder -> consolidated fp32 -> re-parameterized -> an export folder.

    python -m pretrain.export runs/xl_ft320 --task in1k --out exported/replknet_xl_in1k_320
    python -m pretrain.export runs/xl_ft320 --task in1k --out exported/replknet_xl_in1k_320 --push-to-hub me/replknet_xl_in1k

The folder is in timm's Hugging Face layout: ``model.safetensors`` (the deploy form: large kernels
merged, every BatchNorm folded), ``config.json`` (as timm's ``save_for_hf`` writes it) and a model
card ``README.md`` (recipe, data, teachers, metrics, the re-parameterization check). Load it the
timm way, after ``import pretrain.models`` (which registers RepLKNet with timm)::

    timm.create_model('local-dir:exported/replknet_xl_in1k_320', pretrained=True)
    timm.create_model('hf-hub:me/replknet_xl_in1k', pretrained=True)         # once pushed
    timm.create_model('replknet_xl', pretrained=True, pretrained_cfg_overlay=dict(file='.../model.safetensors'))

The ``config.json`` tells timm the exported class count, class names, input size, crop and model
arguments, so no other argument is needed. The export checks that the deployed model's outputs
equal the training form's within 1e-4 before writing.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Optional

import torch

from shards.common.errors import BadValue, NotFound, ReplkError
from shards.common.helpformat import HelpFormatter, command_name
from shards.common.safe_files import add_trust_pickle_argument

from .config import RunConfig, saved_run_config
from .models.checkpoint import NOT_SHAPE
from .weights import check_run_folder

log = logging.getLogger(__name__)


def single_task_model(cfg: RunConfig, task: str, state: dict):
    """The run's model with only ``task``'s head, as a plain single-head timm classifier.

    RepLKNet keeps its task heads as ``head.fc.{task}``; other timm backbones were wrapped as
    ``backbone`` + ``heads.{task}`` and go back to timm's own names (its ``classifier``).
    """
    import timm

    import pretrain.models  # noqa: F401
    if task not in cfg.tasks:
        raise BadValue(f'task {task!r} is not one of the run\'s tasks {sorted(cfg.tasks)}')
    n = cfg.tasks[task].num_classes
    model = timm.create_model(cfg.model.name, num_classes=n, **cfg.model.kwargs)
    if any(k.startswith('backbone.') for k in state):
        classifier = model.pretrained_cfg.get('classifier', 'head')
        mapped = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
        mapped.update({f'{classifier}.{k.rsplit(".", 1)[1]}': v for k, v in state.items()
                       if k.startswith(f'heads.{task}.')})
    else:
        prefix = f'head.fc.{task}.'
        mapped = {k: v for k, v in state.items() if not k.startswith('head.fc.')}
        mapped.update({f'head.fc.{k[len(prefix):]}': v for k, v in state.items() if k.startswith(prefix)})
    model.load_state_dict(mapped, strict=True)
    return model.eval(), n


def export(run_dir: str, task: str, out: str, tag: str = None, ema: bool = False, trust_pickle: bool = False,
           repo_name: Optional[str] = None, license_id: str = 'other') -> dict:
    from .checkpoint import committed_tags, load_part
    from .model_card import run_provenance
    from .tracking import log_export
    from .weights import consolidate_run

    cfg = saved_run_config(Path(run_dir) / 'config.json')
    tags = committed_tags(run_dir)
    if not tags and tag is None:
        raise NotFound(f'{run_dir}: no committed checkpoint to export (is it a run folder? did it save?)')
    tag = tag or tags[-1]
    state = load_part(run_dir, tag, 'ema') if ema else consolidate_run(run_dir, tag, trust_pickle)
    if state is None:
        raise NotFound(f'{run_dir}/ckpt/{tag} has no EMA weights')
    # the run by its folder's name: the export is published as it is (--push-to-hub), a local path is not for others
    meta = write_export(cfg, task, state, out, source=dict(run=Path(run_dir).resolve().name, tag=tag, ema=ema),
                        provenance=run_provenance(cfg, run_dir, tag, ema, task), repo_name=repo_name, license_id=license_id)
    try:   # the run's W&B / MLflow runs get it as an artifact; the export stands without them
        meta['tracked_in'] = log_export(cfg.log, run_dir, out)
    except Exception as exc:  # noqa: BLE001  a tracker's server down, a token expired: the files are written
        log.warning('the export is in %s, but logging it to the run\'s trackers failed: %s: %s', out,
                    type(exc).__name__, exc)
        meta['tracked_in'] = []
    return meta


def reparameterize_checked(model, image_size: int) -> dict:
    """Convert ``model`` to its deploy form, checking on random inputs that it computes what the
    training form did: {max_abs_difference, max_relative_error (to the largest logit)}."""
    x = torch.randn(2, 3, image_size, image_size)
    with torch.no_grad():
        reference = model(x)
        if hasattr(model, 'reparameterize'):
            model.reparameterize()
        deployed = model(x)
    diff = (reference - deployed).abs().max().item()
    err = diff / reference.abs().max().item()
    if err > 1e-4:
        raise RuntimeError(f'the re-parameterized model differs from the training form by {err:.2e} (relative)')
    return dict(max_abs_difference=diff, max_relative_error=err)


def write_export(cfg: RunConfig, task: str, state: dict, out: str, source: dict, provenance: Optional[dict] = None,
                 repo_name: Optional[str] = None, license_id: str = 'other') -> dict:
    """Deploy form of ``task``'s model -> an export folder in timm's Hugging Face layout:
    ``model.safetensors``, ``config.json`` (written by timm's ``save_config_for_hf``: ``architecture``,
    ``num_classes``, ``num_features``, ``global_pool``, ``label_names``, ``model_args``, ``pretrained_cfg``,
    and this project's own keys beside them) and the model card ``README.md``. ``provenance``: what the
    run folder says (:func:`pretrain.model_card.run_provenance`); None for weights from elsewhere."""
    from safetensors.torch import save
    from timm.models._hub import save_config_for_hf  # timm's own writer of config.json (save_for_hf's)
    from timm.models._pretrained import PretrainedCfg

    from .model_card import model_card

    model, n = single_task_model(cfg, task, state)
    check = reparameterize_checked(model, cfg.data.transform.image_size)
    form = 'fused' if hasattr(model, 'reparameterize') else 'plain'
    # The export's description of itself is what timm writes as pretrained_cfg (not the variant's
    # default tag's: its 224 px, its 1000 classes, the official release's origin and license).
    # timm's full record (its defaults filled in), as a model loaded from the export will carry: so
    # timm's writer gives the same config.json for both in every timm release (1.0.26 writes defaults)
    model.pretrained_cfg = model.default_cfg = PretrainedCfg(**exported_pretrained_cfg(cfg, task, n,
                                                                                      model.pretrained_cfg)).to_dict()
    # The model arguments written are the shape only: how to run the model (lk_impl) is the loader's
    # choice, so an export made with 'triton' loads on a CPU. Given to timm explicitly (its releases
    # before 1.0.27 write only those) and as its record of the factory's arguments (later releases
    # start from that record, which holds lk_impl).
    model_args = dict({k: v for k, v in cfg.model.kwargs.items() if k not in NOT_SHAPE}, num_classes=n)
    model._model_args = dict(model_args)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    # bytes written by Python, so the file gets the user's umask like config.json (safetensors'
    # own save_file creates it 0600: unreadable to the team that shares the export)
    (folder / 'model.safetensors').write_bytes(save({k: v.contiguous() for k, v in model.state_dict().items()}))
    project = dict(task=task, form=form, source=source, **check,
                   precision=cfg.train.precision, channels_last=cfg.model.channels_last)   # how it was trained and evaluated
    labels = {k: v for k, v in (('label_names', model.pretrained_cfg.get('label_names')),
                                ('label_descriptions', _label_descriptions(model.pretrained_cfg.get('label_names'))))
              if v}
    save_config_for_hf(model, folder / 'config.json', model_config=dict(project, **labels), model_args=model_args)
    meta = json.loads((folder / 'config.json').read_text())
    card = model_card(meta, cfg, task, (repo_name or folder.resolve().name).split('/')[-1], provenance, license_id,
                      hub_id=repo_name)
    (folder / 'README.md').write_text(card, encoding='utf-8')
    return meta


def exported_pretrained_cfg(cfg: RunConfig, task: str, num_classes: int, architecture: dict) -> dict:
    """timm's pretrained_cfg of the exported model: its classes, input size, crop and statistics;
    its classifier, first conv and stride from ``architecture``, the model's own (timm's variant) record."""
    aug = cfg.data.transform
    size = aug.image_size
    stride = architecture['input_size'][-1] // architecture['pool_size'][-1] if architecture.get('pool_size') else 32
    out = dict(architecture=cfg.model.name, tag=f'export_{task}', num_classes=num_classes,
               input_size=[3, size, size], pool_size=[-(-size // stride)] * 2, crop_pct=aug.crop_pct,
               interpolation=aug.interpolation, mean=list(aug.mean), std=list(aug.std),
               classifier=architecture.get('classifier'), first_conv=architecture.get('first_conv'),
               description=f'exported by pretrain.export ({task})')
    names = _class_names(cfg, task)
    if names is not None:
        out['label_names'] = names
    return out


def _class_names(cfg: RunConfig, task: str):
    from labeling.tasks import TaskRegistry
    try:
        names = TaskRegistry.from_json(cfg.data.tasks_file).get(task).class_names
    except (KeyError, OSError, ValueError):
        return None  # a task known only by its class count in this run
    return list(names) if len(names) == cfg.tasks[task].num_classes else None


def _label_descriptions(names) -> Optional[dict]:
    """ImageNet's class descriptions (timm ships them) when the head's classes are ImageNet's synsets."""
    if not names:
        return None
    from timm.data import ImageNetInfo
    for subset in ('imagenet-1k', 'imagenet-22k'):
        info = ImageNetInfo(subset)
        if list(info.label_names()) == list(names):
            return info.label_descriptions(as_dict=True)
    return None


def export_file(path: str) -> Optional[Path]:
    """The ``model.safetensors`` of an export (the folder, or the file with its config.json beside)."""
    from .models.checkpoint import export_meta
    p = Path(path)
    file = p / 'model.safetensors' if p.is_dir() else p
    return file if file.suffix == '.safetensors' and export_meta(file) is not None else None


class TaskOutput(torch.nn.Module):
    """A single-head classifier answering ``{task: logits}`` like the multi-task models."""

    def __init__(self, model: torch.nn.Module, task: str):
        super().__init__()
        self.model, self.task = model, task

    def forward(self, x):
        return {self.task: self.model(x)}


def load_export(file: Path):
    """(timm model in the exported form with its head, the export's config.json)."""
    from .models.checkpoint import load_exported
    return load_exported(file)


EXPORT_FILES = ('model.safetensors', 'config.json', 'README.md')


class HubError(ReplkError):
    """The upload to the Hugging Face Hub did not happen (no token, unreachable, refused)."""


def hub_token() -> str:
    """The user's Hugging Face token (``HF_TOKEN`` or ``hf auth login``), or a :class:`HubError`
    before anything is exported."""
    from huggingface_hub import get_token
    token = get_token()
    if not token:
        raise HubError('--push-to-hub: no Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write '
                       'access)')
    return token


def push_to_hub(folder: str, repo_id: str, token: str, private: bool = False) -> str:
    """Upload an export folder as it is (model.safetensors, config.json, README.md: what was checked
    and written, nothing else there) to the Hub model repository ``repo_id``; returns the commit's URL.

    huggingface_hub directly rather than timm's ``push_to_hf_hub``: that one saves the model again
    from memory (a pickle beside the safetensors unless told otherwise) and writes its own card
    only where the repository has none."""
    from huggingface_hub import HfApi

    missing = [name for name in EXPORT_FILES if not (Path(folder) / name).is_file()]
    if missing:
        raise NotFound(f'{folder}: not a whole export ({", ".join(missing)} missing): run the export again')
    meta = json.loads((Path(folder) / 'config.json').read_text())
    api = HfApi(token=token, library_name='replk-pretrain')
    try:
        repo = api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo.repo_id, folder_path=str(folder), allow_patterns=list(EXPORT_FILES),
                                   commit_message=f'{meta["architecture"]} ({meta.get("task")}), exported by pretrain.export')
    except Exception as exc:   # noqa: BLE001  (httpx, huggingface_hub and the server fail with no common base)
        raise HubError(f'--push-to-hub {repo_id}: the upload failed ({type(exc).__name__}: {_one_line(exc)}); the export '
                       f'is in {folder}: run again once the Hub is reachable') from None
    return str(getattr(commit, 'commit_url', commit))


def _one_line(exc: Exception) -> str:
    text = ' '.join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + '...'


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog=command_name('pretrain.export'), description=__doc__, formatter_class=HelpFormatter)
    p.add_argument('run_dir', help='a pretraining or fine-tuning run folder')
    p.add_argument('--task', required=True, help='the head to keep')
    p.add_argument('--out', required=True, help='the export folder: model.safetensors, config.json and README.md')
    p.add_argument('--tag', help='step-N (default: the newest committed checkpoint)')
    p.add_argument('--ema', action='store_true', help='export the EMA weights')
    p.add_argument('--push-to-hub', metavar='REPO_ID', help='then upload the export folder to this Hugging Face Hub model '
                                                            'repository (created if absent; needs a token: HF_TOKEN)')
    p.add_argument('--private', action='store_true', help='--push-to-hub: create the repository private')
    p.add_argument('--license', default='other', help='the model card\'s license, a Hub license id (e.g. apache-2.0); '
                                                      'default: other (say which in the card)')
    add_trust_pickle_argument(p)
    args = p.parse_args(argv)
    try:
        token = hub_token() if args.push_to_hub else None   # before the export's minutes, not after
        check_run_folder(args.run_dir, 'run_dir', '--tag')
        meta = export(args.run_dir, args.task, args.out, args.tag, args.ema, args.trust_pickle,
                      repo_name=args.push_to_hub, license_id=args.license)
        print(json.dumps(meta, indent=2, default=str), flush=True)
        if args.push_to_hub:
            print(f'pushed to {push_to_hub(args.out, args.push_to_hub, token, args.private)}', flush=True)
    except ReplkError as exc:   # the user's to fix: one line; anything else is a bug and shows its traceback
        raise SystemExit(f'error: {exc}') from None
    return meta


if __name__ == '__main__':
    main()

"""Tiny teachers (timm and transformers ViTs, random weights, saved to local files) and labeled shards."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from helpers import write_image

from shards.build import BuildOptions, build
from shards.inputs import Item

TASKS_JSON = {'toy': ['a', 'b', 'c', 'd']}
# vit_large_patch16_224, shrunk through model_kwargs: the same code path as the real ViT-L teacher.
TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                pretrained_cfg_overlay=dict(input_size=(3, 32, 32), crop_pct=1.0))


def tiny_timm_weights(path: Path, num_classes: int = 4, seed: int = 0) -> Path:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = timm.create_model('vit_large_patch16_224', num_classes=num_classes, **TINY_VIT)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(path))
    return path


def tiny_hf_teacher(folder: Path, num_classes: int = 4, seed: int = 0) -> Path:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(seed)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, num_labels=num_classes)
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={'height': 32, 'width': 32}).save_pretrained(folder)
    return folder


def toy_shards(tmp: Path, n: int = 20, per_shard: int = 6) -> str:
    """Source 'toy': every other image has a human label for task 'toy'."""
    items = [Item(str(write_image(tmp / 'img' / f'{i}.jpg', i, size=(40, 36))), f'{i:03d}',
                  {'toy': i % 4} if i % 2 == 0 else {}) for i in range(n)]
    out = tmp / 'shards'
    build(items, BuildOptions(str(out), 'toy', samples_per_shard=per_shard, progress=False))
    return str(out)


def job_config(tmp: Path, shards: str, store: str, teachers: list, **extra) -> Path:
    (tmp / 'tasks.json').write_text(json.dumps(TASKS_JSON))
    cfg = dict(task='toy', store=store, sources=[dict(name='toy', url=shards)], teachers=teachers,
               topk=3, batch_size=4, workers=0, precision='fp32', tasks_file=str(tmp / 'tasks.json'))
    cfg.update(extra)
    path = tmp / 'label_toy.json'
    path.write_text(json.dumps(cfg))
    return path


def timm_teacher_spec(weights: Path) -> dict:
    return dict(kind='timm', model='vit_large_patch16_224', weights=str(weights), model_kwargs=TINY_VIT)


def labels_against_teacher_forward(store_root: str, tasks_file: str, task: str, shards: str, export: str) -> tuple:
    """(images compared, largest |stored top-1 prob - teacher's prob of that class|) for every stored
    pseudo-label of ``shards``, the teacher run here by hand at the size its export records."""
    import io

    from PIL import Image

    from labeling.store import LabelStore
    from labeling.tasks import TaskRegistry
    from labeling.teachers import TeacherSpec, load_teacher
    from shards.reader import iter_shard_samples

    store = LabelStore(store_root, TaskRegistry.from_json(tasks_file))
    teacher = load_teacher(TeacherSpec('export', path=export), store.task(task).num_classes)
    mean = torch.tensor(teacher.preprocess.mean).view(1, 3, 1, 1) * 255   # the transform leaves 0-255 values
    std = torch.tensor(teacher.preprocess.std).view(1, 3, 1, 1) * 255
    compared, worst = 0, 0.0
    for stem, record in store.committed_parts(task).items():
        table = store.read_part(task, stem).to_pydict()
        stored = {k: (i[0], p[0]) for k, i, p, s in zip(table['key'], table['idx'], table['prob'], table['source'])
                  if s == 'pseudo'}
        for sample in iter_shard_samples(f'{shards}/{stem}.tar'):
            if sample['__key__'] not in stored:
                continue
            image = Image.open(io.BytesIO(sample['jpg'])).convert('RGB')
            x = teacher.preprocess.transform()(image).float().unsqueeze(0)
            with torch.no_grad():
                probs = teacher((x - mean) / std)[0]
            index, prob = stored[sample['__key__']]
            worst = max(worst, abs(prob - probs[index].item()))
            compared += 1
    return compared, worst

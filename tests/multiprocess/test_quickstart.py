"""The README's "Your own data" section, followed as written on a fresh folder of photos: its bash
block runs command by command and its JSON configs are used as given, with only the model and image
sizes (and run lengths) shrunk for CI. The Python stream snippet runs as pasted."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import BIN_DIR, REPO_ROOT, write_image
from labeling_fixtures import labels_against_teacher_forward

pytestmark = pytest.mark.multiprocess
TEACHER_SIZE = 40   # not 224 and not the student's: labels must come at the size the teacher was trained
TINY_MODEL = {'kernel_sizes': [7, 5], 'depths': [1, 1], 'channels': [16, 32], 'small_kernel': 3}


def quickstart():
    text = (REPO_ROOT / 'README.md').read_text()
    section = text[text.index('<!-- quickstart:start -->'):text.index('<!-- quickstart:end -->')]
    commands = re.search(r'```bash\n(.*?)```', section, re.S).group(1)
    configs = dict(re.findall(r'\*\*`([\w.]+)`\*\*.*?```json\n(.*?)```', section, re.S))
    return commands, {name: json.loads(body) for name, body in configs.items()}


def shrink(name: str, cfg: dict, folder: Path) -> dict:
    if name == 'label_pets.json':
        assert cfg['teachers'] == [{'kind': 'export', 'path': 'export/teacher'}]   # shape and size from the export
        cfg['precision'] = 'fp32'  # bf16 is ~3x slower on this CPU; the GPU tier covers it
        return cfg
    cfg['model']['kwargs'] = TINY_MODEL
    cfg['data']['transform'].update(image_size=TEACHER_SIZE if name == 'teacher_pets.json' else 32, crop_pct=1.0)
    cfg['train'].update(micro_batch=4, precision='fp32')
    cfg['schedule']['max_steps'] = 4
    cfg['checkpoint']['every_steps'] = 2
    cfg['log'] = {'every_steps': 1, 'tensorboard': False}
    return cfg


def photos(root: Path) -> None:
    for split, n in (('labeled', 12), ('val', 6)):
        for c, name in enumerate(['cat', 'dog']):
            for i in range(n):
                write_image(root / split / name / f'{i}.jpg', seed=100 * c + i + (0 if split == 'labeled' else 50),
                            size=(48, 40))
    for i in range(16):
        write_image(root / 'unlabeled' / f'{i}.jpg', seed=1000 + i, size=(48, 40))


def test_the_readme_quickstart_runs_as_written(tmp_path):
    commands, configs = quickstart()
    assert set(configs) == {'teacher_pets.json', 'label_pets.json', 'pretrain_pets.json', 'finetune_pets.json'}
    photos(tmp_path / 'my_photos')
    for name, cfg in configs.items():
        (tmp_path / name).write_text(json.dumps(shrink(name, cfg, tmp_path)))
    env = dict(os.environ, OMP_NUM_THREADS='1', PATH=f'{BIN_DIR}{os.pathsep}{os.environ["PATH"]}',
               PYTHONPATH=str(REPO_ROOT))
    printed = {}
    for line in commands.splitlines():
        command = line.split('  #')[0].strip()
        if not command or command.startswith('#'):
            continue
        proc = subprocess.run(['bash', '-c', command], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, f'{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}'
        printed[command] = proc.stdout
    assert json.loads((tmp_path / 'runs/pets_ft/result.json').read_text())['step'] == 4
    labeled = json.loads(next(out for cmd, out in printed.items() if 'replk-label run' in cmd))
    assert labeled['preprocess']['size'] == [TEACHER_SIZE, TEACHER_SIZE] and labeled['images'] == 16
    compared, worst = labels_against_teacher_forward(str(tmp_path / 'data/labels'), str(tmp_path / 'tasks.json'),
                                                     'pets', str(tmp_path / 'data/shards'), str(tmp_path / 'export/teacher'))
    assert compared == 16 and worst < 2e-3   # the teacher's forward at its trained size, image by image
    last = list(printed.values())[-1]
    assert "['cat', 'dog'] 2" in last
    evaluated = next(out for cmd, out in printed.items() if 'pretrain.evaluate' in cmd)
    assert json.loads(evaluated.strip().splitlines()[-1])['val/pets/images'] == 12
    snippet = re.search(r'```python\n(from shards import.*?)```', (REPO_ROOT / 'README.md').read_text(), re.S).group(1)
    (tmp_path / 'stream_snippet.py').write_text(snippet)
    proc = subprocess.run([sys.executable, 'stream_snippet.py'], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and 'torch.Size([4, 3, 64, 64])' in proc.stdout, proc.stderr[-2000:]

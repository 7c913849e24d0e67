"""`python -m build` makes a wheel and an sdist; the wheel installs and its packages import outside
the repository (nothing missing from the package list)."""
import subprocess
import sys
import zipfile

import pytest
from helpers import REPO_ROOT


@pytest.mark.slow
def test_build_makes_a_wheel_and_sdist_whose_packages_import_outside_the_repo(tmp_path):
    out = tmp_path / 'dist'
    proc = subprocess.run([sys.executable, '-m', 'build', '--no-isolation', '--outdir', str(out), str(REPO_ROOT)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    wheels, sdists = list(out.glob('*.whl')), list(out.glob('*.tar.gz'))
    assert len(wheels) == 1 and len(sdists) == 1
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert {'pretrain/run.py', 'pretrain/models/replknet.py', 'labeling/job.py', 'shards/stream.py'} <= set(names)
    target = tmp_path / 'site'
    subprocess.run([sys.executable, '-m', 'pip', 'install', '--quiet', '--no-deps', '--target', str(target),
                    str(wheels[0])], check=True, timeout=300)
    code = ('import sys; sys.path.insert(0, sys.argv[1]); import pretrain.run, pretrain.finetune, labeling.cli, '
            'shards.cli, pretrain.models; print(pretrain.run.__file__)')
    proc = subprocess.run([sys.executable, '-c', code, str(target)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert str(target) in proc.stdout  # imported from the installed wheel, not the checkout

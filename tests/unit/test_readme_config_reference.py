"""The README's run config reference is the one generated from the typed config sections."""
from helpers import REPO_ROOT

from pretrain.config_reference import reference


def test_readme_config_reference_matches_the_dataclasses():
    text = (REPO_ROOT / 'README.md').read_text()
    table = text[text.index('<!-- config-reference:start -->'):text.index('<!-- config-reference:end -->')]
    assert table.split('\n', 1)[1].strip() == reference().strip(), 'run: python -m pretrain.config_reference'

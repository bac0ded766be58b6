from setuptools import find_packages, setup

with open("README.md", encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="partformer",
    version="0.1.0",
    description="Unsupervised part discovery: PartFormer (Xia et al., TPAMI 2024) with faithful "
                "evaluation protocols",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["partformer", "partformer.*"]),
    include_package_data=True,
    install_requires=[
        # ranges, not pins: researchers install the torch build that matches their CUDA
        "torch>=2.1,<3",
        "torchvision>=0.16",
        "timm>=1.0",
        "kornia>=0.7",
        "opencv-python-headless>=4.8",
        "wandb>=0.16",
        "numpy>=1.24",
        "scipy>=1.10",
        "scikit-learn>=1.2",
        "pyyaml>=6.0",
        "tqdm>=4.60",
        "safetensors>=0.4",
    ],
    extras_require={"dev": ["pytest>=7"]},
    entry_points={
        "console_scripts": [
            "partformer-train=partformer.cli:train_main",
            "partformer-eval=partformer.cli:eval_main",
            "partformer-visualize=partformer.cli:visualize_main",
            "partformer-benchmark=partformer.cli:benchmark_main",
            "partformer-pretrain=partformer.cli:pretrain_main",
            "partformer-convert-official=partformer.convert:main",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)

import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
    long_description = f.read()
with open(os.path.join(HERE, "partformer", "__init__.py"), encoding="utf-8") as f:
    version = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)

setup(
    name="partformer",
    version=version,
    description="Unsupervised part discovery: PartFormer (Xia et al., TPAMI 2024) with faithful "
                "evaluation protocols",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    # the top-level configs/ folder ships inside the package as partformer/configs (a data-only
    # package), so that a non-editable install finds them (partformer.config.CONFIG_DIR); the
    # named weights in partformer/weights ship as package data
    packages=find_packages(include=["partformer", "partformer.*"]) + ["partformer.configs"],
    package_dir={"partformer.configs": "configs"},
    package_data={"partformer.configs": ["*.yaml", "_base_/*.yaml", "_base_/data/*.yaml",
                                        "pretrain/*.yaml"],
                  "partformer": ["weights/*.yaml", "weights/*.safetensors", "weights/*.pt"]},
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
    # onnx: tools/export_onnx.py and its check (onnxruntime on the CPU); dev has it too, so
    # that the test suite (CI installs .[dev]) checks the export
    extras_require={"dev": ["pytest>=7", "onnx>=1.14", "onnxruntime>=1.16"],
                    "onnx": ["onnx>=1.14", "onnxruntime>=1.16"]},
    entry_points={
        "console_scripts": [
            "partformer-train=partformer.cli:train_main",
            "partformer-eval=partformer.cli:eval_main",
            "partformer-visualize=partformer.cli:visualize_main",
            "partformer-benchmark=partformer.cli:benchmark_main",
            "partformer-pretrain=partformer.cli:pretrain_main",
            "partformer-infer=partformer.cli:infer_main",
            "partformer-export-weights=partformer.cli:export_weights_main",
            "partformer-convert-official=partformer.cli:convert_official_main",
            "partformer-export-onnx=partformer.cli:export_onnx_main",
            "partformer-oracle=partformer.cli:oracle_main",
            "partformer-make-synthetic=partformer.datatools:make_synthetic_main",
            "partformer-prepare-celeba=partformer.datatools:prepare_celeba_main",
            "partformer-prepare-deepfashion=partformer.datatools:prepare_deepfashion_main",
            "partformer-prepare-partimagenet=partformer.datatools:prepare_partimagenet_main",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)

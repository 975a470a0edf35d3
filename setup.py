"""memformers: MemBART (memory-augmented BART) and its DeepSpeed pretraining system."""
from setuptools import find_packages, setup

setup(
    name="memformers",
    version="0.1.0",
    description="MemBART: BART with recurrent memory slots, and a DeepSpeed ZeRO pretraining system for it",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["memformers", "memformers.*"]),
    package_data={"memformers": ["models/membart/presets/*.json"]},
    install_requires=[
        # torch is installed first by the Makefile (CPU wheel where there is no GPU); any >=2.2 works.
        "torch>=2.2",
        "deepspeed>=0.15",
        "transformers>=4.46",
        "datasets>=2.19",
        "webdataset>=0.2.86",
        "wandb>=0.17",
        "sentencepiece>=0.2",
        "tokenizers>=0.19",
        "protobuf",
        "safetensors>=0.4",
        "tqdm",
        "pyyaml>=6",
        "numpy",
        "zstandard",
        "matplotlib",
    ],
    extras_require={"test": ["pytest>=8", "pytest-timeout"]},
)

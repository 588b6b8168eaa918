"""Installation of ddasr-nipype.

The top-level folders ``workflows/`` and ``bids_app/`` are installed *inside* the
``ddasr_nipype`` namespace (``ddasr_nipype.workflows``, ``ddasr_nipype.bids_app``): a PyPI
distribution called ``workflows`` already exists and must never be shadowed.
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

version = {}
exec((HERE / "ddasr_nipype" / "__init__.py").read_text().split("__all__")[0], version)

core_packages = ["ddasr_nipype"] + [
    f"ddasr_nipype.{name}" for name in find_packages("ddasr_nipype")
]
mapped = {
    "ddasr_nipype.workflows": "workflows",
    "ddasr_nipype.bids_app": "bids_app",
}

setup(
    name="ddasr-nipype",
    version=version["__version__"],
    description="DDASR super-resolution of T1w brain MRI as nipype nodes, workflows and a BIDS App",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=core_packages + list(mapped),
    package_dir={"ddasr_nipype": "ddasr_nipype", **mapped},
    package_data={
        "ddasr_nipype": ["resources/*", "resources/**/*"],
        "ddasr_nipype.training": ["presets/*.yml"],
    },
    # package_data alone lists the data (include_package_data would also take MANIFEST.in's files and
    # warns about each data folder importable as a namespace package)
    include_package_data=False,
    install_requires=[
        "torch>=2.1",
        "numpy>=1.24",
        "scipy>=1.10",
        "nibabel>=5.0",
        "nipype>=1.8",
        "pybids>=0.16",
        "bids-validator>=1.14",  # imported directly (bids_app.dataset), not only through pybids
        "templateflow>=23.0",
        "niworkflows>=1.10",
        "click>=8.0",
        "pyyaml>=6.0",
        "scikit-image>=0.21",
        "matplotlib>=3.7",
        "pillow>=9.1",  # imported directly (the before/after reportlet's PNG layers)
        "deepbet>=1.0.2",
        "opencv-python-headless>=4.5",
        "tensorboard>=2.12",
        "tqdm>=4.60",
        "threadpoolctl>=3.1",  # numpy's BLAS held to one thread beside torch's (inference.super_resolve_plane)
    ],
    extras_require={"test": ["pytest>=7"]},
    entry_points={
        "console_scripts": [
            "ddasr=ddasr_nipype.bids_app.run:cli",
            "ddasr-train=ddasr_nipype.bids_app.train:main",
            "ddasr-eval=ddasr_nipype.bids_app.evaluate:main",
        ]
    },
)

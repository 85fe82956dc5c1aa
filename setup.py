"""rec_kd: compact on-device next-item recommenders by self-supervised distillation (OD-Rec) in JAX."""

import setuptools

INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "numpy>=2.0",
    "scipy>=1.11",  # also jax's own; rec_kd.compress.row_order.clustered_rows matches items to slots with it
    "absl-py>=2.1",
    "ml-collections>=1.0",
    "tensorboardX>=2.6",
    "tqdm>=4.66",
    "matplotlib>=3.8",
]

setuptools.setup(
    name="rec_kd",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["rec_kd", "rec_kd.*"]),
    # The web page's templates (rec_kd/serve/web.py copies them into the page's folder).
    package_data={"rec_kd.serve": ["web_static/*.html", "web_static/*.js"]},
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3", "filelock>=3"],
        # The one formatter and linter (ruff.toml): `ruff format . && ruff check .`
        "dev": ["ruff==0.17.5"],
        # The embedded default dataset (MovieLens-100k) ships inside RecBole's wheel. Install it
        # with --no-deps (its dependencies pull PyTorch): `pip install --no-deps recbole==1.2.1`.
        "data": ["recbole==1.2.1"],
        # Export to ONNX Runtime (desktop and ONNX Runtime Mobile); see docs/export.md.
        "export": ["onnx==1.23.2", "onnxruntime==1.31.1"],
    },
)

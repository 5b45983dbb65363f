"""cwm_jax: the Code World Model training system in JAX/Flax."""

from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent


def _reqs(name):
  return [line.strip() for line in (here / name).read_text().splitlines()
          if line.strip() and not line.startswith("#")]


setup(
    name="cwm_jax",
    version="0.1.0",
    description="Code World Model (CWM) training system in JAX/Flax: model, data, training, RL, evals.",
    long_description=(here / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["cwm_jax*", "data_pipelines*", "experiments*"]),
    install_requires=_reqs("requirements.txt"),
    extras_require={"test": _reqs("requirements-test.txt")},
)

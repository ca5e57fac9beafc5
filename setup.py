"""
Packaging for replichat: the library, the twistd plugin and the console script.
"""

from setuptools import find_packages, setup

setup(
    name="replichat",
    version="0.1.0",
    description="A replicated, persistent chat service on Twisted",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    python_requires=">=3.10",
    packages=find_packages(exclude=["tests", "tests.*"]) + ["twisted.plugins"],
    install_requires=[
        "twisted>=23.10",
        "attrs>=23.1",
        "pyyaml>=6.0",
    ],
    extras_require={"test": ["hypothesis>=6.80"]},
    entry_points={"console_scripts": ["replichat = replichat.scripts.cli:run"]},
)

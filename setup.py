"""ament_python package ``bronchopt_ros``.

On a ROS 2 install, ``colcon build`` builds this package and ``bronchopt_msgs``; here (ROS 2 from
PyPI) the Makefile installs it into ``.venv`` in editable mode. Python dependencies that are not
ROS packages live in ``requirements/`` (torch is pinned there to the CPU build).
"""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "bronchopt_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    description="Bronchoscope localisation in the CT airway from endoscope video (BronchOpt) for ROS 2",
    license="Apache-2.0",
    packages=find_packages(include=[PACKAGE, PACKAGE + ".*"]),
    package_data={PACKAGE: ["encoder/weights/*", "encoder/MODEL_CARD.md"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.rviz")),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "navigator = bronchopt_ros.nodes.navigator:main",
            "airway_server = bronchopt_ros.nodes.airway_server:main",
            "bronchopt = bronchopt_ros.cli:main",
        ],
    },
)

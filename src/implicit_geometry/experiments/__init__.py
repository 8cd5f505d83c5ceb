"""Experiments: prediction next to simulation or measurement, each writing a self-describing run folder.

``EXPERIMENTS`` maps a name to the module that defines its CLI command (``command``); modules are imported only
when their command is used.
"""

EXPERIMENTS: dict[str, str] = {
    "seli": "implicit_geometry.experiments.seli_cli",
    "hadamard": "implicit_geometry.experiments.hadamard_cli",
    "imbalance": "implicit_geometry.experiments.imbalance_cli",
    "depth": "implicit_geometry.experiments.depth_cli",
    "ntp": "implicit_geometry.experiments.ntp_cli",
    "network": "implicit_geometry.experiments.network_cli",
    "head-depth": "implicit_geometry.experiments.head_depth_cli",
}

"""Exactly solvable cross-entropy dynamics: Hadamard initialization and the reduced singular-value ODE."""

from implicit_geometry.dynamics.exactness import ExactnessReport, exactness_check
from implicit_geometry.dynamics.hadamard import (
    HadamardInit,
    check_power_of_two,
    hadamard_basis,
    hadamard_init,
    sample_singular_values,
    walsh_characters,
)
from implicit_geometry.dynamics.reduced import (
    ReducedSolution,
    effective_rank_of_spectrum,
    endpoint_classification,
    gd_reduced,
    log_time_grid,
    lyapunov,
    reduced_rate,
    solve_reduced,
)

__all__ = [
    "ExactnessReport",
    "HadamardInit",
    "ReducedSolution",
    "check_power_of_two",
    "effective_rank_of_spectrum",
    "endpoint_classification",
    "exactness_check",
    "gd_reduced",
    "hadamard_basis",
    "hadamard_init",
    "log_time_grid",
    "lyapunov",
    "reduced_rate",
    "sample_singular_values",
    "solve_reduced",
    "walsh_characters",
]

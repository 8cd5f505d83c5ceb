"""Exactly solvable cross-entropy dynamics: Hadamard initialization and the reduced singular-value ODE."""

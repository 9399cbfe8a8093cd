"""controlnet: training neural networks as optimal control problems over ``θ(t)``.

The core: vector fields, integrators, costs, the control problem, and the three modules that
make "training = optimal control" literal: :mod:`~controlnet.state` (forward),
:mod:`~controlnet.adjoint` (backward) and :mod:`~controlnet.hamiltonian`.
"""

from .activations import ACTIVATIONS, activation, casadi_activation
from .adjoint import (
    backward,
    costates,
    flow_and_backward,
    gradient,
    gradient_from_hamiltonian,
    pullback,
    terminal_costate,
    value_and_gradient,
)
from .costs import LOSSES, Logistic, Loss, SoftmaxCrossEntropy, SquaredError
from .dynamics import DYNAMICS, InnerActivation, OuterActivation, TwoLayer, VectorField
from .hamiltonian import grad_theta, grad_z, hamiltonian, layer_hamiltonians
from .integrators import INTEGRATORS, RK4, Euler, Integrator
# Convolutional fields on channel x space states (they register their names).
from .conv import AntisymmetricConv, Conv, ParabolicConv, conv_spectral_norm
# Structure-preserving fields, splitting integrators and the MLP map (they register their names).
from .mlp import NoResidual
from .splitting import LieSplitting, PartitionedField, SplitField, StrangSplitting
from .structured import (
    Antisymmetric, Hamiltonian, LipschitzNet, MassPreserving, VolumePreserving, lipschitz_factor,
)
from . import architecture
from .lift import ConvLift, lift
from .problem import ControlProblem, Controls, metrics, objective, objective_value
from .evaluation import evaluate
from .readout import init_readout, readout
from .state import final_state, forward, from_scan, to_scan
from .predict import Prediction, predict

__version__ = "0.1.0"
from .io import Result, load_controls, save_controls
from . import diagnostics  # turnpike, regularization, stability and landscape diagnostics
# Multi-stage networks: blocks joined by connective layers.
from .connectives import Connective
from .stages import Block, StagedProblem, block_diagnostics

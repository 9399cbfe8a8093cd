"""Diagnostics of trained controls: turnpike, regularization, stability, landscape, robustness.

Each function is pure and takes the problem, the controls (or ``θ``) and, where it helps, the
states ``zs`` from :func:`controlnet.forward`; none trains anything.
"""

from .critical_points import CriticalPoint, critical_points, output_map
from .landscape import landscape, random_directions
from .regularization import (
    l1_norm,
    l2_norm,
    regularization_summary,
    stopping_time,
    time_derivative_norm,
)
from .robustness import (
    certified_radius,
    empirical_lipschitz,
    fgsm,
    input_gradient,
    margins,
    outputs,
    pgd,
    robust_accuracy,
)
from .robustness import lipschitz_bound as network_lipschitz_bound
from .stability import (
    ACTIVATION_LIPSCHITZ,
    euler_stable,
    flow_lipschitz,
    invertibility,
    jacobian_eigenvalues,
    jacobian_norms,
    lipschitz_bound,
)
from .turnpike import (
    SteadyState,
    TurnpikeFit,
    band_fraction,
    control_norms,
    fit_turnpike,
    flow_speed,
    layer_risk,
    steady_distance,
    steady_state,
    turnpike_profile,
)

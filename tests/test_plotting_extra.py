"""The plotting functions added for notebooks 05-08 draw exactly the numbers they are given."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from controlnet import plotting  # noqa: E402


def test_regularization_sweep_plots_each_key_against_the_weight():
    sweep = {"kind": "l2", "runs": [{"weight": w, "train_error": 0.1 * i, "test_error": 0.2 + i}
                                    for i, w in enumerate([0.0, 1e-3, 1e-2])]}
    fig = plotting.plot_regularization_sweep(sweep)
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert len(lines) == 2 and ax.get_xscale() == "symlog" and ax.get_xlabel() == "L² weight α"
    np.testing.assert_array_equal(lines[0].get_xdata(), [0.0, 1e-3, 1e-2])
    np.testing.assert_array_equal(lines[1].get_ydata(), [0.2, 1.2, 2.2])
    plt.close(fig)


def test_layer_curves_against_layer_and_normalized_time():
    v = np.array([1.0, 0.5, 0.25, 0.125, 0.0625])
    fig = plotting.plot_layer_curves({"a": v}, T=3.0, logy=True)
    line = fig.axes[0].get_lines()[0]
    np.testing.assert_allclose(line.get_xdata(), np.linspace(0, 1, 5))
    np.testing.assert_array_equal(line.get_ydata(), v)
    assert fig.axes[0].get_yscale() == "log"
    plt.close(fig)
    fig = plotting.plot_layer_curves({"a": v, "b": 2 * v}, logy=False)
    np.testing.assert_array_equal(fig.axes[0].get_lines()[1].get_xdata(), np.arange(5))
    plt.close(fig)


def test_fit_1d_draws_predictions_over_sorted_x():
    x = np.array([[0.5], [-1.0], [0.0]])
    fig = plotting.plot_fit_1d(x, x**2, {"model": 2 * x[:, 0]})
    line = fig.axes[0].get_lines()[0]
    np.testing.assert_array_equal(line.get_xdata(), [-1.0, 0.0, 0.5])
    np.testing.assert_array_equal(line.get_ydata(), [-2.0, 0.0, 1.0])
    plt.close(fig)


@pytest.mark.parametrize("fn", [plotting.plot_regularization_sweep, plotting.plot_layer_curves,
                                plotting.plot_fit_1d])
def test_new_plots_are_exported(fn):
    assert fn.__name__ in plotting.__all__

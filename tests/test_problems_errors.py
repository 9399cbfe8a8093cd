"""problems.make refuses bad options up front, naming the option (and, for an unknown keyword,
listing the ones it takes), before any data are made or any array is built."""

from __future__ import annotations

import numpy as np
import pytest

import problems
from problems import datasets


@pytest.fixture
def no_data(monkeypatch):
    """Every data set raises if called: a refusal must come before the data are made."""
    def made(*args, **kwargs):
        raise AssertionError("the data were made before the options were checked")

    for table in (datasets.DATASETS, datasets.SPLIT_DATASETS, datasets.FIXED_DATASETS):
        for name in table:
            monkeypatch.setitem(table, name, made)


def test_an_unknown_keyword_lists_the_options(no_data):
    with pytest.raises(TypeError) as e:
        problems.make("ring", layer=4)
    msg = str(e.value)
    assert "problems.make() has no option 'layer' (did you mean layers?)" in msg
    for option in ("samples", "test_samples", "layers", "horizon", "dynamics", "field_options"):
        assert option in msg
    with pytest.raises(TypeError, match="no option 'depth', 'wdith' \\(did you mean width\\?\\)"):
        problems.make("ring", wdith=3, depth=2)


@pytest.mark.parametrize("name, options, fragment", [
    ("ring", dict(samples=-5), "samples must be an integer >= 1, got -5"),
    ("ring", dict(samples=2.5), "samples must be an integer >= 1, got 2.5"),
    ("ring", dict(samples=True), "samples must be an integer >= 1, got True"),
    ("ring", dict(samples=1), "samples: the number of samples must be an integer >= 2 for ring, got 1"),
    ("ring", dict(test_samples=1), "test_samples: .* >= 2 for ring, or 0 for no test split, got 1"),
    ("digits", dict(test_samples=-3), "test_samples must be an integer >= 0, got -3"),
    ("mnist1d", dict(samples=0), "samples must be an integer >= 1, got 0"),
    ("ring", dict(seed=-1), "seed must be an integer >= 0, got -1"),
    ("ring", dict(seed=1.5), "seed must be an integer >= 0, got 1.5"),
    ("ring", dict(width=0), "width must be an integer >= 1, got 0"),
    ("ring", dict(layers=2.0), "layers must be an integer >= 1, got 2.0"),
    ("ring", dict(hidden=0), "hidden must be an integer >= 1, got 0"),
    ("ring", dict(kernel=0), "kernel must be an integer >= 1, got 0"),
    ("mnist1d", dict(lift_kernel=-1), "lift_kernel must be an integer >= 1, got -1"),
    ("ring", dict(horizon="5"), "horizon must be a finite number > 0, got '5'"),
    ("ring", dict(horizon=0.0), "horizon must be a finite number > 0, got 0.0"),
    ("ring", dict(horizon=float("inf")), "horizon must be a finite number > 0, got inf"),
    ("ring", dict(tracking="a"), "tracking must be a finite number >= 0, got 'a'"),
    ("ring", dict(l1=float("nan")), "l1 must be a finite number >= 0, got nan"),
    ("ring", dict(readout_l2=-1), "readout_l2 must be a finite number >= 0, got -1"),
    ("ring", dict(l2=True), "l2 must be a finite number >= 0, got True"),
    ("ring", dict(l2=np.ones(2)), "l2 must be a finite number >= 0, got array"),
    ("ring", dict(l2=1j), "l2 must be a finite number >= 0, got 1j"),
    ("ring", dict(activation=3), "activation must be a name \\(a string\\), got 3"),
    ("ring", dict(field_options=[1]), "field_options must be a dict"),
    ("ring", dict(dynamics="conv"), "dynamics 'conv' is convolutional but the samples of ring are vectors"),
    ("mnist1d", dict(dynamics="inner"), "dynamics 'inner' is dense but the samples of mnist1d are signals"),
    ("ring", dict(lift="conv"), "lift='conv' learns a convolution over signals or images"),
])
def test_bad_options_are_refused_before_the_data_are_made(no_data, name, options, fragment):
    with pytest.raises(ValueError, match=fragment):
        problems.make(name, **options)


def test_a_name_that_is_not_a_string_is_an_unknown_problem():
    with pytest.raises(ValueError, match="unknown problem \\['ring'\\]; choose one of"):
        problems.make(["ring"])


def test_numpy_integers_and_floats_are_accepted():
    import jax.numpy as jnp

    task = problems.make("ring", samples=np.int64(8), test_samples=np.int32(0), layers=np.int64(2),
                         horizon=np.float32(1.0), l2=np.float64(0.0), seed=np.uint8(3), tracking=jnp.float32(0.5),
                         l1=0)
    assert task.problem.x.shape == (8, 2) and task.problem.N == 2 and task.test is None

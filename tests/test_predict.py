"""``predict``: scores and labels of new inputs, no labels needed."""

import jax
import numpy as np
import pytest

import controlnet as cn
import problems
import solvers
from controlnet.predict import Prediction, predict


@pytest.fixture(scope="module")
def ring():
    task = problems.make("ring", samples=30, test_samples=25, layers=4)
    return task, task.problem.init_controls(jax.random.PRNGKey(3))


def test_labels_give_the_accuracy_evaluate_reports(ring):
    task, controls = ring
    x, y = task.test
    pred = predict(task.problem, controls, x)
    assert isinstance(pred, Prediction) and pred.scores.shape == (25, 1) and pred.labels.shape == (25,)
    correct = int(np.sum(np.asarray(pred.labels) == np.asarray(y)))
    ev = solvers.evaluate(task.problem, controls, task.test)
    assert correct == round(ev["test_accuracy"] * 25)
    assert 0 < correct < 25  # both kinds of mistake possible: the test is not vacuous
    # the scores are the read-out of the forward pass (jit vs eager: round-off), the labels its sign
    zN = cn.forward(task.problem.with_data(x, y), controls.theta)[-1]
    np.testing.assert_allclose(pred.scores, task.problem.readout(zN, controls.w), rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(pred.labels, (np.asarray(pred.scores)[:, 0] > 0).astype(int))


def test_softmax_labels_are_the_argmax_and_match_evaluate():
    task = problems.make("digits", samples=60, test_samples=40, layers=1)
    controls = task.problem.init_controls(jax.random.PRNGKey(0))
    pred = predict(task.problem, controls, task.test[0])
    assert pred.scores.shape == (40, 10)
    np.testing.assert_array_equal(pred.labels, np.argmax(np.asarray(pred.scores), axis=-1))
    ev = solvers.evaluate(task.problem, controls, task.test)
    assert int(np.sum(np.asarray(pred.labels) == task.test[1])) == round(ev["test_accuracy"] * 40)


def test_a_regression_has_scores_and_no_labels():
    task = problems.make("sine", samples=20, test_samples=10, layers=2)
    controls = task.problem.init_controls(jax.random.PRNGKey(0))
    pred = predict(task.problem, controls, task.test[0])
    assert pred.labels is None and pred.scores.shape == (10, 1)
    ev = solvers.evaluate(task.problem, controls, task.test)
    np.testing.assert_allclose(0.5 * np.mean((np.asarray(pred.scores) - task.test[1]) ** 2), ev["test_loss"],
                               rtol=1e-12)


@pytest.mark.parametrize("x, fragment", [
    (np.zeros((5, 3)), r"x must have shape \(n, 2\) .*got \(5, 3\)"),
    (np.zeros(2), r"got \(2,\); add a leading sample axis, x\[None\]"),
    (np.zeros((5, 2, 1)), r"got \(5, 2, 1\)"),
    (np.array([[0.0, np.nan]]), "finite numbers"),
])
def test_a_wrong_input_is_refused(ring, x, fragment):
    task, controls = ring
    with pytest.raises(ValueError, match=fragment):
        predict(task.problem, controls, x)

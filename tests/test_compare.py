"""solvers.compare and `controlnet compare`: the summary is what the solves did, files are written."""

import argparse
import json

import jax
import numpy as np
import optax
import pytest

import problems
import solvers
from controlnet_cli import app as cli
from solvers import compare
from solvers.gd import GradientDescent

PNG = b"\x89PNG\r\n\x1a\n"


def test_time_to_target_reads_the_history():
    # Iterate j is reached after the steps 0..j-1; the loss of iterate 2 is the first <= 0.2.
    hist = {"loss": np.array([1.0, 0.5, 0.2, 0.1]), "time": np.array([1.0, 2.0, 3.0, 4.0])}
    assert compare.time_to_target(hist, 0.2) == (3.0, 2)
    assert compare.time_to_target(hist, 1.0) == (0.0, 0)
    assert compare.time_to_target(hist, 0.05) == (None, None)
    assert compare.time_to_target({"loss": np.array([]), "time": np.array([])}, 1.0) == (None, None)


@pytest.fixture(scope="module")
def tiny():
    task = problems.make("ring", samples=40, layers=4)
    c0 = jax.jit(lambda p, k: p.init_controls(k))(task.problem, jax.random.PRNGKey(0))
    return task.problem, c0


def test_compare_summary_matches_the_solves(tiny, tmp_path):
    p, c0 = tiny
    cmp = compare.compare(p, ["gd", "emsa"], c0, max_iters=6)
    J0 = solvers.evaluate(p, c0)["loss"]
    assert cmp.target_loss == pytest.approx(J0 / 10, rel=1e-12)
    assert list(cmp.summary) == ["gd", "emsa"]
    for name, entry in cmp.summary.items():
        res = cmp.results[name]
        # Same initial controls: every history starts at J(θ⁰).
        assert res.history["loss"][0] == pytest.approx(J0, rel=1e-10)
        assert entry["iterations"] == len(res.history["loss"]) == 6
        assert entry["loss"] == pytest.approx(solvers.evaluate(p, res.controls)["loss"], rel=1e-12)
        assert entry["time_to_target"] is None or entry["time_to_target"] <= entry["wall_time"]
        assert entry["status"] == res.status
    # A target every run reaches at its second iterate or earlier.
    target = max(min(r.history["loss"][:2]) for r in cmp.results.values())
    for name, res in cmp.results.items():
        sec, it = compare.time_to_target(res.history, target)
        assert it <= 1 and sec == pytest.approx(float(np.sum(res.history["time"][:it])))
    written = compare.save(cmp, tmp_path / "out")
    assert [w.name for w in written] == ["summary.json", "loss_vs_iter.png", "loss_vs_time.png"]
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == cmp.summary
    for w in written[1:]:
        assert w.read_bytes()[:8] == PNG
    table = compare.format_table(cmp.summary)
    assert len(table.splitlines()) == 2 + 2 and "emsa" in table and "gd" in table


def test_a_solver_registered_later_appears_by_name(tiny, monkeypatch):
    p, c0 = tiny
    monkeypatch.setitem(solvers.SOLVERS, "sgd_test", lambda **kw: GradientDescent(optax.sgd(0.1), **kw))
    cmp = compare.compare(p, ["sgd_test"], c0, max_iters=3, target_loss=1e9)
    entry = cmp.summary["sgd_test"]
    assert entry["iters_to_target"] == 0 and entry["time_to_target"] == 0.0
    with pytest.raises(ValueError, match="unknown solver"):
        compare.compare(p, ["no_such_solver"], c0, max_iters=1)
    with pytest.raises(ValueError, match="distinct"):
        compare.compare(p, ["gd", "gd"], c0, max_iters=1)


def test_cli_compare_prints_one_table_and_writes_the_files(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--problem", "ring", "--samples", "40", "--layers", "4", "--solvers", "gd,emsa",
            "--iters", "3", "--out", str(out)]
    assert cli.main(argv) == 0
    stdout = capsys.readouterr().out
    rows = [line.split()[0] for line in stdout.splitlines()[2:4]]
    assert rows == ["gd", "emsa"], stdout
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == ["gd", "emsa"]
    assert all(summary[n]["iterations"] == 3 for n in summary)
    assert (out / "loss_vs_iter.png").read_bytes()[:8] == PNG
    assert (out / "loss_vs_time.png").read_bytes()[:8] == PNG
    assert cli.main(["compare", "--solvers", "gd,nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown solver" in capsys.readouterr().err


def test_cli_passes_the_msa_options():
    import studies
    from controlnet_cli.sweep import solver_spec

    parser = cli.build_parser()
    base = ["compare", "--out", "unused", "--rho", "4", "--inner-steps", "3", "--inner-lr", "0.2",
            "--batch-size", "16"]
    args = parser.parse_args(base)
    ns = lambda a, name: argparse.Namespace(**{**vars(a), "solver": name})  # noqa: E731
    emsa = cli.solver_from_args(ns(args, "emsa"))
    assert (emsa.rho, emsa.inner_steps, emsa.inner_lr, emsa.batch_size) == (4.0, 3, 0.2, 16)
    basic = cli.solver_from_args(ns(args, "msa"))
    assert (basic.name, basic.inner_steps, basic.inner_lr) == ("msa", 3, 0.2)
    # the compare command's runs get them through their run specs: the same solvers
    assert studies.make_solver(solver_spec(ns(args, "emsa"), "emsa")) == emsa
    assert studies.make_solver(solver_spec(ns(args, "msa"), "msa")) == basic
    default = cli.solver_from_args(ns(parser.parse_args(["compare", "--out", "u"]), "emsa"))
    assert default == solvers.make_solver("emsa")

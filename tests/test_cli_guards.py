"""The command line says what it does: solver options from the solvers' fields, refusals of
options that do not apply, of a missing data extra, of sizes that cannot fit and of a folder
that holds a run or a result (each one line, exit 2, before any data, compile or file), and
per-run progress with the compile time apart."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from typing import Any, Callable, ClassVar

import pytest

import solvers
from controlnet_cli import app as cli
from controlnet_cli import guards
from solvers.options import Family

TINY = ["train", "--problem", "ring", "--samples", "8", "--layers", "2", "--iters", "1", "--quiet"]


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(code, err, *fragments):
    lines = err.strip("\n").split("\n")
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("controlnet: error: "), err
    for f in fragments:
        assert f in lines[0], lines[0]


class _NoWork(BaseException):
    """Raised where a command would make its data: a refusal must come before."""


@pytest.fixture
def no_data(monkeypatch):
    """``problems.make`` raises: a test passes only if the command refused before it."""
    import problems

    def make(*args, **kwargs):
        raise _NoWork

    monkeypatch.setattr(problems, "make", make)


# -- 1. a new solver gets its options from its fields --------------------------------------------
class Toy(Family):
    """A family of toy modes, defined here and not in the library."""


@dataclasses.dataclass(frozen=True)
class Slow(Toy):
    factor: float = 0.5
    name: ClassVar[str] = "slow"


@dataclasses.dataclass(frozen=True)
class Fast(Toy):
    name: ClassVar[str] = "fast"


class _Reached(BaseException):
    def __init__(self, solver):
        self.solver = solver


@dataclasses.dataclass(frozen=True)
class ToySolver:
    """A solver the library does not know.

    Args:
        step_size: how far a step goes.
        mode: how it steps.
    """

    step_size: float = 0.1
    mode: Toy = Slow()
    repeats: int | None = None
    polish: bool = False
    rate: float | Callable = 1.0
    transform: Any = None
    name: ClassVar[str] = "toy"

    def __post_init__(self):
        if not self.step_size > 0:
            raise ValueError(f"step_size must be positive, got {self.step_size!r}")

    def init(self, problem, controls, *, key):
        raise _Reached(self)  # the solver as the command built it, at the start of the solve

    def step(self, problem, state):
        raise AssertionError("not reached")


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setattr(solvers, "SOLVERS", {**solvers.SOLVERS, "toy": ToySolver})


def test_a_new_solver_gets_its_options_from_its_fields(toy, tmp_path, capsys):
    argv = TINY + ["--solver", "toy", "--step-size", "0.25", "--mode", "fast", "--repeats", "3", "--polish",
                   "--rate", "2", "--out", tmp_path / "run"]
    with pytest.raises(_Reached) as reached:
        cli.main([str(a) for a in argv])
    assert reached.value.solver == ToySolver(step_size=0.25, mode=Fast(), repeats=3, polish=True, rate=2.0)
    assert not (tmp_path / "run" / "result.json").exists()
    with pytest.raises(_Reached) as reached:  # nothing given: the solver's own defaults
        cli.main([str(a) for a in TINY + ["--solver", "toy", "--out", tmp_path / "run"]])
    assert reached.value.solver == ToySolver()


def test_a_new_solvers_options_are_listed_checked_and_its_own(toy, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--step-size STEP_SIZE how far a step goes [toy]" in text
    assert "--mode {fast,slow}" in text and "--polish, --no-polish" in text
    assert "--transform" not in text  # no spelling on a command line: left at its default
    assert re.search(r"--solver SOLVER the solver: gd, .*toy", text)
    out = ["--out", tmp_path / "run"]
    assert_refused(*run(TINY + ["--solver", "toy", "--mode", "quick"] + out, capsys)[::2],
                   "argument --mode: invalid choice: 'quick'")
    assert_refused(*run(TINY + ["--solver", "toy", "--step-size", "-1"] + out, capsys)[::2],
                   "step_size must be positive, got -1.0")
    assert_refused(*run(TINY + ["--solver", "gd", "--step-size", "1"] + out, capsys)[::2],
                   "--step-size does not apply to --solver gd: it is an option of toy")
    assert not (tmp_path / "run").exists()


# -- 2. options that do not apply are refused -----------------------------------------------------
TURNPIKE = ["turnpike", "--problem", "ring", "--samples", "8", "--iters", "1", "--horizons", "1"]
NOT_APPLYING = {
    "rho with gd": (TINY + ["--rho", "3"], "--rho does not apply to --solver gd: it is an option of emsa"),
    "inner ipopt with gd": (TINY + ["--inner", "ipopt"], "--inner does not apply to --solver gd"),
    "schedule with emsa": (TINY + ["--solver", "emsa", "--schedule", "cosine"],
                           "--schedule does not apply to --solver emsa: it is an option of gd"),
    "lr with discrete": (TINY + ["--solver", "discrete", "--lr", "0.1"],
                         "--lr does not apply to --solver discrete", "discrete's own is --discrete-lr"),
    "batch size with pgd": (TINY + ["--solver", "pgd", "--batch-size", "4"], "--batch-size does not apply"),
    "rho with none of the compared": (["compare", "--problem", "ring", "--solvers", "gd,pgd", "--rho", "3"],
                                      "--rho does not apply to --solvers gd,pgd"),
    "hidden without a hidden width": (TINY + ["--dynamics", "inner", "--hidden", "8"],
                                      "--hidden sets the hidden width", "--dynamics inner has none: drop --hidden"),
    "hidden of the problem's field": (TINY + ["--hidden", "8"], "--dynamics inner has none"),  # ring: inner
    "squared loss on ten classes": (TURNPIKE + ["--problem", "digits", "--loss", "squared"],
                                    "--loss squared regresses the 0/1 labels of a two-class problem",
                                    "--problem digits has a SoftmaxCrossEntropy loss"),
    "empty out": (TINY + ["--out", ""], "argument --out: expected a directory, got ''"),
    "empty out, compare": (["compare", "--out", ""], "argument --out: expected a directory"),
    "resume and overwrite": (TINY + ["--resume", "{d}", "--overwrite"], "pass one of them"),
    "layers in turnpike": (TURNPIKE + ["--layers", "3"], "unrecognized arguments: --layers 3"),
}


@pytest.mark.parametrize("case", list(NOT_APPLYING))
def test_an_option_that_does_not_apply_is_refused(case, tmp_path, capsys, no_data):
    argv, *fragments = NOT_APPLYING[case]
    argv = [str(a).format(d=tmp_path) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    assert_refused(*run(argv, capsys)[::2], *fragments)
    assert not (tmp_path / "out").exists()


def test_the_help_lists_the_solvers_and_turnpike_offers_only_its_own(capsys):
    for command in ("train", "turnpike"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert f"the solver: {', '.join(solvers.SOLVERS)} (default: gd)" in text
    assert "--layers" not in text and "--tracking " not in text and "--tracking-weight" in text
    with pytest.raises(SystemExit):
        cli.main(["compare", "--help"])
    assert f"comma-separated solver names: {', '.join(solvers.SOLVERS)}" in " ".join(capsys.readouterr().out.split())


# -- 3. a missing optional dependency -------------------------------------------------------------
@pytest.mark.parametrize("problem, modules", [("digits", ["sklearn", "sklearn.datasets"]),
                                              ("mnist1d", ["mnist1d", "mnist1d.data"])])
def test_a_missing_data_extra_is_one_line_naming_it(problem, modules, tmp_path, capsys, monkeypatch):
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)  # `import m` now fails as if not installed
    code, _, err = run(["train", "--problem", problem, "--iters", "1", "--out", tmp_path / "out"], capsys)
    assert_refused(code, err, f"--problem {problem} needs a package that is not installed",
                   "pip install 'controlnet-oc[data]'")
    assert not (tmp_path / "out").exists()


# -- 4. size guards -------------------------------------------------------------------------------
def test_samples_beyond_the_memory_are_refused_before_the_data(tmp_path, capsys, monkeypatch, no_data):
    monkeypatch.setattr(guards, "available_memory", lambda: 8 * 2**30)
    code, _, err = run(["train", "--samples", "200000000", "--out", tmp_path / "out"], capsys)
    # ring: 20 layers of width 3 in float32: (20 + 3) · 2e8 · 3 · 4 bytes.
    assert_refused(code, err, "200,000,000 samples × 21 states of width 3 need about 51.4 GiB",
                   "this machine has 8 GiB free; lower --samples")
    assert not (tmp_path / "out").exists()
    code, _, err = run(["train", "--samples", "200000000", "--layers", "1000", "--out", tmp_path / "out"], capsys)
    assert_refused(code, err, "lower --samples or --layers")


def test_the_memory_guard_reads_this_machine(tmp_path, capsys, no_data):
    # 2e8 samples through 1000 layers of width 3: 2.4 TB in float32, on no machine of ours.
    code, _, err = run(["train", "--samples", "200000000", "--layers", "1000", "--out", tmp_path], capsys)
    assert_refused(code, err, "GiB free; lower --samples or --layers")
    assert guards.available_memory() > 2**20


def test_a_million_layers_are_refused(tmp_path, capsys, no_data):
    code, _, err = run(TURNPIKE[:-2] + ["--horizons", "1", "--step", "1e-6", "--out", tmp_path / "tp"], capsys)
    assert_refused(code, err, "--horizons 1 with --step 1e-06 gives 1,000,000 layers, more than the 100,000",
                   "raise --step or lower --horizons")
    code, _, err = run(["train", "--layers", "1000000", "--out", tmp_path / "t"], capsys)
    assert_refused(code, err, "--layers 1000000 gives 1,000,000 layers", "lower --layers")
    assert not (tmp_path / "tp").exists() and not (tmp_path / "t").exists()


def test_the_estimate_is_states_and_inputs():
    assert guards.state_bytes(samples=10, layers=4, width=3, float64=False) == (4 + 1 + 2) * 10 * 3 * 4
    assert guards.state_bytes(samples=10, layers=4, width=3, float64=True) == (4 + 1 + 2) * 10 * 3 * 8


# -- 5. never silently replace a run or a result --------------------------------------------------
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny ``train`` run (result.json and checkpoint.npz)."""
    d = tmp_path_factory.mktemp("finished")
    assert cli.main([str(a) for a in TINY + ["--out", d]]) == 0
    return d


def _copy(src, dst, names=None):
    dst.mkdir()
    for f in src.iterdir():
        if names is None or f.name in names:
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_a_finished_result_is_not_replaced_without_overwrite(finished, tmp_path, capsys):
    d = _copy(finished, tmp_path / "done")
    before = {f.name: f.read_bytes() for f in d.iterdir()}
    code, _, err = run(TINY + ["--iters", "2", "--out", d], capsys)
    assert_refused(code, err, f"--out {d} holds a finished result (result.json); pass --resume {d} to continue it, "
                              "--overwrite to replace it, or choose another --out")
    assert {f.name: f.read_bytes() for f in d.iterdir()} == before
    code, out, err = run(TINY + ["--iters", "2", "--out", d, "--overwrite"], capsys)
    assert code == 0, err
    assert json.loads((d / "result.json").read_text())["iterations"] == 2


def test_an_unfinished_run_is_not_replaced_without_resume_or_overwrite(finished, tmp_path, capsys):
    d = _copy(finished, tmp_path / "killed", names={"checkpoint.npz"})  # a run killed before its result
    code, _, err = run(TINY + ["--out", d], capsys)
    assert_refused(code, err, f"holds an unfinished run (checkpoint.npz); pass --resume {d} to continue it, "
                              "--overwrite to replace it")
    assert [f.name for f in d.iterdir()] == ["checkpoint.npz"]
    code, _, err = run(TINY + ["--iters", "2", "--resume", d], capsys)  # continuing it is allowed
    assert code == 0, err
    assert json.loads((d / "result.json").read_text())["resumed_from"] == 1


def test_overwrite_starts_afresh_and_drops_the_old_checkpoint(finished, tmp_path, capsys):
    d = _copy(finished, tmp_path / "old", names={"checkpoint.npz"})
    code, _, err = run(TINY + ["--solver", "pgd", "--out", d, "--overwrite"], capsys)
    assert code == 0, err
    result = json.loads((d / "result.json").read_text())
    assert result["solver"] == "pgd" and result["resumed_from"] is None
    import controlnet as cn

    assert cn.io.checkpoint_info(d / "checkpoint.npz")["solver"] == "pgd"


@pytest.mark.parametrize("command", [["compare", "--problem", "ring", "--solvers", "gd"], TURNPIKE])
def test_a_study_folder_is_not_replaced_without_overwrite(command, tmp_path, capsys, no_data):
    (tmp_path / "summary.json").write_text("{}")
    code, _, err = run(command + ["--out", tmp_path], capsys)
    assert_refused(code, err, f"--out {tmp_path} holds a finished result (summary.json); pass --overwrite to "
                              "replace it, or choose another --out")
    assert (tmp_path / "summary.json").read_text() == "{}"
    with pytest.raises(_NoWork):  # with --overwrite the command goes on to make its data
        cli.main([str(a) for a in command + ["--out", tmp_path, "--overwrite"]])


# -- 6. progress, compile time apart, log time axis -----------------------------------------------
def test_compare_reports_each_run_with_its_compile_time(tmp_path, capsys, monkeypatch):
    from controlnet_cli import compare as cli_compare

    scales = {}
    real = cli_compare.save_fig

    def save_fig(fig, path):
        ax = fig.axes[0]
        times = [line.get_xdata() for line in ax.get_lines() if line.get_label() != "target loss"]
        scales[path.name] = (ax.get_xscale(), times)
        real(fig, path)

    monkeypatch.setattr(cli_compare, "save_fig", save_fig)
    argv = ["compare", "--problem", "ring", "--samples", "16", "--layers", "2", "--solvers", "gd,pgd",
            "--iters", "30", "--out", tmp_path / "cmp"]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    lines = err.strip("\n").splitlines()
    pattern = r"  \[(\d)/2\] (\w+): loss \S+, accuracy \S+, 30 iterations in (\S+) s \(compile (\S+) s\), max_iters"
    matches = [re.fullmatch(pattern, line) for line in lines]
    assert all(matches) and [m.group(2) for m in matches] == ["gd", "pgd"], err
    summary = json.loads((tmp_path / "cmp" / "summary.json").read_text())
    for m in matches:
        entry = summary[m.group(2)]
        assert float(m.group(3)) == pytest.approx(entry["wall_time"], abs=0.005)
        assert float(m.group(4)) == pytest.approx(entry["compile_time"], abs=0.005) and entry["compile_time"] > 0
    head = out.splitlines()[0].split()
    assert "compile" in head and "iterating" in head  # both times as columns
    scale, times = scales["loss_vs_time.png"]
    t = [v for x in times for v in x if v > 0]
    assert scale == ("log" if max(t) > 10 * min(t) else "linear")
    assert scales["loss_vs_iter.png"][0] == "linear"


def test_log_time_axis_where_times_span_decades():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from controlnet_cli.figures import log_time_axis

    fig, ax = plt.subplots()
    assert log_time_axis(ax, [[0.001, 0.01, 0.5], [0.02, 3.0]]) and ax.get_xscale() == "log"
    fig2, ax2 = plt.subplots()
    assert not log_time_axis(ax2, [[1.0, 2.0, 5.0]]) and ax2.get_xscale() == "linear"
    plt.close("all")


def test_turnpike_reports_each_run_with_its_time(tmp_path, capsys):
    argv = ["turnpike", "--problem", "ring", "--samples", "8", "--horizons", "0.5,1", "--step", "0.25",
            "--tracking-weight", "0", "--iters", "2", "--out", tmp_path / "tp"]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 2, err
    for i, (line, N) in enumerate(zip(lines, (2, 4)), 1):
        # The compile time apart where the study reports it, else the rest of the run's time.
        m = re.search(rf"\[{i}/2\] L² T=\S+ N={N}: .* \((\S+) s: 2 iterations in (\S+) s, "
                      rf"(?:compile (\S+) s|(\S+) s compiling and measuring)\)$", line)
        assert m, line
        total, iterating = float(m.group(1)), float(m.group(2))
        if m.group(4) is not None:
            assert total == pytest.approx(iterating + float(m.group(4)), abs=0.11)
        assert total > 0 and total + 0.05 >= iterating + float(m.group(3) or 0)
    assert json.loads((tmp_path / "tp" / "summary.json").read_text())["config"]["tracking_weight"] == 0

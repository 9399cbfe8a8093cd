"""The command line: one-line errors and exit codes, a fuzz test of bad arguments, divergence,
Ctrl-C of a running ``controlnet train`` and its resumption, damaged files refused."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import controlnet as cn
from controlnet_cli import app as cli
from processes import wait_for_file

ROOT = Path(__file__).resolve().parents[1]
# A tiny, fast training run; every CLI test starts from it.
TINY = ["train", "--problem", "ring", "--samples", "8", "--layers", "2", "--iters", "1", "--quiet"]


def run(argv, capsys):
    """``controlnet argv`` in this process: (exit code, stdout, stderr)."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, fragment=""):
    lines = err.strip("\n").split("\n")
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("controlnet: error: "), err
    assert "Traceback" not in err
    assert fragment in lines[0], lines[0]


# -- 1. every bad input: one line, exit 2 ---------------------------------------------------------
BAD_ARGS = {
    # name: (extra arguments after TINY, fragment of the message)
    "no command": (None, "the following arguments are required: COMMAND"),
    "unknown command": ("frobnicate", "invalid choice: 'frobnicate'"),
    "no --out": ([], "train needs --out DIR"),
    "unknown option": (["--out", "{d}", "--depth", "3"], "unrecognized arguments: --depth 3"),
    "unknown problem": (["--out", "{d}", "--problem", "moons"], "argument --problem: invalid choice: 'moons'"),
    "unknown solver": (["--out", "{d}", "--solver", "newton"], "unknown solver 'newton'; choose one of"),
    "unknown dynamics": (["--out", "{d}", "--dynamics", "lstm"], "unknown dynamics 'lstm'; choose one of"),
    "unknown integrator": (["--out", "{d}", "--integrator", "rk45"], "unknown integrator 'rk45'; choose one of"),
    "unknown activation": (["--out", "{d}", "--activation", "gelu"], "unknown activation 'gelu'; choose one of"),
    "N = 0": (["--out", "{d}", "--layers", "0"], "argument --layers: expected a positive integer below 2147483648, got '0'"),
    "N not an integer": (["--out", "{d}", "--layers", "2.5"], "argument --layers: expected a positive integer"),
    "T = 0": (["--out", "{d}", "--horizon", "0"], "argument --horizon: expected a positive number, got '0'"),
    "T < 0": (["--out", "{d}", "--horizon", "-1"], "argument --horizon: expected a positive number, got '-1'"),
    "T = nan": (["--out", "{d}", "--horizon", "nan"], "argument --horizon: expected a positive number"),
    "T = inf": (["--out", "{d}", "--horizon", "inf"], "argument --horizon: expected a positive number"),
    "negative l2": (["--out", "{d}", "--l2", "-0.1"], "argument --l2: expected a number >= 0, got '-0.1'"),
    "negative smoothness": (["--out", "{d}", "--smoothness", "-1"], "argument --smoothness: expected a number >= 0"),
    "negative tracking": (["--out", "{d}", "--tracking", "-1e-3"], "argument --tracking: expected a number >= 0"),
    "zero learning rate": (["--out", "{d}", "--lr", "0"], "argument --lr: expected a positive number"),
    "one sample": (["--out", "{d}", "--samples", "1"], "the number of samples must be an integer >= 2"),
    "width below data": (["--out", "{d}", "--width", "1"], "width must be an integer >= the data dimension 2"),
    "negative seed": (["--out", "{d}", "--seed", "-3"], "argument --seed: expected a seed in 0..2147483647"),
    "zero checkpoint period": (["--out", "{d}", "--checkpoint-every", "0"], "argument --checkpoint-every"),
    "out is a file": (["--out", "{f}"], "exists and is not a directory"),
    "resume from nothing": (["--resume", "{d}/nothing"], "no checkpoint at"),
    "resume from a file": (["--resume", "{f}"], "--resume {f} is not a directory"),
    "unknown inner maximization": (["--out", "{d}", "--solver", "emsa", "--inner", "exact"],
                                   "argument --inner: invalid choice: 'exact'"),
    "T overflows float32": (["--out", "{d}", "--horizon", "1e300"],
                            "argument --horizon: expected a positive number at most 3.403e+38 "
                            "(float32; --float64 allows up to 1.798e+308), got '1e300'"),
    "checkpoints of a one-solve solver": (["--out", "{d}", "--solver", "direct", "--checkpoint-every", "5"],
                                          "--solver direct is one solve with no state to checkpoint"),
}
if "direct" not in __import__("solvers").SOLVERS:
    del BAD_ARGS["checkpoints of a one-solve solver"]


@pytest.mark.parametrize("case", list(BAD_ARGS))
def test_bad_arguments_one_line_exit_2(case, tmp_path, capsys):
    extra, fragment = BAD_ARGS[case]
    (tmp_path / "file").write_text("not a directory")
    fill = lambda a: a.format(d=tmp_path, f=tmp_path / "file")  # noqa: E731
    argv = [] if extra is None else [extra] if isinstance(extra, str) else TINY + [fill(a) for a in extra]
    code, out, err = run(argv, capsys)
    assert_one_line_error(code, err, fill(fragment))
    assert not (tmp_path / "result.json").exists()


TURNPIKE = ["turnpike", "--problem", "ring", "--samples", "8", "--iters", "1"]
COMPARE = ["compare", "--problem", "ring", "--samples", "8", "--layers", "2", "--iters", "1"]
BAD_LISTS = {
    # name: (command line, fragment of the message): lists and numbers as typed, option named
    "empty horizon": (TURNPIKE + ["--horizons", "1,,2"], "argument --horizons: empty entry in '1,,2'"),
    "trailing comma": (COMPARE + ["--solvers", "gd,"], "argument --solvers: empty entry in 'gd,'"),
    "only a comma": (COMPARE + ["--solvers", ","], "argument --solvers: empty entry in ','"),
    "negative horizon": (TURNPIKE + ["--horizons", "-1,2"],
                         "argument --horizons: entry '-1' of '-1,2': expected a positive number"),
    "overflowing horizon": (TURNPIKE + ["--horizons", "1,1e300"], "entry '1e300' of '1,1e300': expected a positive"),
    "repeated horizon": (TURNPIKE + ["--horizons", "1,2,1"], "argument --horizons: '1,2,1' lists '1' twice"),
    "repeated solver": (COMPARE + ["--solvers", "gd,emsa,gd"], "argument --solvers: 'gd,emsa,gd' lists 'gd' twice"),
    "unknown solver in a list": (COMPARE + ["--solvers", "gd,nope"], "--solvers: unknown solver(s) nope"),
    "not a number": (TURNPIKE + ["--horizons", "1,two"], "entry 'two' of '1,two': expected a positive number"),
}


@pytest.mark.parametrize("case", list(BAD_LISTS))
def test_bad_lists_one_line_exit_2(case, tmp_path, capsys):
    argv, fragment = BAD_LISTS[case]
    code, out, err = run(argv + ["--out", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "out").exists(), "nothing is written for a bad command line"


# -- 2. fuzz: random bad arguments never give a traceback -----------------------------------------
def _not_float(s):
    try:
        float(s)
        return False
    except ValueError:
        return True


def _not_int(s):
    try:
        int(s)
        return False
    except ValueError:
        return True


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_bad_text_num = _text.filter(_not_float)
_bad_int = st.one_of(st.integers(max_value=0).map(str), _text.filter(_not_int),
                     st.floats(allow_nan=True).map(repr).filter(_not_int))
_bad_positive = st.one_of(st.floats(max_value=0.0).map(repr), st.sampled_from(["nan", "inf", "-inf"]),
                          _bad_text_num)
_bad_nonneg = st.one_of(st.floats(max_value=-1e-300).map(repr), st.sampled_from(["nan", "inf", "-inf"]),
                        _bad_text_num)


def _bad_name(valid):
    return _text.filter(lambda s: s not in valid)


BAD_VALUES = {
    "--samples": st.one_of(_bad_int, st.just("1")),
    "--width": st.one_of(_bad_int, st.just("1")),
    "--layers": _bad_int,
    "--hidden": _bad_int,
    "--iters": _bad_int,
    "--batch-size": _bad_int,
    "--checkpoint-every": _bad_int,
    "--horizon": _bad_positive,
    "--lr": _bad_positive,
    "--seconds": _bad_positive,
    "--l2": _bad_nonneg,
    "--l1": _bad_nonneg,
    "--smoothness": _bad_nonneg,
    "--tracking": _bad_nonneg,
    "--seed": st.one_of(st.integers(max_value=-1), st.integers(min_value=2**31)).map(str) | _bad_text_num,
    "--problem": _bad_name(set(__import__("problems").PROBLEMS)),
    "--solver": _bad_name(set(__import__("solvers").SOLVERS)),
    "--dynamics": _bad_name(set(cn.DYNAMICS)),
    "--integrator": _bad_name(set(cn.INTEGRATORS)),
    "--activation": _bad_name(set(cn.ACTIVATIONS)),
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_one_bad_option_gives_one_line(data, tmp_path, capsys):
    option = data.draw(st.sampled_from(sorted(BAD_VALUES)), label="option")
    value = data.draw(BAD_VALUES[option], label="value")
    # "--opt=value" so that values starting with "-" stay values.
    code, out, err = run(TINY + ["--out", tmp_path / "out", f"{option}={value}"], capsys)
    assert_one_line_error(code, err)


_OPTIONS = [o for o in BAD_VALUES] + ["--float64", "--quiet", "train", "--", "-x", "=", "--solver=gd"]
_token = st.one_of(st.sampled_from(_OPTIONS), _text, st.floats().map(repr))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=st.lists(_token, max_size=8))
def test_fuzz_random_tokens_give_one_line(argv, capsys):
    # Without --out or --resume (or an abbreviation) no run can start, and --help is no error:
    # every other command line here is an error.
    assume(not any(t.startswith(("-h", "--h", "--o", "--r")) for t in argv))
    code, out, err = run(argv, capsys)
    assert_one_line_error(code, err)


class _WorkStarted(BaseException):
    """Raised where a valid command line would start training (not an error of the CLI)."""


def _start_of_work(*args, **kwargs):
    raise _WorkStarted


_entry = st.one_of(st.just(""), st.just(" "), st.floats().map(repr), st.integers(-3, 3).map(str),
                   st.sampled_from(["gd", "emsa", "msa", "pgd", "nope", "1e300", "-1", "1_0", "inf"]), _text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(["turnpike", "compare"]), entries=st.lists(_entry, min_size=1, max_size=5),
       equals=st.booleans())
def test_fuzz_lists_never_traceback(command, entries, equals, tmp_path, capsys, monkeypatch):
    """Any --horizons / --solvers value: one line and exit 2, or (a valid list) the work starts."""
    import solvers.compare
    import solvers.depth_study
    import studies

    monkeypatch.setattr(solvers.depth_study, "depth_study", _start_of_work)
    monkeypatch.setattr(solvers.depth_study, "depth_vs_turnpike", _start_of_work)
    monkeypatch.setattr(solvers.compare, "compare", _start_of_work)
    monkeypatch.setattr(studies, "sweep", _start_of_work)
    option, base = ("--horizons", TURNPIKE) if command == "turnpike" else ("--solvers", COMPARE)
    value = ",".join(entries)
    arg = [f"{option}={value}"] if equals else [option, value]
    try:
        code, out, err = run(base + arg + ["--out", tmp_path / "out"], capsys)
    except _WorkStarted:
        return  # a valid list
    assert_one_line_error(code, err)


@pytest.mark.parametrize("argv", [TURNPIKE + ["--horizons", "2,1"], COMPARE + ["--solvers", "gd, emsa"]])
def test_a_valid_list_reaches_the_work(argv, tmp_path, monkeypatch):
    """The fuzz test's other branch is reachable: a valid list starts the work."""
    import solvers.compare
    import solvers.depth_study
    import studies

    monkeypatch.setattr(solvers.depth_study, "depth_study", _start_of_work)
    monkeypatch.setattr(solvers.compare, "compare", _start_of_work)
    monkeypatch.setattr(studies, "sweep", _start_of_work)
    with pytest.raises(_WorkStarted):
        cli.main([str(a) for a in argv + ["--out", tmp_path / "out"]])


# -- 4. Ctrl-C of a running `controlnet train`, then --resume -------------------------------------
RUN = ["train", "--problem", "ring", "--samples", "64", "--layers", "6", "--iters", "1500",
       "--batch-size", "16", "--float64", "--quiet"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, in this process."""
    d = tmp_path_factory.mktemp("reference")
    assert cli.main(RUN + ["--out", str(d)]) == 0
    return d


def _controls(d):
    with np.load(d / "controls.npz") as z:
        return {k: z[k] for k in z.files}


def test_sigint_then_resume_gives_the_uninterrupted_result(reference, tmp_path, capsys):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "controlnet_cli", *RUN, "--out", str(out),
                             "--checkpoint-every", "50"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_for_file(out / "checkpoint.npz", proc, what="checkpoint")  # training has started
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted after" in stderr
    stopped = cn.Result.load(out)
    assert stopped.status == "interrupted"
    done = stopped.info["iterations"]
    assert 50 <= done < 1500, done
    assert cn.io.checkpoint_info(out / "checkpoint.npz")["iteration"] == done

    code, _, err = run(RUN + ["--resume", out], capsys)
    assert code == 0, err
    resumed, ref = cn.Result.load(out), cn.Result.load(reference)
    assert resumed.status == "max_iters" and resumed.info["resumed_from"] == done
    a, b = _controls(out), _controls(reference)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    for k in ("loss", "accuracy", "grad_norm"):
        assert np.array_equal(resumed.history[k], ref.history[k]), k


def test_resume_with_other_options_is_refused(reference, tmp_path, capsys):
    code, _, err = run([a if a != "16" else "8" for a in RUN] + ["--resume", reference, "--out", tmp_path],
                       capsys)
    assert_one_line_error(code, err, "cannot resume from")
    assert "--batch-size 8 (checkpoint: 16)" in err


# -- 5. divergence: says so, keeps the last finite iterate, exit 3 --------------------------------
def test_diverged_run_says_so_and_exits_3(tmp_path, capsys):
    # Adam moves every parameter by ~lr per step: with lr 1e200 the read-out's weight decay
    # (α_w/2)‖w‖² overflows float64 after a couple of steps.
    # The problem of RUN above (its compiled forward pass and metrics are shared), full batch
    # so that the logged loss is the loss of the whole problem.
    argv = [a for a in RUN if a not in ("--batch-size", "16")]
    argv = [a if a != "1500" else "30" for a in argv] + ["--lr", "1e200", "--out", tmp_path]
    code, out, err = run(argv, capsys)
    assert code == 3
    lines = err.strip().split("\n")
    assert len(lines) == 1 and "diverged at iteration" in lines[0] and "Traceback" not in err
    assert "; keeping " in lines[0] and f"; saved in {tmp_path}" in lines[0]  # which iterate, and where
    res = cn.Result.load(tmp_path)
    assert res.status == "diverged" and res.info["diverged_at"] >= 1
    assert all(np.all(np.isfinite(a)) for a in np.load(tmp_path / "controls.npz").values())
    # The kept iterate is the last one whose loss was finite (and logged).
    assert math.isfinite(res.info["loss"])
    assert np.isclose(res.info["loss"], res.history["loss"][-1], rtol=1e-12, atol=0)


@pytest.mark.skipif(not hasattr(__import__("solvers").Budget(), "divergence_factor"),
                    reason="divergence by trend (solvers.Budget.divergence_factor) is not in this tree")
def test_a_loss_that_runs_away_exits_3_with_the_best_iterate(tmp_path, capsys):
    # Adam at lr 1e3 on the ring: the loss leaves its best far behind and stays there (finite).
    argv = ["train", "--problem", "ring", "--samples", "64", "--layers", "6", "--iters", "300", "--quiet",
            "--lr", "1e3", "--out", tmp_path]
    code, out, err = run(argv, capsys)
    lines = err.strip().split("\n")
    assert code == 3 and len(lines) == 1 and "diverged at iteration" in lines[0], err
    assert "keeping iterate" in lines[0] and f"; saved in {tmp_path}" in lines[0]
    res = cn.Result.load(tmp_path)
    assert res.status == "diverged"
    assert res.info["loss"] == pytest.approx(min(res.history["loss"]), rel=1e-5)  # the best, saved


@pytest.mark.parametrize("inner", ["ipopt", "newton"])
def test_emsa_with_per_layer_maximization_from_the_shell(inner, tmp_path, capsys):
    argv = ["train", "--problem", "ring", "--samples", "20", "--layers", "3", "--iters", "3", "--quiet",
            "--solver", "emsa", "--inner", inner, "--float64", "--out", tmp_path]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    res = cn.Result.load(tmp_path)
    assert res.info["iterations"] == 3
    loss = res.history["loss"]
    assert loss[-1] < loss[0]  # layer maxima (exact or Newton's) and the acceptance test: J goes down
    assert np.all(np.diff(loss) <= 1e-12 * np.abs(loss[:-1]))  # and never up


# -- 6. truncated files are refused ---------------------------------------------------------------
def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.mark.parametrize("name", ["controls.npz", "history.npz", "result.json"])
def test_truncated_result_is_refused(reference, tmp_path, name):
    d = _copy(reference, tmp_path / "copy")
    cn.Result.load(d)  # intact: loads
    data = (d / name).read_bytes()
    (d / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt") as e:
        cn.Result.load(d)
    assert str(d) in str(e.value)


def test_truncated_checkpoint_is_refused_by_resume(reference, tmp_path, capsys):
    d = _copy(reference, tmp_path / "copy")
    data = (d / "checkpoint.npz").read_bytes()
    (d / "checkpoint.npz").write_bytes(data[: len(data) // 2])
    code, _, err = run(RUN + ["--resume", d], capsys)
    assert_one_line_error(code, err, "the file is corrupt or not written by controlnet")


def test_train_animate_writes_the_film_with_one_frame_per_layer(tmp_path, capsys):
    from PIL import Image

    code, out, err = run(TINY + ["--animate", "--out", tmp_path], capsys)
    assert code == 0, err
    assert "flow.gif" in out
    with Image.open(tmp_path / "flow.gif") as im:
        assert im.format == "GIF" and im.n_frames == 2 + 1  # --layers 2: layers k = 0, 1, 2
    code, out, err = run(TINY + ["--out", tmp_path / "still"], capsys)
    assert code == 0 and not (tmp_path / "still" / "flow.gif").exists()  # no film unless asked
    # The closing line names exactly the files the run wrote.
    wrote = out.strip().splitlines()[-1].removeprefix(f"wrote {tmp_path / 'still'}/").split(", ")
    assert sorted(wrote) == sorted(p.name for p in (tmp_path / "still").iterdir())

"""Start-up: what importing the packages loads, and JAX's persistent compilation cache of the
command line (on by default, in the directory the environment names; off by flag or variable)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import studies
from controlnet_cli import app as cli
from processes import ENV

#: Packages the core, the solvers and the problems must not import until a command needs them.
DEFERRED = ("matplotlib", "casadi", "sklearn", "mnist1d", "ray")
TINY = ["train", "--problem", "ring", "--samples", "8", "--layers", "2", "--iters", "2", "--quiet"]

# One child: import the packages (noting what got loaded), then one `controlnet train` run.
CHILD = f"""
import json, sys
deferred = {DEFERRED!r}
import controlnet, solvers, problems
after_packages = [m for m in deferred if m in sys.modules]
import controlnet_cli
after_cli = [m for m in deferred if m in sys.modules]
code = controlnet_cli.main(sys.argv[1:])
print(json.dumps({{"after_packages": after_packages, "after_cli": after_cli, "code": code,
                  "after_train": [m for m in deferred if m in sys.modules]}}))
"""


def _child(argv, env):
    proc = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


@pytest.fixture(scope="module")
def child(tmp_path_factory):
    """One child process: its loaded modules and the cache directory its ``train`` run filled."""
    tmp = tmp_path_factory.mktemp("startup")
    env = {**ENV, "CONTROLNET_COMPILE_CACHE": str(tmp / "jit")}
    env.pop("CONTROLNET_NO_COMPILE_CACHE", None)
    report, _ = _child(TINY + ["--out", str(tmp / "out")], env)
    return report, tmp / "jit"


def test_importing_the_packages_loads_no_plotting_casadi_data_or_ray(child):
    report, _ = child
    assert report["after_packages"] == [] and report["after_cli"] == [], report


def test_a_ring_training_run_needs_neither_casadi_nor_the_data_packages(child):
    report, _ = child
    # The pictures of the run import matplotlib; nothing else deferred is needed for the ring.
    assert report["code"] == 0 and report["after_train"] == ["matplotlib"], report


def test_the_command_line_writes_the_compile_cache_the_environment_names(child):
    _, cache = child
    entries = [p for p in cache.iterdir() if p.is_file()]
    # the training loop at least (several programs compile in more than MIN_COMPILE_SECONDS)
    assert len(entries) >= 1 and all(p.stat().st_size > 0 for p in entries), entries


@pytest.mark.parametrize("value", ["0", "off", "False", "no"])
def test_the_environment_turns_the_cache_off(value, monkeypatch):
    monkeypatch.delenv("CONTROLNET_NO_COMPILE_CACHE", raising=False)
    monkeypatch.setenv("CONTROLNET_COMPILE_CACHE", value)
    assert studies.compile_cache_dir() is None and studies.enable_compile_cache() is None


def test_enable_false_leaves_the_cache_off(monkeypatch, tmp_path):
    monkeypatch.setenv("CONTROLNET_COMPILE_CACHE", str(tmp_path / "jit"))
    assert studies.enable_compile_cache(False) is None and not (tmp_path / "jit").exists()


def test_the_flag_turns_the_cache_off_for_the_command_and_its_workers(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("CONTROLNET_NO_COMPILE_CACHE", raising=False)
    monkeypatch.setenv("CONTROLNET_COMPILE_CACHE", str(tmp_path / "jit"))
    # No --out: the command stops at its first check, after the cache was set up (or not).
    assert cli.main(["train", "--problem", "ring", "--no-compile-cache"]) == 2
    assert "needs --out" in capsys.readouterr().err
    # without the flag the directory would have been created then (the child above shows it)
    assert not (tmp_path / "jit").exists()
    # and a sweep's worker processes, which inherit the environment, leave it off as well
    assert os.environ["CONTROLNET_COMPILE_CACHE"] == "0"


@pytest.mark.parametrize("command", ["train", "turnpike", "compare", "sweep"])
def test_every_subcommand_takes_the_flag(command, capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args([command, "--help"])
    assert "--no-compile-cache" in capsys.readouterr().out


@pytest.mark.slow
def test_a_second_identical_run_reads_its_programs_from_the_cache(tmp_path):
    env = {**ENV, "CONTROLNET_COMPILE_CACHE": str(tmp_path / "jit"), "JAX_LOG_COMPILES": "1"}
    env.pop("CONTROLNET_NO_COMPILE_CACHE", None)
    argv = TINY + ["--out", str(tmp_path / "out"), "--overwrite"]
    first, err1 = _child(argv, env)
    second, err2 = _child(argv, env)
    # JAX logs each program found on disk (with JAX_LOG_COMPILES, at warning level)
    assert "Persistent compilation cache hit for 'jit__run'" not in err1
    assert "Persistent compilation cache hit for 'jit__run'" in err2, err2[-3000:]
    assert first["code"] == second["code"] == 0

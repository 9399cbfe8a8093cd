"""A result folder is replaced all-or-nothing, and the library removes only its own files.

The save is interrupted before each of its file operations in turn: SIGKILLed (in a forked child,
a write cut in half first) or failing with an ``OSError``. At every point the folder must load as
the old result or the new one, a user's ``notes.tmp`` must survive, and after :func:`tidy` (what
the next save or the command line's lock does first) no file of the library may remain.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import controlnet as cn
from controlnet import io
from processes import ENV, count_operations, new_result, old_result

RESULT_FILES = {"result.json", "controls.npz", "history.npz"}


def which(d) -> str:
    """``"old"`` or ``"new"``: the result ``d`` loads as, checked whole against the one saved."""
    back = cn.Result.load(d)
    ref = {"old": old_result(), "new": new_result()}[back.spec["run"]]
    assert back.status == ref.status and back.info == ref.info and back.versions == ref.versions
    assert same_tree(back.controls, ref.controls)
    assert back.history.keys() == ref.history.keys()
    assert all(np.array_equal(back.history[k], ref.history[k]) for k in ref.history)
    return back.spec["run"]


def same_tree(a, b) -> bool:
    la, lb = (sorted(_flat(c).items()) for c in (a, b))
    return [k for k, _ in la] == [k for k, _ in lb] and all(np.array_equal(x, y) for (_, x), (_, y) in zip(la, lb))


def _flat(controls) -> dict:
    return {f"{part}/{k}": np.asarray(v) for part in ("theta", "w") for k, v in getattr(controls, part).items()}


def _plain_controls(d) -> str:
    """Whose controls the file controls.npz itself holds (not following result.json)."""
    with np.load(d / "controls.npz") as z:
        return "old" if np.array_equal(z["w/A"], old_result().controls.w["A"]) else "new"


def assert_tidied_clean(d, expect: str):
    """:func:`io.tidy` leaves the result files and the user's file only, the same result loads,
    and the plain controls.npz is that result's."""
    io.tidy(d)
    assert {p.name for p in d.iterdir()} == RESULT_FILES | {"notes.tmp"}
    assert which(d) == expect
    assert _plain_controls(d) == expect
    assert (d / "notes.tmp").read_text() == "mine"


def test_a_save_killed_before_any_of_its_file_operations_leaves_the_old_or_the_new_result(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import processes; processes.kill_every_operation()",
                           str(tmp_path)], capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr
    n = json.loads(proc.stdout.strip().splitlines()[-1])["operations"]
    assert n >= 12, f"only {n} file operations: is the save wrapped?"
    seen = [which(tmp_path / f"k{k}") for k in range(n)]
    commit = seen.index("new") if "new" in seen else n
    print(f"{n} file operations; killed before operation k, the folder loads the old result for "
          f"k < {commit} and the new one after")
    # once committed, always committed; the commit is the replacement of result.json
    assert seen == ["old"] * commit + ["new"] * (n - commit) and 0 < commit < n
    followed = 0
    for k in range(n):
        d = tmp_path / f"k{k}"
        assert (d / "notes.tmp").read_text() == "mine"
        if seen[k] == "new" and _plain_controls(d) == "old":  # committed, not yet renamed
            followed += 1
        assert_tidied_clean(d, seen[k])
    assert followed >= 2, "no kill landed between the commit and the renames"
    d = tmp_path / f"k{commit}"
    new_result().save(d)  # a save after a killed one: clean too
    assert {p.name for p in d.iterdir()} == RESULT_FILES | {"notes.tmp"} and which(d) == "new"


def test_a_save_failing_at_any_file_operation_leaves_the_old_or_the_new_result(tmp_path, monkeypatch):
    def fail(name, fn, args):
        failed.append(name)
        if name == "close":  # do not leak the descriptor
            fn(*args)
        raise OSError(errno.EIO, "Input/output error (injected)")

    outcomes = []
    for k in range(1000):
        d = tmp_path / f"k{k}"
        old_result().save(d)
        (d / "notes.tmp").write_text("mine")
        new, failed = new_result(), []
        with monkeypatch.context() as m:
            count_operations(k, fail, patch=m.setattr)
            try:
                new.save(d)
                raised = False
            except OSError as e:
                assert "injected" in str(e)
                raised = True
        if not failed:  # the save has fewer than k + 1 file operations
            break
        got = which(d)
        outcomes.append((failed[0], raised, got))
        assert raised or got == "new"  # an error it did not raise was one it got over
        if got == "old" and failed != ["unlink"]:  # failed before its commit: it took back its files
            assert {p.name for p in d.iterdir()} == RESULT_FILES | {"notes.tmp"}, (k, failed)
        assert_tidied_clean(d, got)
    print(f"{len(outcomes)} operations failed in turn: {outcomes}")
    raised = [got for _, r, got in outcomes if r]
    assert len(raised) >= 12 and raised == sorted(raised, key=["old", "new"].index) and "old" in raised


def test_files_are_created_with_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        new_result().save(tmp_path / "r")
        io.atomic_write(tmp_path / "f.bin", lambda f: f.write(b"x"))
        io.save_checkpoint(tmp_path / "c.npz", {"a": np.zeros(2)}, iteration=0, history={})
        os.umask(0o077)
        io.atomic_write(tmp_path / "private.bin", lambda f: f.write(b"x"))
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [*(tmp_path / "r").iterdir(), *tmp_path.iterdir()]
             if p.is_file()}
    assert modes == {"result.json": 0o644, "controls.npz": 0o644, "history.npz": 0o644, "f.bin": 0o644,
                     "c.npz": 0o644, "private.bin": 0o600}


def test_tidy_removes_only_the_library_files(tmp_path):
    d = tmp_path / "r"
    old_result().save(d)
    mine = ["notes.tmp", ".notes.tmp", ".checkpoint.npz.abc123.tmp", "controlnet-tmp-x", ".controlnet-tmp"]
    for name in mine:
        (d / name).write_text("mine")
    (d / ".controlnet-tmp-sub").mkdir()  # not a file: left alone
    ours = [".controlnet-tmp-0123abcd.controls.npz", ".controlnet-tmp-ffff.result.json"]
    for name in ours:
        (d / name).write_bytes(b"half a file")
    new_result().save(d)
    assert {p.name for p in d.iterdir()} == RESULT_FILES | set(mine) | {".controlnet-tmp-sub"}
    assert all((d / name).read_text() == "mine" for name in mine) and which(d) == "new"


def _write_version_1(d, result):
    """A result folder as controlnet wrote it before versioned files, spec and versions."""
    d.mkdir()
    flat = _flat(result.controls)
    np.savez(d / "controls.npz", **flat)
    np.savez(d / "history.npz", **result.history)
    meta = {"format": "controlnet-result", "version": 1, "status": result.status,
            "controls_shapes": {k: list(v.shape) for k, v in flat.items()},
            "history_length": len(result.history["loss"]),
            "sha256": {n: hashlib.sha256((d / n).read_bytes()).hexdigest() for n in ("controls.npz", "history.npz")},
            **result.info}
    (d / "result.json").write_text(json.dumps(meta))


def test_a_result_of_format_1_still_loads_without_spec_and_versions(tmp_path):
    ref = old_result()
    _write_version_1(tmp_path / "v1", ref)
    back = cn.Result.load(tmp_path / "v1")
    assert back.spec is None and back.versions is None and back.info == ref.info
    assert same_tree(back.controls, ref.controls) and np.array_equal(back.history["loss"], ref.history["loss"])


def test_spec_and_versions_are_stored_and_loaded_back(tmp_path):
    r = new_result()
    assert set(r.versions) == {"controlnet", "jax", "jaxlib", "numpy", "python"}
    assert r.versions["controlnet"] == cn.__version__ and r.versions["numpy"] == np.__version__
    r.save(tmp_path)
    stored = json.loads((tmp_path / "result.json").read_text())
    assert stored["spec"] == {"run": "new", "seed": 0} and stored["versions"] == r.versions
    back = cn.Result.load(tmp_path)
    assert back.spec == r.spec and back.versions == r.versions and "spec" not in back.info


@pytest.mark.parametrize("spec, fragment", [
    ({"lr": float("nan")}, "plain JSON"),
    ({"layers": (1, 2)}, "plain JSON"),
    ({"seed": np.int64(3)}, "plain JSON"),
    ("ring", "plain JSON"),
])
def test_a_spec_that_would_not_come_back_equal_is_refused(spec, fragment):
    with pytest.raises(ValueError, match=fragment):
        cn.Result(old_result().controls, {}, "max_iters", {}, spec=spec)


def test_info_may_not_use_the_keys_of_result_json():
    with pytest.raises(ValueError, match="'spec'.*rename"):
        cn.Result(old_result().controls, {}, "max_iters", {"spec": 1})


@pytest.mark.parametrize("damage, fragment", [
    (lambda m: m.pop("status"), "result.json has no 'status'"),
    (lambda m: m.pop("controls_shapes"), "result.json has no 'controls_shapes'"),
    (lambda m: m.pop("history_length"), "result.json has no 'history_length'"),
    (lambda m: m.pop("sha256"), "result.json has no 'sha256'"),
    (lambda m: m.update(history_length="5"), "'history_length' is '5', not a int"),
    (lambda m: m.update(status=None), "'status' is None, not a str"),
    (lambda m: m.update(spec=[1]), "'spec' is not a mapping"),
])
def test_a_result_json_missing_a_key_is_a_corrupt_result(tmp_path, damage, fragment):
    new_result().save(tmp_path)
    meta = json.loads((tmp_path / "result.json").read_text())
    damage(meta)
    (tmp_path / "result.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=f"corrupt result in {tmp_path}: .*{fragment}"):
        cn.Result.load(tmp_path)


def test_a_result_json_that_is_not_json_is_a_corrupt_result(tmp_path):
    new_result().save(tmp_path)
    (tmp_path / "result.json").write_text('{"format": "controlnet-result", ')
    with pytest.raises(ValueError, match=f"corrupt result in {tmp_path}: result.json is not valid JSON"):
        cn.Result.load(tmp_path)


def test_jsonable_is_plain_json_with_null_for_non_finite_numbers():
    import jax.numpy as jnp

    obj = {"a": np.float32("nan"), "b": (1, float("inf")), "c": np.arange(3), "d": jnp.asarray([1.5, -np.inf]),
           "e": [{"f": np.int64(2)}], "g": "x", "h": None, "i": True}
    want = {"a": None, "b": [1, None], "c": [0, 1, 2], "d": [1.5, None], "e": [{"f": 2}], "g": "x", "h": None,
            "i": True}
    assert io.jsonable(obj) == want
    assert json.loads(io.to_json(obj)) == want and "NaN" not in io.to_json(obj)

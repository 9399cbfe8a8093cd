"""Every tutorial notebook runs top to bottom (at test sizes) without a warning, is committed with
its outputs (no warning, figures of at least 100 dpi), stays under 2 MB, and is linked from the
README."""

import base64
import importlib.util
import io
import pathlib

import nbformat
import pytest
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

_spec = importlib.util.spec_from_file_location("run_notebooks", ROOT / "scripts" / "run_notebooks.py")
run_notebooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_notebooks)


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 8, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes_at_small_size(path):
    nb = run_notebooks.execute(path, small=True, timeout=300)  # raises CellExecutionError on failure
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    assert not _stderr(nb), "a warning (stderr) in the notebook's output"


def _stderr(nb):
    """The text every code cell wrote to stderr (warnings, a progress bar's lines)."""
    return [o["text"] for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "stream" and o.get("name") == "stderr"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_has_outputs_and_is_small(path):
    assert path.stat().st_size < 2_000_000
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.get("execution_count") for c in code), "commit the notebook executed"
    images = [o for c in code for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, "the committed notebook shows no picture"
    assert not _stderr(nb), f"a warning in the committed outputs: {_stderr(nb)[0][:300]}"
    for o in images:
        dpi = Image.open(io.BytesIO(base64.b64decode(o["data"]["image/png"]))).info.get("dpi", (0, 0))
        assert min(dpi) >= 99.5, f"a figure at {dpi} dpi: set plt.rcParams['figure.dpi'] to 100 or more"


def test_readme_links_every_notebook():
    readme = (ROOT / "README.md").read_text()
    for path in NOTEBOOKS:
        assert f"notebooks/{path.name}" in readme, path.name

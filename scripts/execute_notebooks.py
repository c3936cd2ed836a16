"""Re-execute the notebooks in place (outputs saved), from the notebooks folder, as the tests run them.

    python scripts/execute_notebooks.py            # all of notebooks/*.ipynb
    python scripts/execute_notebooks.py notebooks/02_subclassing.ipynb
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def execute(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, path)
    print(f"executed {path.name}")


if __name__ == "__main__":
    for p in [Path(a).resolve() for a in sys.argv[1:]] or sorted(NOTEBOOKS.glob("*.ipynb")):
        execute(p)

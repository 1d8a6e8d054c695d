#!/usr/bin/env python3
"""Execute the figure notebooks headless with the project's pinned Deno Jupyter kernel.

    python3 notebooks/run.py [--run DIR] [--figures DIR] [--out DIR] [--timeout S] [NOTEBOOK.ipynb ...]

Needs Debian's python3-nbclient (+ python3-nbformat, python3-jupyter-client) and the npm package `deno` (pinned in
package.json; its binary ships inside the package). The kernelspec is written to a temporary JUPYTER_PATH with
absolute paths, so nothing is installed in the user's Jupyter.

Why not plain `jupyter nbconvert --execute`: Deno's kernel can report "idle" on iopub before a cell's last output
message arrives, so nbconvert sometimes drops outputs; and nbconvert writes no notebook when a cell fails. This
runner executes through nbclient, drains late output for a short grace period after each cell, and always writes
the executed notebook (with the error in it) before failing. Exit status: 0 when every notebook ran, 1 otherwise;
one line per notebook on stdout.
"""
import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
KERNEL = "viral-lens-deno"


def find_deno() -> str:
    """The deno binary of node_modules/deno (resolved by the package's own installer logic), else PATH."""
    api = ROOT / "node_modules" / "deno" / "install_api.cjs"
    if api.exists() and shutil.which("node"):
        r = subprocess.run(
            ["node", "-e", f"process.stdout.write(require({json.dumps(str(api))}).runInstall())"],
            capture_output=True, text=True, cwd=ROOT,
        )
        if r.returncode == 0 and r.stdout.strip() and os.access(r.stdout.strip(), os.X_OK):
            return r.stdout.strip()
    local = ROOT / "node_modules" / "deno" / "deno"
    if local.exists() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which("deno")
    if found:
        return found
    raise SystemExit("deno not found: run `npm ci` (the npm package `deno` is a devDependency)")


def write_kernelspec(jupyter_path: Path, deno: str) -> None:
    spec_dir = jupyter_path / "kernels" / KERNEL
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [deno, "jupyter", "--kernel", "--conn", "{connection_file}"],
        "display_name": "Deno (viral-lens)",
        "language": "typescript",
        "env": {"DENO_NO_UPDATE_CHECK": "1", "NO_COLOR": "1", "DENO_NO_PROMPT": "1"},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))


def make_client_class():
    from nbclient import NotebookClient

    class GraceClient(NotebookClient):
        """nbclient that keeps reading iopub for `grace` seconds after a cell reports idle."""

        grace = 0.3

        async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
            result = await super().async_execute_cell(cell, cell_index, execution_count, store_history)
            if cell.get("cell_type") != "code":
                return result
            deadline = time.monotonic() + self.grace
            while time.monotonic() < deadline:
                try:
                    msg = await asyncio.wait_for(self.kc.iopub_channel.get_msg(timeout=0.05), timeout=0.2)
                except Exception:
                    await asyncio.sleep(0.02)
                    continue
                if msg.get("msg_type") in ("stream", "display_data", "execute_result", "error", "update_display_data"):
                    try:
                        self.process_message(msg, cell, cell_index)
                    except Exception:
                        pass  # a late error message was already reported through the execute reply
            return result

    return GraceClient


def run_notebook(path: Path, out_dir: Path, timeout: int) -> tuple[bool, str]:
    import nbformat
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(str(path), as_version=4)
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Deno (viral-lens)", "language": "typescript"}
    client = make_client_class()(
        nb,
        kernel_name=KERNEL,
        timeout=timeout,
        startup_timeout=120,
        resources={"metadata": {"path": str(HERE)}},
    )
    ok, message = True, ""
    try:
        client.execute()
    except CellExecutionError as err:
        ok, message = False, str(err).strip().splitlines()[-1] if str(err).strip() else "cell failed"
        full = str(err)
    except Exception as err:  # kernel died, timeout, ...
        ok, message = False, f"{type(err).__name__}: {err}"
        full = message
    out_dir.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(out_dir / path.name))
    if not ok:
        sys.stderr.write(f"--- {path.name} failed ---\n{full}\n")
    return ok, message


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("notebooks", nargs="*", help="notebooks to run (default: every notebooks/*.ipynb)")
    p.add_argument("--run", help="run folder (sets VIRAL_LENS_RUN; default runs/demo)")
    p.add_argument("--figures", help="figure output folder (sets VIRAL_LENS_FIGURES; default <run>/figures)")
    p.add_argument("--out", help="where executed notebooks are written (default <figures>/notebooks)")
    p.add_argument("--timeout", type=int, default=600, help="seconds per cell (default 600)")
    a = p.parse_args()
    try:
        import nbclient  # noqa: F401
        import nbformat  # noqa: F401
    except ImportError as err:
        print(f"missing Python package ({err.name}): apt-get install python3-nbclient python3-nbformat python3-jupyter-client", file=sys.stderr)
        return 3
    if a.run:
        os.environ["VIRAL_LENS_RUN"] = str(Path(a.run).resolve())
    if a.figures:
        os.environ["VIRAL_LENS_FIGURES"] = str(Path(a.figures).resolve())
    run = Path(os.environ.get("VIRAL_LENS_RUN", str(ROOT / "runs" / "demo")))
    figures = Path(os.environ.get("VIRAL_LENS_FIGURES", str(run / "figures")))
    out = Path(a.out).resolve() if a.out else figures / "notebooks"
    books = [Path(n).resolve() for n in a.notebooks] or sorted(HERE.glob("*.ipynb"))
    if not books:
        print("no notebooks found", file=sys.stderr)
        return 1
    deno = find_deno()
    with tempfile.TemporaryDirectory(prefix="viral-lens-jupyter-") as tmp:
        jp = Path(tmp)
        write_kernelspec(jp, deno)
        os.environ["JUPYTER_PATH"] = str(jp)
        # Keep Jupyter's runtime files (connection files) out of the user's home.
        os.environ["JUPYTER_RUNTIME_DIR"] = str(jp / "runtime")
        failed = 0
        for book in books:
            start = time.monotonic()
            ok, message = run_notebook(book, out, a.timeout)
            took = time.monotonic() - start
            print(f"{'ok  ' if ok else 'FAIL'} {book.name} ({took:.1f} s){'' if ok else ': ' + message}", flush=True)
            failed += 0 if ok else 1
    print(f"notebooks: {len(books) - failed} ok, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

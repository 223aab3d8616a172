"""The wheel: `pip wheel .` ships every model that weights/models.json names, and the wheel installed
in a fresh virtual environment (no checkout in sight) lists and runs each of them."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy
import pytest

from conftest import photo_crop

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = json.loads((ROOT / "weights" / "models.json").read_text())["models"]
WEIGHTS_IN_WHEEL = "data/share/vqcodec/weights/"  # under vqcodec-VERSION.data/; zoo.weights_dirs() looks there

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a clean copy of the checkout (what git ignores left out), so that a stale
    build/ folder cannot put files into it and the build writes nothing into the checkout."""
    ignored = [line.strip().strip("/") for line in (ROOT / ".gitignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    source = tmp_path_factory.mktemp("source") / "vqcodec"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", *ignored))
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                            "--no-index", "-q", "-w", str(out)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    (path,) = out.glob("vqcodec-*.whl")
    return path


def test_wheel_holds_every_bundled_model_unchanged(wheel):
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name.split(WEIGHTS_IN_WHEEL, 1)[1]: name for name in archive.namelist() if WEIGHTS_IN_WHEEL in name}
        assert "models.json" in shipped
        assert json.loads(archive.read(shipped["models.json"]))["models"] == MANIFEST
        for model in MANIFEST:
            assert model["file"] in shipped, f"the wheel lacks {model['file']} (model {model['name']})"
            assert hashlib.sha256(archive.read(shipped[model["file"]])).hexdigest() == model["sha256"]
        assert set(shipped) == {"models.json"} | {m["file"] for m in MANIFEST}  # nothing unregistered
        assert any(name.endswith("vqcodec/data/sample.png") for name in archive.namelist())


def test_installed_wheel_lists_and_loads_every_bundled_model(wheel, tmp_path, photo):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                                "--no-index", "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-2000:]
    # The dependencies (torch and the rest) come from this environment, as plain paths: a .pth path
    # line does not run this environment's editable-install hook, so the checkout stays out of reach.
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "zz_test_dependencies.pth").write_text("\n".join(sorted(deps)) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("VQCODEC_WEIGHTS", "PYTHONPATH", "PYTHONHOME")}
    script = venv / ("Scripts/vqcodec.exe" if os.name == "nt" else "bin/vqcodec")  # the console script
    done = subprocess.run([str(script), "models", "--json"], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    listed = {m["name"]: m for m in json.loads(done.stdout)}
    assert set(listed) == {m["name"] for m in MANIFEST}
    for model in MANIFEST:  # found in the environment's share/vqcodec/weights, not in the checkout
        assert listed[model["name"]]["sha256"] == model["sha256"]
        assert Path(listed[model["name"]]["file"]).is_relative_to(venv)
    # every model's weights load (their sha256 checked first) and code a picture: one process, one torch import
    code = ("import sys, numpy, vqcodec\n"
            "pixels = numpy.load(sys.argv[1])\n"
            "for name in sys.argv[2:]:\n"
            "    assert vqcodec.decode(vqcodec.encode(pixels, quality=1, model=name)).size == (24, 16), name\n")
    numpy.save(tmp_path / "small.npy", photo_crop(photo, 24, 16))
    done = subprocess.run([str(python), "-c", code, "small.npy", *(m["name"] for m in MANIFEST)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]

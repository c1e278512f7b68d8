"""The standing bad-input and fault suite (docs/reliability.md lists the cases).

Every command is run over a generated corpus of bad inputs: each must end with its documented
exit code, one `error:` (or `warning:`) line naming the file or option, no traceback, and no
output created or changed on failure. Faults: interrupts at three stages, a corrupt cache, two
runs sharing one cache, a full disk. Untrusted inputs: code in a model file, markup in names,
spreadsheet formulas, a decompression bomb.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import strip_volatile
from PIL import Image

from audit.cli import main

REPO = Path(__file__).resolve().parents[1]
QUICK = ["--checks", "performance,calibration", "--no-explain"]


# ---- the corpus ------------------------------------------------------------------------

def _bomb_png(path: Path, side: int = 30_000) -> None:
    """A tiny PNG whose header claims side x side pixels (a decompression bomb's header)."""
    small = path.with_suffix(".small.png")
    Image.new("RGB", (1, 1)).save(small)
    data = bytearray(small.read_bytes())
    small.unlink()
    ihdr = 8 + 8  # signature, then length + "IHDR"
    data[ihdr:ihdr + 8] = struct.pack(">II", side, side)
    crc = zlib.crc32(bytes(data[12:12 + 4 + 13])) & 0xFFFFFFFF
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def corpus(synthetic_sites, tmp_path_factory) -> dict[str, Path]:
    """A copy of the held-out set with one kind of bad file per case, and bad non-image inputs."""
    root = tmp_path_factory.mktemp("corpus")
    good = synthetic_sites["heldout"]
    some = next(p for p in sorted((good / "lymphocyte").glob("*.png")))
    cases = {}

    def variant(name: str, make) -> Path:
        folder = root / name
        shutil.copytree(good, folder, ignore=shutil.ignore_patterns("manifest.csv", "site.json"))
        make(folder)
        cases[name] = folder
        return folder

    variant("zero_byte", lambda f: (f / "lymphocyte" / "zero.jpg").write_bytes(b""))
    variant("truncated", lambda f: (f / "lymphocyte" / "cut.png").write_bytes(
        some.read_bytes()[:200]))
    variant("text_as_jpeg", lambda f: (f / "lymphocyte" / "notes.jpg").write_text("not a picture"))
    variant("dangling_symlink", lambda f: os.symlink(f / "missing.png",
                                                     f / "lymphocyte" / "link.png"))
    variant("bomb", lambda f: _bomb_png(f / "lymphocyte" / "bomb.png"))
    variant("tiny_image", lambda f: Image.new("RGB", (3, 3), (200, 100, 150)).save(
        f / "lymphocyte" / "tiny.png"))
    variant("empty_class_folder", lambda f: [p.unlink() for p in (f / "basophil").iterdir()])
    odd = variant("odd_modes", lambda f: None)  # readable: converted, no complaint
    Image.open(some).convert("L").save(odd / "lymphocyte" / "grey.png")
    Image.open(some).convert("RGBA").save(odd / "lymphocyte" / "alpha.png")
    Image.open(some).convert("CMYK").save(odd / "lymphocyte" / "cmyk.jpg")
    Image.fromarray(np.asarray(Image.open(some).convert("L"), np.uint16) * 200).save(
        odd / "lymphocyte" / "deep16.png")
    Image.new("RGB", (32, 32)).save(odd / "lymphocyte" / "black.png")
    garbage = root / "garbage.keras"
    garbage.write_bytes(os.urandom(300))
    cases["garbage_model"] = garbage
    bad_json = root / "audit.json"
    bad_json.write_text("{not json")
    cases["garbage_json"] = bad_json
    return cases


def _run(args: list[str], capsys) -> tuple[int, list[str]]:
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert not any("Traceback" in line for line in err), err
    return code, [line for line in err if line.startswith(("error:", "warning:"))]


# (case, exit code without --strict, what the one line names)
UNUSABLE = [("zero_byte", "zero.jpg", "empty file"), ("truncated", "cut.png", "truncated"),
            ("text_as_jpeg", "notes.jpg", "not a JPEG/PNG"),
            ("dangling_symlink", "link.png", "cannot open"),
            ("bomb", "bomb.png", "megapixels"),
            ("tiny_image", "tiny.png", "far smaller than the model"),
            ("empty_class_folder", "'basophil'", "holds no usable image")]


@pytest.mark.parametrize("case, names, reason", UNUSABLE)
def test_run_warns_naming_the_file_and_strict_refuses(case, names, reason, corpus, tiny_model,
                                                      tmp_path, capsys):
    extra: list[str] = []
    data = ["--data", f"heldout={corpus[case]}"]
    strict_out = tmp_path / "strict"
    code, lines = _run(["run", "--model", str(tiny_model), *data, "--out", str(strict_out),
                        "--strict", *extra, *QUICK], capsys)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), lines
    assert names in lines[0] and reason in lines[0]
    assert not strict_out.exists()
    out = tmp_path / "audit"
    code, lines = _run(["run", "--model", str(tiny_model), *data, "--out", str(out), *extra,
                        *QUICK], capsys)
    assert code in (0, 1)
    warned = [line for line in lines if names in line]
    assert len(warned) == 1 and warned[0].startswith("warning:") and reason in warned[0], lines
    record = json.loads((out / "audit.json").read_text())["datasets"]["heldout"]
    assert names in json.dumps(record["skipped"]) + json.dumps(record["notes"])


def test_a_second_run_in_the_same_process_warns_again(corpus, tiny_model, tmp_path, capsys):
    # A notebook or script that calls the CLI twice must hear about a bad file both times
    # (Python shows a warning once per code location per process by default).
    for attempt in ("first", "second"):
        code, lines = _run(["run", "--model", str(tiny_model), "--data",
                            f"heldout={corpus['zero_byte']}", "--out", str(tmp_path / attempt),
                            *QUICK], capsys)
        assert code in (0, 1)
        assert [line for line in lines if "zero.jpg" in line and line.startswith("warning:")]


def test_odd_but_readable_images_are_converted_silently(corpus, tiny_model, tmp_path, capsys):
    out = tmp_path / "audit"
    code, lines = _run(["run", "--model", str(tiny_model), "--data",
                        f"heldout={corpus['odd_modes']}", "--out", str(out), *QUICK], capsys)
    assert code in (0, 1) and not [line for line in lines if ".png" in line or ".jpg" in line]
    assert json.loads((out / "audit.json").read_text())["datasets"]["heldout"]["n_images"] == 105


def test_predict_lists_unreadable_files_and_neutralises_formulas(tiny_model, tmp_path, capsys,
                                                                 monkeypatch):
    folder = tmp_path / "images"
    folder.mkdir()
    names = ["=HYPERLINK(1).png", "+x.png", "ok.png"]
    for name in names:
        Image.new("RGB", (32, 32), (180, 120, 160)).save(folder / name)
    (folder / "@bad.png").write_bytes(b"")
    monkeypatch.chdir(folder)  # relative names: the path cells start with = + @
    table = tmp_path / "p.csv"
    code, _ = _run(["predict", *names, "@bad.png", "--model", str(tiny_model), "--out",
                    str(table)], capsys)
    assert code == 0
    cells = [row.split(",")[0] for row in table.read_text().splitlines()[1:]]
    assert cells == ["'=HYPERLINK(1).png", "'+x.png", "ok.png", "'@bad.png"]
    assert "unreadable: empty file" in table.read_text()


@pytest.fixture(scope="module")
def good_audit(tiny_model, synthetic_sites, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("good") / "audit"
    assert main(["run", "--model", str(tiny_model), "--data",
                 f"heldout={synthetic_sites['heldout']}", "--out", str(out), *QUICK,
                 "--no-report"]) in (0, 1)
    return out


@pytest.mark.parametrize("command, where", [
    (c, w) for c in ("run", "predict", "train", "synth", "report", "gate")
    for w in ("under_a_file", "under_proc")] + [("inspect", "sidecar_is_a_folder")])
def test_every_output_option_fails_with_one_line(command, where, good_audit, tiny_model,
                                                 synthetic_sites, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    base = blocker if where == "under_a_file" else Path("/proc/cellaudit-test")
    heldout = synthetic_sites["heldout"]
    audit_dir = good_audit
    args = {
        "run": ["run", "--model", str(tiny_model), "--data", f"heldout={heldout}", "--out",
                str(base / "out"), *QUICK],
        "predict": ["predict", str(heldout), "--model", str(tiny_model), "--out",
                    str(base / "p.csv")],
        "train": ["train", str(synthetic_sites["train"]), "--out", str(base / "m.keras"),
                  "--weights", "none", "--input-size", "32", "--alpha", "0.35",
                  "--head-epochs", "0", "--finetune-epochs", "0"],
        "synth": ["synth", str(base / "synth"), "--n-images", "5", "--size", "16"],
        "report": ["report", str(audit_dir / "audit.json"), "-o", str(base / "r.html")],
        "gate": ["gate", "--baseline", str(audit_dir / "audit.json"), "--current",
                 str(audit_dir / "audit.json"), "--markdown", str(base / "g.md")],
        "inspect": ["inspect", str(tiny_model), "--data", str(heldout), "--write",
                    "--classes-from", str(heldout)],
    }[command]
    if command == "inspect":  # its output is the sidecar beside the model: make it a folder
        sidecar = Path(str(tiny_model) + ".json")
        sidecar.mkdir()
    try:
        code, lines = _run(args, capsys)
    finally:
        if command == "inspect":
            sidecar.rmdir()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), lines
    assert "cannot write" in lines[0] or "is a folder" in lines[0], lines[0]
    assert blocker.read_text() == "x"


def test_outputs_follow_the_umask(tiny_model, synthetic_sites, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "audit"
        assert main(["run", "--model", str(tiny_model), "--data",
                     f"heldout={synthetic_sites['heldout']}", "--out", str(out), *QUICK]) in (0, 1)
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o755
    assert (out / "audit.json").stat().st_mode & 0o777 == 0o644


def test_config_values_are_checked_with_the_key_named(tiny_model, synthetic_sites, tmp_path,
                                                      capsys):
    toml = tmp_path / "audit.toml"
    toml.write_text("[checks.calibration]\nece_warn = 0.3\nece_fail = 0.2\n")
    for extra, expected in ((["--set", "audit.batch_size=-1"], "audit.batch_size"),
                            (["--set", "checks.selective.target_accuracy=1.5"],
                             "checks.selective.target_accuracy"),
                            (["--set", 'explain.methods=["gradcam", "magic"]'], "explain.methods"),
                            (["--config", str(toml)], "ece_warn (0.3) must not exceed ece_fail")):
        code, lines = _run(["run", "--model", str(tiny_model), "--data",
                            f"heldout={synthetic_sites['heldout']}", "--out",
                            str(tmp_path / "o"), *extra], capsys)
        assert code == 2 and len(lines) == 1 and expected in lines[0], lines
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("case, args, expected", [
    ("garbage_model", ["run", "--model", "{garbage_model}", "--data", "heldout={good}", "--out",
                       "{tmp}/o"], "not a model file"),
    ("garbage_json", ["report", "{garbage_json}"], "audit.json"),
    ("garbage_json", ["gate", "--baseline", "{garbage_json}", "--current", "{garbage_json}"],
     "audit.json"),
    ("missing", ["run", "--model", "{tmp}/none.keras", "--data", "heldout={good}", "--out",
                 "{tmp}/o"], "does not exist"),
    ("missing", ["run", "--model", "{model}", "--data", "heldout={tmp}/nowhere", "--out",
                 "{tmp}/o"], "does not exist"),
])
def test_garbage_files_and_bad_paths(case, args, expected, corpus, tiny_model, synthetic_sites,
                                     tmp_path, capsys):
    values = {"garbage_model": corpus["garbage_model"], "garbage_json": corpus["garbage_json"],
              "good": synthetic_sites["heldout"], "tmp": tmp_path, "model": tiny_model}
    code, lines = _run([a.format(**values) for a in args], capsys)
    assert code == 2 and len(lines) == 1 and expected in lines[0], lines
    assert not (tmp_path / "o").exists()


# ---- faults ------------------------------------------------------------------------------

# Runs `audit` in a child process with one function slowed down and announced on stderr, so
# the test can interrupt it exactly there.
_SLOW = """
import sys, time, importlib
module, name, marker = sys.argv[1:4]
target = importlib.import_module(module)
original = getattr(target, name)
def slowed(*args, **kwargs):
    print(marker, file=sys.stderr, flush=True)
    time.sleep(60)
    return original(*args, **kwargs)
setattr(target, name, slowed)
from audit.cli import main
sys.exit(main(sys.argv[4:]))
"""


def _interrupt_at(module: str, name: str, sig: int, args: list[str]) -> tuple[int, str]:
    child = subprocess.Popen([sys.executable, "-c", _SLOW, module, name, "SLOWED-HERE", *args],
                             stderr=subprocess.PIPE, text=True, cwd=REPO)
    seen = []
    deadline = time.time() + 240
    for line in child.stderr:
        seen.append(line)
        if "SLOWED-HERE" in line or time.time() > deadline:
            break
    child.send_signal(sig)
    _, rest = child.communicate(timeout=120)
    return child.returncode, "".join(seen) + rest


STAGES = [("audit.inference", "per_image_outputs", signal.SIGINT, 130),   # prediction
          ("audit.checks.calibration", "fit_temperature", signal.SIGTERM, 143),  # a check
          ("reports.render", "render_html", signal.SIGTERM, 143)]            # report writing


@pytest.mark.slow
@pytest.mark.parametrize("module, name, sig, expected", STAGES)
def test_an_interrupt_leaves_no_partial_output_and_the_old_one_intact(
        module, name, sig, expected, tiny_model, synthetic_sites, tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "out"
    args = ["run", "--model", str(tiny_model), "--data", f"heldout={synthetic_sites['heldout']}",
            "--out", str(out), "--checks", "performance,calibration", "--no-explain",
            "--set", f'audit.cache_dir="{cache}"']
    assert main(args) in (0, 1)
    before = (out / "audit.json").read_bytes()
    shutil.rmtree(cache)  # the interrupted run must compute (and not half-write) the cache
    code, err = _interrupt_at(module, name, sig, args)
    assert code == expected, err
    assert "Traceback" not in err and ("interrupted" in err or "terminated" in err)
    assert (out / "audit.json").read_bytes() == before
    leftovers = [p.name for p in tmp_path.rglob("*") if p.name.startswith(".")]
    assert leftovers == [], leftovers
    assert main(args) in (0, 1)  # the next run rebuilds what it needs
    assert strip_volatile(json.loads((out / "audit.json").read_text())) == \
        strip_volatile(json.loads(before))


@pytest.mark.slow
def test_a_corrupt_cache_is_recomputed_with_a_warning(tiny_model, synthetic_sites, tmp_path,
                                                      capsys):
    cache = tmp_path / "cache"
    args = ["run", "--model", str(tiny_model), "--data", f"heldout={synthetic_sites['heldout']}",
            "--checks", "performance", "--no-explain", "--no-report",
            "--set", f'audit.cache_dir="{cache}"']
    assert main([*args, "--out", str(tmp_path / "a")]) in (0, 1)
    capsys.readouterr()
    [cached] = list(cache.glob("outputs-*.npz"))
    for damage in ("truncate", "flip"):
        data = bytearray(cached.read_bytes())
        if damage == "truncate":
            data = data[: len(data) // 2]
        else:
            data[len(data) // 2] ^= 0xFF
        cached.write_bytes(bytes(data))
        out = tmp_path / damage
        code, lines = _run([*args, "--out", str(out)], capsys)
        assert code in (0, 1)
        assert any("corrupt" in line and str(cached) in line for line in lines), lines
        a, b = (json.loads((d / "audit.json").read_text()) for d in (tmp_path / "a", out))
        assert a["checks"]["performance"]["metrics"] == b["checks"]["performance"]["metrics"]


@pytest.mark.slow
def test_two_runs_sharing_a_cache_both_finish_correctly(tiny_model, synthetic_sites, tmp_path):
    cache = tmp_path / "cache"

    def start(out: Path):
        return subprocess.Popen(
            [sys.executable, "-m", "audit.cli", "run", "--model", str(tiny_model), "--data",
             f"heldout={synthetic_sites['heldout']}", "--data",
             f"shifted:b={synthetic_sites['site_b']}", "--out", str(out), "--checks",
             "performance,calibration,shift", "--no-explain", "--no-report",
             "--set", f'audit.cache_dir="{cache}"'], cwd=REPO, stderr=subprocess.PIPE, text=True)

    children = [start(tmp_path / "one"), start(tmp_path / "two")]
    for child in children:
        _, err = child.communicate(timeout=600)
        assert child.returncode in (0, 1) and "Traceback" not in err, err
    one, two = (strip_volatile(json.loads((tmp_path / d / "audit.json").read_text()))
                for d in ("one", "two"))
    assert one == two
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]


def test_a_full_disk_gives_one_line_and_keeps_the_old_output(tiny_model, synthetic_sites,
                                                             tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    args = ["run", "--model", str(tiny_model), "--data", f"heldout={synthetic_sites['heldout']}",
            "--out", str(out), *QUICK, "--no-cache"]
    assert main(args) in (0, 1)
    before = (out / "audit.json").read_bytes()
    real = Path.write_text

    def full(self, *a, **k):
        if "audit.json" in self.name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", full)
    capsys.readouterr()
    code, lines = _run(args, capsys)
    assert code == 2 and len(lines) == 1, lines
    assert f"cannot write '{out / 'audit.json'}'" in lines[0] and "no space left" in lines[0]
    assert (out / "audit.json").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ---- untrusted inputs ----------------------------------------------------------------------

def test_a_model_carrying_python_code_is_not_loaded(synthetic_sites, tmp_path, capsys):
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(x))
    path = tmp_path / "lambda.keras"
    model.save(path)
    code, lines = _run(["run", "--model", str(path), "--classes-from",
                        str(synthetic_sites["heldout"]), "--preprocess", "none", "--data",
                        f"heldout={synthetic_sites['heldout']}", "--out", str(tmp_path / "o")],
                       capsys)
    assert code == 2 and len(lines) == 1 and "Lambda" in lines[0] and "safe mode" in lines[0]


def test_markup_in_class_and_file_names_is_shown_as_text(tmp_path):
    import keras

    from audit.synthetic import write_site

    names = ("<script>alert(1)</script>", "b&amp;<b>", "plain")
    site = tmp_path / "site"
    write_site(site, n_images=30, size=32, seed=3, classes=("lymphocyte", "neutrophil",
                                                             "monocyte"), site_name="s")
    for old, new in zip(("lymphocyte", "neutrophil", "monocyte"), names, strict=True):
        (site / old).rename(site / new.replace("/", "_"))
    (site / "manifest.csv").unlink()
    first = next((site / names[2]).glob("*.png"))
    first.rename(first.with_name("<img src=x onerror=alert(2)>.png"))
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    model_path = tmp_path / "m.keras"
    model.save(model_path)
    classes = sorted(n.replace("/", "_") for n in names)
    out = tmp_path / "audit"
    assert main(["run", "--model", str(model_path), "--classes", ",".join(classes), "--data",
                 f"heldout={site}", "--out", str(out), "--checks", "performance,errors",
                 "--no-explain", "--no-cache"]) in (0, 1)
    html = (out / "report.html").read_text()
    assert "<script>alert(1)</script>" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;_script&gt;" in html  # shown, as text
    assert "b&amp;amp;&lt;b&gt;" in html
    assert "<script" not in html.lower() and "onerror=alert" not in html.replace(
        "onerror=alert(2)&gt;", "")

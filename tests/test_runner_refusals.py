"""What the runner refuses before any work starts (issue 39): parameters of the wrong type or
out of range, combinations the chapter cannot run (the constraints of ``chapters.yml``),
published folders and bad output paths; and SIGTERM stopping a run as Ctrl-C does."""
import json
import os
import signal
import time

import pytest
import yaml

import test_runner as echo
from flatlib import params as fparams
from flatlib import runner
from flatlib.__main__ import main

book = echo.book  # the fixture: a book of one chapter, echo, whose summary echoes its parameters

BIG = "1" + "0" * 400  # a 401-digit integer: no float holds it


@pytest.fixture
def no_kernel(monkeypatch):
    """papermill patched to fail the test if a kernel starts."""
    import papermill

    def refuse(*args, **kwargs):
        raise AssertionError("a kernel was started")

    monkeypatch.setattr(papermill, "execute_notebook", refuse)


def _refused(chapter, overrides, tmp_path, *words):
    """Run ``chapter`` with ``overrides`` into a fresh folder, expect one ChapterError before any
    kernel, containing each of ``words``; the message."""
    out = tmp_path / "out"
    with pytest.raises(runner.ChapterError) as err:
        runner.run(chapter, overrides, out=out, progress=False)
    message = str(err.value)
    for word in words:
        assert word in message, message
    assert not out.exists() and not (tmp_path / "out.failed").exists() and not (tmp_path / ".out.partial").exists()
    return message


# ----------------------------------------------------------------------------- types

@pytest.mark.parametrize("chapter,name,value,words", [
    ("reparameterisation", "widths", "[16.5, 16]", "integers"),  # trained width 16, recorded 16.5
    ("reparameterisation", "widths", "[True, 16]", "integers"),  # a first layer of width 1
    ("reparameterisation", "widths", "['16', '16']", "integers"),
    ("reparameterisation", "widths", "[[16, 16]]", "integers"),  # a TypeError inside the kernel
    ("reparameterisation", "alphas", f"[1.0, {BIG}]", "too large for a float"),  # overflow after training
    ("reparameterisation", "alphas", "[1.0, True]", "numbers"),
    ("primer", "lr", BIG, "too large for a float"),  # a raw OverflowError without the parameter's name
    ("primer", "seed", str(10 ** 30), "<= "),  # overflow: seed had no maximum
    ("head_to_head", "first_seed", str(10 ** 30), "<= "),
    ("primer", "n", "True", "integer"),
    ("primer", "n", "2000.0", "integer"),
    ("primer", "n", "1e3", "integer"),
    ("finite_weakness", "rules", "['exchangeable', 1]", "strings"),
])
def test_a_value_of_another_type_than_the_default_is_refused_naming_the_parameter(
        chapter, name, value, words, tmp_path, no_kernel):
    _refused(chapter, {name: value}, tmp_path, f"Parameter '{name}'", words)


@pytest.mark.parametrize("name,value", [("widths", [16.5, 16]), ("widths", [True, 16]), ("widths", ("16", 16)),
                                        ("n", True), ("n", 2000.0), ("lr", int(BIG)), ("dataset", 3)])
def test_python_values_are_held_to_the_same_types(name, value):
    with pytest.raises(runner.ChapterError, match=f"Parameter '{name}'"):
        runner.validate("primer", {name: value})


def test_integers_in_a_list_of_floats_become_floats():
    alphas = runner.validate("reparameterisation", {"alphas": "[1, 10, 1000]"})["alphas"]
    assert alphas == [1.0, 10.0, 1000.0] and all(type(a) is float for a in alphas)
    assert runner.validate("primer", {"alpha": "100"})["alpha"] == 100.0


def test_a_long_value_is_shortened_in_the_message(tmp_path, no_kernel):
    message = _refused("primer", {"widths": str([16] * 20000)}, tmp_path, "Parameter 'widths'", "20000 items")
    assert len(message) < 600, message


def test_a_long_value_of_the_wrong_type_is_shortened_too():
    with pytest.raises(runner.ChapterError) as err:
        runner.validate("primer", {"n": "x" * 100000})
    assert len(str(err.value)) < 600


def test_every_integer_parameter_has_a_maximum():
    for name, chapter in runner.manifest().items():
        for param, default in runner.parameters(chapter.source).items():
            spec = chapter.ranges.get(param, {})
            if isinstance(default, list) and default and isinstance(default[0], int):
                spec = spec.get("each", {})
            elif not isinstance(default, int) or isinstance(default, bool):
                continue
            assert "max" in spec or "choices" in spec, f"{name}: {param} has no maximum"


# ----------------------------------------------------------------------------- constraints

@pytest.mark.parametrize("chapter,overrides,words", [
    ("reparameterisation", {"layer": "5"}, "layer"),  # failed after training
    ("pacbayes_link", {"bound_n": "59500"}, "bound_n"),  # failed after the whole sweep
    ("finite_weakness", {"train_size": "100", "bits": "5"}, "train_size"),
    ("primer", {"batch_size": "500", "n": "200"}, "batch_size"),
    ("regularised", {"arch": "cnn", "widths": "[16]"}, "widths"),
    # the C8 page's own example, at the default max_arity
    ("finite_weakness", {"bits": "10", "train_size": "64", "structured_rule": "parity2"}, "max_arity"),
    ("finite_weakness", {"max_arity": "9"}, "max_arity"),
    ("finite_weakness", {"rules": "['parity2', 'sum_carry']"}, "exchangeable"),
    ("finite_weakness", {"bits": "2", "rules": "['exchangeable', 'parity3']", "structured_rule": "parity3",
                         "max_arity": "2", "train_size": "2"}, "parity3"),
    ("head_to_head", {"batch_size": "500", "n": "200"}, "batch_size"),
    ("reparameterisation", {"batch_size": "500", "n": "200"}, "batch_size"),
    ("regularised", {"batch_size": "500", "n": "200"}, "batch_size"),
    ("regularised", {"arch": "cnn", "widths": "[4, 4, 4, 4, 4, 8]"}, "widths"),
    ("regularised", {"regimes": "['baseline', 'sam']", "sam_rho": "0"}, "sam_rho"),
    ("atlas", {"sizes": "[100, 200]"}, "batch size"),
    ("pacbayes_link", {"batch_sizes": "[64, 256]", "sizes": "[200, 1000]"}, "batch size"),
    ("batch_sweep", {"small_batch": "500", "sizes": "[300, 1000]"}, "small_batch"),
    ("interpolators", {"width": "2", "n": "100"}, "width"),
    ("interpolators", {"links": "['relu', 'tanh', 'square']", "d": "2"}, "links"),
])
def test_a_combination_the_chapter_cannot_run_is_refused_before_a_kernel_starts(
        chapter, overrides, words, tmp_path, no_kernel):
    message = _refused(chapter, overrides, tmp_path, words, f"chapter {chapter!r}")
    assert "Traceback" not in message


@pytest.mark.parametrize("chapter,overrides", [
    ("reparameterisation", {"layer": "1"}),
    ("pacbayes_link", {"bound_n": "40000"}),  # 60,000 - the largest size, 20,000
    ("finite_weakness", {"train_size": "31", "bits": "5", "max_arity": "5"}),
    ("finite_weakness", {"bits": "10", "train_size": "64", "max_arity": "10"}),
    ("primer", {"batch_size": "200", "n": "200"}),
    ("regularised", {"arch": "cnn", "widths": "[4, 4, 4, 4, 8]"}),
    ("regularised", {"arch": "mlp", "widths": "[16]"}),
])
def test_the_limits_of_a_constraint_are_allowed(chapter, overrides):
    runner.validate(chapter, overrides)


def test_each_limit_is_the_chapters_own(tmp_path, no_kernel):
    _refused("pacbayes_link", {"bound_n": "40001"}, tmp_path, "bound_n")
    _refused("finite_weakness", {"train_size": "32", "bits": "5", "max_arity": "5"}, tmp_path, "train_size")
    _refused("primer", {"batch_size": "201", "n": "200"}, tmp_path, "batch_size")


CONSTRAINED = (
    "chapters:\n  echo:\n    source: book/echo/echo.md\n    smoke: {n: 1}\n"
    "    ranges:\n      n: {min: 1, max: 100}\n"
    "    constraints:\n"
    "      - {require: 'n <= len(widths) * 2', message: 'n = {n} is more than twice len(widths) = {len(widths)}'}\n"
    "    published:\n      - {folder: echo, claims: [C1]}\n")


def test_a_constraint_in_the_manifest_is_checked_with_its_message(book, tmp_path):
    (tmp_path / "chapters.yml").write_text(CONSTRAINED)
    assert runner.validate("echo", {"n": "4"})["n"] == 4
    with pytest.raises(runner.ChapterError, match=r"n = 5 is more than twice len\(widths\) = 2 \(chapter 'echo'"):
        runner.validate("echo", {"n": "5"})


@pytest.mark.parametrize("expression", [
    "__import__('os').system('touch pwned')", "().__class__.__bases__[0].__subclasses__()",
    "[x for x in widths]", "(lambda: 1)()", "open('pwned', 'w')", "widths.append(1) or True", "flatlib.os.getcwd()",
    "finite._check_bits(n)", "os.getcwd()", "n if",
])
def test_a_constraint_outside_the_small_language_is_refused_when_the_manifest_is_read(
        book, tmp_path, expression, monkeypatch):
    text = CONSTRAINED.replace("'n <= len(widths) * 2'", json.dumps(expression))
    (tmp_path / "chapters.yml").write_text(text)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(runner.ChapterError, match="constraint"):
        runner.validate("echo", {})
    assert not (tmp_path / "pwned").exists()


def test_a_constraint_naming_no_parameter_is_an_error_of_the_manifest(book, tmp_path):
    (tmp_path / "chapters.yml").write_text(CONSTRAINED.replace("len(widths)", "len(depths)"))
    with pytest.raises(runner.ChapterError, match="'depths'"):
        runner.validate("echo", {})


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_every_constraint_holds_at_the_defaults_the_smoke_and_the_published_parameters():
    for name, chapter in runner.manifest().items():
        runner.validate(name, {})
        runner.validate(name, chapter.smoke)
        for run in chapter.published:
            runner.validate(name, run.params)


def test_the_constraints_are_declared_in_the_manifest_beside_the_ranges():
    raw = yaml.safe_load(runner.MANIFEST.read_text())["chapters"]
    for chapter in ("reparameterisation", "pacbayes_link", "finite_weakness", "primer", "regularised"):
        assert raw[chapter].get("constraints"), chapter


# ----------------------------------------------------------------------------- output folders

def test_a_run_into_a_published_folder_at_other_parameters_is_refused(book, tmp_path, no_kernel):
    with pytest.raises(runner.ChapterError, match="published") as err:
        runner.run("echo", {"n": "2"}, out=book / "echo", progress=False)
    assert "--force-publish" in str(err.value)
    assert not (book / "echo" / "summary.json").exists()


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_a_run_into_a_published_folder_at_its_published_parameters_proceeds(book):
    runner.run("echo", {"n": "3"}, out=book / "echo", progress=False)  # n = 3 is the default
    assert json.loads((book / "echo" / "summary.json").read_text())["headline"]["total"] == 4.5


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_force_publish_lets_a_run_replace_its_chapters_published_run(book, capsys):
    assert main(["run", "echo", "--out", str(book / "echo"), "--no-progress", "-p", "n", "2", "--force-publish"]) == 0
    assert json.loads((book / "echo" / "summary.json").read_text())["headline"]["total"] == 3.0


def test_force_publish_is_explained_in_the_help(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--force-publish" in out and "published" in out


def test_a_run_into_another_chapters_folder_is_refused_even_when_forced(book, tmp_path, no_kernel):
    (tmp_path / "chapters.yml").write_text(
        (tmp_path / "chapters.yml").read_text()
        + "  echo2:\n    source: book/echo/echo.md\n    smoke: {n: 1}\n    published:\n      - {folder: other}\n")
    with pytest.raises(runner.ChapterError, match="'echo2'"):
        runner.run("echo", {}, out=book / "other", progress=False, force_publish=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "summary.json").write_text(json.dumps({"chapter": "primer", "headline": {}}))
    with pytest.raises(runner.ChapterError, match="'primer'"):
        runner.run("echo", {}, out=elsewhere, progress=False, force_publish=True)
    assert json.loads((elsewhere / "summary.json").read_text())["chapter"] == "primer"


def test_a_file_an_empty_path_or_an_unwritable_folder_is_refused_as_out_before_any_work(
        book, tmp_path, no_kernel, capsys, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("mine\n")
    monkeypatch.chdir(tmp_path)
    assert main(["run", "echo", "--out", str(afile)]) == 2
    assert "is a file" in capsys.readouterr().err and afile.read_text() == "mine\n"
    assert main(["run", "echo", "--out", ""]) == 2
    assert "--out is empty" in capsys.readouterr().err
    # /proc takes no new folders, even from root; a read-only folder stops anyone else
    unwritable = "/proc/flatlib-nowhere/out"
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        unwritable = str(locked / "out")
    assert main(["run", "echo", "--out", unwritable]) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["afile", "book", "chapters.yml"]
                                                               + (["locked"] if os.geteuid() != 0 else []))


# ----------------------------------------------------------------------------- out_dir, SIGTERM

def test_out_dir_is_not_a_readers_parameter(book):
    with pytest.raises(runner.ChapterError, match="--out") as err:
        runner.validate("echo", {"out_dir": "X"})
    assert "out_dir = " not in str(err.value)  # not offered among the valid parameters either
    with pytest.raises(runner.ChapterError) as err:
        runner.validate("echo", {"nn": "1"})
    assert "out_dir" not in str(err.value)


def test_the_chapter_listing_offers_no_out_dir(capsys):
    assert main(["chapters"]) == 0
    listing = capsys.readouterr().out
    assert "out_dir" not in listing and "bits = 8" in listing


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_sigterm_stops_the_run_and_its_kernel_like_ctrl_c(book, tmp_path):
    proc, hold, out = echo._held_run(book, tmp_path)
    kernel = None
    try:
        kernel = echo._kernel_pid(hold, proc)
        proc.send_signal(signal.SIGTERM)  # what `kill <pid>` or a service manager sends, to the runner alone
        _, err = proc.communicate(timeout=20)
        deadline = time.monotonic() + 10
        while echo._alive(kernel) and time.monotonic() < deadline:
            time.sleep(0.1)
        kernel_alive = echo._alive(kernel)
    finally:
        echo._kill(proc, *([kernel] if kernel else []))
    assert not kernel_alive, "the kernel outlived the run"
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err, err
    assert "stopped" in err and "kept in the store" in err and "--out" in err, err
    assert (tmp_path / "runs" / "target.failed" / "echo.ipynb").is_file()
    assert not list((tmp_path / "runs").glob(".*")), "no scratch folder and no lock file are left"


def test_range_messages_shorten_long_values():
    with pytest.raises(fparams.RangeError) as err:
        fparams.check("widths", list(range(20000)), {"length": [1, 8]})
    assert len(str(err.value)) < 300 and "20000 items" in str(err.value)

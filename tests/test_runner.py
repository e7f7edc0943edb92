import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jupytext
import nbformat
import pytest

from flatlib import claims, report, runner, scoreboard
from flatlib.__main__ import main
from flatlib.publishing import manifest, notebooks

ECHO_PARAMETERS = 'n = 3\nscale = 1.5\nlabel = "x"\nflag = False\nwidths = [4, 8]\nout_dir = "."\nfail = False\n'
ECHO_BODY = (
    "if fail:\n    raise RuntimeError('asked to fail')\n"
    "from flatlib import claims, report\n"
    "report.write_summary(out_dir, 'echo', {'total': n * scale, 'label': label, 'widths': widths},\n"
    "    scoreboard=[report.scoreboard_row(claims.Verdict('C1', 'inconclusive', ()), f'{n * scale:g}x')],\n"
    "    datasets=['mnist'])\n"
)


@pytest.fixture
def book(tmp_path, monkeypatch):
    """A book folder holding one chapter, ``echo``, that writes its parameters into its summary."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Echo"),
                nbformat.v4.new_code_cell(ECHO_PARAMETERS, metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(ECHO_BODY)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    (tmp_path / "book" / "echo").mkdir(parents=True)
    jupytext.write(nb, tmp_path / "book" / "echo" / "echo.md", fmt="md:myst")
    (tmp_path / "chapters.yml").write_text(
        "chapters:\n  echo:\n    source: book/echo/echo.md\n    smoke: {n: 1}\n"
        "    published:\n      - {folder: echo, claims: [C1]}\n")
    monkeypatch.setattr(manifest, "BOOK", tmp_path / "book")
    monkeypatch.setattr(manifest, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(manifest, "MANIFEST", tmp_path / "chapters.yml")
    return tmp_path / "book"


# A cell for runs that must still be going while the test acts: with ``hold`` set to a folder, the
# kernel writes its pid there and waits (at most a minute) until the test creates ``go`` in it.
HOLD = (
    "import os, pathlib, time\n"
    "if hold:\n"
    "    pathlib.Path(hold, 'kernel.pid.tmp').write_text(str(os.getpid()))\n"
    "    os.replace(pathlib.Path(hold, 'kernel.pid.tmp'), pathlib.Path(hold, 'kernel.pid'))\n"
    "    for _ in range(600):\n"
    "        if pathlib.Path(hold, 'go').exists():\n"
    "            break\n"
    "        time.sleep(0.1)\n"
)
# `python -m flatlib <args>` against the tmp book (argv[1]), importing this checkout's flatlib.
DRIVER = (
    "import sys; from pathlib import Path; from flatlib.publishing import manifest; from flatlib.__main__ import main; "
    "root = Path(sys.argv[1]); "
    "manifest.BOOK, manifest.RUNS, manifest.MANIFEST = root / 'book', root / 'runs', root / 'chapters.yml'; "
    "sys.exit(main(sys.argv[2:]))"
)


def _holding_echo(book) -> None:
    """Give ``echo`` a ``hold`` parameter and the HOLD cell before its body."""
    source = book / "echo" / "echo.md"
    text = source.read_text().replace("fail = False\n", 'fail = False\nhold = ""\n', 1)
    source.write_text(text.replace("if fail:\n", HOLD + "if fail:\n", 1))


def _flatlib_in_subprocess(root: Path, *args: str) -> subprocess.Popen:
    """``python -m flatlib *args`` in its own session, as a terminal's foreground job would be."""
    env = {**os.environ, "PYTHONPATH": str(report.ROOT)}
    return subprocess.Popen([sys.executable, "-c", DRIVER, str(root), *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _kernel_pid(hold: Path, proc: subprocess.Popen, timeout: float = 120) -> int:
    """The pid the held kernel wrote, once it is running; fails if ``proc`` ends first."""
    deadline = time.monotonic() + timeout
    while not (hold / "kernel.pid").exists():
        assert proc.poll() is None, f"the run ended before its kernel held: {proc.communicate()}"
        assert time.monotonic() < deadline, "the kernel never started"
        time.sleep(0.1)
    return int((hold / "kernel.pid").read_text())


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _held_run(book, tmp_path):
    """``python -m flatlib run echo`` in a subprocess into runs/target, waiting in its kernel until
    the test touches ``hold/go``: the process, the hold folder and the output folder."""
    _holding_echo(book)
    hold, out = tmp_path / "hold", tmp_path / "runs" / "target"
    hold.mkdir()
    proc = _flatlib_in_subprocess(tmp_path, "run", "echo", "--out", str(out), "--no-progress",
                                  "-p", "hold", str(hold), "-p", "n", "5")
    return proc, hold, out


def _kill(proc: subprocess.Popen, *pids: int) -> None:
    """Leave nothing running, whatever the test's outcome."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_parameters_are_read_with_their_types(book):
    assert runner.parameters(book / "echo" / "echo.md") == {
        "n": 3, "scale": 1.5, "label": "x", "flag": False, "widths": [4, 8], "out_dir": ".", "fail": False}


def test_misspelled_parameter_is_refused_with_the_valid_ones_listed(book, capsys):
    assert main(["run", "echo", "-p", "nn", "5"]) == 2
    err = capsys.readouterr().err
    assert "Unknown parameter(s) 'nn'" in err
    for line in ("n = 3", "scale = 1.5", "label = 'x'", "widths = [4, 8]"):
        assert line in err
    assert not (book.parent / "runs").exists()


@pytest.mark.parametrize("name,value", [("n", "three"), ("n", "2.5"), ("flag", "maybe"), ("widths", "7"),
                                        ("scale", "true")])
def test_values_of_the_wrong_type_are_refused_before_running(book, name, value):
    with pytest.raises(runner.ChapterError, match=f"Parameter '{name}'"):
        runner.validate("echo", {name: value})


def test_values_are_coerced_to_the_default_types(book):
    params = runner.validate("echo", {"n": "5", "scale": "2", "flag": "true", "widths": "[1, 2, 3]", "label": "7"})
    assert params["n"] == 5 and params["scale"] == 2.0 and isinstance(params["scale"], float)
    assert params["flag"] is True and params["widths"] == [1, 2, 3] and params["label"] == "7"


def test_unknown_chapter_lists_the_chapters(book):
    with pytest.raises(runner.ChapterError, match="Chapters: echo"):
        runner.validate("eccho", {})


@pytest.mark.book
def test_run_writes_notebook_and_summary_with_provenance(book, tmp_path):
    summary = runner.run("echo", {"n": "4"}, progress=False)
    out = next((tmp_path / "runs").glob("echo-*"))
    assert (out / "echo.ipynb").is_file()
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == summary
    assert summary["headline"]["total"] == 6.0
    assert summary["parameters"]["n"] == 4 and "out_dir" not in summary["parameters"]
    for key in ("data_checksums", "flatlib_source_hash", "git_commit", "device", "torch_version", "wall_time_s"):
        assert key in summary, key
    assert summary["data_checksums"]["mnist"]["train-images-idx3-ubyte"].startswith("ba89")
    assert ".partial" not in (out / "echo.ipynb").read_text()
    assert not list((tmp_path / "runs").glob(".*partial"))


@pytest.mark.book
def test_a_failing_chapter_leaves_no_half_written_output(book, tmp_path):
    out = tmp_path / "runs" / "target"
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(Exception, match="asked to fail"):
        runner.run("echo", {"fail": "true"}, out=out, progress=False)
    assert signal.getsignal(signal.SIGINT) is handler, "the run's Ctrl-C handler outlived it"
    assert not out.exists()
    assert (tmp_path / "runs" / "target.failed" / "echo.ipynb").is_file()
    runner.run("echo", {}, out=out, progress=False)  # the failed run released its lock
    assert (out / "summary.json").is_file() and not (tmp_path / "runs" / "target.failed").exists()


@pytest.mark.book
def test_scoreboard_fills_from_summaries_and_leaves_the_rest_pending(book, tmp_path):
    runner.run("echo", {"n": "2"}, out=book / "echo", progress=False, force_publish=True)
    table = scoreboard.render(book)
    assert "| [C1](echo/echo): " in table and "| 3x | **inconclusive** |" in table
    assert table.splitlines()[0] == "| claim | our figure | verdict |"
    assert table.count("| pending |") == len(claims.CLAIMS) - 1


@pytest.mark.book
def test_the_executed_notebook_is_stable_and_folds_its_parameters(book, tmp_path, monkeypatch):
    monkeypatch.setattr(report, "today", lambda: "2026-01-01")  # two runs either side of midnight
    runner.run("echo", {"n": "2"}, out=tmp_path / "a", progress=False)
    a = (tmp_path / "a" / "echo.ipynb").read_text()
    runner.run("echo", {"n": "2"}, out=tmp_path / "a", progress=False)
    b = (tmp_path / "a" / "echo.ipynb").read_text()
    assert a == b, "a re-run with unchanged numbers must change no line of the notebook"
    nb = nbformat.reads(a, as_version=4)
    for cell in nb.cells:
        assert "papermill" not in cell.metadata and "execution" not in cell.metadata
        tags = set(cell.metadata.get("tags", []))
        if cell.cell_type == "code":
            assert tags & {"hide-input", "remove-input", "remove-cell"}, "code is folded or removed on the site"
        if {"parameters", "injected-parameters"} & tags:
            assert "remove-cell" in tags  # shown once, as the table
    tables = [c for c in nb.cells if "parameters-table" in c.metadata.get("tags", [])]
    assert len(tables) == 1 and "| `n` | `2` |" in tables[0].source
    assert "out_dir" not in tables[0].source
    provenance = nb.cells[-1]
    assert "provenance" in provenance.metadata["tags"] and provenance.source.startswith("## Provenance")
    assert "| | |" not in provenance.source and "- **device**: " in provenance.source  # a list, no empty header
    assert "2026-01-01" in provenance.source and "{download}`summary.json <summary.json>`" in provenance.source
    assert "python -m flatlib run echo -p n 2 --out" in provenance.source
    assert nb.metadata["papermill"]["input_path"].endswith("echo.md")


@pytest.mark.book
def test_the_kernel_draws_no_progress_bars(book, tmp_path, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    source = book / "echo" / "echo.md"
    source.write_text(source.read_text().replace(
        "if fail:", "import os\nassert os.environ.get('TQDM_DISABLE') == '1'\nif fail:"))
    runner.run("echo", {}, out=tmp_path / "out", progress=False)
    import os
    assert "TQDM_DISABLE" not in os.environ


@pytest.mark.parametrize("text,match", [
    ("chapters:\n  echo:\n    smoke: {n: 1}\n", "needs 'source'"),
    ("chapters:\n  echo:\n    source: book/echo/echo.md\n    published:\n      - {folder: echo, claims: [C99]}\n",
     "known claim ids"),
])
def test_a_malformed_manifest_is_one_clear_error(book, tmp_path, text, match):
    (tmp_path / "chapters.yml").write_text(text)
    with pytest.raises(runner.ChapterError, match=match):
        runner.manifest()


def test_a_registered_chapter_without_its_source_says_so(book):
    (book / "echo" / "echo.md").unlink()
    with pytest.raises(runner.ChapterError, match="source .* is missing"):
        runner.validate("echo", {})


@pytest.mark.book
def test_a_second_run_into_the_same_folder_is_refused_while_the_first_finishes_intact(book, tmp_path):
    first, hold, out = _held_run(book, tmp_path)
    kernel = None
    try:
        kernel = _kernel_pid(hold, first)
        with pytest.raises(runner.ChapterError, match="already running") as refused:
            runner.run("echo", {}, out=out, progress=False)
        assert f"pid {first.pid}" in str(refused.value) and "started" in str(refused.value)
        assert str(out) in str(refused.value)
        runner.run("echo", {}, out=tmp_path / "runs" / "elsewhere", progress=False)  # other folders proceed
        (hold / "go").touch()
        _, err = first.communicate(timeout=120)
        assert first.returncode == 0, err
    finally:
        _kill(first, *([kernel] if kernel else []))
    assert json.loads((out / "summary.json").read_text())["headline"]["total"] == 7.5
    assert not (tmp_path / "runs" / "target.failed").exists()
    assert not list((tmp_path / "runs").glob(".*")), "no scratch folder and no lock file are left"


@pytest.mark.book
def test_ctrl_c_stops_the_run_and_its_kernel_and_says_how_to_resume(book, tmp_path):
    proc, hold, out = _held_run(book, tmp_path)
    kernel = None
    try:
        kernel = _kernel_pid(hold, proc)
        # What a terminal does on Ctrl-C: SIGINT to its foreground process group. The kernel runs in a
        # session of its own, so it never receives it.
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)  # an impatient second Ctrl-C must not orphan the kernel
        _, err = proc.communicate(timeout=20)
        deadline = time.monotonic() + 10
        while _alive(kernel) and time.monotonic() < deadline:
            time.sleep(0.1)
        kernel_alive = _alive(kernel)
    finally:
        _kill(proc, *([kernel] if kernel else []))
    assert not kernel_alive, "the kernel outlived the run"
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert "interrupted" in err and "kept in the store" in err, err
    assert f"python -m flatlib run echo -p hold {hold} -p n 5 --out {out}" in err, err
    assert not list((tmp_path / "runs").glob(".*")), "no scratch folder and no lock file are left"
    assert (tmp_path / "runs" / "target.failed" / "echo.ipynb").is_file()
    assert not out.exists()


@pytest.mark.book
def test_a_leftover_from_a_killed_run_is_removed_with_one_line(book, tmp_path, capsys):
    runs = tmp_path / "runs"
    scratch = runs / ".target.partial"
    scratch.mkdir(parents=True)
    (scratch / "half-written.csv").write_text("1,2\n")
    (runs / ".target.lock").write_text("pid 999999, started 2020-01-01 00:00:00\n")  # held by no one
    runner.run("echo", {}, out=runs / "target", progress=False)
    lines = [line for line in capsys.readouterr().err.splitlines() if "leftover" in line]
    assert len(lines) == 1 and str(scratch) in lines[0]
    assert not (runs / "target" / "half-written.csv").exists()
    assert not list(runs.glob(".*"))


@pytest.mark.parametrize("text,expected", [
    ("", {}),
    ("n=4", {"n": "4"}),
    ("widths=[8, 8] scale=0.1", {"widths": "[8, 8]", "scale": "0.1"}),
    ("  widths=[[1, 2], [3]]\tn=2 ", {"widths": "[[1, 2], [3]]", "n": "2"}),
    ('label="a b" n=2', {"label": "a b", "n": "2"}),
    ("label='say \"hi\"'", {"label": 'say "hi"'}),
    ('names=["a b", "c]"]', {"names": '["a b", "c]"]'}),
    ("label= n=1", {"label": "", "n": "1"}),
    ("lr=1e-3", {"lr": "1e-3"}),
])
def test_params_split_on_whitespace_outside_brackets_and_quotes(text, expected):
    assert runner.parse_params(text) == expected


@pytest.mark.parametrize("text,match", [
    ("widths", "'widths' is not key=value"),
    ("n=1 [8, 8]", r"'\[8, 8\]' is not key=value"),
    ("=3", "'=3' is not key=value"),
    ("widths=[8, 8", "unclosed"),
    ("widths=8]", "unopened"),
    ('label="a b', "unclosed quote"),
    ("n=1 n=2", "'n' is given twice"),
])
def test_malformed_params_are_one_clear_error(text, match):
    with pytest.raises(runner.ChapterError, match=match):
        runner.parse_params(text)


@pytest.mark.book
def test_params_as_one_string_reach_the_chapter(book, tmp_path):
    out = tmp_path / "out"
    assert main(["run", "echo", "--out", str(out), "--no-progress", "--params", "widths=[8, 8] label='a b' n=2"]) == 0
    headline = json.loads((out / "summary.json").read_text())["headline"]
    assert headline == {"total": 3.0, "label": "a b", "widths": [8, 8]}


def test_tidy_names_a_runs_overrides_in_its_title_once(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Head-to-head\n\nText."),
        nbformat.v4.new_code_cell('dataset = "mnist"', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell('# Parameters\ndataset = "fashion_mnist"',
                                  metadata={"tags": ["injected-parameters"]}),
        nbformat.v4.new_code_cell("print(1)")])
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, path)
    for _ in range(2):  # tidying twice changes nothing more
        runner.tidy(path, tmp_path / "x.md", tmp_path / "out" / "x.ipynb", {"dataset": "fashion_mnist"})
    cells = nbformat.read(path, as_version=4).cells
    assert cells[0].source == "# Head-to-head (dataset = fashion_mnist)\n\nText."
    assert [c.source.count("| `dataset` | `\"fashion_mnist\"` |") for c in cells if c.cell_type == "markdown"] == [0, 1]
    assert "hide-input" in cells[-1].metadata["tags"]


def test_a_run_with_overrides_suffixes_the_labels_it_defines_and_its_references_to_them():
    import nbformat

    from flatlib.publishing.notebooks import _suffix_labels
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("As {numref}`fig-a` shows, and {ref}`the table <tab-b>`; "
                                      "not {numref}`fig-other`."),
        nbformat.v4.new_markdown_cell("```{glue:figure} fig_a\n:name: fig-a\n:alt: x\n\nCaption.\n```"),
        nbformat.v4.new_markdown_cell(":name: tab-b"),
        nbformat.v4.new_code_cell(":name: fig-a"),
    ])
    _suffix_labels(nb, {"dataset": "fashion_mnist"})
    assert nb.cells[0].source == ("As {numref}`fig-a-fashion-mnist` shows, and {ref}`the table <tab-b-fashion-mnist>`; "
                                  "not {numref}`fig-other`.")
    assert ":name: fig-a-fashion-mnist\n" in nb.cells[1].source
    assert nb.cells[2].source == ":name: tab-b-fashion-mnist"
    assert nb.cells[3].source == ":name: fig-a"  # code is not touched
    _suffix_labels(nb, {"dataset": "fashion_mnist"})  # idempotent
    assert ":name: fig-a-fashion-mnist\n" in nb.cells[1].source


@pytest.mark.book
def test_a_chapter_whose_code_changed_on_disk_while_it_ran_is_not_published(book, tmp_path):
    source = book / "echo" / "echo.md"
    # the kernel reports another version of flatlib.claims than the one on disk when the run began
    source.write_text(source.read_text().replace(
        "from flatlib import claims, report\n",
        "from flatlib import claims, report\nreport.code_versions = lambda: {'flatlib.claims': 'edited'}\n", 1))
    out = tmp_path / "runs" / "target"
    with pytest.raises(runner.ChapterError, match="changed on disk while it ran .flatlib.claims."):
        runner.run("echo", {}, out=out, progress=False)
    assert not out.exists() and (tmp_path / "runs" / "target.failed").is_dir()


@pytest.mark.parametrize("raw, default, words", [("x", 3, "takes an integer like 3"),
                                                 ("x", 0.5, "takes a number like 0.5"),
                                                 ("1", [1], "takes a list of integers like [1]")])
def test_a_value_of_the_wrong_type_is_refused_in_words(raw, default, words):
    with pytest.raises(runner.ChapterError, match=words.replace("[", r"\[").replace("]", r"\]")):
        runner.coerce("p", raw, default)


def test_the_provenance_links_its_commit_through_the_commit_role():
    text = notebooks._provenance({"git_commit": "0123456789abcdef0123456789abcdef01234567"}, [], None)
    assert "git {commit}`0123456789abcdef0123456789abcdef01234567`" in text


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_a_run_says_its_folder_its_page_and_its_verdict(book, tmp_path, capsys):
    out = tmp_path / "runs" / "said"
    assert main(["run", "echo", "--out", str(out), "--no-progress", "-p", "n", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"folder:  {out}") and lines[1].startswith("page:    not built")
    assert lines[2] == "verdict: C1 inconclusive" and len(lines) == 3
    assert oct(os.stat(out / "summary.json").st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_a_page_of_a_run_renders_its_maths_offline_and_resolves_its_citations(tmp_path):
    run = tmp_path / "demo"
    run.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Demo\n\nA formula $x^2$ and a citation {cite}`bennett2026flat`; "
                                              "code at {commit}`0123456789abcdef0123456789abcdef01234567`.")]
    nbformat.write(nb, run / "demo.ipynb")
    (run / "summary.json").write_text(json.dumps({"notebook": "demo.ipynb"}))
    html = runner.page(run)
    assert html == run / runner.PAGE / "_build" / "html" / "demo.html"
    text = html.read_text()
    scripts = re.findall(r'<script[^>]+src="([^"]*mathjax[^"]*)"', text)
    assert scripts and not scripts[0].startswith("http")  # MathJax served with the page
    assert (html.parent / scripts[0].split("?")[0]).resolve().is_file()
    assert "Bennett 2026" in text and "{cite}" not in text  # the citation resolved, with its author-year label
    assert "0123456789ab" in text and "{commit}" not in text
    assert not list(run.glob("*.yml"))  # the run's own folder gains no files: its seal still holds

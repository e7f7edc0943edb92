"""Every re-run command a chapter page shows ("Re-run it") is one a reader can type: its
parameters pass the chapter's ranges and constraints as written (fast), and the example runs,
smoke-sized where it is large (slow)."""
import re
import shlex

import pytest

from flatlib import runner

CHAPTERS = runner.manifest()
# `make chapter CH=<chapter> PARAMS="..."`, or `PARAMS="..."` alone (for the page's own chapter)
MAKE = re.compile(r'(?:make chapter CH=(?P<chapter>\w+)\s+)?PARAMS="(?P<params>[^"]*)"')
RUN = re.compile(r"python -m flatlib run (?P<chapter>\w+)(?P<args>[^\n`]*)")
# Parameters that set an example's cost where the chapter's smoke value is far cheaper: the
# executed version takes the smoke value of these when the example's is larger. Everything else
# the example sets is run as written.
LARGE = {"regularised": {"n", "epochs", "seeds"}, "head_to_head": {"networks"}, "interpolators": {"seeds", "width"},
         "primer": {"widths"}, "reparameterisation": {"widths"}, "atlas": {"sizes", "seeds"}}


def _run_overrides(args: str) -> dict[str, str]:
    """The parameters of a ``python -m flatlib run`` command line's arguments."""
    words, found = shlex.split(args), {}
    for i, word in enumerate(words):
        if word in ("-p", "--param"):
            found[words[i + 1]] = words[i + 2]
        elif word == "--params":
            found.update(runner.parse_params(words[i + 1]))
    return found


def examples() -> list[tuple[str, str, dict]]:
    """(page, chapter, parameters) of every re-run command on every chapter page."""
    found = []
    for name, chapter in CHAPTERS.items():
        page = chapter.source.relative_to(runner.BOOK).as_posix()
        text = chapter.source.read_text()
        found += [(page, m["chapter"] or name, runner.parse_params(m["params"])) for m in MAKE.finditer(text)]
        found += [(page, m["chapter"], _run_overrides(m["args"])) for m in RUN.finditer(text)]
    return found


EXAMPLES = examples()


def _larger(a, b) -> bool:
    if isinstance(a, list):
        return (max(a), len(a)) > (max(b), len(b))
    return a > b


def smoke_sized(chapter: str, example: dict) -> dict:
    """The example over the chapter's smoke parameters, with the smoke value of each ``LARGE``
    parameter whose example value is larger."""
    smoke = CHAPTERS[chapter].smoke
    wanted, small = runner.validate(chapter, example), runner.validate(chapter, smoke)
    shrunk = {k: smoke[k] for k in LARGE.get(chapter, set()) & set(example) & set(smoke)
              if _larger(wanted[k], small[k])}
    return {**smoke, **example, **shrunk}


def first_example(chapter: str) -> dict:
    """The parameters of ``chapter``'s smoke run in tests/test_book.py: its smoke parameters
    overlaid with the first re-run example of its own page, smoke-sized."""
    page = CHAPTERS[chapter].source.relative_to(runner.BOOK).as_posix()
    own = [example for p, c, example in EXAMPLES if p == page and c == chapter]
    return smoke_sized(chapter, own[0]) if own else dict(CHAPTERS[chapter].smoke)


def test_every_chapter_page_shows_a_rerun_example():
    pages = {page for page, _, _ in EXAMPLES}
    assert pages == {c.source.relative_to(runner.BOOK).as_posix() for c in CHAPTERS.values()}


@pytest.mark.parametrize("page,chapter,example", EXAMPLES, ids=[f"{p}:{c}:{e}" for p, c, e in EXAMPLES])
def test_a_rerun_example_passes_the_chapters_ranges_and_constraints_as_written(page, chapter, example):
    assert chapter in CHAPTERS, f"{page} re-runs an unknown chapter {chapter!r}"
    assert example, f"{page}: an example with no parameters"
    runner.validate(chapter, example)
    runner.validate(chapter, smoke_sized(chapter, example))


@pytest.mark.slow
@pytest.mark.parametrize("page,chapter,example", EXAMPLES, ids=[f"{p}:{c}:{e}" for p, c, e in EXAMPLES])
def test_a_rerun_example_runs(page, chapter, example, tmp_path):
    if runner.validate(chapter, smoke_sized(chapter, example)) == runner.validate(chapter, first_example(chapter)):
        pytest.skip("smoke-sized, this example is the chapter's smoke run, which test_book.py runs")
    summary = runner.run(chapter, smoke_sized(chapter, example), out=tmp_path / chapter, progress=False)
    assert summary["headline"], f"{page}: the example's run reported nothing"
    recorded = runner.validate(chapter, smoke_sized(chapter, example))
    assert {k: summary["parameters"][k] for k in example} == {k: recorded[k] for k in example}

"""A local Sphinx extension: the bibliography's labels by author and year.

pybtex's ``alpha`` labels read "[PerezORSTSzepesvari21]" for a paper with four authors; these read
"[Pérez-Ortiz et al. 2021]", "[Hochreiter & Schmidhuber 1997]", "[Bennett 2026]", with a, b, ...
after the year where two would be the same. Entries are formatted by pybtex's ``unsrt`` style,
which links a DOI where the entry has one, and sorted by author, year and title. The style is
registered as ``flatbook`` (``bibtex_default_style`` in ``_config.yml``).
"""
from __future__ import annotations

from collections import Counter

from pybtex.plugin import register_plugin
from pybtex.richtext import Text
from pybtex.style.formatting.unsrt import Style as Unsrt
from pybtex.style.labels import BaseLabelStyle


def _surname(person) -> str:
    return Text.from_latex(" ".join(person.prelast_names + person.last_names)).render_as("text")


class AuthorYearLabels(BaseLabelStyle):
    def format_labels(self, sorted_entries):
        labels = [self.format_label(entry) for entry in sorted_entries]
        repeated = {label for label, count in Counter(labels).items() if count > 1}
        seen = Counter()
        for label in labels:
            if label in repeated:
                seen[label] += 1
                yield label + "abcdefghijklmnopqrstuvwxyz"[seen[label] - 1]
            else:
                yield label

    def format_label(self, entry) -> str:
        people = entry.persons.get("author") or entry.persons.get("editor") or []
        names = [_surname(p) for p in people]
        who = (names[0] if len(names) == 1 else f"{names[0]} & {names[1]}" if len(names) == 2
               else f"{names[0]} et al." if names else entry.key)
        return f"{who} {entry.fields.get('year', '')}".strip()


class Style(Unsrt):
    default_label_style = "author_year"
    default_sorting_style = "author_year_title"


def setup(app):
    register_plugin("pybtex.style.labels", "author_year", AuthorYearLabels, force=True)
    register_plugin("pybtex.style.formatting", "flatbook", Style, force=True)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

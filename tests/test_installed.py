"""`crossmodald plugins`' listing: descriptions, needs and the table on a terminal's width."""

from __future__ import annotations

from crossmodald.bus.sinks import SinkRegistry
from crossmodald.ingest.registry import SourceRegistry
from crossmodald.installed import InstalledType, NeedInfo, format_table, list_installed
from crossmodald.runtime.registry import PluginRegistry
from crossmodald_plugins.asd import SpeakerFactory
from crossmodald_plugins.faces import FacesFactory


def test_types_given_as_classes_are_described_without_a_package() -> None:
    from crossmodald.ingest.pattern import PatternSourceFactory

    items = list_installed(
        {
            "plugin": PluginRegistry({"faces": FacesFactory, "speaker": SpeakerFactory}),
            "source": SourceRegistry({"pattern": PatternSourceFactory}),
            "sink": SinkRegistry({}),
        }
    )
    by_name = {item.name: item for item in items}
    assert [item.kind for item in items] == ["plugin", "plugin", "source"]
    # The config model's docstring is boilerplate ("[[plugins]] table of ..."), the factory's
    # too ("Entry point ..."): the factory's module's docstring says what faces does.
    assert by_name["faces"].description == (
        "Face tracks per stream as face start/update/end events."
    )
    assert by_name["faces"].provides == "faces.tracks"
    assert by_name["speaker"].requires == (NeedInfo("faces.tracks"), NeedInfo("speech.probs"))
    assert by_name["pattern"].description.startswith("A synthetic test source")
    assert all(item.package is None and item.error is None for item in items)
    assert "(none installed)" in format_table(items).split("Sink types")[1]


def _items() -> list[InstalledType]:
    long = "A description long enough to need wrapping on any terminal narrower than a wide one."
    return [
        InstalledType("plugin", "alpha", "crossmodald.plugins", long, provides="alpha.things"),
        InstalledType("plugin", "beta", "crossmodald.plugins", requires=None, error="cannot x"),
        InstalledType("source", "gamma", "crossmodald.sources", long),
    ]


def test_the_table_fits_the_terminal_width_and_keeps_every_word() -> None:
    items = _items()
    one_line = format_table(items)
    assert any(len(line) > 100 for line in one_line.splitlines())  # not a terminal: no wrapping
    for width in (60, 80, 100, 140):
        text = format_table(items, width)
        assert all(len(line) <= width for line in text.splitlines()), (width, text)
        words = " ".join(text.split())
        assert " ".join(items[0].description.split()) in words
        assert "ERROR: cannot x" in words
    # Wide enough: the description is a column; the error row's cells say "?".
    wide = format_table(items, 140).splitlines()
    assert wide[1].split() == ["NAME", "PROVIDES", "NEEDS", "PACKAGE", "DESCRIPTION"]
    assert wide[2].split()[:5] == ["alpha", "alpha.things", "-", "-", "A"]
    assert wide[3].split() == ["beta", "?", "?", "-", "ERROR:", "cannot", "x"]
    # Too narrow for a description column: it goes under its row, indented.
    narrow = format_table(items, 60).splitlines()
    assert narrow[1].split() == ["NAME", "PROVIDES", "NEEDS", "PACKAGE"]
    assert narrow[3].startswith("      A description")

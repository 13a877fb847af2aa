"""Fuzzing EventFilter.parse: any query text gives a filter or a ValueError, nothing else."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from crossmodald.bus import EventFilter

# Mostly the filter alphabet (so valid filters are common), plus anything at all.
_near_valid = st.text(alphabet="abcXYZ019_.*-, ", max_size=300)
_query = st.none() | _near_valid | st.text(max_size=300)


@settings(max_examples=400, deadline=None)
@given(types=_query, streams=_query)
def test_parse_raises_only_value_error(types: str | None, streams: str | None) -> None:
    try:
        flt = EventFilter.parse(types, streams)
    except ValueError as exc:
        message = str(exc)
    else:
        message = None
    if message is not None:
        assert message  # a message, and one line
        assert "\n" not in message
        return
    # A filter that parsed works on any event.
    flt.matches("sync.offset", "cam1")
    for entry in flt.types | flt.streams:
        assert entry
        assert len(entry) <= 128


@settings(max_examples=200, deadline=None)
@given(
    prefix=st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True),
    rest=st.from_regex(r"[a-z0-9_]{1,10}", fullmatch=True),
)
def test_prefix_forms_agree(prefix: str, rest: str) -> None:
    event_type = f"{prefix}.{rest}"
    assert EventFilter.parse(f"{prefix}.", None).matches(event_type, "s")
    assert EventFilter.parse(f"{prefix}.*", None).matches(event_type, "s")
    assert not EventFilter.parse(f"{prefix}.", None).matches(prefix, "s")
    assert EventFilter.parse(event_type, None).matches(event_type, "s")

"""The wire-format seam: the registry, our format's encoder and the per-format memo on frames."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kiki_events.core.runlog import Frame, Item, RunLog
from kiki_events.errors import KikiEventsError, UnknownFormatError
from kiki_events.events import StatusEvent, TokenEvent
from kiki_events.formats import DEFAULT_FORMAT, Encoder, Format, format_names, get_format
from kiki_events.formats.kiki import FORMAT, event_frame, notice_frame, retry_frame


def _token(seq: int, message_id: str = "m1") -> TokenEvent:
    return TokenEvent(run_id="r", seq=seq, ts=1.0, agent="writer", message_id=message_id, text=f"t{seq}")


def test_ours_is_the_default_and_every_registered_format_is_named_as_registered() -> None:
    assert get_format() is FORMAT
    assert DEFAULT_FORMAT == "kiki" == format_names()[0]
    for name in format_names():
        fmt = get_format(name)
        assert isinstance(fmt, Format)
        assert fmt.name == name


def test_an_unknown_format_names_the_known_ones() -> None:
    with pytest.raises(UnknownFormatError, match="kiki") as caught:
        get_format("nope")

    assert isinstance(caught.value, KikiEventsError)
    assert isinstance(caught.value, LookupError)


def test_our_encoder_writes_the_frames_of_the_sse_functions() -> None:
    log = RunLog("r", 10)
    for event in (_token(1), _token(2), _token(3, "m2")):
        log.append(event)
    frames, _ = log.read(0, 10)
    notice = StatusEvent(run_id="r", seq=0, ts=1.0, status="gap", first_seq=1, detail="d")
    encoder = FORMAT.encoder()

    assert [encoder.encode(frame) for frame in frames] == [
        event_frame(frames[0].event),
        event_frame(frames[1].event, with_agent=False),
        event_frame(frames[2].event),
    ]
    assert encoder.encode(notice) == notice_frame(notice)
    assert notice_frame(notice).startswith(b'event: status\ndata: {"run_id":"r"')
    items: list[Item] = [frames[0], notice, *frames[1:]]
    assert encoder.encode_all(items) == b"".join(encoder.encode(item) for item in items)
    assert encoder.start() == encoder.finish() == b""
    assert FORMAT.headers == {}
    assert FORMAT.media_types == ("text/event-stream",)
    assert FORMAT.retry_frame(2.5) == retry_frame(2.5) == b"retry: 2500\n\n"
    assert FORMAT.media_type == "text/event-stream"
    assert FORMAT.cacheable


def test_first_of_message_is_decided_in_append_order() -> None:
    log = RunLog("r", 10)
    log.append(_token(2))
    log.append(_token(1))  # late: inserted before, but the message was already announced
    log.append(_token(3, "m2"))

    frames, _ = log.read(0, 10)

    assert [(frame.seq, frame.first_of_message) for frame in frames] == [(1, False), (2, True), (3, True)]


def test_a_frame_keeps_one_encoding_per_format() -> None:
    frame = Frame(_token(1))
    built: list[str] = []

    def build(name: str) -> Callable[[Frame], bytes]:
        def encode(f: Frame) -> bytes:
            built.append(name)
            return f"{name}:{f.seq}".encode()

        return encode

    first = frame.encoded("alpha", build("a"))
    second = frame.encoded("b", build("b"))
    third = frame.encoded("c", build("c"))

    assert (first, second, third) == (b"a:1", b"b:1", b"c:1")
    assert frame.encoded("alpha", build("x")) is first
    assert frame.encoded("b", build("x")) is second
    assert frame.encoded("c", build("x")) is third
    assert frame.encoded("".join(["alp", "ha"]), build("x")) is first  # an equal key, not the same object
    assert built == ["a", "b", "c"]


def test_an_encoder_needs_only_encode() -> None:
    class Upper(Encoder):
        def encode(self, item: Item, /) -> bytes:
            return item.event.type.upper().encode() + b"\n" if isinstance(item, Frame) else b"NOTICE\n"

    log = RunLog("r", 10)
    log.append(_token(1))
    frames, _ = log.read(0, 10)
    notice = StatusEvent(run_id="r", seq=0, ts=1.0, status="gap", first_seq=1, detail="d")

    assert Upper().encode_all([notice, *frames]) == b"NOTICE\nTOKEN\n"
    assert Upper().finish() == b""

"""hil.faults: the spec parser, the seeded per-byte line faults and the reset frame counter."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hil.faults import FaultSpec, FrameCounter, LineFaults

# -- FaultSpec.parse ----------------------------------------------------------------------------


def test_parse_full_spec():
    spec = FaultSpec.parse(
        "flip=0.001,drop=0.002,dup=0.003,delay_ms=0-50,reset_every=500,cut_write=0.01")
    assert spec == FaultSpec(flip=0.001, drop=0.002, dup=0.003, delay_ms=(0.0, 50.0),
                             reset_every=500, cut_write=0.01)
    assert spec.line_active


@pytest.mark.parametrize("text", ["", "   ", None])
def test_parse_empty_is_zero(text):
    spec = FaultSpec.parse(text)
    assert spec == FaultSpec()
    assert not spec.line_active
    assert str(spec) == ""


def test_parse_single_delay_value_and_spaces():
    spec = FaultSpec.parse(" delay_ms = 20 , flip=1 ")
    assert spec.delay_ms == (20.0, 20.0)
    assert spec.flip == 1.0


def test_module_only_faults_leave_the_line_alone():
    spec = FaultSpec.parse("reset_every=3,cut_write=0.5")
    assert not spec.line_active
    assert (spec.reset_every, spec.cut_write) == (3, 0.5)


@pytest.mark.parametrize("text, fragment", [
    ("flip=2", "[0, 1]"),
    ("drop=-0.1", "[0, 1]"),
    ("dup=nan", "[0, 1]"),
    ("cut_write=inf", "[0, 1]"),
    ("flip=abc", "number"),
    ("jitter=3", "unknown fault 'jitter'"),
    ("flip", "KEY=VALUE"),
    ("flip=0.1,,drop=0.1", "KEY=VALUE"),
    ("flip=0.1,flip=0.2", "given twice"),
    ("delay_ms=50-10", "LO <= HI"),
    ("delay_ms=-5", "LO-HI"),
    ("delay_ms=a-b", "LO-HI"),
    ("reset_every=1.5", "integer"),
    ("reset_every=-1", "integer >= 0"),
])
def test_parse_errors_are_clear(text, fragment):
    with pytest.raises(ValueError) as info:
        FaultSpec.parse(text)
    assert fragment in str(info.value)


def test_direct_construction_is_validated():
    with pytest.raises(ValueError):
        FaultSpec(flip=1.5)
    with pytest.raises(ValueError):
        FaultSpec(reset_every=-2)


probabilities = st.sampled_from([0.0, 0.001, 0.25, 1.0])


@given(probabilities, probabilities, probabilities,
       st.tuples(st.integers(0, 100), st.integers(0, 100)).map(sorted),
       st.integers(0, 10_000), probabilities)
def test_text_form_round_trips(flip, drop, dup, delay, reset_every, cut_write):
    spec = FaultSpec(flip=flip, drop=drop, dup=dup, delay_ms=(float(delay[0]), float(delay[1])),
                     reset_every=reset_every, cut_write=cut_write)
    assert FaultSpec.parse(str(spec)) == spec


# -- LineFaults ---------------------------------------------------------------------------------

chunks = st.lists(st.binary(min_size=0, max_size=300), max_size=20)


@given(chunks, st.integers(0, 2**32))
def test_zero_spec_is_the_identity(data, seed):
    line = LineFaults(FaultSpec(), seed)
    for i, chunk in enumerate(data):
        out = line.apply(chunk, now=float(i))
        assert out == ([(float(i), chunk)] if chunk else [])


@given(chunks, st.integers(0, 2**16), st.floats(0, 20), st.floats(0, 80))
@settings(max_examples=60)
def test_delays_keep_order_and_bounds(data, seed, lo, width):
    spec = FaultSpec(delay_ms=(lo, lo + width))
    line = LineFaults(spec, seed)
    last = -math.inf
    now = 0.0
    delivered = b""
    for chunk in data:
        now += 0.001
        for at, out in line.apply(chunk, now):
            assert at >= last  # never overtakes an earlier chunk
            assert at >= now + lo / 1000 - 1e-9
            # only a wait for an earlier (later-delivered) chunk may exceed the drawn delay
            assert at <= max(now + (lo + width) / 1000, last) + 1e-9
            last = at
            delivered += out
    assert delivered == b"".join(data)  # delays alone change no byte


@given(chunks, st.integers(0, 2**16))
@settings(max_examples=60)
def test_only_bit_flips_keep_length_and_change_one_bit(data, seed):
    line = LineFaults(FaultSpec(flip=0.3), seed)
    for chunk in data:
        got = b"".join(out for _, out in line.apply(chunk, 0.0))
        assert len(got) == len(chunk)
        for a, b in zip(chunk, got, strict=True):
            assert bin(a ^ b).count("1") in (0, 1)


@given(st.binary(min_size=1, max_size=200), st.integers(0, 2**16))
def test_drop_and_dup_certainties(data, seed):
    assert LineFaults(FaultSpec(drop=1.0), seed).apply(data, 0.0) == []
    doubled = LineFaults(FaultSpec(dup=1.0), seed).apply(data, 0.0)
    assert doubled == [(0.0, bytes(b for x in data for b in (x, x)))]
    flipped = LineFaults(FaultSpec(flip=1.0), seed).apply(data, 0.0)[0][1]
    assert all(bin(a ^ b).count("1") == 1 for a, b in zip(data, flipped, strict=True))


@given(chunks, st.integers(0, 2**16))
@settings(max_examples=40)
def test_deterministic_for_a_seed_and_stream(data, seed):
    spec = FaultSpec(flip=0.05, drop=0.05, dup=0.05, delay_ms=(0, 30))

    def run(stream):
        line = LineFaults(spec, seed, stream)
        return [line.apply(c, float(i)) for i, c in enumerate(data)]

    assert run("h2m") == run("h2m")


def test_streams_and_seeds_differ():
    spec = FaultSpec(flip=0.5)
    data = bytes(range(256)) * 4
    a = LineFaults(spec, 1, "h2m").apply(data, 0)
    assert a != LineFaults(spec, 1, "m2h").apply(data, 0)
    assert a != LineFaults(spec, 2, "h2m").apply(data, 0)


@pytest.mark.parametrize("name", ["flip", "drop", "dup"])
def test_rates_roughly_match(name):
    p = 0.01
    n = 200_000
    line = LineFaults(FaultSpec(**{name: p}), seed=7)
    out = b"".join(o for _, o in line.apply(bytes(n), 0.0))
    stats = line.stats
    count = {"flip": stats.flipped, "drop": stats.dropped, "dup": stats.duplicated}[name]
    # expected 2000, standard deviation ~45: +-20 % is > 8 sigma
    assert 0.8 * p * n <= count <= 1.2 * p * n
    assert stats.bytes_in == n
    assert stats.bytes_out == len(out)
    if name == "flip":
        assert sum(1 for b in out if b) == stats.flipped  # input was all zeros
    elif name == "drop":
        assert len(out) == n - stats.dropped
    else:
        assert len(out) == n + stats.duplicated


def test_delay_draws_span_the_range():
    line = LineFaults(FaultSpec(delay_ms=(10, 50)), seed=3)
    delays = []
    for i in range(2000):
        now = i * 1.0  # far apart: no chunk waits for the one before it
        ((at, _),) = line.apply(b"x", now)
        delays.append((at - now) * 1000)
    assert 10 - 1e-6 <= min(delays) < 12
    assert 48 < max(delays) <= 50 + 1e-6
    assert 27 < sum(delays) / len(delays) < 33
    assert "delay_avg_ms=" in line.stats.summary()


# -- FrameCounter -------------------------------------------------------------------------------


def test_frame_counter_counts_non_empty_frames():
    counter = FrameCounter(3)
    assert counter.feed(b"\x00\x00ab\x00") is None  # resync zeros are no frames
    assert counter.count == 1
    assert counter.feed(b"c") is None
    assert not counter.should_reset()
    pos = counter.feed(b"d\x00\x00ef\x00gh\x00")
    assert pos == 6  # just past the delimiter of the third frame
    assert counter.should_reset()
    assert counter.feed(b"more\x00") is None  # nothing counted while a reset is due
    counter.reset()
    assert not counter.should_reset()
    assert counter.count == 0


def test_frame_counter_disabled():
    counter = FrameCounter(0)
    assert counter.feed(b"a\x00" * 100) is None
    assert not counter.should_reset()


@given(st.lists(st.binary(min_size=1, max_size=20).map(lambda b: b.replace(b"\x00", b"\x01")),
                min_size=1, max_size=30),
       st.integers(1, 10), st.integers(1, 7))
def test_frame_counter_every_n_frames_in_any_chunking(frames, every, cut):
    stream = b"".join(f + b"\x00" for f in frames)
    counter = FrameCounter(every)
    resets = 0
    i = 0
    while i < len(stream):
        chunk = stream[i:i + cut]
        pos = counter.feed(chunk)
        if pos is None:
            i += len(chunk)
            continue
        assert stream[i + pos - 1] == 0
        resets += 1
        counter.reset()
        i += pos
    assert resets == len(frames) // every

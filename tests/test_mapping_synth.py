"""Mappings and synthesis: musical over many decades, never garbage, exact lengths."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gradsonic import LogMapping, SeedMapping
from gradsonic.mapping import ALARM, OVER, SILENT, TONE, plan_tones, resolve_mapping
from gradsonic.synth import ALARM_GAIN, Synth


def test_log_mapping_is_half_an_octave_per_decade_c6_at_norm_1_band_c4_to_c8():
    m = LogMapping()
    hz = m(np.array([1e-4, 1e-2, 1.0, 100.0, 1e4]))
    np.testing.assert_allclose(hz, [261.625, 523.25, 1046.5, 2093.0, 4186.0])
    assert m.band == (261.63, 4186.0)


def test_beyond_the_band_is_played_at_its_edge_with_the_over_range_timbre():
    for mapping, norms, inside in [
            (LogMapping(), [0.0, 1e-45, 1e-5, 1.0, 1e5, 1e17, np.finfo(np.float64).max],
             [False, False, False, True, False, False, False]),
            (SeedMapping(), [0.0, 4.0, 39.0, 41.0, 1e15], [True, True, True, False, False])]:
        values = np.array([norms])
        freqs, kinds = plan_tones(mapping, values, np.zeros_like(values, dtype=bool))
        lo, hi = mapping.band
        assert ((kinds[0] == OVER) == ~np.array(inside)).all()
        assert (freqs >= lo).all() and (freqs <= hi).all()
        assert (freqs[0][kinds[0] == OVER] == np.where(values[0] > 1, hi, lo)[kinds[0] == OVER]).all()


def test_log_mapping_of_values_outside_its_domain():
    """NaN, -inf and negative norms map to 0 Hz (below the band), +inf to +inf (above it); the
    rest to center_hz * 2**(octaves_per_decade * log10(norm / center_norm))."""
    m = LogMapping()
    x = np.array([np.nan, -np.inf, -1.0, 0.0, np.inf, 1.0, 10.0])
    with np.errstate(divide="ignore", invalid="ignore"):
        direct = m.center_hz * np.exp2(m.octaves_per_decade * (np.log10(x) - math.log10(m.center_norm)))
    np.testing.assert_array_equal(m(x), [0.0, 0.0, 0.0, 0.0, np.inf, direct[5], direct[6]])
    assert m(np.array(1.0)).shape == ()


def test_the_over_range_timbre_has_odd_harmonics_and_stays_within_amplitude():
    synth = Synth(tone_duration=0.05)
    f = 1000.0
    tone = synth.render(np.array([[f]]), np.array([[OVER]]))[: synth.tone_samples]
    spectrum = np.abs(np.fft.rfft(tone * np.hanning(tone.size)))
    bins = np.fft.rfftfreq(tone.size, 1 / synth.sample_rate)
    level = {k: spectrum[np.argmin(abs(bins - k * f))] for k in (1, 2, 3, 4, 5)}
    assert level[3] > 0.3 * level[1] and level[5] > 0.15 * level[1]
    assert level[2] < 0.01 * level[1] and level[4] < 0.01 * level[1]
    assert np.abs(tone).max() <= synth.amplitude + 1e-6


def test_seed_mapping_is_the_original_line():
    np.testing.assert_allclose(SeedMapping()(np.array([0.0, 1.0, 4.09])), [200, 300, 609])


def test_resolve_mapping_accepts_names_and_callables():
    assert isinstance(resolve_mapping("seed"), SeedMapping)
    assert isinstance(resolve_mapping("log"), LogMapping)

    def custom(norms):
        return 300 + 0 * norms

    assert resolve_mapping(custom) is custom


def test_plan_marks_missing_silent_and_non_finite_alarm_and_maps_only_finite():
    seen = []

    def spy(norms):
        seen.append(norms.copy())
        return 100 + norms

    norms = np.array([[1.0, np.nan, np.inf, 2.0], [-np.inf, 0.0, np.nan, 3.0]])
    missing = np.array([[False, True, False, False], [False, False, False, False]])
    freqs, kinds = plan_tones(spy, norms, missing)
    assert kinds.tolist() == [[TONE, SILENT, ALARM, TONE], [ALARM, TONE, ALARM, TONE]]
    assert np.all(np.isfinite(seen[0]))
    np.testing.assert_array_equal(freqs[kinds == TONE], [101, 102, 100, 103])


def test_mapping_returning_wrong_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"mapping returned shape \(\) for norms of shape \(2,\)"):
        plan_tones(lambda n: 440.0, np.array([[1.0, 2.0]]), np.zeros((1, 2), bool))


def test_every_frequency_is_clamped_to_20hz_and_045_fs():
    synth = Synth(sample_rate=8000)
    np.testing.assert_array_equal(synth.clamp(np.array([-5, 0, 19, 1e9, np.inf, np.nan])),
                                  [20, 20, 20, 3600, 3600, 20])


def test_tone_fades_remove_the_click_at_both_ends():
    synth = Synth()
    frames = synth.render(np.array([[1234.5]]), np.array([[TONE]], dtype=np.int8))
    tone = frames[: synth.tone_samples]
    assert abs(tone[0]) < 1e-4 and abs(tone[-1]) < 1e-3
    # the largest sample-to-sample jump stays that of the sine itself (no step discontinuity)
    assert np.abs(np.diff(tone)).max() <= 0.1 * 2 * np.pi * 1234.5 / 44100 + 1e-6


norms_strategy = hnp.arrays(
    np.float32, st.tuples(st.integers(1, 6), st.integers(1, 5)),
    elements=st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True))


@settings(max_examples=150, deadline=None)
@given(norms=norms_strategy, mapping=st.sampled_from(["seed", "log"]),
       rate=st.sampled_from([8000, 22050, 44100, 48000]),
       tone=st.floats(0.0005, 0.02), silence=st.floats(0.0, 0.03),
       amplitude=st.floats(0.001, 1.0))
def test_any_float32_norms_give_finite_bounded_samples_of_exact_length(
        norms, mapping, rate, tone, silence, amplitude):
    synth = Synth(rate, tone, silence, amplitude)
    missing = np.zeros(norms.shape, dtype=bool)
    missing[:, 0] = norms[:, 0] < 0  # some layers missing, whatever the value
    freqs, kinds = plan_tones(resolve_mapping(mapping), norms, missing)
    frames = synth.render(freqs, kinds)
    steps, layers = norms.shape
    assert frames.dtype == np.float32
    assert frames.size == steps * (layers * round(tone * rate) + round(silence * rate))
    assert np.all(np.isfinite(frames))
    # a tone peaks at the amplitude; the NaN/Inf alarm at ALARM_GAIN times it, never beyond 1
    loudest = min(1.0, ALARM_GAIN * amplitude) if (~np.isfinite(norms)).any() else amplitude
    assert np.abs(frames).max(initial=0) <= loudest * (1 + 1e-6)


def test_a_log_mapping_can_snap_pitches_to_a_scale():
    m = LogMapping(scale="pentatonic")
    hz = m(np.logspace(-3, 3, 200))
    semitones = 12 * np.log2(hz / m.center_hz)
    assert np.allclose(semitones, np.round(semitones), atol=1e-9)  # on notes
    assert set(np.round(semitones).astype(int) % 12) <= {0, 2, 4, 7, 9}  # of the scale
    assert np.all(np.diff(hz) >= 0)  # still rising with the norm
    with pytest.raises(ValueError, match=r"LogMapping.scale must be one of .* not 'blues'"):
        LogMapping(scale="blues")

"""Temporal stabilization: consistent colors across the frames of one clip.

DDColor colorizes every frame on its own, so film grain, exposure flicker and
small motions change its prediction from frame to frame: colors flicker. This
module makes them consistent without training. For each frame, at the
network's working resolution (the ``size x size`` square it sees) and before
ab is scaled up to the frame:

1. estimate the motion from the previous frame on lightness, both ways
   (OpenCV's DIS optical flow), after matching the previous frame's exposure
   to this one's;
2. carry the previous frame's *stabilized* ab along that motion, its chroma
   scaled with the change of light on the tracked content (a fade to black
   fades colors, and a fast fade lowers the trust in carried colors), but no
   further than to the chroma the model now predicts there;
3. trust the carried colors per pixel only where the motion is trustworthy:
   the backward and forward flows agree, and the previous frame's lightness,
   moved along the motion, matches this frame's. Occlusions, content entering
   the frame and the edges of moving objects fail these checks. Nor where the
   prediction moved away from them by several times the model's own
   frame-to-frame change: that is a change of the prediction (a fade lifting,
   the model changing its mind), which the colors follow at once;
4. blend::

       ab = carry * warp(previous ab) + (1 - carry) * predicted ab
       carry = strength * MAX_CARRY * confidence          (per pixel)

   When too little of the frame can be tracked (a scene cut, a flat or black
   frame) the frame restarts from its prediction, so no shot's colors leak
   into the next.

Along a tracked trajectory this is an exponential moving average of the
model's predictions, so it stays anchored to them (no drift) and remembers
about ``1 / (1 - carry)`` frames. It is causal: each frame depends only on
the frames before it, which is what lets a clip be processed in pieces.
:class:`TemporalState` carries the previous frame from one call to the next.
"""

from __future__ import annotations

import functools
import numbers

import numpy as np
import torch
from torch import Tensor

# The strength the video preset and the command line use (the benchmark,
# benchmarks/bench_temporal.py, shows why).
RECOMMENDED_STRENGTH = 0.9

# Share of the carried colors kept at strength 1 where tracking is fully
# trusted; below 1 so colors keep following the model (memory ~20 frames).
MAX_CARRY = 0.95

# Confidence checks. Each is a ramp: full trust up to the tolerance, none
# beyond twice the tolerance, linear in between (no hard seams).
# Forward-backward consistency: how far a pixel lands from where it started
# after following the backward flow and then the forward flow, in pixels of
# the flow's resolution (FLOW_SIZE): this much plus a share of the motion's
# length (the form of Sundaram et al., ECCV 2010). Tight: looser tolerances
# let the colors of a moving object smear over the background it uncovers.
FB_TOLERANCE_PX = 0.5
FB_TOLERANCE_RELATIVE = 0.05
# Lightness agreement: |L - warped previous L| after exposure matching, in L
# units (0-100), on lightness smoothed by LIGHTNESS_BLUR_SIGMA pixels so film
# grain alone does not fail the check.
LIGHTNESS_TOLERANCE = 4.0
LIGHTNESS_BLUR_SIGMA = 1.0
# Pixels this close to an untrusted one (pixels of the flow's resolution)
# are not trusted either: flow is smooth across object edges.
TRUST_MARGIN_PX = 2
# Fades and exposure changes: carried chroma is scaled by the change of
# L + 16 of the tracked content (in CIELAB both a, b and L + 16 scale as the
# cube root of the light), by at most MAX_FADE_GAIN either way, and no
# further than the prediction's mean chroma there (carried_gain), and carried
# colors are trusted less, by that ratio (or its inverse) to
# FADE_TRUST_POWER, so that colors follow a fast fade instead of lagging.
MAX_FADE_GAIN = 2.0
FADE_TRUST_POWER = 1.0
# A prediction that moved away from the carried colors by more than the
# model's own flicker is a change of the prediction, not flicker (the model
# sees a color once a fade lifts, or changes its mind about an object):
# carried colors are trusted fully up to CHANGE_TOLERANCE times the mean
# frame-to-frame change of the predictions along the motion (over trusted
# pixels), and not at all beyond twice that, so stabilized colors follow it
# instead of lagging it by their memory (tighter tolerances also cut the
# flicker of a trained model's heavy-tailed changes; benchmarks/RESULTS.md).
# The mean is the smaller of this frame's and the last frame's, so that a
# change of the whole frame does not hide itself.
# MIN_FLICKER (ab units) keeps a model that never flickers from being
# followed to the last decimal.
CHANGE_TOLERANCE = 3.0
MIN_FLICKER = 0.5
# The chroma-keeping blend gains a mix's chroma by at most this much.
MAX_CHROMA_GAIN = 2.0
# A frame restarts from its prediction when fewer than this share of its
# pixels are trusted (confidence >= 0.5): a scene cut.
CUT_MIN_TRACKED_SHARE = 0.3
# A frame whose lightness varies less than this (standard deviation, L units)
# has nothing to track (black or flat frame): it restarts too.
MIN_CONTRAST = 1.0
# Motion is estimated on lightness at this size at most (the working size
# when smaller); ab is smooth, and a coarser flow is steadier in flat areas.
FLOW_SIZE = 256
# DIS optical flow preset (OpenCV: 0 ultrafast, 1 fast, 2 medium).
DIS_PRESET = 2


class TemporalState:
    """What one clip carries from frame to frame: make one per clip, pass it to every call.

    ``ddcolor.colorize(model, chunk, temporal=s, state=state)`` reads it and,
    when the call returns, updates it in place with the last frame it
    colorized. A call that fails (out of memory, interrupted) leaves it as it
    was, so the same chunk can be sent again.
    """

    def __init__(self) -> None:
        self.frames = 0  # frames of the clip colorized so far
        self.cuts: list[int] = []  # indices of frames that restarted from their prediction (scene cuts)
        self._geometry: tuple[int, int, int] | None = None  # frame height, width, working size
        self._lightness: np.ndarray | None = None  # previous frame's L at the working size
        self._ab: np.ndarray | None = None  # its stabilized ab, (size, size, 2)
        self._predicted: np.ndarray | None = None  # its predicted ab, (size, size, 2)
        self._flicker: float | None = None  # the model's last measured frame-to-frame change (mean, ab units)

    def __repr__(self) -> str:
        return f"TemporalState(frames={self.frames}, cuts={self.cuts})"

    def _copy(self) -> TemporalState:
        copy = TemporalState()
        copy._assign(self)
        copy.cuts = list(self.cuts)
        return copy

    def _assign(self, other: TemporalState) -> None:
        self.frames, self.cuts = other.frames, other.cuts
        self._geometry, self._lightness, self._ab = other._geometry, other._lightness, other._ab
        self._predicted, self._flicker = other._predicted, other._flicker


def check_strength(temporal: float) -> float:
    """``temporal`` as a float in [0, 1], or an error that says what to pass."""
    if isinstance(temporal, bool) or not isinstance(temporal, numbers.Real) or not 0 <= temporal <= 1:
        raise ValueError(
            f"temporal must be a number from 0 (off) to 1 (strongest); got {temporal!r}. "
            f"{RECOMMENDED_STRENGTH} is recommended for video"
        )
    return float(temporal)


def working_copy(state: TemporalState | None, height: int, width: int, size: int) -> TemporalState:
    """A working copy of ``state`` (a fresh one for None) for frames of ``height x width`` at ``size``."""
    if state is None:
        state = TemporalState()
    elif not isinstance(state, TemporalState):
        raise TypeError(f"state must be a ddcolor.TemporalState (one per clip) or None; got {type(state).__name__}")
    geometry = (height, width, size)
    if state._geometry not in (None, geometry):
        h, w, s = state._geometry
        raise ValueError(
            f"state belongs to a clip of {w}x{h} frames colorized at size {s}, but these frames are "
            f"{width}x{height} at size {size}: make a new ddcolor.TemporalState() for each clip "
            "and keep size the same for all of a clip's frames"
        )
    try:
        import cv2  # noqa: F401  (fail before the model runs, not after)
    except ImportError as e:
        raise ImportError(
            "temporal stabilization needs OpenCV: pip install opencv-python-headless "
            "(with ComfyUI's Python for the node), or use temporal=0"
        ) from e
    working = state._copy()
    working._geometry = geometry
    return working


def stabilize(lightness: Tensor, ab: Tensor, state: TemporalState, strength: float) -> tuple[Tensor, TemporalState]:
    """Stabilize consecutive frames: L (B, 1, S, S) and predicted ab (B, 2, S, S) at the working size.

    Returns the stabilized ab (same shape, device and dtype) and the state after
    the last frame; ``state`` itself is not changed.
    """
    import cv2

    flow = cv2.DISOpticalFlow_create(DIS_PRESET)
    state = state._copy()
    frames_l = np.ascontiguousarray(lightness[:, 0].float().cpu().numpy())
    frames_ab = np.ascontiguousarray(ab.float().permute(0, 2, 3, 1).cpu().numpy())
    out = np.empty_like(frames_ab)
    for i in range(frames_l.shape[0]):
        current_l, predicted = frames_l[i], frames_ab[i]
        result = predicted
        if state._lightness is not None:
            tracked = track(flow, state._lightness, current_l)
            if tracked is None:
                state.cuts.append(state.frames)
            else:
                trust, map_x, map_y, fade = tracked
                # Chroma travels as its own channel: resampling averages
                # neighbouring ab vectors, which would gray out fine detail.
                previous = np.dstack((state._ab, _norm(state._ab), state._predicted))
                moved = cv2.remap(previous, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                moved *= carried_gain(trust, moved[..., 2], predicted, fade)
                carried, previous_predicted = moved[..., :3], moved[..., 3:]
                changes = _norm(predicted - previous_predicted)[trust >= 0.5]  # the model's own, where tracked
                # No well-tracked pixel this frame: the last measure stands (an empty mean would be NaN).
                flicker = float(changes.mean()) if changes.size else state._flicker
                known = [f for f in (flicker, state._flicker) if f is not None]
                typical = max(min(known, default=MIN_FLICKER), MIN_FLICKER)
                state._flicker = flicker
                agreement = _ramp(_norm(predicted - carried[..., :2]), CHANGE_TOLERANCE * typical)
                fade_trust = min(fade, 1 / fade) ** FADE_TRUST_POWER
                result = blend(carried, predicted, (strength * MAX_CARRY * fade_trust) * trust * agreement)
        out[i] = result
        state._lightness, state._ab, state._predicted = current_l, result, predicted
        state.frames += 1
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(ab.device, ab.dtype), state


def carried_gain(trust: np.ndarray, carried_chroma: np.ndarray, predicted: np.ndarray, fade: float) -> float:
    """The factor on carried colors: the change of light ``fade``, but only as far as it brings their
    chroma toward the prediction's on the tracked content (weighted by ``trust``), never past it.

    Colors that follow the light are what the true colors do, not what every
    model does: a trained model may predict near-gray while a frame is dark
    and its colors only once it is bright, and carried colors scaled with the
    light alone would then end more colorful than any prediction. Scaling by
    the prediction's own change of chroma instead would pass its flicker of
    saturation straight through, so the light still sets how far they may go.
    """
    level = float((trust * _norm(predicted)).sum() / max(float((trust * carried_chroma).sum()), 1e-6))
    return float(np.clip(level, min(fade, 1.0), max(fade, 1.0)))


def blend(carried: np.ndarray, predicted: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Mix carried (S, S, 3: a, b, chroma) and predicted ab (S, S, 2) by ``weight`` (S, S).

    The hue is that of the mixed ab; the chroma is the mix of the two chromas,
    as a plain average of two hues is grayer than either (red and green
    average to gray) and flickering hues would fade. The gain this needs is
    capped at MAX_CHROMA_GAIN: near-opposite hues have no meaningful mean hue.
    """
    w = weight[..., None]
    mixed = w * carried[..., :2] + (1 - w) * predicted
    chroma = weight * carried[..., 2] + (1 - weight) * _norm(predicted)
    gain = np.minimum(chroma / np.maximum(_norm(mixed), 1e-6), MAX_CHROMA_GAIN)
    return mixed * gain[..., None]


def track(flow, previous_l: np.ndarray, current_l: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float] | None:
    """Per-pixel trust (0..1) in the motion from the previous frame, where each pixel came from, and the fade.

    Takes L (S, S) of both frames; returns ``(trust, map_x, map_y, fade)``,
    the first three (S, S) float32, ``fade`` how much brighter the tracked
    content got (ratio of L + 16, within MAX_FADE_GAIN), or None when the
    frame cannot be tracked from the previous one (scene cut, flat frame).
    Motion is estimated at FLOW_SIZE at most.
    """
    import cv2

    size = current_l.shape[0]
    if size > FLOW_SIZE:
        previous_l, current_l = (cv2.resize(x, (FLOW_SIZE, FLOW_SIZE), interpolation=cv2.INTER_AREA) for x in (previous_l, current_l))
    tracked = _track_at_flow_size(flow, previous_l, current_l)
    if tracked is None:
        return None
    trust, backward, fade = tracked
    if size > FLOW_SIZE:
        trust = cv2.resize(trust, (size, size), interpolation=cv2.INTER_LINEAR)
        backward = cv2.resize(backward, (size, size), interpolation=cv2.INTER_LINEAR) * (size / FLOW_SIZE)
    grid_x, grid_y = _grid(size, size)
    return trust, grid_x + backward[..., 0], grid_y + backward[..., 1], fade


def _track_at_flow_size(flow, previous_l: np.ndarray, current_l: np.ndarray) -> tuple[np.ndarray, np.ndarray, float] | None:
    """Trust, backward flow (current pixel -> where it was) at the size of the inputs, and the fade."""
    import cv2

    current_std, previous_std = float(current_l.std()), float(previous_l.std())
    if current_std < MIN_CONTRAST or previous_std < MIN_CONTRAST:
        return None
    # Exposure matching: the previous frame with this frame's mean and contrast.
    matched = (previous_l - float(previous_l.mean())) * (current_std / previous_std) + float(current_l.mean())
    current_8, matched_8 = _to_8bit(current_l), _to_8bit(matched)
    backward = flow.calc(current_8, matched_8, None)  # current pixel -> where it was
    forward = flow.calc(matched_8, current_8, None)  # previous pixel -> where it went

    height, width = current_l.shape
    grid_x, grid_y = _grid(height, width)
    map_x, map_y = grid_x + backward[..., 0], grid_y + backward[..., 1]
    inside = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)

    there = cv2.remap(forward, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    round_trip = _norm(backward + there)
    fb_trust = _ramp(round_trip, FB_TOLERANCE_PX + FB_TOLERANCE_RELATIVE * _norm(backward))

    smooth_current = cv2.GaussianBlur(current_l, (0, 0), LIGHTNESS_BLUR_SIGMA)
    smooth_matched = cv2.GaussianBlur(matched, (0, 0), LIGHTNESS_BLUR_SIGMA)
    warped = cv2.remap(smooth_matched, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    lightness_trust = _ramp(cv2.absdiff(smooth_current, warped), LIGHTNESS_TOLERANCE)

    trust = fb_trust * lightness_trust * inside
    if np.count_nonzero(trust >= 0.5) < CUT_MIN_TRACKED_SHARE * trust.size:
        return None
    # The fade compares the same content in both frames (the previous frame
    # moved along the motion, its exposure matching undone), so moving onto
    # brighter content is not taken for a change of light.
    warped_previous = (warped - float(current_l.mean())) * (previous_std / current_std) + float(previous_l.mean())
    fade = float((trust * (smooth_current + 16)).sum() / (trust * (warped_previous + 16)).sum())
    # The rim of every untrusted region: next to an occlusion the flow is
    # wrong but may pass both checks.
    return cv2.erode(trust, _disk(TRUST_MARGIN_PX)), backward, float(np.clip(fade, 1 / MAX_FADE_GAIN, MAX_FADE_GAIN))


@functools.lru_cache(maxsize=4)
def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.float32)
    return grid_x, grid_y


@functools.lru_cache(maxsize=4)
def _disk(radius: int) -> np.ndarray:
    import cv2

    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _norm(vectors: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.magnitude(np.ascontiguousarray(vectors[..., 0]), np.ascontiguousarray(vectors[..., 1]))


def _ramp(error: np.ndarray, tolerance) -> np.ndarray:
    """1 up to ``tolerance``, 0 from twice it, linear between."""
    return np.clip(2.0 - error / tolerance, 0.0, 1.0, dtype=np.float32)


def _to_8bit(lightness: np.ndarray) -> np.ndarray:
    return np.clip(lightness * 2.55 + 0.5, 0, 255).astype(np.uint8)

"""Procedural textures and defects for the embedded dataset (pure numpy, one ``Generator`` each).

Every function draws only from the ``numpy.random.Generator`` it is given, so a sample is a pure
function of its seed. Images are float ``[S, S, 3]`` in [0, 1]; coordinates are (x, y) =
(column, row) with pixel centres at integers. Sizes scale with ``S / 64`` so that 32, 64, 128 and
256 px datasets look alike.

Surfaces: brushed metal (streaks along one axis), woven fabric (over/under threads), wood (warped
growth rings and grain), cast/concrete (fractal noise). Defects (class id, what changes where the
mask is set, and nowhere else):

1. scratch: a thin long quadratic curve, a bright (light-catching) or dark line;
2. pit / blowhole: a small round dark cavity with a highlight rim on the side facing the light;
3. crack: a jagged random walk with branches, dark and thin;
4. stain: a soft irregular blob (ellipse envelope + fractal noise), blended towards a colour
   that contrasts with the surface; the blend is at least 0.35 at its edge so it stays visible.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SURFACES", "fractal_noise", "render_surface", "lighting", "draw_defect"]

SURFACES = ("metal", "fabric", "wood", "cast")


# --------------------------------------------------------------------------------------------
# noise
# --------------------------------------------------------------------------------------------


def _value_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise ``[S, S]`` in [0, 1]: a random ``cells x cells`` grid, smoothstep-interpolated."""
    grid = rng.random((cells + 1, cells + 1))
    t = (np.arange(size) + 0.5) * cells / size
    i = np.minimum(t.astype(int), cells - 1)
    f = t - i
    f = f * f * (3 - 2 * f)
    rows = grid[i] * (1 - f)[:, None] + grid[i + 1] * f[:, None]  # [S, cells+1]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def fractal_noise(rng: np.random.Generator, size: int, base_cells: int = 4, octaves: int = 4) -> np.ndarray:
    """Sum of value-noise octaves (cells doubling, amplitude halving), rescaled to [0, 1]."""
    out = np.zeros((size, size))
    amp, cells = 1.0, base_cells
    for _ in range(octaves):
        out += amp * _value_noise(rng, size, min(cells, size))
        amp, cells = amp / 2, cells * 2
    lo, hi = out.min(), out.max()
    return (out - lo) / (hi - lo + 1e-12)


def _streaks(rng: np.random.Generator, size: int, length: int) -> np.ndarray:
    """Zero-mean unit-std noise ``[S, S]`` blurred along x by a box of ``length`` (wraps around)."""
    n = rng.normal(size=(size, size))
    length = max(1, min(length, size))
    c = np.cumsum(np.concatenate([n, n[:, :length]], axis=1), axis=1)
    out = c[:, length:] - c[:, :-length]
    return (out - out.mean()) / (out.std() + 1e-12)


# --------------------------------------------------------------------------------------------
# surfaces
# --------------------------------------------------------------------------------------------


def _metal(rng: np.random.Generator, size: int) -> np.ndarray:
    level = rng.uniform(0.48, 0.7)
    tint = np.array([0.97, 1.0, 1.03]) * rng.uniform(0.97, 1.03, 3)
    v = (level + 0.045 * _streaks(rng, size, size // 3) + 0.03 * _streaks(rng, size, max(2, size // 16))
         + 0.08 * (fractal_noise(rng, size, 2, 3) - 0.5))
    if rng.random() < 0.5:
        v = v.T
    return v[..., None] * tint


_FABRIC_COLORS = np.array([[0.22, 0.32, 0.52], [0.7, 0.62, 0.45], [0.42, 0.48, 0.38],
                           [0.55, 0.2, 0.2], [0.6, 0.6, 0.62]])


def _fabric(rng: np.random.Generator, size: int) -> np.ndarray:
    period = max(3.0, size / rng.uniform(9, 14))
    phase = rng.uniform(0, period, 2)
    u = (np.arange(size) + phase[0]) / period
    v = (np.arange(size) + phase[1]) / period
    iu, iv = np.floor(u).astype(int), np.floor(v).astype(int)  # thread index of each column/row
    warp_on_top = ((iu[None, :] + iv[:, None]) % 2) == 0         # plain weave: over/under
    thread_u = np.broadcast_to(np.sin(np.pi * (u % 1.0))[None, :], (size, size))
    thread_v = np.broadcast_to(np.sin(np.pi * (v % 1.0))[:, None], (size, size))
    shade = np.where(warp_on_top, thread_u, thread_v) ** 0.7
    warp_gain = rng.uniform(0.9, 1.1, iu[-1] + 1)[iu][None, :]   # each thread its own brightness
    weft_gain = rng.uniform(0.9, 1.1, iv[-1] + 1)[iv][:, None]
    per_thread = np.where(warp_on_top, warp_gain, weft_gain)
    color = _FABRIC_COLORS[rng.integers(len(_FABRIC_COLORS))] * rng.uniform(0.9, 1.1)
    value = (0.55 + 0.45 * shade) * per_thread * (0.9 + 0.2 * fractal_noise(rng, size, 3, 3))
    return value[..., None] * color


def _wood(rng: np.random.Generator, size: int) -> np.ndarray:
    y = np.arange(size)[:, None] / size
    warp = fractal_noise(rng, size, 2, 3)
    period = rng.uniform(0.09, 0.16)
    rings = np.sin(2 * np.pi * (y + 0.35 * warp) / period + rng.uniform(0, 2 * np.pi))
    rings = 0.5 + 0.5 * np.sign(rings) * np.abs(rings) ** 0.5
    grain = _streaks(rng, size, size // 2)
    light = np.array([0.78, 0.58, 0.36]) * rng.uniform(0.9, 1.08)
    dark = np.array([0.5, 0.32, 0.17]) * rng.uniform(0.85, 1.05)
    t = np.clip(0.75 * rings + 0.06 * grain, 0, 1)[..., None]
    img = dark + (light - dark) * t
    if rng.random() < 0.5:
        img = img.transpose(1, 0, 2)
    return img


def _cast(rng: np.random.Generator, size: int) -> np.ndarray:
    base = np.array([0.58, 0.57, 0.54]) * rng.uniform(0.85, 1.1)
    v = 0.85 + 0.25 * (fractal_noise(rng, size, 3, 5) - 0.5) + 0.04 * rng.normal(size=(size, size))
    return v[..., None] * base


def render_surface(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
    """A defect-free surface of ``kind`` (one of :data:`SURFACES`): float ``[S, S, 3]`` in [0, 1]."""
    img = {"metal": _metal, "fabric": _fabric, "wood": _wood, "cast": _cast}[kind](rng, size)
    return np.clip(img, 0.0, 1.0)


def lighting(rng: np.random.Generator, size: int, light_dir: np.ndarray) -> np.ndarray:
    """Multiplicative illumination ``[S, S, 1]``: a linear gradient along ``light_dir`` and a soft
    hotspot on the lit side."""
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    along = xx * light_dir[0] + yy * light_dir[1]
    spot = np.array([0.5, 0.5]) + 0.3 * light_dir + rng.normal(0, 0.1, 2)
    r2 = (xx + 0.5 - spot[0]) ** 2 + (yy + 0.5 - spot[1]) ** 2
    field = 0.92 + rng.uniform(0.15, 0.35) * along + rng.uniform(0.05, 0.15) * np.exp(-r2 / 0.08)
    return field[..., None]


# --------------------------------------------------------------------------------------------
# defects: each returns the boolean mask of the pixels it changed
# --------------------------------------------------------------------------------------------


def _polyline_distance(points: np.ndarray, size: int, reach: float) -> np.ndarray:
    """Distance ``[S, S]`` of each pixel centre to a polyline ``[N, 2]`` (x, y); only pixels
    within ``reach`` of a segment are exact, the rest stay at ``inf``."""
    dist = np.full((size, size), np.inf)
    for a, b in zip(points[:-1], points[1:]):
        lo = np.maximum(0, np.floor(np.minimum(a, b) - reach)).astype(int)
        hi = np.minimum(size, np.ceil(np.maximum(a, b) + reach) + 1).astype(int)
        (x0, y0), (x1, y1) = lo, hi
        if x0 >= x1 or y0 >= y1:
            continue
        py, px = np.mgrid[y0:y1, x0:x1].astype(float)
        d = b - a
        t = np.clip(((px - a[0]) * d[0] + (py - a[1]) * d[1]) / max(d @ d, 1e-12), 0, 1)
        seg = np.hypot(px - a[0] - t * d[0], py - a[1] - t * d[1])
        dist[y0:y1, x0:x1] = np.minimum(dist[y0:y1, x0:x1], seg)
    return dist


def _scratch(rng: np.random.Generator, img: np.ndarray, scale: float,
             light_dir: np.ndarray) -> np.ndarray:
    size = img.shape[0]
    p0 = rng.uniform(0.1, 0.9, 2) * size
    length = rng.uniform(0.45, 0.9) * size
    angle = rng.uniform(0, np.pi)
    direction = np.array([np.cos(angle), np.sin(angle)])
    p2 = p0 + length * direction
    ctrl = (p0 + p2) / 2 + rng.uniform(-0.2, 0.2) * length * np.array([-direction[1], direction[0]])
    t = np.linspace(0, 1, 48)[:, None]
    points = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * ctrl + t ** 2 * p2
    half_width = max(0.5, rng.uniform(0.5, 0.8) * scale)
    dist = _polyline_distance(points, size, half_width + 1)
    mask = dist <= half_width
    target = 1.0 if rng.random() < 0.7 else 0.12
    alpha = rng.uniform(0.55, 0.8) * (0.8 + 0.2 * np.clip(1 - dist / half_width, 0, 1))
    img[mask] += (target - img[mask]) * alpha[mask, None]
    return mask


def _pit(rng: np.random.Generator, img: np.ndarray, scale: float,
         light_dir: np.ndarray) -> np.ndarray:
    size = img.shape[0]
    center = rng.uniform(0.1, 0.9, 2) * size
    radius = max(1.3, rng.uniform(1.4, 3.2) * scale)
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    dx, dy = xx - center[0], yy - center[1]
    theta = np.arctan2(dy, dx)
    r_theta = radius * (1 + 0.15 * np.sin(rng.integers(2, 5) * theta + rng.uniform(0, 2 * np.pi)))
    rel = np.hypot(dx, dy) / r_theta
    mask = rel <= 1.0
    # the rim facing the light catches a highlight; the cavity floor is in shadow
    facing = np.clip((dx * light_dir[0] + dy * light_dir[1]) / (np.hypot(dx, dy) + 1e-9), 0, 1)
    depth = rng.uniform(0.12, 0.28)
    value = np.where(rel > 0.55, depth + (0.97 - depth) * facing ** 1.5, depth * (0.6 + 0.4 * rel))
    img[mask] = img[mask] * 0.25 + value[mask, None] * 0.75
    return mask


def _crack(rng: np.random.Generator, img: np.ndarray, scale: float,
           light_dir: np.ndarray) -> np.ndarray:
    size = img.shape[0]
    step = max(0.6, 0.9 * scale)
    paths, branches = [], []
    start = rng.uniform(0.15, 0.85, 2) * size
    heading = rng.uniform(0, 2 * np.pi)
    n_steps = int(rng.uniform(0.4, 0.8) * size / step)
    queue = [(start, heading, n_steps)]
    while queue:
        pos, head, n = queue.pop(0)
        points, base = [pos.copy()], head
        for _ in range(n):
            head += rng.normal(0, 0.5) + 0.35 * (base - head)
            pos = pos + step * np.array([np.cos(head), np.sin(head)])
            points.append(pos.copy())
            if len(branches) < 3 and rng.random() < 0.05 and n > 6:
                side = rng.choice([-1.0, 1.0])
                branches.append(1)
                turn, length = side * rng.uniform(0.5, 1.1), int(n * rng.uniform(0.2, 0.45))
                queue.append((pos.copy(), head + turn, length))
        paths.append(np.array(points))
    half_width = max(0.5, 0.6 * scale)
    dist = np.minimum.reduce([_polyline_distance(p, size, half_width + 1) for p in paths])
    mask = dist <= half_width
    img[mask] *= rng.uniform(0.15, 0.35)
    return mask


_STAIN_COLORS = np.array([[0.55, 0.26, 0.08], [0.16, 0.14, 0.11], [0.32, 0.42, 0.2],
                          [0.85, 0.82, 0.7], [0.62, 0.45, 0.12]])


def _stain(rng: np.random.Generator, img: np.ndarray, scale: float,
           light_dir: np.ndarray) -> np.ndarray:
    size = img.shape[0]
    center = rng.uniform(0.15, 0.85, 2) * size
    a, b = rng.uniform(0.1, 0.24, 2) * size
    rot = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    u = (xx - center[0]) * np.cos(rot) + (yy - center[1]) * np.sin(rot)
    v = -(xx - center[0]) * np.sin(rot) + (yy - center[1]) * np.cos(rot)
    field = 1 - (u / a) ** 2 - (v / b) ** 2 + 1.1 * (fractal_noise(rng, size, 4, 4) - 0.5)
    mask = field > 0.2
    # a colour that contrasts with the surface: rust, oil, mould, deposit, ochre, or a darker
    # (wet) version of the surface itself
    mean = img.reshape(-1, 3).mean(axis=0)
    candidates = np.concatenate([_STAIN_COLORS, (mean * 0.4)[None]], axis=0)
    far = np.linalg.norm(candidates - mean, axis=1)
    choice = np.flatnonzero(far >= 0.3)
    color = candidates[rng.choice(choice) if len(choice) else int(np.argmax(far))]
    # mottled blend, stronger inside, and a dried "coffee ring" at the edge half of the time
    inner = np.clip((field - 0.2) / 0.7, 0, 1)
    mottle = 0.8 + 0.4 * fractal_noise(rng, size, 8, 2)
    ring = rng.uniform(0.1, 0.3) * np.exp(-(((field - 0.2) / 0.12) ** 2)) if rng.random() < 0.5 else 0.0
    alpha = np.clip((0.45 + 0.35 * inner) * mottle + ring, 0.4, 0.9)
    img[mask] += (color - img[mask]) * alpha[mask, None]
    return mask


_DRAW = {1: _scratch, 2: _pit, 3: _crack, 4: _stain}


def draw_defect(rng: np.random.Generator, img: np.ndarray, class_id: int,
                light_dir: np.ndarray) -> np.ndarray:
    """Draw defect ``class_id`` (1 scratch, 2 pit, 3 crack, 4 stain) into ``img`` in place and
    return the boolean ``[S, S]`` mask of exactly the pixels it changed."""
    return _DRAW[class_id](rng, img, img.shape[0] / 64.0, light_dir)

"""``prepare_digit``'s arithmetic compiled with numba: one call from a grayscale image to the
28x28 frame, instead of about a hundred small NumPy, SciPy and Pillow calls.

Why: the server prepares every upload, and on a 112-pixel digit those calls are nearly all
overhead (arrays of a few thousand pixels): about 1 ms of Python per request on the 2-core
machine, three quarters of what the server spent on an answer, where these loops take a
third of that, and without holding the GIL (``nogil``), so that a server's two preparing
threads and its event loop run side by side. The steps, their order and their rounding are ``preprocess``'s, which stays
the readable reference (and the path where numba cannot be installed): Pillow's resampling
coefficient for coefficient (double weights and sums, float32 between the passes), SciPy's
filters (a running mean in double for the 3x3 mean), float32 where NumPy computes in
float32 (NEP 50: a Python float beside a float32 array is a float32), NumPy's pairwise sums
for the centre of mass, and Python's round() (half to even). serve/web/prepare.js is the
same port for the browser. tests/test_preprocess.py holds this against the reference.

Compiled once per machine, in the background of a server's first start (serve.preparation:
a short-lived process of its own runs preprocess.use_compiled_preparation, about 20 s of a
core; the server prepares with NumPy meanwhile); ``cache=True`` keeps the machine code beside
this file (or in the user's cache folder where that is read-only, or NUMBA_CACHE_DIR), and the
server, and every later start, load it in under a second.
"""

from __future__ import annotations

import math

import numba
import numpy as np

# The same constants as preprocess (kept there; imported here as plain values for numba).
from mnist_cnn.predict.preprocess import (
    BACKGROUND_SIDE,
    BLANK_INK,
    DIGIT_BOX,
    EDGE_STROKE_CONTRAST,
    FRAME,
    INK_THRESHOLD,
    RULED_LINE_THICKNESS,
    SPECKLE_SIDE,
)

BILINEAR, LANCZOS = 0, 1
POLARITY_CODES = {"auto": 0, "light-on-dark": 1, "dark-on-light": 2}
PREPARED, BLANK, UNFITTED = 0, 1, 2  # What prepare() found.

jit = numba.njit(cache=True, nogil=True)


@jit
def round_half_even(value: float) -> int:
    """Python's round(): halves go to the even neighbour."""
    floor = math.floor(value)
    difference = value - floor
    if difference > 0.5:
        return int(floor) + 1
    if difference < 0.5:
        return int(floor)
    return int(floor) if floor % 2 == 0 else int(floor) + 1


@jit
def fit(height: int, width: int, side: int) -> tuple[int, int]:
    """preprocess._fit: (height, width) scaled so the longer side is at most ``side``."""
    scale = min(1.0, side / max(height, width))
    return max(1, round_half_even(height * scale)), max(1, round_half_even(width * scale))


@jit
def filter_weight(x: float, kind: int) -> float:
    if kind == BILINEAR:
        x = abs(x)
        return 1.0 - x if x < 1.0 else 0.0
    if -3.0 <= x < 3.0:  # Lanczos, a = 3: sinc(x) sinc(x / 3).
        return sinc(x) * sinc(x / 3.0)
    return 0.0


@jit
def sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x *= math.pi
    return math.sin(x) / x


@jit
def coefficients(in_size: int, in0: float, in1: float, out_size: int, kind: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's precompute_coeffs: each output pixel's first input pixel, and its weights
    (a row per output pixel, zero beyond its support)."""
    scale = (in1 - in0) / out_size
    filter_scale = max(scale, 1.0)
    support = (1.0 if kind == BILINEAR else 3.0) * filter_scale
    size = int(math.ceil(support)) * 2 + 1
    firsts = np.zeros(out_size, dtype=np.int64)
    weights = np.zeros((out_size, size), dtype=np.float64)
    inverse = 1.0 / filter_scale
    for out in range(out_size):
        centre = in0 + (out + 0.5) * scale
        first = max(int(centre - support + 0.5), 0)  # C's (int): towards zero.
        last = min(int(centre + support + 0.5), in_size)
        total = 0.0
        for x in range(last - first):
            weight = filter_weight((x + first - centre + 0.5) * inverse, kind)
            weights[out, x] = weight
            total += weight
        if total != 0.0:
            for x in range(last - first):
                weights[out, x] /= total
        firsts[out] = first
    return firsts, weights


@jit
def resize(pixels: np.ndarray, out_height: int, out_width: int, kind: int, box: tuple) -> np.ndarray:
    """Pillow's Image.resize of a float32 ("F") image, ``box`` = (left, top, right, bottom):
    the horizontal pass over the rows the vertical one needs, then the vertical pass."""
    height, width = pixels.shape
    left, top, right, bottom = box
    if out_height == height and out_width == width and left == 0 and top == 0 and right == width and bottom == height:
        return pixels.copy()
    column_firsts, column_weights = coefficients(width, left, right, out_width, kind)
    row_firsts, row_weights = coefficients(height, top, bottom, out_height, kind)
    column_lengths = support_lengths(column_weights)
    row_lengths = support_lengths(row_weights)
    need_horizontal = out_width != width or left != 0 or right != out_width
    need_vertical = out_height != height or top != 0 or bottom != out_height
    source, row_offset = pixels, 0
    if need_horizontal:
        first_row = row_firsts[0]
        last_row = row_firsts[out_height - 1] + row_lengths[out_height - 1]
        if not need_vertical:
            first_row, last_row = 0, height
        passed = np.empty((last_row - first_row, out_width), dtype=np.float32)
        for y in range(last_row - first_row):
            for x in range(out_width):
                first = column_firsts[x]
                total = 0.0
                for k in range(column_lengths[x]):
                    total += pixels[y + first_row, first + k] * column_weights[x, k]
                passed[y, x] = total
        source, row_offset = passed, first_row
    if not need_vertical:
        return source
    columns = source.shape[1]
    result = np.empty((out_height, columns), dtype=np.float32)
    totals = np.empty(columns, dtype=np.float64)
    for y in range(out_height):
        # Row by row into a line of double sums: each pixel's sum in Pillow's order (k up),
        # the inner loop along contiguous memory.
        first = row_firsts[y] - row_offset
        totals[:] = 0.0
        for k in range(row_lengths[y]):
            weight = row_weights[y, k]
            for x in range(columns):
                totals[x] += source[first + k, x] * weight
        for x in range(columns):
            result[y, x] = totals[x]
    return result


@jit
def support_lengths(weights: np.ndarray) -> np.ndarray:
    """How many input pixels each output pixel reads (its weights up to the last nonzero one).
    A weight inside the support can be exactly zero only at its edge, where reading the
    pixel or not gives the same sum."""
    lengths = np.empty(weights.shape[0], dtype=np.int64)
    for out in range(weights.shape[0]):
        length = weights.shape[1]
        while length > 0 and weights[out, length - 1] == 0.0:
            length -= 1
        lengths[out] = length
    return lengths


@jit
def shrunk(gray: np.ndarray, side: int) -> np.ndarray:
    """preprocess._shrunk: a bilinear copy whose longer side is at most ``side``."""
    height, width = gray.shape
    out_height, out_width = fit(height, width, side)
    return resize(gray, out_height, out_width, BILINEAR, (0.0, 0.0, float(width), float(height)))


@jit
def quantile(values: np.ndarray, fraction: float) -> float:
    """np.quantile (linear interpolation) of a small array (a border: about a hundred values)."""
    ordered = sorted_copy(values)
    position = fraction * (len(ordered) - 1)
    below = int(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


@jit
def median(values: np.ndarray) -> float:
    ordered = sorted_copy(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[middle])
    return (float(ordered[middle - 1]) + float(ordered[middle])) / 2.0


@jit
def sorted_copy(values: np.ndarray) -> np.ndarray:
    """An insertion sort: for a hundred values as fast as np.sort, and it compiles in a
    tenth of the time (numba's np.sort alone took 3 s)."""
    ordered = values.copy()
    for i in range(1, ordered.size):
        value = ordered[i]
        j = i - 1
        while j >= 0 and ordered[j] > value:
            ordered[j + 1] = ordered[j]
            j -= 1
        ordered[j + 1] = value
    return ordered


@jit
def paper_surface(small: np.ndarray, design: np.ndarray, ring: np.ndarray) -> tuple[np.ndarray, float, bool]:
    """preprocess.paper_surface: the quadratic surface fitted to the border (a trimmed fit,
    four times over), the border's spread about it, and False where the normal equations
    are singular (the caller then takes the reference path, which falls back to lstsq).
    ``design`` and ``ring`` are preprocess._surface_design's, for this size."""
    height, width = small.shape
    terms = design.shape[2]
    count = 0
    for y in range(height):
        for x in range(width):
            if ring[y, x]:
                count += 1
    samples = np.empty((count, terms), dtype=np.float64)
    values = np.empty(count, dtype=np.float64)
    index = 0
    for y in range(height):
        for x in range(width):
            if ring[y, x]:
                samples[index] = design[y, x]
                values[index] = small[y, x]
                index += 1
    keep = np.ones(count, dtype=np.bool_)
    residuals = np.empty(count, dtype=np.float64)
    coefficients = np.zeros(terms, dtype=np.float64)
    for _ in range(4):
        # The normal equations of the kept samples, as preprocess solves them (the caller
        # sends only images whose border pins all six terms: at least 8 pixels a side).
        normal = np.zeros((terms, terms), dtype=np.float64)
        right = np.zeros(terms, dtype=np.float64)
        for i in range(count):
            if keep[i]:
                for j in range(terms):
                    right[j] += samples[i, j] * values[i]
                    for k in range(terms):
                        normal[j, k] += samples[i, j] * samples[i, k]
        if not solve(normal, right):
            return np.zeros((height, width), dtype=np.float32), 0.0, False
        coefficients = right
        for i in range(count):
            total = 0.0
            for j in range(terms):
                total += samples[i, j] * coefficients[j]
            residuals[i] = abs(values[i] - total)
        limit = quantile(residuals, 0.7)
        for i in range(count):
            keep[i] = residuals[i] <= limit
    spread = 1.4826 * median(residuals)
    surface = np.empty((height, width), dtype=np.float32)
    for y in range(height):
        for x in range(width):
            total = 0.0
            for term in range(terms):
                total += design[y, x, term] * coefficients[term]
            surface[y, x] = total
    return surface, spread, True


@jit
def solve(matrix: np.ndarray, right: np.ndarray) -> bool:
    """matrix x = right for x, in place into ``right``, by LU with partial pivoting (LAPACK's
    gesv, what preprocess calls); False where the matrix is singular."""
    size = matrix.shape[0]
    for column in range(size):
        pivot = column
        for row in range(column + 1, size):
            if abs(matrix[row, column]) > abs(matrix[pivot, column]):
                pivot = row
        if matrix[pivot, column] == 0.0:
            return False
        if pivot != column:
            for k in range(size):
                matrix[column, k], matrix[pivot, k] = matrix[pivot, k], matrix[column, k]
            right[column], right[pivot] = right[pivot], right[column]
        for row in range(column + 1, size):
            factor = matrix[row, column] / matrix[column, column]
            for k in range(column, size):
                matrix[row, k] -= factor * matrix[column, k]
            right[row] -= factor * right[column]
    for row in range(size - 1, -1, -1):
        total = right[row]
        for k in range(row + 1, size):
            total -= matrix[row, k] * right[k]
        right[row] = total / matrix[row, row]
    return True


@jit
def dark_on_light(small: np.ndarray, design: np.ndarray, ring: np.ndarray) -> tuple[bool, bool]:
    """preprocess.dark_on_light: whether the strongest departures from the paper are darker;
    and False beside it where the surface could not be fitted (paper_surface)."""
    paper, spread, fitted = paper_surface(small, design, ring)
    if not fitted:
        return False, False
    margin = np.float32(3.0 * spread + 2.0 / 255.0)
    darker = 0.0
    lighter = 0.0
    height, width = small.shape
    for y in range(height):
        for x in range(width):
            departure = np.float32(small[y, x] - paper[y, x])
            below = np.float32(-departure - margin)
            above = np.float32(departure - margin)
            if below > 0:
                darker += np.float32(below * below)
            if above > 0:
                lighter += np.float32(above * above)
    darker, lighter = np.float32(darker), np.float32(lighter)
    if darker == lighter:
        border = np.concatenate((small[0], small[height - 1], small[:, 0], small[:, width - 1]))
        return median(border) > 0.5, True
    return darker > lighter, True


@jit
def extend_rows(image: np.ndarray, by: int, depth: int) -> np.ndarray:
    """preprocess._extend_axis: ``by`` rows above and below, each the edge's background."""
    height, width = image.shape
    depth = min(depth, height)
    result = np.empty((height + 2 * by, width), dtype=np.float32)
    contrast = np.float32(EDGE_STROKE_CONTRAST)
    for x in range(width):
        for edge_row, step, first_out, out_step in ((0, 1, by - 1, -1), (height - 1, -1, by + height, 1)):
            edge = image[edge_row, x]
            darkest = edge
            for d in range(1, depth):
                darkest = min(darkest, image[edge_row + d * step, x])
            value = darkest if np.float32(edge - darkest) > contrast else edge
            for k in range(by):
                result[first_out + k * out_step, x] = value
        for y in range(height):
            result[y + by, x] = image[y, x]
    return result


@jit
def extend_background(small: np.ndarray, by: int) -> np.ndarray:
    """preprocess.extend_background: rows first, then columns of the taller array."""
    depth = max(1, by // 2)
    rows = extend_rows(small, by, depth)
    return np.ascontiguousarray(extend_rows(np.ascontiguousarray(rows.T), by, depth).T)


@jit
def extreme_filter(image: np.ndarray, before: int, after: int, take_maximum: bool) -> np.ndarray:
    """SciPy's minimum (or maximum) filter over [i - before, i + after], axis 0 then axis 1.
    Clamping the window at the edges gives what SciPy's "reflect" mode gives here: the
    mirrored pixels lie inside the window anyway (``before`` and ``after`` differ by one at most)."""
    down = extreme_down(image, before, after, take_maximum)
    return np.ascontiguousarray(extreme_down(np.ascontiguousarray(down.T), before, after, take_maximum).T)


@jit
def extreme_down(image: np.ndarray, before: int, after: int, take_maximum: bool) -> np.ndarray:
    """The minimum (or maximum) over rows [y - before, y + after] of each pixel: whole rows at
    a time (the order of a minimum's comparisons does not change it)."""
    height, width = image.shape
    result = np.empty_like(image)
    for y in range(height):
        line = result[y]
        line[:] = image[y]
        for k in range(max(0, y - before), min(height - 1, y + after) + 1):
            other = image[k]
            if take_maximum:
                for x in range(width):
                    line[x] = max(line[x], other[x])
            else:
                for x in range(width):
                    line[x] = min(line[x], other[x])
    return result


@jit
def extend_linearly(image: np.ndarray, by: int) -> np.ndarray:
    """preprocess.extend_linearly: each edge continued in a straight line (float32), rows first."""
    height, width = image.shape
    rows = np.empty((height + 2 * by, width), dtype=np.float32)
    rows[by : by + height] = image
    for k in range(1, by + 1):
        for x in range(width):
            rows[by - k, x] = np.float32(2 * image[0, x] - image[k, x])
            rows[by + height - 1 + k, x] = np.float32(2 * image[height - 1, x] - image[height - 1 - k, x])
    result = np.empty((height + 2 * by, width + 2 * by), dtype=np.float32)
    result[:, by : by + width] = rows
    for k in range(1, by + 1):
        for y in range(height + 2 * by):
            result[y, by - k] = np.float32(2 * rows[y, 0] - rows[y, k])
            result[y, by + width - 1 + k] = np.float32(2 * rows[y, width - 1] - rows[y, width - 1 - k])
    return result


@jit
def mean_filter_lines(image: np.ndarray) -> np.ndarray:
    """SciPy's uniform_filter1d(size=3) along axis 1 ("reflect": the edge pixel repeated by
    one): its running mean in double, stored as float32."""
    height, width = image.shape
    result = np.empty_like(image)
    for y in range(height):
        line = image[y]
        total = np.float64(line[0]) + np.float64(line[0]) + np.float64(line[min(1, width - 1)])
        total /= 3.0
        result[y, 0] = total
        for i in range(1, width):
            total += (np.float64(line[min(i + 1, width - 1)]) - np.float64(line[max(i - 2, 0)])) / 3.0
            result[y, i] = total
    return result


@jit
def box_blur(image: np.ndarray) -> np.ndarray:
    """preprocess.box_blur: the 3x3 mean, axis 0 then axis 1."""
    down = np.ascontiguousarray(mean_filter_lines(np.ascontiguousarray(image.T)).T)
    return mean_filter_lines(down)


@jit
def local_background(height: int, width: int, small: np.ndarray) -> np.ndarray:
    """preprocess.local_background of a height x width image whose small copy is ``small``."""
    small_height, small_width = small.shape
    window = max(3, max(small_height, small_width) // 4)
    extended = extend_background(small, window)
    half = window // 2
    rest = window - 1 - half
    eroded = extreme_filter(extended, half, rest, False)
    dilated = extreme_filter(eroded, rest, half, True)
    opened = np.ascontiguousarray(dilated[window : window + small_height, window : window + small_width])
    smooth = np.ascontiguousarray(box_blur(extend_linearly(opened, 2))[1:-1, 1:-1])
    box = (1.0, 1.0, float(small_width + 1), float(small_height + 1))
    return resize(smooth, height, width, BILINEAR, box)


@jit
def remove_ruled_lines(ink: np.ndarray) -> np.ndarray:
    """preprocess.remove_ruled_lines: thin lines inked across 90 % of the image are erased."""
    height, width = ink.shape
    threshold = np.float32(INK_THRESHOLD * max(np.float64(ink.max()), 1e-6))
    row_counts = np.zeros(height, dtype=np.int64)
    column_counts = np.zeros(width, dtype=np.int64)
    for y in range(height):
        for x in range(width):
            if ink[y, x] > threshold:
                row_counts[y] += 1
                column_counts[x] += 1
    cleaned = ink.copy()
    for axis in range(2):
        length, across = (height, width) if axis == 0 else (width, height)
        counts = row_counts if axis == 0 else column_counts
        lines = counts / across > 0.9
        if not lines.any() or lines.all():
            continue
        limit = max(1, round_half_even(RULED_LINE_THICKNESS * length))
        start = -1
        for i in range(length + 1):
            if i < length and lines[i]:
                if start < 0:
                    start = i
            elif start >= 0:
                if i - start <= limit:
                    if axis == 0:
                        cleaned[start:i, :] = 0.0
                    else:
                        cleaned[:, start:i] = 0.0
                start = -1
    return cleaned if cleaned.max() > 0 else ink


@jit
def strong_ink(ink: np.ndarray) -> np.ndarray:
    """preprocess.strong_ink: above INK_THRESHOLD of the strongest ink, and (in an image of
    SPECKLE_SIDE or more) with at least two strong neighbours."""
    height, width = ink.shape
    threshold = np.float32(np.float32(INK_THRESHOLD) * ink.max())
    strong = ink > threshold
    if min(height, width) < SPECKLE_SIDE:
        return strong
    # Strong pixels in each 3x3 square: sums of three along the rows, then of three of those.
    across = np.zeros((height, width), dtype=np.uint8)
    for y in range(height):
        for x in range(width):
            left = strong[y, x - 1] if x > 0 else 0
            right = strong[y, x + 1] if x < width - 1 else 0
            across[y, x] = strong[y, x] + left + right
    kept = np.zeros_like(strong)
    found = False
    for y in range(height):
        for x in range(width):
            if strong[y, x]:
                count = across[y, x] + (across[y - 1, x] if y > 0 else 0) + (across[y + 1, x] if y < height - 1 else 0)
                if count >= 3:  # Itself and at least two of its eight neighbours.
                    kept[y, x] = True
                    found = True
    return kept if found else strong


@jit
def pairwise_sum(values: np.ndarray) -> float:
    """NumPy's pairwise summation (what .sum() does), in the values' own precision: the centre
    of mass is rounded to whole pixels, and a digit centred on a half pixel goes one way or
    the other on the last bit of these sums. NumPy's recursion (halves, in multiples of 8,
    down to blocks of at most 128) runs here on a stack: numba's cache cannot reload a
    recursive function."""
    sums = [values[0] - values[0]]
    sums.pop()
    work = [(0, values.size, False)]  # (start, count, whether to add the last two sums).
    while work:
        start, count, combine = work.pop()
        if combine:
            right, left = sums.pop(), sums.pop()
            sums.append(left + right)
        elif count <= 128:
            sums.append(block_sum(values, start, count))
        else:
            half = count // 2
            half -= half % 8
            work.append((0, 0, True))
            work.append((start + half, count - half, False))
            work.append((start, half, False))
    return sums[0]


@jit
def block_sum(values: np.ndarray, start: int, count: int) -> float:
    """NumPy's pairwise_sum on at most 128 values: eight running sums, added as a tree."""
    if count < 8:
        total = values[0] - values[0]
        for i in range(count):
            total = total + values[start + i]
        return total
    partial = values[start : start + 8].copy()
    i = 8
    while i < count - (count % 8):
        for j in range(8):
            partial[j] = partial[j] + values[start + i + j]
        i += 8
    first_half = (partial[0] + partial[1]) + (partial[2] + partial[3])
    total = first_half + ((partial[4] + partial[5]) + (partial[6] + partial[7]))
    while i < count:
        total = total + values[start + i]
        i += 1
    return total


@jit
def centre_by_mass(digit: np.ndarray) -> np.ndarray:
    """preprocess.centre_by_mass: ``digit`` in a 28x28 frame, its centre of mass at the centre."""
    height, width = digit.shape
    flat = digit.ravel()
    weighted_y = np.empty(flat.size, dtype=np.float64)
    weighted_x = np.empty(flat.size, dtype=np.float64)
    for i in range(flat.size):
        weighted_y[i] = (i // width) * np.float64(flat[i])
        weighted_x[i] = (i % width) * np.float64(flat[i])
    total = np.float64(pairwise_sum(flat))
    top = round_half_even(FRAME / 2 - 0.5 - pairwise_sum(weighted_y) / total)
    left = round_half_even(FRAME / 2 - 0.5 - pairwise_sum(weighted_x) / total)
    top = min(max(top, 0), FRAME - height)
    left = min(max(left, 0), FRAME - width)
    frame = np.zeros((FRAME, FRAME), dtype=np.float32)
    frame[top : top + height, left : left + width] = digit
    return frame


@jit
def prepare(gray: np.ndarray, polarity: int, design: np.ndarray, ring: np.ndarray) -> tuple[np.ndarray, int]:
    """preprocess.prepare_gray: the 28x28 frame, and PREPARED, BLANK (no ink; the frame is
    then all zero) or UNFITTED (the paper's surface is singular: take the reference path).
    ``polarity`` is a POLARITY_CODES value; ``design`` and ``ring`` are
    preprocess._surface_design's for the small copy's size."""
    height, width = gray.shape
    small = shrunk(gray, BACKGROUND_SIDE)
    inverted = polarity == 2
    if polarity == 0:
        inverted, fitted = dark_on_light(small, design, ring)
        if not fitted:
            return np.zeros((FRAME, FRAME), dtype=np.float32), UNFITTED
    if inverted:
        gray = np.float32(1.0) - gray
        small = np.float32(1.0) - small
    local = local_background(height, width, small)
    ink = np.empty((height, width), dtype=np.float32)
    floor = np.float32(0.05)
    for y in range(height):
        for x in range(width):
            value = np.float32(gray[y, x] - local[y, x]) / max(np.float32(1.0 - local[y, x]), floor)
            ink[y, x] = min(max(np.float32(value), np.float32(0.0)), np.float32(1.0))
    ink = remove_ruled_lines(ink)
    if ink.max() < BLANK_INK:
        return np.zeros((FRAME, FRAME), dtype=np.float32), BLANK
    strong = strong_ink(ink)
    top, bottom, left, right = height, -1, width, -1
    for y in range(height):
        for x in range(width):
            if strong[y, x]:
                top, bottom = min(top, y), max(bottom, y)
                left, right = min(left, x), max(right, x)
    cropped = np.ascontiguousarray(ink[top : bottom + 1, left : right + 1])
    crop_height, crop_width = cropped.shape
    scale = DIGIT_BOX / max(crop_height, crop_width)
    out_height = max(1, round_half_even(crop_height * scale))
    out_width = max(1, round_half_even(crop_width * scale))
    resized = resize(cropped, out_height, out_width, LANCZOS, (0.0, 0.0, float(crop_width), float(crop_height)))
    for y in range(out_height):
        for x in range(out_width):
            resized[y, x] = min(max(resized[y, x], np.float32(0.0)), np.float32(1.0))
    return centre_by_mass(resized), PREPARED

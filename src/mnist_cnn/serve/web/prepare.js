// The drawing pad's picture -> the 28x28 input of an MNIST model, in the browser.
//
// A line-by-line port of the path a drawing takes through predict/preprocess.py's
// prepare_digit (light ink on a dark pad, so the polarity is known): grayscale as Pillow's
// "L" conversion; ink measured against the local background (Pillow's bilinear shrink to 32
// pixels, SciPy's grey opening, a 3x3 mean, Pillow's bilinear enlargement); ruled lines
// removed; cropped to the strong ink (lone pixels left out); scaled with Pillow's Lanczos so
// the longer side is 20 pixels; centred by centre of mass in 28x28. Pillow's resampling is
// reproduced coefficient for coefficient (its precompute_coeffs: double weights, float32
// pixels between the passes), and Python's round() (half to even) where Python rounds, so
// the browser's input equals the server's to float32 precision. tests/test_serve_browser.py
// holds the two to that.
(function (root) {
  "use strict";

  const DIGIT_BOX = 20;
  const FRAME = 28;
  const INK_THRESHOLD = 0.2;
  const RULED_LINE_THICKNESS = 0.03;
  const BACKGROUND_SIDE = 32;
  const EDGE_STROKE_CONTRAST = 0.1;
  const SPECKLE_SIDE = 64;
  const BLANK_INK = 0.15;
  const f32 = Math.fround;

  // Python's round(): halves go to the even neighbour.
  function roundHalfEven(value) {
    const floor = Math.floor(value);
    const difference = value - floor;
    if (difference > 0.5) return floor + 1;
    if (difference < 0.5) return floor;
    return floor % 2 === 0 ? floor : floor + 1;
  }

  // Pillow's "L" from RGB(A) pixels (ITU-R 601-2 in fixed point), scaled to [0, 1] as float32.
  function grayFromRGBA(data, width, height) {
    const gray = new Float32Array(width * height);
    for (let i = 0; i < width * height; i++) {
      const level = (data[4 * i] * 19595 + data[4 * i + 1] * 38470 + data[4 * i + 2] * 7471 + 0x8000) >> 16;
      gray[i] = level / 255;
    }
    return gray;
  }

  const FILTERS = {
    bilinear: { support: 1.0, weight: x => { x = Math.abs(x); return x < 1.0 ? 1.0 - x : 0.0; } },
    lanczos: {
      support: 3.0,
      weight: x => (-3.0 <= x && x < 3.0 ? sinc(x) * sinc(x / 3) : 0.0),
    },
  };

  function sinc(x) {
    if (x === 0.0) return 1.0;
    x *= Math.PI;
    return Math.sin(x) / x;
  }

  // Pillow's precompute_coeffs: for each output pixel, the first input pixel and its weights.
  function coefficients(inSize, in0, in1, outSize, filter) {
    const scale = (in1 - in0) / outSize;
    const filterScale = Math.max(scale, 1.0);
    const support = filter.support * filterScale;
    const result = [];
    for (let out = 0; out < outSize; out++) {
      const centre = in0 + (out + 0.5) * scale;
      const inverse = 1.0 / filterScale;
      const first = Math.max(Math.trunc(centre - support + 0.5), 0);
      const last = Math.min(Math.trunc(centre + support + 0.5), inSize);
      const weights = [];
      let total = 0.0;
      for (let x = 0; x < last - first; x++) {
        const weight = filter.weight((x + first - centre + 0.5) * inverse);
        weights.push(weight);
        total += weight;
      }
      if (total !== 0.0) for (let x = 0; x < weights.length; x++) weights[x] /= total;
      result.push({ first, weights });
    }
    return result;
  }

  // Pillow's Image.resize of a float32 ("F") image: horizontal pass, then vertical, float32 between.
  function resize(pixels, width, height, outWidth, outHeight, filter, box) {
    box = box || [0, 0, width, height];
    if (outWidth === width && outHeight === height && box[0] === 0 && box[1] === 0 && box[2] === width && box[3] === height) {
      return Float32Array.from(pixels);
    }
    const horizontal = coefficients(width, box[0], box[2], outWidth, filter);
    const vertical = coefficients(height, box[1], box[3], outHeight, filter);
    const needHorizontal = outWidth !== width || box[0] !== 0 || box[2] !== outWidth;
    const needVertical = outHeight !== height || box[1] !== 0 || box[3] !== outHeight;
    let source = pixels, sourceWidth = width, rowOffset = 0;
    if (needHorizontal) {
      const firstRow = vertical[0].first;
      const lastRow = vertical[outHeight - 1].first + vertical[outHeight - 1].weights.length;
      const rows = lastRow - firstRow;
      const pass = new Float32Array(outWidth * rows);
      for (let y = 0; y < rows; y++) {
        const row = (y + firstRow) * width;
        for (let x = 0; x < outWidth; x++) {
          const { first, weights } = horizontal[x];
          let sum = 0.0;
          for (let k = 0; k < weights.length; k++) sum += source[row + first + k] * weights[k];
          pass[y * outWidth + x] = sum;
        }
      }
      source = pass; sourceWidth = outWidth; rowOffset = firstRow;
    }
    if (!needVertical) return source;
    const result = new Float32Array(sourceWidth * outHeight);
    for (let y = 0; y < outHeight; y++) {
      const { first, weights } = vertical[y];
      for (let x = 0; x < sourceWidth; x++) {
        let sum = 0.0;
        for (let k = 0; k < weights.length; k++) sum += source[(first - rowOffset + k) * sourceWidth + x] * weights[k];
        result[y * sourceWidth + x] = sum;
      }
    }
    return result;
  }

  // preprocess._fit: (width, height) scaled so the longer side is at most `side`.
  function fit(width, height, side) {
    const scale = Math.min(1.0, side / Math.max(width, height));
    return [Math.max(1, roundHalfEven(width * scale)), Math.max(1, roundHalfEven(height * scale))];
  }

  // preprocess.extend_background: a width x height image extended by `by` on every side with
  // its background at each edge, np.pad's "edge" mode except where an edge pixel is more than
  // EDGE_STROKE_CONTRAST brighter than the darkest pixel within half a window inwards (a
  // stroke along the edge): that darkest pixel is repeated instead. Rows first, then columns.
  function extendBackground(pixels, width, height, by) {
    const depth = Math.max(1, Math.floor(by / 2));
    const rows = extendRows(pixels, width, height, by, Math.min(depth, height));
    const columns = extendRows(transpose(rows, width, height + 2 * by), height + 2 * by, width, by, Math.min(depth, width));
    return transpose(columns, height + 2 * by, width + 2 * by);
  }

  // `by` rows above and below a width x height image (extendBackground's rule).
  function extendRows(pixels, width, height, by, depth) {
    const result = new Float32Array(width * (height + 2 * by));
    const stroke = f32(EDGE_STROKE_CONTRAST);
    for (let x = 0; x < width; x++) {
      for (const [edgeRow, step, firstOut, outStep] of [[0, 1, by - 1, -1], [height - 1, -1, by + height, 1]]) {
        const edge = pixels[edgeRow * width + x];
        let darkest = edge;
        for (let d = 1; d < depth; d++) darkest = Math.min(darkest, pixels[(edgeRow + d * step) * width + x]);
        const value = f32(edge - darkest) > stroke ? darkest : edge;
        for (let k = 0; k < by; k++) result[(firstOut + k * outStep) * width + x] = value;
      }
      for (let y = 0; y < height; y++) result[(y + by) * width + x] = pixels[y * width + x];
    }
    return result;
  }

  // A width x height image (row by row) as height x width.
  function transpose(pixels, width, height) {
    const result = new Float32Array(pixels.length);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) result[x * height + y] = pixels[y * width + x];
    }
    return result;
  }

  // A flat minimum or maximum filter over [i - before, i + after] along both axes (SciPy's
  // even-sized windows: the erosion reaches 4 back and 3 ahead, the dilation the reverse).
  // Used only where every window lies inside the image.
  function extremeFilter(pixels, width, height, before, after, takeMaximum) {
    const rows = new Float32Array(pixels.length);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        let value = pixels[y * width + x];
        for (let k = Math.max(0, x - before); k <= Math.min(width - 1, x + after); k++) {
          const other = pixels[y * width + k];
          if (takeMaximum ? other > value : other < value) value = other;
        }
        rows[y * width + x] = value;
      }
    }
    const result = new Float32Array(pixels.length);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        let value = rows[y * width + x];
        for (let k = Math.max(0, y - before); k <= Math.min(height - 1, y + after); k++) {
          const other = rows[k * width + x];
          if (takeMaximum ? other > value : other < value) value = other;
        }
        result[y * width + x] = value;
      }
    }
    return result;
  }

  // SciPy's uniform_filter1d of size 3 ("reflect" edges) along every line of an image: a
  // running mean in double, as ni_filters.c computes it, stored as float32. A line starts at
  // `lineStart * line`, its pixels `step` apart; `lines` lines of `length` pixels.
  function uniformFilter(pixels, lines, length, step, lineStart) {
    const result = new Float32Array(pixels.length);
    for (let line = 0; line < lines; line++) {
      const base = line * lineStart;
      const at = (i) => pixels[base + Math.min(Math.max(i, 0), length - 1) * step];  // Reflect by one = the edge.
      let sum = at(-1) + at(0) + at(1);
      sum /= 3.0;
      result[base] = sum;
      for (let i = 1; i < length; i++) {
        sum += (at(i + 1) - at(i - 2)) / 3.0;
        result[base + i * step] = sum;
      }
    }
    return result;
  }

  // preprocess.local_background for a BACKGROUND_SIDE copy `small` of a width x height image.
  function localBackground(small, smallWidth, smallHeight, width, height) {
    const window = Math.max(3, Math.floor(Math.max(smallWidth, smallHeight) / 4));
    const extendedWidth = smallWidth + 2 * window, extendedHeight = smallHeight + 2 * window;
    const extended = extendBackground(small, smallWidth, smallHeight, window);
    const half = Math.floor(window / 2), rest = window - 1 - half;
    const eroded = extremeFilter(extended, extendedWidth, extendedHeight, half, rest, false);
    const dilated = extremeFilter(eroded, extendedWidth, extendedHeight, rest, half, true);
    // The opened copy, extended by 2 as an odd reflection (2 a[0] - a[k]): rows first, then
    // columns, in float32, as np.pad does; then SciPy's 3x3 uniform_filter, axis 0 then 1.
    const paddedWidth = smallWidth + 4, paddedHeight = smallHeight + 4;
    const padded = new Float32Array(paddedWidth * paddedHeight);
    const mirror = (index, size) => (index < 0 ? [0, -index] : index >= size ? [size - 1, 2 * (size - 1) - index] : null);
    for (let y = 0; y < paddedHeight; y++) {
      const reflected = mirror(y - 2, smallHeight);
      for (let x = 0; x < smallWidth; x++) {
        const opened = (row) => dilated[(row + window) * extendedWidth + x + window];
        padded[y * paddedWidth + x + 2] = reflected ? f32(2 * opened(reflected[0]) - opened(reflected[1])) : opened(y - 2);
      }
      for (const x of [0, 1, paddedWidth - 2, paddedWidth - 1]) {
        const [edge, other] = mirror(x - 2, smallWidth);
        padded[y * paddedWidth + x] = f32(2 * padded[y * paddedWidth + edge + 2] - padded[y * paddedWidth + other + 2]);
      }
    }
    const down = uniformFilter(padded, paddedWidth, paddedHeight, paddedWidth, 1);
    const across = uniformFilter(down, paddedHeight, paddedWidth, 1, paddedWidth);
    const smoothWidth = smallWidth + 2, smoothHeight = smallHeight + 2;
    const smooth = new Float32Array(smoothWidth * smoothHeight);
    for (let y = 0; y < smoothHeight; y++) {
      for (let x = 0; x < smoothWidth; x++) smooth[y * smoothWidth + x] = across[(y + 1) * paddedWidth + x + 1];
    }
    return resize(smooth, smoothWidth, smoothHeight, width, height, FILTERS.bilinear, [1, 1, smallWidth + 1, smallHeight + 1]);
  }

  // Connected runs of true values in a boolean list, as [start, end) pairs.
  function runs(flags) {
    const found = [];
    let start = -1;
    for (let i = 0; i <= flags.length; i++) {
      if (i < flags.length && flags[i]) { if (start < 0) start = i; }
      else if (start >= 0) { found.push([start, i]); start = -1; }
    }
    return found;
  }

  function maximum(pixels) {
    let value = -Infinity;
    for (let i = 0; i < pixels.length; i++) if (pixels[i] > value) value = pixels[i];
    return value;
  }

  // preprocess.remove_ruled_lines: thin lines inked across 90% of the image are erased.
  function removeRuledLines(ink, width, height) {
    const threshold = f32(INK_THRESHOLD * Math.max(maximum(ink), 1e-6));
    const cleaned = Float32Array.from(ink);
    const rowCounts = new Int32Array(height), columnCounts = new Int32Array(width);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        if (ink[y * width + x] > threshold) { rowCounts[y]++; columnCounts[x]++; }
      }
    }
    for (const axis of [0, 1]) {
      const length = axis === 0 ? height : width, across = axis === 0 ? width : height;
      const counts = axis === 0 ? rowCounts : columnCounts;
      const lines = Array.from(counts, count => count / across > 0.9);
      if (!lines.some(Boolean) || lines.every(Boolean)) continue;
      const limit = Math.max(1, roundHalfEven(RULED_LINE_THICKNESS * length));
      for (const [start, end] of runs(lines)) {
        if (end - start > limit) continue;
        for (let i = start; i < end; i++) {
          for (let j = 0; j < across; j++) cleaned[axis === 0 ? i * width + j : j * width + i] = 0.0;
        }
      }
    }
    return maximum(cleaned) > 0 ? cleaned : ink;
  }

  // preprocess.strong_ink: the pixels the crop keeps.
  function strongInk(ink, width, height) {
    const threshold = f32(f32(INK_THRESHOLD) * maximum(ink));
    const strong = new Uint8Array(ink.length);
    for (let i = 0; i < ink.length; i++) strong[i] = ink[i] > threshold ? 1 : 0;
    if (Math.min(width, height) < SPECKLE_SIDE) return strong;
    const kept = new Uint8Array(ink.length);
    let any = false;
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        if (!strong[y * width + x]) continue;
        let count = 0;
        for (let dy = -1; dy <= 1; dy++) {
          for (let dx = -1; dx <= 1; dx++) {
            const yy = y + dy, xx = x + dx;
            if (yy >= 0 && yy < height && xx >= 0 && xx < width) count += strong[yy * width + xx];
          }
        }
        if (count >= 3) { kept[y * width + x] = 1; any = true; }
      }
    }
    return any ? kept : strong;
  }

  // NumPy's pairwise summation (what .sum() does), accumulating through `cast` (f32 for a
  // float32 array): the centre of mass is rounded to whole pixels, and a digit centred on a
  // half pixel goes one way or the other on the last bit of these sums.
  function pairwiseSum(values, start, count, cast) {
    if (count < 8) {
      let sum = 0;
      for (let i = 0; i < count; i++) sum = cast(sum + values[start + i]);
      return sum;
    }
    if (count <= 128) {
      const partial = [];
      for (let j = 0; j < 8; j++) partial.push(values[start + j]);
      let i = 8;
      for (; i < count - (count % 8); i += 8) {
        for (let j = 0; j < 8; j++) partial[j] = cast(partial[j] + values[start + i + j]);
      }
      let sum = cast(
        cast(cast(partial[0] + partial[1]) + cast(partial[2] + partial[3])) +
          cast(cast(partial[4] + partial[5]) + cast(partial[6] + partial[7])),
      );
      for (; i < count; i++) sum = cast(sum + values[start + i]);
      return sum;
    }
    let half = Math.floor(count / 2);
    half -= half % 8;
    return cast(pairwiseSum(values, start, half, cast) + pairwiseSum(values, start + half, count - half, cast));
  }

  // preprocess.centre_by_mass: the digit in a 28x28 frame, its centre of mass at the centre.
  function centreByMass(digit, width, height) {
    const weightedY = new Float64Array(digit.length), weightedX = new Float64Array(digit.length);
    for (let i = 0; i < digit.length; i++) {
      weightedY[i] = Math.floor(i / width) * digit[i];
      weightedX[i] = (i % width) * digit[i];
    }
    const total = pairwiseSum(digit, 0, digit.length, f32);
    const double = value => value;
    let top = roundHalfEven(FRAME / 2 - 0.5 - pairwiseSum(weightedY, 0, digit.length, double) / total);
    let left = roundHalfEven(FRAME / 2 - 0.5 - pairwiseSum(weightedX, 0, digit.length, double) / total);
    top = Math.min(Math.max(top, 0), FRAME - height);
    left = Math.min(Math.max(left, 0), FRAME - width);
    const frame = new Float32Array(FRAME * FRAME);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) frame[(top + y) * FRAME + left + x] = digit[y * width + x];
    }
    return frame;
  }

  // The whole path: a light-on-dark grayscale image (float32 in [0, 1], row by row) -> the
  // 28x28 input (Float32Array of 784), or null when it is blank (the server's 422).
  function prepareDigit(gray, width, height) {
    const [smallWidth, smallHeight] = fit(width, height, BACKGROUND_SIDE);
    const small = resize(gray, width, height, smallWidth, smallHeight, FILTERS.bilinear);
    const local = localBackground(small, smallWidth, smallHeight, width, height);
    let ink = new Float32Array(gray.length);
    for (let i = 0; i < gray.length; i++) {
      const value = f32(f32(gray[i] - local[i]) / Math.max(f32(1.0 - local[i]), f32(0.05)));
      ink[i] = Math.min(Math.max(value, 0.0), 1.0);
    }
    ink = removeRuledLines(ink, width, height);
    if (maximum(ink) < BLANK_INK) return null;
    const strong = strongInk(ink, width, height);
    let top = height, bottom = -1, left = width, right = -1;
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        if (!strong[y * width + x]) continue;
        top = Math.min(top, y); bottom = Math.max(bottom, y); left = Math.min(left, x); right = Math.max(right, x);
      }
    }
    const cropWidth = right - left + 1, cropHeight = bottom - top + 1;
    const cropped = new Float32Array(cropWidth * cropHeight);
    for (let y = 0; y < cropHeight; y++) {
      for (let x = 0; x < cropWidth; x++) cropped[y * cropWidth + x] = ink[(top + y) * width + left + x];
    }
    const scale = DIGIT_BOX / Math.max(cropWidth, cropHeight);
    const outHeight = Math.max(1, roundHalfEven(cropHeight * scale));
    const outWidth = Math.max(1, roundHalfEven(cropWidth * scale));
    const resized = resize(cropped, cropWidth, cropHeight, outWidth, outHeight, FILTERS.lanczos);
    for (let i = 0; i < resized.length; i++) resized[i] = Math.min(Math.max(resized[i], 0.0), 1.0);
    return centreByMass(resized, outWidth, outHeight);
  }

  const api = { prepareDigit, grayFromRGBA, roundHalfEven };
  root.mnistPrepare = api;
  if (typeof module !== "undefined" && module.exports) module.exports = api;
})(typeof globalThis !== "undefined" ? globalThis : this);

// A streaming sample-rate converter: Kaiser-windowed sinc, polyphase with exact rational phases.
//
// Output sample n sits at input position n * inRate / outRate, kept as an integer plus a fraction
// (frac / den) so that long calls never drift. The low-pass cutoff is a little under the lower of the two
// Nyquist frequencies, so decimating (48 kHz -> 8 kHz) removes what would alias and interpolating
// (8 kHz -> 48 kHz) removes the images. At 48 kHz <-> 8 kHz: -6 dB at 3.9 kHz, about -70 dB from 4.4 kHz.

const MAX_PHASES = 4096;

function gcd(a, b) {
  while (b) [a, b] = [b, a % b];
  return a;
}

function besselI0(x) {
  let sum = 1;
  let term = 1;
  const y = (x * x) / 4;
  for (let k = 1; k < 64 && term > 1e-12 * sum; k++) {
    term *= y / (k * k);
    sum += term;
  }
  return sum;
}

function sinc(x) {
  return x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
}

export class Resampler {
  /**
   * @param {number} inRate input sample rate (Hz, integer)
   * @param {number} outRate output sample rate (Hz, integer)
   * @param {{zeroCrossings?: number, cutoff?: number, beta?: number}} options
   *   cutoff: the -6 dB point as a fraction of the lower Nyquist frequency; beta: the Kaiser window shape.
   */
  constructor(inRate, outRate, { zeroCrossings = 16, cutoff = 0.975, beta = 7 } = {}) {
    const g = gcd(inRate, outRate);
    this.inRate = inRate;
    this.outRate = outRate;
    this.step = inRate / g; // input samples per output sample = step / den
    this.den = outRate / g;
    this.phases = Math.min(this.den, MAX_PHASES);
    const fc = (cutoff * Math.min(inRate, outRate)) / 2 / inRate; // cycles per input sample
    this.half = Math.ceil(zeroCrossings / (2 * fc)); // taps on each side of the output position
    const width = 2 * this.half;
    this.taps = new Float32Array(this.phases * width);
    const norm = besselI0(beta);
    for (let p = 0; p < this.phases; p++) {
      const frac = p / this.phases;
      let sum = 0;
      for (let j = 0; j < width; j++) {
        const d = frac - (j - this.half + 1); // distance from the output position to input tap j
        const r = d / this.half;
        const window = Math.abs(r) >= 1 ? 0 : besselI0(beta * Math.sqrt(1 - r * r)) / norm;
        const h = 2 * fc * sinc(2 * fc * d) * window;
        this.taps[p * width + j] = h;
        sum += h;
      }
      for (let j = 0; j < width; j++) this.taps[p * width + j] /= sum; // exact unity gain at DC
    }
    this.buf = new Float32Array(4096);
    this.out = new Float32Array(1024);
    this.reset();
  }

  /** Forget all input: the next sample starts a new, independent stream. */
  reset() {
    // half - 1 zeros of history, so that output 0 is centred on input 0.
    this.buf.fill(0, 0, this.half - 1);
    this.len = this.half - 1;
    this.pos = this.half - 1;
    this.frac = 0;
  }

  /** Samples of delay that ``flush`` would emit for the input held back so far. */
  get pendingInput() {
    return Math.max(0, this.len - this.pos);
  }

  /**
   * Feed input samples; returns the output samples now computable, as a view that is valid until the next
   * call (copy it to keep it).
   */
  process(input) {
    this._append(input);
    const { step, den, half, phases, taps } = this;
    const width = 2 * half;
    const maxOut = Math.ceil(((this.len - this.pos) * den) / step) + 2;
    if (this.out.length < maxOut) this.out = new Float32Array(maxOut * 2);
    const out = this.out;
    const buf = this.buf;
    let n = 0;
    while (this.pos + half < this.len) {
      const phase = phases === den ? this.frac : Math.floor((this.frac * phases) / den);
      const t = phase * width;
      const start = this.pos - half + 1;
      let acc = 0;
      for (let j = 0; j < width; j++) acc += buf[start + j] * taps[t + j];
      out[n++] = acc;
      this.frac += step;
      if (this.frac >= den) {
        this.pos += Math.floor(this.frac / den);
        this.frac %= den;
      }
    }
    this._compact();
    return out.subarray(0, n);
  }

  /** Emit the output still held back (followed by silence) and reset; returns a view like ``process``. */
  flush() {
    const pending = this.pendingInput;
    if (pending === 0) {
      this.reset();
      return this.out.subarray(0, 0);
    }
    const out = this.process(new Float32Array(this.half));
    this.reset();
    return out;
  }

  _append(input) {
    const need = this.len + input.length;
    if (need > this.buf.length) {
      const bigger = new Float32Array(Math.max(need, this.buf.length * 2));
      bigger.set(this.buf.subarray(0, this.len));
      this.buf = bigger;
    }
    this.buf.set(input, this.len);
    this.len = need;
  }

  _compact() {
    const drop = this.pos - this.half + 1;
    if (drop > 0) {
      this.buf.copyWithin(0, drop, this.len);
      this.len -= drop;
      this.pos -= drop;
    }
  }
}

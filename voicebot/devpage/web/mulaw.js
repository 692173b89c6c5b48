// G.711 mu-law, bit-exact with voicebot/audio.py (BIAS 0x84, CLIP 32635): the only codec Twilio Media Streams use.

const BIAS = 0x84;
const CLIP = 32635;

/** 16-bit sample value of every mu-law byte. */
export const DECODE_INT16 = new Int16Array(256);
/** The same as floats in [-1, 1), what Web Audio plays. */
export const DECODE_FLOAT = new Float32Array(256);

for (let byte = 0; byte < 256; byte++) {
  const u = ~byte & 0xff;
  const exponent = (u >> 4) & 0x07;
  const magnitude = ((((u & 0x0f) << 3) + BIAS) << exponent) - BIAS;
  DECODE_INT16[byte] = u & 0x80 ? -magnitude : magnitude;
  DECODE_FLOAT[byte] = DECODE_INT16[byte] / 32768;
}

/** Encode one 16-bit sample (an integer in [-32768, 32767]). */
export function encodeSample(sample) {
  let sign = 0;
  if (sample < 0) {
    sign = 0x80;
    sample = -sample;
  }
  sample = Math.min(sample, CLIP) + BIAS;
  // The segment is the position of the highest set bit above bit 7 (0..7).
  const exponent = Math.max(0, 24 - Math.clz32(sample));
  const mantissa = (sample >> (exponent + 3)) & 0x0f;
  return ~(sign | (exponent << 4) | mantissa) & 0xff;
}

/** Encode one float sample (nominally [-1, 1]; clipped). */
export function encodeFloat(x) {
  const s = Math.round(x * 32768);
  return encodeSample(s > 32767 ? 32767 : s < -32768 ? -32768 : s);
}

/** Decode mu-law bytes into ``out`` (a Float32Array at least as long); returns ``out``. */
export function decodeInto(bytes, out) {
  for (let i = 0; i < bytes.length; i++) out[i] = DECODE_FLOAT[bytes[i]];
  return out;
}

// Microphone -> 8 kHz mu-law, 20 ms frames (160 bytes), as Twilio sends them. Runs on the audio thread.
import { encodeFloat } from "./mulaw.js";
import { Resampler } from "./resampler.js";

const TELEPHONE_RATE = 8000;
const FRAME_SAMPLES = 160; // 20 ms at 8 kHz

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.resampler = new Resampler(sampleRate, TELEPHONE_RATE);
    this.frame = new Uint8Array(FRAME_SAMPLES);
    this.filled = 0;
    this.sumSquares = 0;
    this.peak = 0;
    this.mono = new Float32Array(128);
    this.running = true;
    this.port.onmessage = (e) => {
      if (e.data?.type === "close") this.running = false;
    };
  }

  process(inputs) {
    const channels = inputs[0];
    if (!this.running) return false;
    if (!channels || channels.length === 0) return true; // no source connected (yet)
    const samples = channels.length === 1 ? channels[0] : this.downmix(channels);
    const out = this.resampler.process(samples);
    for (let i = 0; i < out.length; i++) {
      const x = out[i];
      this.sumSquares += x * x;
      const a = Math.abs(x);
      if (a > this.peak) this.peak = a;
      this.frame[this.filled++] = encodeFloat(x);
      if (this.filled === FRAME_SAMPLES) this.emit();
    }
    return true;
  }

  downmix(channels) {
    const n = channels[0].length;
    if (this.mono.length !== n) this.mono = new Float32Array(n);
    this.mono.fill(0);
    for (const ch of channels) for (let i = 0; i < n; i++) this.mono[i] += ch[i] / channels.length;
    return this.mono;
  }

  emit() {
    const rms = Math.sqrt(this.sumSquares / FRAME_SAMPLES);
    // The frame's buffer is transferred, not copied: 50 messages a second.
    this.port.postMessage({ type: "frame", frame: this.frame, rms, peak: this.peak }, [this.frame.buffer]);
    this.frame = new Uint8Array(FRAME_SAMPLES);
    this.filled = 0;
    this.sumSquares = 0;
    this.peak = 0;
  }
}

registerProcessor("voicebot-capture", CaptureProcessor);

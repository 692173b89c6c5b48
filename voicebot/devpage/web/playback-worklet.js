// The bot's audio, played like Twilio plays it (PROVIDERS.md §4.4), on the audio thread:
// - media is queued and played gap-free in arrival order; media arriving while idle starts a new "run";
// - a mark is echoed once the audio queued before it has actually been played (at once if nothing is queued);
// - clear drops everything unplayed at once and echoes every pending mark;
// - close (hang-up) drops everything; pending marks are never echoed.
// Positions are counted in 8 kHz samples received vs. output samples played, as integers (no drift).
import { DECODE_FLOAT } from "./mulaw.js";
import { Resampler } from "./resampler.js";

const TELEPHONE_RATE = 8000;
const MAX_QUEUED_SECONDS = 600; // bounded: beyond this, new audio is dropped (and counted)
const LEVEL_INTERVAL_S = 0.05;
// A run starts once this much audio is queued (or PREBUFFER_MAX_WAIT_S after its first byte), like Twilio's own
// jitter buffer: messages that arrive a few ms apart on a busy machine still play as one gap-free run.
const PREBUFFER_S = 0.06;
const PREBUFFER_MAX_WAIT_S = 0.1;

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.resampler = new Resampler(TELEPHONE_RATE, sampleRate);
    this.chunks = []; // Float32Arrays at the context rate, oldest first
    this.head = 0; // read offset in chunks[0]
    this.queued = 0; // output samples queued and not yet played
    this.marks = []; // {name, at}: echo once `at` 8 kHz samples of this run have played
    this.runIn = 0; // 8 kHz samples received in the current run
    this.runPlayed = 0; // output samples played in the current run
    this.active = false; // a run is in progress (something queued or still in the resampler)
    this.announced = false; // the current run's start has been reported (playback has begun)
    this.startBy = 0; // audio-clock time by which a buffering run starts even if short
    this.closed = false;
    this.dropped = 0;
    this.levelSum = 0;
    this.levelCount = 0;
    this.levelEvery = Math.round(sampleRate * LEVEL_INTERVAL_S);
    this.decoded = new Float32Array(TELEPHONE_RATE);
    this.port.onmessage = (e) => this.onMessage(e.data);
  }

  onMessage(msg) {
    if (this.closed) return;
    switch (msg.type) {
      case "media":
        this.enqueue(msg.audio);
        break;
      case "mark":
        if (this.active) this.marks.push({ name: msg.name, at: this.runIn });
        else this.port.postMessage({ type: "mark", name: msg.name, cleared: false });
        break;
      case "clear":
        this.cut("clear");
        break;
      case "close":
        this.marks = [];
        this.cut("close");
        this.closed = true;
        break;
    }
  }

  enqueue(bytes) {
    if (bytes.length === 0) return;
    if (this.queued > MAX_QUEUED_SECONDS * sampleRate) {
      this.dropped += bytes.length;
      this.port.postMessage({ type: "overflow", dropped: this.dropped });
      return;
    }
    if (this.decoded.length < bytes.length) this.decoded = new Float32Array(bytes.length);
    for (let i = 0; i < bytes.length; i++) this.decoded[i] = DECODE_FLOAT[bytes[i]];
    this.push(this.resampler.process(this.decoded.subarray(0, bytes.length)));
    this.runIn += bytes.length;
    if (!this.active) this.startBy = currentTime + PREBUFFER_MAX_WAIT_S;
    this.active = true;
  }

  push(samples) {
    if (samples.length > 0) {
      this.chunks.push(Float32Array.from(samples)); // the resampler's view is reused: copy
      this.queued += samples.length;
    }
  }

  cut(reason) {
    const unplayedMs = Math.round((this.queued * 1000) / sampleRate);
    const wasPlaying = this.active && this.announced;
    this.chunks = [];
    this.head = 0;
    this.queued = 0;
    this.resampler.reset();
    for (const mark of this.marks) this.port.postMessage({ type: "mark", name: mark.name, cleared: true });
    this.endRun();
    if (wasPlaying) this.port.postMessage({ type: "stop", cut: true, reason, unplayedMs, t: currentTime });
  }

  endRun() {
    this.marks = [];
    this.runIn = 0;
    this.runPlayed = 0;
    this.active = false;
    this.announced = false;
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    let written = 0;
    const buffering =
      this.active && !this.announced && this.queued < PREBUFFER_S * sampleRate && currentTime < this.startBy;
    if (this.active && !buffering) {
      if (!this.announced) {
        this.announced = true;
        this.port.postMessage({ type: "start", t: currentTime });
      }
      written = this.fill(out, 0);
      if (written < out.length) {
        // The queue ran dry: play the resampler's held-back tail, then the run is over.
        this.push(this.resampler.flush());
        written = this.fill(out, written);
      }
      this.runPlayed += written;
      this.echoPlayedMarks();
      if (this.queued === 0 && this.resampler.pendingInput === 0) {
        for (const mark of this.marks) this.port.postMessage({ type: "mark", name: mark.name, cleared: false });
        this.endRun();
        this.port.postMessage({ type: "stop", cut: false, reason: "drained", t: currentTime + written / sampleRate });
      }
    }
    out.fill(0, written);
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    this.meter(out);
    return !this.closed;
  }

  fill(out, offset) {
    while (offset < out.length && this.chunks.length > 0) {
      const chunk = this.chunks[0];
      const n = Math.min(out.length - offset, chunk.length - this.head);
      out.set(chunk.subarray(this.head, this.head + n), offset);
      offset += n;
      this.head += n;
      this.queued -= n;
      if (this.head === chunk.length) {
        this.chunks.shift();
        this.head = 0;
      }
    }
    return offset;
  }

  echoPlayedMarks() {
    // Played 8 kHz samples = runPlayed * 8000 / sampleRate; compared without division.
    while (this.marks.length > 0 && this.runPlayed * TELEPHONE_RATE >= this.marks[0].at * sampleRate) {
      this.port.postMessage({ type: "mark", name: this.marks.shift().name, cleared: false });
    }
  }

  meter(out) {
    for (let i = 0; i < out.length; i++) this.levelSum += out[i] * out[i];
    this.levelCount += out.length;
    if (this.levelCount >= this.levelEvery) {
      this.port.postMessage({ type: "level", rms: Math.sqrt(this.levelSum / this.levelCount) });
      this.levelSum = 0;
      this.levelCount = 0;
    }
  }
}

registerProcessor("voicebot-player", PlaybackProcessor);

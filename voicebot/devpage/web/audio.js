// The page's audio: one AudioContext, the microphone through the capture worklet, the bot through the player.

const CAPTURE_URL = new URL("./capture-worklet.js", import.meta.url);
const PLAYER_URL = new URL("./playback-worklet.js", import.meta.url);

/**
 * Events: "frame" ({frame: Uint8Array (160 mu-law bytes), rms, peak}), "level" ({rms}: bot output),
 * "mark" ({name, cleared}), "playing" ({t}), "stopped" ({cut, reason, unplayedMs, t}), "overflow".
 */
export class AudioEngine extends EventTarget {
  /** Create the context now, inside the click handler, so that autoplay policy lets it run. */
  constructor() {
    super();
    this.context = new AudioContext({ latencyHint: "interactive" });
    this.stream = null;
    this.capture = null;
    this.player = null;
  }

  /** Open the microphone and load the worklets; resolves once audio flows both ways. */
  async start({ echoCancellation = true } = {}) {
    if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
      throw new Error("the microphone needs a secure page: open it as http://localhost or over https");
    }
    const ctx = this.context;
    const [stream] = await Promise.all([
      navigator.mediaDevices.getUserMedia({
        // No automatic gain or noise suppression: the phone network does not do them and STT prefers raw
        // speech. Echo cancellation stays on, or the bot hears itself through the speakers and stops talking.
        audio: { channelCount: 1, echoCancellation, noiseSuppression: false, autoGainControl: false },
      }),
      ctx.audioWorklet.addModule(CAPTURE_URL),
      ctx.audioWorklet.addModule(PLAYER_URL),
    ]);
    this.stream = stream;
    this.capture = new AudioWorkletNode(ctx, "voicebot-capture", {
      numberOfInputs: 1,
      numberOfOutputs: 0,
      channelCount: 1,
      channelCountMode: "explicit", // the browser downmixes a stereo microphone
    });
    this.player = new AudioWorkletNode(ctx, "voicebot-player", {
      numberOfInputs: 0,
      numberOfOutputs: 1,
      outputChannelCount: [1],
    });
    this.capture.port.onmessage = (e) => this.emit(e.data.type, e.data);
    this.player.port.onmessage = (e) => {
      const type = { start: "playing", stop: "stopped" }[e.data.type] ?? e.data.type;
      this.emit(type, e.data);
    };
    ctx.createMediaStreamSource(stream).connect(this.capture);
    this.player.connect(ctx.destination);
    await ctx.resume();
  }

  get sampleRate() {
    return this.context.sampleRate;
  }

  /** Queue mu-law audio from the bot (the buffer is transferred). */
  play(audio) {
    this.player?.port.postMessage({ type: "media", audio }, [audio.buffer]);
  }

  mark(name) {
    this.player?.port.postMessage({ type: "mark", name });
  }

  clear() {
    this.player?.port.postMessage({ type: "clear" });
  }

  /** Stop the microphone at once (hang-up); the bot's audio stops too. */
  async close() {
    this.stream?.getTracks().forEach((track) => track.stop());
    this.capture?.port.postMessage({ type: "close" });
    this.player?.port.postMessage({ type: "close" });
    if (this.context.state !== "closed") await this.context.close();
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

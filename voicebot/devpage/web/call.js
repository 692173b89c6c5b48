// Twilio's side of a Media Streams WebSocket (PROVIDERS.md §4.2, voicebot/caller/client.py does the same):
// "connected", then "start" with the stream token in customParameters, then one "media" message per 20 ms
// frame, mark echoes, and "stop" on hang-up. All messages are JSON text frames; sequenceNumber, chunk and
// timestamp are strings, as Twilio sends them.

const FRAME_MS = 20;
const MAX_BUFFERED_BYTES = 64 * 1024; // a stalled server: drop microphone frames rather than queue them

function randomHex(bytes) {
  return Array.from(crypto.getRandomValues(new Uint8Array(bytes)), (b) => b.toString(16).padStart(2, "0")).join("");
}

export function toBase64(bytes) {
  if (bytes.toBase64) return bytes.toBase64();
  let s = "";
  for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
  return btoa(s);
}

export function fromBase64(text) {
  if (Uint8Array.fromBase64) return Uint8Array.fromBase64(text);
  const s = atob(text);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

/**
 * One call's stream. Events: "media" ({audio: Uint8Array}), "mark" ({name}), "clear", "protocol_error"
 * ({detail}), "closed" ({code, reason, byUs}).
 */
export class TwilioMediaStream extends EventTarget {
  constructor({ url, token, callSid, accountSid }) {
    super();
    this.url = url;
    this.callSid = callSid;
    this.accountSid = accountSid;
    this.streamSid = "MZ" + randomHex(16);
    this.parameters = { token };
    this.ws = null;
    this.seq = 0;
    this.chunk = 0;
    this.frameIndex = 0;
    this.started = false;
    this.stopSent = false;
    this.stats = { framesSent: 0, framesDropped: 0, mediaReceived: 0, bytesReceived: 0, marksEchoed: 0 };
  }

  /** Open the socket and send connected + start; resolves once start is sent. */
  open() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url);
      this.ws = ws;
      let opened = false;
      ws.onopen = () => {
        opened = true;
        this.send({ event: "connected", protocol: "Call", version: "1.0.0" });
        this.send({
          event: "start",
          sequenceNumber: this.nextSeq(),
          start: {
            accountSid: this.accountSid,
            streamSid: this.streamSid,
            callSid: this.callSid,
            tracks: ["inbound"],
            mediaFormat: { encoding: "audio/x-mulaw", sampleRate: 8000, channels: 1 },
            customParameters: this.parameters,
          },
          streamSid: this.streamSid,
        });
        this.started = true;
        resolve();
      };
      ws.onmessage = (e) => this.onMessage(e.data);
      ws.onclose = (e) => {
        this.started = false;
        if (!opened) reject(new Error(`could not open ${this.url} (${e.code})`));
        this.emit("closed", { code: e.code, reason: e.reason, byUs: this.stopSent });
      };
    });
  }

  /** One captured 20 ms frame. Frames are numbered by capture time, so a dropped frame leaves a gap. */
  sendAudio(frame) {
    const index = this.frameIndex++;
    if (!this.started) return;
    if (this.ws.bufferedAmount > MAX_BUFFERED_BYTES) {
      this.stats.framesDropped++;
      return;
    }
    this.chunk++;
    this.send({
      event: "media",
      sequenceNumber: this.nextSeq(),
      media: { track: "inbound", chunk: String(this.chunk), timestamp: String(index * FRAME_MS), payload: toBase64(frame) },
      streamSid: this.streamSid,
    });
    this.stats.framesSent++;
  }

  /** Echo a mark once its audio has played (or was cleared). */
  echoMark(name) {
    if (!this.started) return;
    this.send({ event: "mark", sequenceNumber: this.nextSeq(), streamSid: this.streamSid, mark: { name } });
    this.stats.marksEchoed++;
  }

  /** Hang up as Twilio does: stop, then close. */
  hangUp() {
    if (this.started && !this.stopSent) {
      this.send({
        event: "stop",
        sequenceNumber: this.nextSeq(),
        stop: { accountSid: this.accountSid, callSid: this.callSid },
        streamSid: this.streamSid,
      });
      this.stopSent = true;
    }
    this.started = false;
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000, "caller hung up");
  }

  onMessage(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return this.emit("protocol_error", { detail: "not JSON" });
    }
    if (msg.streamSid !== this.streamSid) {
      return this.emit("protocol_error", { detail: `${msg.event} for unknown streamSid` });
    }
    switch (msg.event) {
      case "media": {
        const audio = fromBase64(msg.media?.payload ?? "");
        this.stats.mediaReceived++;
        this.stats.bytesReceived += audio.length;
        return this.emit("media", { audio });
      }
      case "mark":
        return this.emit("mark", { name: String(msg.mark?.name ?? "") });
      case "clear":
        return this.emit("clear", {});
      default:
        return this.emit("protocol_error", { detail: `unknown event ${msg.event}` });
    }
  }

  nextSeq() {
    return String(++this.seq);
  }

  send(message) {
    this.ws.send(JSON.stringify(message));
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

// The softphone: Call places a call the way Twilio would, Hang up ends it; transcript and latency come from the
// server's dev event stream for the call.
import { AudioEngine } from "./audio.js";
import { TwilioMediaStream } from "./call.js";
import { LatencyTable } from "./latency.js";
import { Transcript } from "./transcript.js";

const EVENTS_AFTER_HANG_UP_MS = 5000; // keep listening for the call's last events (its summary, call_ended)
const $ = (id) => document.getElementById(id);

const ui = {
  call: $("call"),
  hangUp: $("hang-up"),
  status: $("status"),
  timer: $("timer"),
  echo: $("echo-cancellation"),
  mic: $("mic-level"),
  bot: $("bot-level"),
};
const transcript = new Transcript($("transcript"));
const latency = new LatencyTable($("latency"));

// A record of what happened, for tests and for the curious (window.voicebot in the console).
const journal = [];
const waiters = [];
function record(kind, detail = {}) {
  journal.push({ kind, t: performance.now(), ...detail });
  for (const w of waiters.slice()) {
    const found = journal.filter((e) => e.kind === w.kind && w.match(e));
    if (found.length >= w.count) {
      waiters.splice(waiters.indexOf(w), 1);
      w.resolve(found[w.count - 1]);
    }
  }
}
let lastStats = null;
window.voicebot = {
  journal,
  /** Resolves with the count-th event of this kind that matches (at once if it already happened). */
  until(kind, count = 1, match = () => true) {
    const found = journal.filter((e) => e.kind === kind && match(e));
    if (found.length >= count) return Promise.resolve(found[count - 1]);
    return new Promise((resolve) => waiters.push({ kind, count, match, resolve }));
  },
  /** The media stream's counters (of the last call once it has ended). */
  get stats() {
    return current?.stream?.stats ?? lastStats;
  },
};

let current = null; // the call in progress: {engine, stream, events, startedAt, timer, ended}

function setStatus(text, kind = "") {
  ui.status.textContent = text;
  ui.status.className = kind;
}

function showLevel(meter, rms) {
  const db = 20 * Math.log10(Math.max(rms, 1e-5)); // -100 .. 0 dBFS
  meter.value = Math.max(0, Math.min(1, (db + 60) / 60));
}

async function createCall() {
  const response = await fetch("/dev/call", { method: "POST", headers: { "X-Voicebot-Dev": "1" } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `POST /dev/call: HTTP ${response.status}`);
  return body;
}

/** Subscribe to the call's dev events; resolves once subscribed, so no event of the call is missed. */
function openEvents(callSid) {
  return new Promise((resolve, reject) => {
    const source = new EventSource(`/dev/events?call_sid=${encodeURIComponent(callSid)}`);
    source.onopen = () => resolve(source);
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) reject(new Error("the event stream was refused"));
    };
    source.onmessage = (e) => onDevEvent(JSON.parse(e.data), source);
  });
}

function onDevEvent(event, source) {
  record(`event:${event.type}`, { event });
  switch (event.type) {
    case "user":
      return transcript.user(event.text, event.final);
    case "assistant":
      return transcript.assistant(event.text, event.interrupted);
    case "turn":
      return latency.add(event.latency_ms ?? {});
    case "barge_in":
      return transcript.note(`barge-in: ${event.stage}`, "barge-in");
    case "call_ended":
      transcript.note(`call ended: ${event.reason}`);
      source.close();
      return undefined;
    default:
      return undefined;
  }
}

async function call() {
  ui.call.disabled = true;
  ui.echo.disabled = true;
  transcript.clear();
  latency.clear();
  record("click");
  setStatus("Calling…");
  const engine = new AudioEngine(); // created inside the click: autoplay policy
  const session = { engine, stream: null, events: null, startedAt: 0, timer: 0 };
  current = session;
  try {
    const [dial] = await Promise.all([createCall(), engine.start({ echoCancellation: ui.echo.checked })]);
    record("dialled", { callSid: dial.call_sid, sampleRate: engine.sampleRate });
    session.events = await openEvents(dial.call_sid);
    const stream = new TwilioMediaStream({
      url: dial.stream_url,
      token: dial.token,
      callSid: dial.call_sid,
      accountSid: dial.account_sid,
    });
    session.stream = stream;
    wire(session);
    await stream.open();
    record("started", { streamSid: stream.streamSid });
    session.startedAt = performance.now();
    session.timer = setInterval(() => tick(session), 250);
    setStatus("Connected", "live");
    transcript.note(`call ${dial.call_sid} connected`);
    ui.hangUp.disabled = false;
  } catch (err) {
    record("error", { message: String(err.message ?? err) });
    setStatus(`Call failed: ${err.message ?? err}`, "error");
    await end(session);
  }
}

function wire(session) {
  const { engine, stream } = session;
  engine.addEventListener("frame", (e) => {
    stream.sendAudio(e.detail.frame);
    showLevel(ui.mic, e.detail.rms);
  });
  engine.addEventListener("level", (e) => showLevel(ui.bot, e.detail.rms));
  engine.addEventListener("mark", (e) => {
    stream.echoMark(e.detail.name);
    record("mark_echoed", { name: e.detail.name, cleared: e.detail.cleared });
  });
  engine.addEventListener("playing", () => record("audio_start"));
  engine.addEventListener("stopped", (e) => {
    record("audio_stop", { cut: e.detail.cut, unplayedMs: e.detail.unplayedMs });
    showLevel(ui.bot, 0);
  });
  engine.addEventListener("overflow", (e) => record("audio_overflow", { dropped: e.detail.dropped }));
  stream.addEventListener("media", (e) => {
    if (stream.stats.mediaReceived === 1) record("first_media");
    engine.play(e.detail.audio);
  });
  stream.addEventListener("mark", (e) => {
    record("mark_received", { name: e.detail.name });
    engine.mark(e.detail.name);
  });
  stream.addEventListener("clear", () => {
    record("clear_received");
    engine.clear();
  });
  stream.addEventListener("protocol_error", (e) => {
    record("protocol_error", e.detail);
    console.warn("media stream:", e.detail.detail);
  });
  stream.addEventListener("closed", (e) => {
    const { code, reason, byUs } = e.detail;
    record("ws_closed", { code, reason, byUs });
    if (!byUs) {
      setStatus(`The bot ended the call (${code}${reason ? ` ${reason}` : ""})`);
      end(session);
    }
  });
}

function tick(session) {
  const s = Math.floor((performance.now() - session.startedAt) / 1000);
  ui.timer.textContent = `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

async function hangUp() {
  const session = current;
  if (!session) return;
  record("hang_up");
  session.stream?.hangUp();
  setStatus("Hung up");
  transcript.note("you hung up");
  await end(session);
}

async function end(session) {
  if (!session || session.ended) return;
  session.ended = true;
  clearInterval(session.timer);
  ui.hangUp.disabled = true;
  session.stream?.hangUp();
  await session.engine.close().catch(() => {});
  showLevel(ui.mic, 0);
  showLevel(ui.bot, 0);
  const events = session.events;
  if (events) setTimeout(() => events.close(), EVENTS_AFTER_HANG_UP_MS);
  lastStats = session.stream?.stats ?? lastStats;
  if (current === session) current = null;
  ui.call.disabled = false;
  ui.echo.disabled = false;
  record("ended");
}

ui.call.addEventListener("click", call);
ui.hangUp.addEventListener("click", hangUp);
window.addEventListener("pagehide", () => current?.stream?.hangUp());
record("ready");

// The per-turn latency chain: ms from the moment the caller stopped speaking to each stage of the reply.

export const STAGES = [
  ["stt_final", "STT final"],
  ["llm_request", "LLM request"],
  ["first_token", "first token"],
  ["first_segment", "first segment"],
  ["tts_request", "TTS request"],
  ["tts_first_byte", "TTS first byte"],
  ["first_media", "first media"],
  ["first_mark", "first mark"],
];

function cell(tag, text, className = "") {
  const el = document.createElement(tag);
  el.textContent = text;
  if (className) el.className = className;
  return el;
}

export class LatencyTable {
  constructor(table) {
    this.table = table;
    this.turns = 0;
    const head = document.createElement("tr");
    head.append(cell("th", "turn"), ...STAGES.map(([, label]) => cell("th", label)), cell("th", "chain"));
    table.createTHead().append(head);
    this.body = table.createTBody();
  }

  clear() {
    this.body.replaceChildren();
    this.turns = 0;
  }

  add(latency) {
    const row = document.createElement("tr");
    row.append(cell("td", String(++this.turns)));
    for (const [key] of STAGES) {
      const ms = latency[key];
      row.append(cell("td", typeof ms === "number" ? String(Math.round(ms)) : "–", "ms"));
    }
    const chain = cell("td", "", "chain");
    chain.append(this.waterfall(latency));
    row.append(chain);
    this.body.append(row);
  }

  /** One bar per turn: each stage's share of the time to the first mark (or the last stage reached). */
  waterfall(latency) {
    const bar = document.createElement("div");
    bar.className = "waterfall";
    const known = STAGES.filter(([key]) => typeof latency[key] === "number");
    const total = Math.max(1, ...known.map(([key]) => latency[key]));
    let previous = 0;
    known.forEach(([key, label]) => {
      const ms = Math.max(previous, latency[key]);
      const part = document.createElement("span");
      part.className = `stage s${STAGES.findIndex(([k]) => k === key)}`;
      part.style.width = `${(100 * (ms - previous)) / total}%`;
      part.title = `${label}: ${Math.round(latency[key])} ms (+${Math.round(ms - previous)})`;
      bar.append(part);
      previous = ms;
    });
    return bar;
  }
}

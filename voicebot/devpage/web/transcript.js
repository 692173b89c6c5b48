// The live transcript: both sides of the call plus short notes (barge-in, call state).

function line(kind, who, text) {
  const row = document.createElement("li");
  row.className = `line ${kind}`;
  const label = document.createElement("span");
  label.className = "who";
  label.textContent = who;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  row.append(label, body);
  return row;
}

export class Transcript {
  constructor(list) {
    this.list = list;
    this.pendingUser = null; // the caller's line still being recognised (interim results)
  }

  clear() {
    this.list.replaceChildren();
    this.pendingUser = null;
  }

  /** An interim (final=false) or final transcript of the caller. */
  user(text, final) {
    if (!this.pendingUser) {
      this.pendingUser = line("user interim", "You", "");
      this.append(this.pendingUser);
    }
    this.pendingUser.querySelector(".text").textContent = text;
    if (final) {
      this.pendingUser.classList.replace("interim", "final");
      this.pendingUser = null;
    }
  }

  /** The bot's turn as the caller heard it; it ended early if interrupted. */
  assistant(text, interrupted) {
    const row = line("assistant", "Bot", text || "…");
    if (interrupted) {
      row.classList.add("interrupted");
      const tag = document.createElement("span");
      tag.className = "tag";
      tag.textContent = "interrupted";
      row.append(tag);
    }
    // A turn is reported when it ends: by then the caller's interrupting words may already be shown.
    if (this.pendingUser) this.list.insertBefore(row, this.pendingUser);
    else this.append(row);
  }

  note(text, kind = "note") {
    this.append(line(`note ${kind}`, "", text));
  }

  append(row) {
    this.list.append(row);
    row.scrollIntoView({ block: "nearest" });
  }
}

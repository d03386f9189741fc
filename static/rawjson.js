// Reading messages without losing what was stored. A payload is kept as the exact slice of
// the text the server sent (its stored text: duplicate keys, 1.0, big integers and escapes
// intact), never parsed and re-serialised; only the envelope's other members are parsed.

const WS = new Set([" ", "\t", "\n", "\r"]);

function skipSpace(text, i) {
  while (i < text.length && WS.has(text[i])) i++;
  return i;
}

function stringEnd(text, i) {
  // text[i] is the opening quote; the index just past the closing one.
  for (let j = i + 1; j < text.length; j++) {
    const c = text[j];
    if (c === "\\") j++;
    else if (c === '"') return j + 1;
  }
  throw new SyntaxError("unterminated string");
}

/** The index just past the JSON value that starts at (or after spaces from) i. */
export function valueEnd(text, i) {
  i = skipSpace(text, i);
  const c = text[i];
  if (c === '"') return stringEnd(text, i);
  if (c === "{" || c === "[") {
    let depth = 0;
    for (let j = i; j < text.length; j++) {
      const d = text[j];
      if (d === '"') j = stringEnd(text, j) - 1;
      else if (d === "{" || d === "[") depth++;
      else if (d === "}" || d === "]") {
        depth--;
        if (depth === 0) return j + 1;
      }
    }
    throw new SyntaxError("unterminated value");
  }
  let j = i;
  while (j < text.length && !WS.has(text[j]) && !",]}:".includes(text[j])) j++;
  if (j === i) throw new SyntaxError(`unexpected ${JSON.stringify(text[i] || "end")} at ${i}`);
  return j;
}

/** [key, valueStart, valueEnd] for each member of the object that starts at i. */
function members(text, i) {
  i = skipSpace(text, i);
  if (text[i] !== "{") throw new SyntaxError("expected an object");
  const out = [];
  i = skipSpace(text, i + 1);
  if (text[i] === "}") return out;
  for (;;) {
    const keyEnd = stringEnd(text, i);
    const key = JSON.parse(text.slice(i, keyEnd));
    i = skipSpace(text, keyEnd);
    if (text[i] !== ":") throw new SyntaxError("expected ':'");
    const start = skipSpace(text, i + 1);
    const end = valueEnd(text, start);
    out.push([key, start, end]);
    i = skipSpace(text, end);
    if (text[i] === "}") return out;
    if (text[i] !== ",") throw new SyntaxError("expected ',' or '}'");
    i = skipSpace(text, i + 1);
  }
}

/** A message object at text[i]: its members parsed, except `payload`, kept as raw text in `raw`. */
export function readMessage(text, i = 0) {
  const message = {};
  for (const [key, start, end] of members(text, i)) {
    if (key === "payload") message.raw = text.slice(start, end);
    else message[key] = JSON.parse(text.slice(start, end));
  }
  return message;
}

/** A JSON array of messages (a GET /messages answer). */
export function readMessageArray(text) {
  let i = skipSpace(text, 0);
  if (text[i] !== "[") throw new SyntaxError("expected a list");
  const out = [];
  i = skipSpace(text, i + 1);
  if (text[i] === "]") return out;
  for (;;) {
    const end = valueEnd(text, i);
    out.push(readMessage(text, i));
    i = skipSpace(text, end);
    if (text[i] === "]") return out;
    if (text[i] !== ",") throw new SyntaxError("expected ',' or ']'");
    i = skipSpace(text, i + 1);
  }
}

/** A WebSocket frame: {event, data}; a message's data is read with readMessage. */
export function readFrame(text) {
  const frame = {};
  let dataAt = -1;
  for (const [key, start, end] of members(text, 0)) {
    if (key === "data") dataAt = start;
    else frame[key] = JSON.parse(text.slice(start, end));
    if (key === "data") frame.dataEnd = end;
  }
  if (dataAt >= 0) {
    frame.data = frame.event === "message" ? readMessage(text, dataAt) : JSON.parse(text.slice(dataAt, frame.dataEnd));
  }
  delete frame.dataEnd;
  return frame;
}

/** The raw text laid out with two-space indents, token by token: nothing is re-encoded. */
export function indent(raw) {
  let out = "";
  let depth = 0;
  let i = skipSpace(raw, 0);
  const nl = () => "\n" + "  ".repeat(depth);
  while (i < raw.length) {
    const c = raw[i];
    if (c === "{" || c === "[") {
      const j = skipSpace(raw, i + 1);
      const close = c === "{" ? "}" : "]";
      if (raw[j] === close) { out += c + close; i = j + 1; }
      else { depth++; out += c + nl(); i = j; }
      continue;
    }
    if (c === "}" || c === "]") { depth--; out += nl() + c; i = skipSpace(raw, i + 1); continue; }
    if (c === ",") { out += "," + nl(); i = skipSpace(raw, i + 1); continue; }
    if (c === ":") { out += ": "; i = skipSpace(raw, i + 1); continue; }
    const end = valueEnd(raw, i);
    out += raw.slice(i, end);
    i = skipSpace(raw, end);
  }
  return out;
}

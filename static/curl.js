// Where a channel's writes go, and the curl command that sends a document there.

/** The path that writes to a channel ("default" keeps the original /messages). */
export function writePath(channel) {
  return !channel || channel === "default" ? "/messages" : `/channels/${encodeURIComponent(channel)}/messages`;
}

/** Single-quoted for a POSIX shell: exact for any text (a ' becomes '\''). */
export function shellQuote(text) {
  return `'${text.replaceAll("'", `'\\''`)}'`;
}

/** A ready curl command that POSTs `body` (sent byte for byte) to this host and channel. */
export function curlCommand(body, channel, tokenRequired) {
  const url = `${location.origin}${writePath(channel)}`;
  const parts = ["curl", "-X", "POST", shellQuote(url), "-H", shellQuote("Content-Type: application/json")];
  if (tokenRequired) parts.push("-H", shellQuote("Authorization: Bearer <INGEST_TOKEN>"));
  parts.push("--data-binary", shellQuote(body));
  return parts.join(" ");
}

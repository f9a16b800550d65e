// fornalha chat page: multi-turn chat streaming from /v1/chat/completions (OpenAI SSE chunks, `data: [DONE]`).
// Every answer keeps its completion id; thumbs up/down (with an optional comment) go to /v1/feedback.
"use strict";
const $ = (id) => document.getElementById(id);
const history = [];          // [{role, content}] of the conversation so far (without the system prompt)
let modelName = null;
let controller = null;       // AbortController of the answer being streamed

function setStatus(text) { $("status").textContent = text; }

async function loadModel() {
  try {
    const r = await fetch("/v1/models");
    const body = await r.json();
    modelName = body.data && body.data.length ? body.data[0].id : null;
    $("model-name").textContent = modelName || "(no model)";
  } catch (e) {
    $("model-name").textContent = "(models unavailable)";
  }
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  div.appendChild(body);
  $("log").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function showSources(div, sources) {
  // `sources` (fornalha serve --docs): the passages quoted in the prompt, [{id, title, path, text, score}]
  if (!Array.isArray(sources) || !sources.length || div.querySelector(".sources")) return;
  const box = document.createElement("div");
  box.className = "sources";
  box.textContent = "Sources:";
  const list = document.createElement("ol");
  for (const s of sources) {
    const li = document.createElement("li");
    if (typeof s === "string") { li.textContent = s; list.appendChild(li); continue; }
    const item = document.createElement("details");
    const head = document.createElement("summary");
    head.textContent = (s.title || s.path || s.id || s.url) + (s.path && s.title !== s.path ? " — " + s.path : "")
      + (typeof s.score === "number" ? " (score " + s.score.toPrecision(3) + ")" : "");
    const text = document.createElement("blockquote");
    text.textContent = s.text || "";
    item.append(head, text);
    li.appendChild(item);
    list.appendChild(li);
  }
  box.appendChild(list);
  div.appendChild(box);
}

function showConversation(div, info) {
  // `conversation`: the server dropped the oldest messages to fit the context window; say so and grey them out
  if (!info || !info.dropped_messages || div.querySelector(".context-note")) return;
  const note = document.createElement("div");
  note.className = "context-note";
  note.textContent = info.note || (info.dropped_messages + " oldest messages left out to fit the context window");
  div.insertBefore(note, div.firstChild);
  const shown = Array.from($("log").querySelectorAll(".msg")).filter((m) => m !== div);
  shown.slice(0, info.dropped_messages).forEach((m) => m.classList.add("forgotten"));
}

function addTools(div, completionId) {
  const tools = document.createElement("div");
  tools.className = "tools";
  const copy = document.createElement("button");
  copy.type = "button"; copy.textContent = "Copy"; copy.className = "copy";
  copy.onclick = async () => {
    const text = div.querySelector(".text").textContent;
    try { await navigator.clipboard.writeText(text); setStatus("Copied."); }
    catch (e) { setStatus("Copy failed: " + e); }
  };
  const comment = document.createElement("input");
  comment.type = "text"; comment.placeholder = "Comment (optional)"; comment.className = "comment";
  comment.maxLength = 4000;
  const up = document.createElement("button");
  up.type = "button"; up.textContent = "▲ Good"; up.title = "Good answer"; up.setAttribute("aria-label", "thumbs up"); up.className = "rate-up";
  const down = document.createElement("button");
  down.type = "button"; down.textContent = "▼ Bad"; down.title = "Bad answer"; down.setAttribute("aria-label", "thumbs down"); down.className = "rate-down";
  const rate = async (rating, button) => {
    if (!completionId) { setStatus("This answer has no completion id; it cannot be rated."); return; }
    const payload = { completion_id: completionId, rating: rating };
    if (comment.value.trim()) payload.comment = comment.value.trim();
    try {
      const r = await fetch("/v1/feedback", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(payload),
      });
      const body = await r.json();
      if (!r.ok) throw new Error(body.error ? body.error.message : r.status);
      up.classList.toggle("chosen", rating === 1);
      down.classList.toggle("chosen", rating === -1);
      div.dataset.rated = String(rating);
      setStatus("Thanks, feedback saved.");
    } catch (e) { setStatus("Feedback failed: " + e.message); }
  };
  up.onclick = () => rate(1, up);
  down.onclick = () => rate(-1, down);
  tools.append(copy, up, down, comment);
  div.appendChild(tools);
}

async function send(text) {
  history.push({ role: "user", content: text });
  addMessage("user", text);
  const div = addMessage("assistant", "");
  const out = div.querySelector(".text");
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...history);
  const request = {
    model: modelName || undefined, messages: messages, stream: true,
    temperature: Number($("temperature").value), max_tokens: parseInt($("max-tokens").value, 10),
  };
  controller = new AbortController();
  $("send").disabled = true; $("stop").disabled = false;
  setStatus("Generating…");
  let completionId = null;
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(request), signal: controller.signal,
    });
    if (!r.ok) {
      const body = await r.json().catch(() => ({}));
      throw new Error(body.error ? body.error.message : "HTTP " + r.status);
    }
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.id) { completionId = chunk.id; div.dataset.completionId = chunk.id; }
          const choice = chunk.choices && chunk.choices[0];
          if (choice && choice.delta && choice.delta.content) out.textContent += choice.delta.content;
          if (chunk.sources) showSources(div, chunk.sources);
          if (chunk.conversation) showConversation(div, chunk.conversation);
        }
      }
    }
    setStatus("");
  } catch (e) {
    if (e.name === "AbortError") { setStatus("Stopped."); div.dataset.stopped = "true"; div.classList.add("stopped"); }
    else { div.classList.add("error"); out.textContent += (out.textContent ? "\n" : "") + "Error: " + e.message; setStatus(""); }
  } finally {
    controller = null;
    $("send").disabled = false; $("stop").disabled = true;
    div.dataset.done = "true";
  }
  history.push({ role: "assistant", content: out.textContent });
  addTools(div, completionId);
}

$("composer").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("input").value.trim();
  if (!text || controller) return;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); $("composer").requestSubmit(); }
});
$("stop").addEventListener("click", () => { if (controller) controller.abort(); });
$("new-chat").addEventListener("click", () => { history.length = 0; $("log").replaceChildren(); setStatus(""); });
loadModel();

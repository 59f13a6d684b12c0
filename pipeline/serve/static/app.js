// The results page: search by text or image, show hits with their boxes, play a hit from its start.
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_BOXES = 6; // boxes drawn per thumbnail; more only clutter a card

function fmtTime(s) {
  const m = Math.floor(s / 60);
  const sec = (s - 60 * m).toFixed(1).padStart(4, "0");
  return `${m}:${sec}`;
}

function fmtScore(x) {
  return (Math.abs(x) < 0.0005 ? 0 : x).toFixed(3); // never "-0.000"
}

function basename(path) {
  return path.split(/[\\/]/).pop();
}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function say(text, kind = "") {
  const box = $("message");
  box.textContent = text;
  box.className = `message ${kind}`;
}

function problem(body, status) {
  if (body && typeof body.detail === "string") return body.detail;
  if (body && Array.isArray(body.detail)) {
    return body.detail.map((e) => `${(e.loc || []).filter((p) => p !== "body").join(".")}: ${e.msg}`).join("; ");
  }
  return `the server answered ${status}`;
}

async function api(url, options) {
  const res = await fetch(url, { credentials: "same-origin", ...options });
  if (res.status === 401) {
    window.location.href = "/login";
    throw new Error("sign in first");
  }
  const body = await res.json().catch(() => null);
  if (!res.ok) throw new Error(problem(body, res.status));
  return body;
}

function number(id) {
  const v = $(id).value.trim();
  return v === "" ? null : Number(v);
}

function filters() {
  const f = {};
  const classes = $("classes").value.split(",").map((s) => s.trim()).filter(Boolean);
  if (classes.length) f.classes = classes;
  if ($("path_glob").value.trim()) f.path_glob = $("path_glob").value.trim();
  const from = number("t_from");
  const to = number("t_to");
  if (from !== null || to !== null) f.time_range = [from ?? 0, to ?? 1e9];
  if (number("min_track_duration") !== null) f.min_track_duration = number("min_track_duration");
  if (number("min_score") !== null) f.min_score = number("min_score");
  return Object.keys(f).length ? f : null;
}

async function search(event) {
  event.preventDefault();
  const image = $("image").files[0];
  const params = {
    k: Number($("k").value) || 12,
    level: $("level").value,
    rerank: $("rerank").value,
    filters: filters(),
    mode: $("mode").value || null, // an image sets it to vector (syncMode); "": the level's default
  };
  let options;
  if (image) {
    const form = new FormData();
    for (const [key, value] of Object.entries(params)) {
      if (value !== null) form.append(key, typeof value === "object" ? JSON.stringify(value) : String(value));
    }
    form.append("image", image);
    options = { method: "POST", body: form };
  } else {
    options = {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ text: $("text").value, ...params }),
    };
  }
  $("go").disabled = true;
  say("Searching…");
  try {
    const body = await api("/api/search", options);
    render(body);
    const how = (body.mode && body.mode !== "vector" ? `, ${body.mode} mode` : "") +
      (body.rerank ? `, re-ranked by ${body.rerank}` : "");
    say(`${body.count} result${body.count === 1 ? "" : "s"} in ${Math.round(body.took_ms)} ms${how}`);
  } catch (err) {
    $("results").replaceChildren();
    say(err.message, "error");
  } finally {
    $("go").disabled = false;
  }
}

function thumb(result) {
  const wrap = el("div", "thumb");
  const img = el("img");
  img.src = `/api/thumbnails/${encodeURIComponent(result.thumb_id)}`;
  img.alt = `${basename(result.path)} at ${fmtTime(result.start_s)}`;
  img.loading = "lazy";
  wrap.append(img);
  const boxes = [...result.boxes].sort((a, b) => b.conf - a.conf).slice(0, MAX_BOXES);
  for (const b of boxes) {
    const [x1, y1, x2, y2] = b.box;
    const box = el("div", "box");
    Object.assign(box.style, {
      left: `${100 * x1}%`,
      top: `${100 * y1}%`,
      width: `${100 * (x2 - x1)}%`,
      height: `${100 * (y2 - y1)}%`,
    });
    box.append(el("span", "label", b.class_name));
    wrap.append(box);
  }
  const span = result.end_s > result.start_s ? `${fmtTime(result.start_s)} – ${fmtTime(result.end_s)}` : "";
  wrap.append(el("span", "span-badge", span || fmtTime(result.start_s)));
  return wrap;
}

// A segment's caption (the captioner's description of its keyframe), as text; none when captions are off.
function captionLine(result) {
  if (!result.caption) return null;
  const line = el("div", "caption small", result.caption);
  line.title = result.caption;
  return line;
}

// The text read on screen in a segment (its lines joined); none where OCR is off or read nothing.
function screenLine(result) {
  if (!result.screen_text) return null;
  const text = result.screen_text.split("\n").join(" · ");
  const line = el("div", "screen-text small", text);
  line.title = `On screen: ${text}`;
  return line;
}

function render(body) {
  if (body.level === "texts") return renderTexts(body);
  if (body.level === "speech") return renderSpeech(body);
  const grid = $("results");
  grid.replaceChildren();
  for (const r of body.results) {
    const card = el("button", "result");
    card.type = "button";
    card.dataset.videoId = r.video_id;
    card.dataset.start = String(r.start_s);
    card.title = `Play ${basename(r.path)} from ${fmtTime(r.start_s)}`;
    const meta = el("div", "meta");
    const top = el("div", "row");
    top.append(el("span", "rank", `#${r.rank}`), el("span", "score", fmtScore(r.score)));
    const name = el("div", "name", basename(r.path));
    const sub = el("div", "row small");
    sub.append(el("span", "", r.class_name ? `${r.class_name} track` : r.level.replace(/s$/, "")));
    if (r.stage1_score !== r.score) sub.append(el("span", "", `stage 1 ${fmtScore(r.stage1_score)}`));
    meta.append(top, name, sub);
    const caption = captionLine(r);
    if (caption) meta.append(caption);
    const screen = screenLine(r);
    if (screen) meta.append(screen);
    card.append(thumb(r), meta);
    card.addEventListener("click", () => play(r, card));
    grid.append(card);
  }
}

function play(result, card) {
  document.querySelectorAll(".result.active").forEach((c) => c.classList.remove("active"));
  card.classList.add("active");
  const video = $("video");
  const src = `/media/${encodeURIComponent(result.video_id)}`;
  const seek = () => {
    video.currentTime = result.start_s;
    video.play().catch(() => {}); // autoplay may be refused; the player is still at the start
  };
  $("player").hidden = false;
  $("now").textContent = `${basename(result.path)} · from ${fmtTime(result.start_s)}`;
  $("now").dataset.name = basename(result.path);
  if (video.getAttribute("src") !== src) {
    video.addEventListener("loadedmetadata", seek, { once: true });
    video.src = src;
  } else if (video.readyState >= 1) {
    seek();
  } else {
    video.addEventListener("loadedmetadata", seek, { once: true });
  }
}

// Text and hybrid modes search words: segments (captions, on-screen text, speech), on-screen text and speech have
// them, frames and tracks do not; an image query is always a vector search.
const WORD_LEVELS = ["segments", "texts", "speech"];

function syncMode() {
  const image = Boolean($("image").files[0]);
  if (image) $("mode").value = "vector";
  $("mode").disabled = image;
  const words = $("mode").value === "text" || $("mode").value === "hybrid";
  if (words && !WORD_LEVELS.includes($("level").value)) $("level").value = "segments";
  for (const option of $("level").options) {
    if (!WORD_LEVELS.includes(option.value)) option.disabled = words;
  }
}

function pickImage() {
  const file = $("image").files[0];
  $("image-label").textContent = file ? file.name : "Image…";
  $("clear-image").hidden = !file;
  $("text").disabled = Boolean(file);
  $("text").placeholder = file ? "Searching by the chosen image" : $("text").dataset.placeholder;
}

async function start() {
  $("text").dataset.placeholder = $("text").placeholder;
  $("search").addEventListener("submit", search);
  $("video").addEventListener("error", () => {
    const name = $("now").dataset.name || "this video";
    $("now").textContent = `${name}: this browser cannot play the file's format (it is still searchable)`;
  });
  $("image").addEventListener("change", pickImage);
  $("level").addEventListener("change", levelChanged);
  $("image").addEventListener("change", syncMode);
  $("mode").addEventListener("change", syncMode);
  syncMode(); // a reload may restore the form with a caption mode chosen
  $("clear-image").addEventListener("click", () => {
    $("image").value = "";
    pickImage();
    syncMode();
  });
  try {
    const info = await api("/api/info");
    const select = $("rerank");
    select.append(new Option(`Default (${info.default_rerank || "none"})`, "default"));
    select.append(new Option("None", "none"));
    for (const name of info.rerankers) select.append(new Option(name, name));
    $("k").max = String(info.max_k);
    $("text").maxLength = info.max_query_chars;
    const status = $("status");
    status.append(el("span", "", `${info.videos} video${info.videos === 1 ? "" : "s"} indexed`));
    if (info.random_weights) status.append(el("span", "warn", "random weights: results carry no meaning"));
    textLevelAvailable(info.texts);
    speechLevelAvailable(info.speech);
    levelChanged(); // the browser may have restored the level chosen before a reload
  } catch (err) {
    say(err.message, "error");
  }
}

// -- On-screen text (level "texts"): hits are text spans, searched by words ---------------------------------

const TEXT_ONLY_OFF = ["rerank", "image", "classes", "min_track_duration"]; // what does not apply to text

function textLevelAvailable(available) {
  const option = $("level").querySelector('option[value="texts"]');
  option.disabled = !available;
  option.title = available ? "" : "This database was indexed without reading on-screen text";
}

function speechLevelAvailable(available) {
  const option = $("level").querySelector('option[value="speech"]');
  option.disabled = !available;
  option.title = available ? "" : "This database holds no transcribed speech";
}

function levelChanged() {
  const level = $("level").value;
  const texts = level === "texts" || level === "speech"; // searched by words and meaning, never by an image
  if (texts && $("image").files[0]) {
    $("image").value = ""; // words only: a chosen image is let go
    pickImage();
  }
  for (const id of TEXT_ONLY_OFF) $(id).disabled = texts;
  $("image").closest("label").classList.toggle("disabled", texts);
  // On-screen text is read by trained OCR models: the random-weights warning is about the vector levels.
  document.querySelectorAll("#status .warn").forEach((w) => (w.hidden = texts));
  const hint = { texts: "Words shown on screen, e.g. “gate 7 closed”", speech: "What is said, or what it means" };
  $("text").placeholder = hint[level] || $("text").dataset.placeholder;
}

function markedText(text, query) {
  // The query's words where they occur in the text read, case-insensitively (an OCR error leaves a word unmarked).
  const node = el("div", "ocr-text");
  const words = query.toLowerCase().split(/\s+/).filter((w) => w.length > 0);
  const lower = text.toLowerCase();
  const marked = new Array(text.length).fill(false);
  for (const w of words) {
    for (let i = lower.indexOf(w); i >= 0; i = lower.indexOf(w, i + 1)) marked.fill(true, i, i + w.length);
  }
  let i = 0;
  while (i < text.length) {
    let j = i;
    while (j < text.length && marked[j] === marked[i]) j++;
    node.append(marked[i] ? el("mark", "", text.slice(i, j)) : document.createTextNode(text.slice(i, j)));
    i = j;
  }
  return node;
}

function textThumb(result) {
  // The image keeps its own aspect ratio here (no letterboxing), so the box lands on the text read.
  const wrap = el("div", "thumb exact");
  const img = el("img");
  img.src = `/api/thumbnails/${encodeURIComponent(result.thumb_id)}`;
  img.alt = `${basename(result.path)} at ${fmtTime(result.best_t)}`;
  img.loading = "lazy";
  const [x1, y1, x2, y2] = result.box;
  const box = el("div", "box text-box");
  Object.assign(box.style, {
    left: `${100 * x1}%`,
    top: `${100 * y1}%`,
    width: `${100 * (x2 - x1)}%`,
    height: `${100 * (y2 - y1)}%`,
  });
  wrap.append(img, box, el("span", "span-badge", `${fmtTime(result.start_s)} – ${fmtTime(result.end_s)}`));
  return wrap;
}

function renderTexts(body) {
  const grid = $("results");
  grid.replaceChildren();
  const query = $("text").value;
  for (const r of body.results) {
    const card = el("button", "result text-result");
    card.type = "button";
    card.dataset.videoId = r.video_id;
    card.dataset.start = String(r.start_s);
    card.dataset.end = String(r.end_s);
    card.title = `Play ${basename(r.path)} from ${fmtTime(r.start_s)}, where “${r.text}” is on screen`;
    const meta = el("div", "meta");
    const top = el("div", "row");
    top.append(el("span", "rank", `#${r.rank}`), el("span", "score", fmtScore(r.score)));
    const sub = el("div", "row small");
    sub.append(el("span", "", "on-screen text"), el("span", "", `read at ${Math.round(100 * r.conf)}%`));
    meta.append(top, markedText(r.text, query), el("div", "name", basename(r.path)), sub);
    card.append(textThumb(r), meta);
    card.addEventListener("click", () => {
      play(r, card);
      $("now").textContent = `${basename(r.path)} · “${r.text}” ${fmtTime(r.start_s)} – ${fmtTime(r.end_s)}`;
    });
    grid.append(card);
  }
}

// -- Speech (level "speech"): hits are utterances, by their words and meaning --------------------------------

function renderSpeech(body) {
  const grid = $("results");
  grid.replaceChildren();
  const query = $("text").value;
  for (const r of body.results) {
    const card = el("button", "result text-result speech-result");
    card.type = "button";
    card.dataset.videoId = r.video_id;
    card.dataset.start = String(r.start_s);
    card.dataset.end = String(r.end_s);
    card.title = `Play ${basename(r.path)} from ${fmtTime(r.start_s)}, where this is said`;
    const meta = el("div", "meta");
    const top = el("div", "row");
    top.append(el("span", "rank", `#${r.rank}`), el("span", "score", fmtScore(r.score)));
    const sub = el("div", "row small");
    const matched = (r.words || []).length;
    sub.append(
      el("span", "", `said ${fmtTime(r.start_s)} – ${fmtTime(r.end_s)}`),
      el("span", "", matched ? `${matched} word${matched === 1 ? "" : "s"} matched` : "by meaning"),
    );
    meta.append(top, markedText(r.text, query), el("div", "name", basename(r.path)), sub);
    card.append(meta);
    card.addEventListener("click", () => {
      play(r, card);
      $("now").textContent = `${basename(r.path)} · “${r.text}” ${fmtTime(r.start_s)} – ${fmtTime(r.end_s)}`;
    });
    grid.append(card);
  }
}

document.addEventListener("DOMContentLoaded", start);

// -- Ask: a question about the frame the player shows (POST /api/ask), answered beside the player ------------

function askTarget() {
  const video = $("video");
  const m = (video.getAttribute("src") || "").match(/^\/media\/([^/?#]+)$/);
  return m ? { video_id: decodeURIComponent(m[1]), t: video.currentTime } : null;
}

function renderAnswer(body) {
  const box = $("ask-answer");
  box.replaceChildren();
  box.className = "ask-answer";
  const img = el("img", "ask-frame");
  img.src = body.thumb_id
    ? `/api/thumbnails/${encodeURIComponent(body.thumb_id)}`
    : `data:image/jpeg;base64,${body.frame_jpeg}`;
  img.alt = `the frame asked about, at ${fmtTime(body.t)}`;
  const text = el("div", "ask-text");
  text.append(el("div", "ask-top", body.answer));
  const how = body.source === "thumbnail" ? "stored frame" : "decoded frame";
  text.append(el("div", "small", `${fmtScore(body.score)} · ${body.model} · ${how} at ${fmtTime(body.t)}`));
  const others = el("ol", "ask-others");
  for (const a of body.answers.slice(1)) others.append(el("li", "", `${a.answer} (${fmtScore(a.score)})`));
  if (others.childElementCount) text.append(others);
  if (body.random_weights) text.append(el("div", "warn", "random weights: answers carry no meaning"));
  box.append(img, text);
}

async function askQuestion(event) {
  event.preventDefault();
  const box = $("ask-answer");
  const target = askTarget();
  if (!target) {
    box.textContent = "Play a result first, then ask about the frame shown.";
    box.className = "ask-answer error";
    return;
  }
  $("video").pause(); // the question is about the frame on screen
  $("ask-go").disabled = true;
  box.textContent = "Asking…";
  box.className = "ask-answer";
  try {
    const body = await api("/api/ask", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ question: $("ask-question").value, ...target }),
    });
    renderAnswer(body);
  } catch (err) {
    box.textContent = err.message;
    box.className = "ask-answer error";
  } finally {
    $("ask-go").disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => $("ask").addEventListener("submit", askQuestion));

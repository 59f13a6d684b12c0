// Shot boundaries on the player's timeline: a strip under the video, as wide as its progress bar, with a
// mark at every cut and the shot being played highlighted; clicking a shot plays it from its start. Shots
// come from GET /api/videos/{id}/shots (the segments' shot spans); without shot detection the strip hides.
"use strict";

(() => {
  let shown = null; // the video id the strip was drawn for
  let shots = [];

  function strip() {
    let node = document.getElementById("shot-strip");
    if (!node) {
      node = document.createElement("div");
      node.id = "shot-strip";
      node.className = "shot-strip";
      node.hidden = true;
      node.setAttribute("aria-label", "Shots");
      document.getElementById("video").after(node);
    }
    return node;
  }

  function videoId(video) {
    const m = /\/media\/([^/?#]+)$/.exec(video.getAttribute("src") || "");
    return m ? decodeURIComponent(m[1]) : null;
  }

  function label(s) {
    const t = (x) => `${Math.floor(x / 60)}:${(x % 60).toFixed(1).padStart(4, "0")}`;
    return `Shot ${s.shot_idx + 1}: ${t(s.start_s)} – ${t(s.end_s)}`;
  }

  function draw(body, video) {
    const node = strip();
    node.replaceChildren();
    node.dataset.videoId = body.video_id;
    shots = body.shots;
    const duration = Number.isFinite(video.duration) && video.duration > 0 ? video.duration : body.duration_s;
    if (!body.detected || !(duration > 0)) {
      node.hidden = true;
      return;
    }
    const pct = (t) => `${(100 * Math.min(Math.max(t / duration, 0), 1)).toFixed(3)}%`;
    for (const s of shots) {
      const part = document.createElement("button");
      part.type = "button";
      part.className = "shot";
      part.title = label(s);
      part.dataset.shot = String(s.shot_idx);
      part.style.left = pct(s.start_s);
      part.style.width = `calc(${pct(s.end_s)} - ${pct(s.start_s)})`;
      part.addEventListener("click", () => {
        video.currentTime = s.start_s;
      });
      node.append(part);
    }
    for (const t of body.cuts) {
      const mark = document.createElement("div");
      mark.className = "shot-cut";
      mark.dataset.t = String(t);
      mark.style.left = pct(t);
      node.append(mark);
    }
    node.hidden = false;
    follow(video);
  }

  function follow(video) {
    const t = video.currentTime;
    for (const part of document.querySelectorAll("#shot-strip .shot")) {
      const s = shots.find((x) => String(x.shot_idx) === part.dataset.shot);
      part.classList.toggle("current", Boolean(s) && s.start_s <= t && t < s.end_s);
    }
  }

  async function load(video) {
    const id = videoId(video);
    if (!id || id === shown) return;
    shown = id;
    strip().hidden = true;
    try {
      const res = await fetch(`/api/videos/${encodeURIComponent(id)}/shots`, { credentials: "same-origin" });
      if (!res.ok || shown !== id) return;
      draw(await res.json(), video);
    } catch {
      shown = null; // the strip stays hidden; the next load tries again
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const video = document.getElementById("video");
    if (!video) return;
    video.addEventListener("loadedmetadata", () => load(video));
    video.addEventListener("timeupdate", () => follow(video));
    video.addEventListener("seeked", () => follow(video));
  });
})();

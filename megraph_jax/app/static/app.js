// AU Studio's page: choose files, upload them with the options as one job, poll the job for rows and pictures.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, props = {}, ...children) => {
  const e = Object.assign(document.createElement(tag), props);
  e.append(...children);
  return e;
};
const POLL_MS = 700;
let info = null;            // /api/info
let pending = [];           // [{file: File, name: relative path}]

// ------------------------------------------------------------------ choosing files

function isMedia(name) {
  const n = name.toLowerCase();
  return info.extensions.some((x) => n.endsWith(x));
}

function addFiles(items) {  // items: [{file, name}]; a folder's non-media files are left out as the CLI does
  for (const it of items) pending.push(it);
  showPending();
}

function showPending() {
  const ul = $("#pending");
  ul.replaceChildren(...pending.map((it, i) => el("li", {},
    `${it.name} (${(it.file.size / 1e6).toFixed(1)} MB) `,
    el("button", {type: "button", className: "link", textContent: "remove", onclick: () => { pending.splice(i, 1); showPending(); }}))));
  $("#go").disabled = pending.length === 0;
}

$("#pick").addEventListener("change", (e) => {
  addFiles([...e.target.files].map((f) => ({file: f, name: f.name})));
  e.target.value = "";
});
$("#pick-folder").addEventListener("change", (e) => {
  addFiles([...e.target.files].filter((f) => isMedia(f.name)).map((f) => ({file: f, name: f.webkitRelativePath || f.name})));
  e.target.value = "";
});

async function readEntry(entry, path, out) {  // a dropped folder, recursively (its media files, sorted)
  if (entry.isFile) {
    if (isMedia(entry.name)) out.push({file: await new Promise((ok, fail) => entry.file(ok, fail)), name: path + entry.name});
    return;
  }
  const reader = entry.createReader();
  let all = [], batch;
  do {
    batch = await new Promise((ok, fail) => reader.readEntries(ok, fail));
    all = all.concat(batch);
  } while (batch.length);
  all.sort((a, b) => (a.name < b.name ? -1 : 1));
  for (const e of all) await readEntry(e, path + entry.name + "/", out);
}

const drop = $("#drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", async (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  const items = [], entries = [...e.dataTransfer.items].map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry());
  if (entries.length && entries.every(Boolean)) {
    for (const entry of entries) {
      if (entry.isFile) items.push({file: await new Promise((ok, fail) => entry.file(ok, fail)), name: entry.name});
      else await readEntry(entry, "", items);
    }
  } else {
    for (const f of e.dataTransfer.files) items.push({file: f, name: f.name});
  }
  addFiles(items);
});

// ------------------------------------------------------------------ webcam (where the browser allows it)

let camStream = null, recorder = null, chunks = [];
const stamp = () => new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19);

$("#cam-open").addEventListener("click", async () => {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    $("#upload-msg").textContent = "This browser does not offer a webcam here.";
    return;
  }
  try {
    camStream = await navigator.mediaDevices.getUserMedia({video: true, audio: false});
  } catch (err) {
    $("#upload-msg").textContent = `No webcam: ${err.message}`;
    return;
  }
  $("#cam-view").srcObject = camStream;
  $("#cam").hidden = false;
});
$("#cam-close").addEventListener("click", () => {
  if (camStream) camStream.getTracks().forEach((t) => t.stop());
  camStream = null;
  $("#cam").hidden = true;
});
$("#cam-snap").addEventListener("click", () => {
  const v = $("#cam-view"), c = el("canvas", {width: v.videoWidth, height: v.videoHeight});
  c.getContext("2d").drawImage(v, 0, 0);
  c.toBlob((b) => addFiles([{file: new File([b], `webcam-${stamp()}.png`, {type: "image/png"}), name: `webcam-${stamp()}.png`}]), "image/png");
});
$("#cam-rec").addEventListener("click", () => {
  const button = $("#cam-rec");
  if (recorder) { recorder.stop(); return; }
  chunks = [];
  recorder = new MediaRecorder(camStream, {mimeType: "video/webm"});
  recorder.ondataavailable = (e) => chunks.push(e.data);
  recorder.onstop = () => {
    const name = `webcam-${stamp()}.webm`;
    addFiles([{file: new File(chunks, name, {type: "video/webm"}), name}]);
    recorder = null;
    button.textContent = "Start recording";
  };
  recorder.start();
  button.textContent = "Stop recording";
});

// ------------------------------------------------------------------ uploading: one job per click

function options() {
  const o = {whole_image: $('input[name="mode"]:checked').value === "whole" ? "1" : "0"};
  for (const k of ["threshold", "every", "smooth", "plot_every", "max_frames"]) o[k] = $("#" + k).value;
  return o;
}

$("#go").addEventListener("click", () => {
  const form = new FormData();
  for (const [k, v] of Object.entries(options())) form.append(k, v);
  for (const it of pending) form.append("files", it.file, it.name);
  const files = pending;
  pending = [];
  showPending();
  const msg = $("#upload-msg");
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/api/jobs");
  xhr.upload.onprogress = (e) => { if (e.lengthComputable) msg.textContent = `uploading ${Math.round(100 * e.loaded / e.total)}% ...`; };
  xhr.onload = () => {
    let body = {};
    try { body = JSON.parse(xhr.responseText); } catch (err) { /* not JSON */ }
    if (xhr.status === 201) {
      msg.textContent = "";
      watch(body.id, files);
    } else {
      msg.textContent = `Not started: ${body.error || xhr.statusText}`;
      pending = files.concat(pending);
      showPending();
    }
  };
  xhr.onerror = () => { msg.textContent = "Upload failed (is AU Studio still running?)"; pending = files.concat(pending); showPending(); };
  xhr.send(form);
});

// ------------------------------------------------------------------ a job: progress, rows, pictures

const clock = (s) => `${Math.floor(s / 60)}:${String(Math.round(s % 60)).padStart(2, "0")}`;

function present(row) {  // the AUs at or above the threshold, named from the legend
  const out = [];
  info.au_names.forEach((a, i) => {
    if (row[`${a}_occ`] === 1) out.push(el("span", {className: "au", title: `score ${row[`${a}_prob`]}`}, info.au_labels[i]));
  });
  return out.length ? out : ["none"];
}

function picture(job, name, alt) {
  const url = `/api/jobs/${job}/pictures/${encodeURIComponent(name)}`;
  return el("a", {href: url, target: "_blank"}, el("img", {src: url, alt, loading: "lazy"}));
}

function addRow(card, job, row) {
  const tr = el("tr", {className: row.status},
    el("td", {}, row.file), el("td", {}, String(row.frame)), el("td", {}, String(row.time)), el("td", {}, String(row.face)),
    el("td", {}, row.status), el("td", {}, ...(row.status === "ok" ? present(row) : [""])), el("td", {}, row.message));
  $("tbody", card).append(tr);
  if (row.is_video) {
    const v = video(card, job, row.file);
    if (row.pictures.length) {
      (v.pics[row.frame] = v.pics[row.frame] || []).push(...row.pictures);
      if (v.slider.value === "" || v.shown === null) show(v, row.frame);
    }
  } else if (row.pictures.length) {
    $(".faces", card).append(el("figure", {className: "face"}, ...row.pictures.map((p) => picture(job, p, p)),
      el("figcaption", {}, `${row.file}, face ${row.face}`)));
  }
}

function video(card, job, file) {  // the viewer of one video: its timeline with the current frame marked
  card.videos = card.videos || {};
  if (card.videos[file]) return card.videos[file];
  const img = el("img", {className: "timeline", alt: `AU scores over time of ${file}`});
  const marker = el("div", {className: "marker"});
  const slider = el("input", {type: "range", min: 0, max: 0, value: 0, className: "scrub"});
  const label = el("span", {className: "frame-label"});
  const pics = el("div", {className: "frame-pictures"});
  const box = el("section", {className: "video"}, el("h3", {}, file),
    el("div", {className: "timeline-wrap"}, img, marker), el("div", {}, "current frame ", slider, " ", label), pics);
  $(".videos", card).append(box);
  const v = {job, file, img, marker, slider, label, picsBox: pics, pics: {}, frames: [], geometry: null, shown: null};
  slider.addEventListener("input", () => show(v, v.frames.length ? v.frames[+slider.value][0] : 0));
  card.videos[file] = v;
  return v;
}

function show(v, frame) {  // marks ``frame`` on the timeline and shows the pictures of the nearest pictured frame
  const g = v.geometry;
  const i = v.frames.findIndex((f) => f[0] === frame);
  if (i >= 0) v.slider.value = i;
  if (g && i >= 0) {
    const x = v.frames[i][1], span = (g.xmax - g.xmin) || 1;
    v.marker.style.left = `${100 * (g.x0 + (x - g.xmin) / span * (g.x1 - g.x0))}%`;
    v.marker.style.top = `${100 * g.top}%`;
    v.marker.style.height = `${100 * (g.bottom - g.top)}%`;
    v.marker.hidden = false;
    v.label.textContent = `frame ${frame}` + (g.unit === "time" ? ` (${x.toFixed(2)} s)` : "");
  } else {
    v.label.textContent = `frame ${frame}`;
  }
  const pictured = Object.keys(v.pics).map(Number);
  if (!pictured.length) return;
  const near = pictured.reduce((a, b) => (Math.abs(b - frame) < Math.abs(a - frame) ? b : a));
  if (near !== v.shown) {
    v.shown = near;
    v.picsBox.replaceChildren(el("p", {}, `pictures of frame ${near}:`), ...v.pics[near].map((p) => picture(v.job, p, p)));
  }
}

function updateTimelines(card, job, timelines) {
  for (const t of timelines) {
    const v = video(card, job, t.file);
    if (v.version === t.version) continue;
    v.version = t.version;
    v.geometry = t;
    v.frames = t.frames;
    v.slider.max = Math.max(0, t.frames.length - 1);
    v.img.src = `/api/jobs/${job}/timelines/${t.index}.png?v=${t.version}`;
    show(v, v.shown !== null ? v.shown : (t.frames[0] || [0])[0]);
  }
}

function watch(id, files) {
  const card = $("#job-template").content.firstElementChild.cloneNode(true);
  card.id = `job-${id}`;
  $(".title", card).textContent = `Job ${id}: ${files.length} file${files.length === 1 ? "" : "s"}`;
  $("#jobs").prepend(card);
  $(".cancel", card).addEventListener("click", () => fetch(`/api/jobs/${id}/cancel`, {method: "POST"}));
  let since = 0;
  const poll = async () => {
    let u;
    try {
      u = await (await fetch(`/api/jobs/${id}?since=${since}`)).json();
    } catch (err) {
      setTimeout(poll, 3 * POLL_MS);
      return;
    }
    for (const row of u.rows) addRow(card, id, row);
    since += u.rows.length;
    updateTimelines(card, id, u.timelines);
    const p = u.progress, status = $(".status", card), rate = $(".rate", card), bar = $("progress", card);
    card.dataset.status = u.status;
    status.textContent = u.status === "queued" ? `waiting (number ${u.queue_position} in the queue)` : u.status;
    if (p.total) { bar.max = p.total; bar.value = p.done; } else if (u.status === "running") bar.removeAttribute("value");
    rate.textContent = `${p.done}${p.total ? " / " + p.total : ""} frames` + (p.fps ? ` · ${p.fps.toFixed(1)} frames/s` : "")
      + (p.eta !== null && p.eta !== undefined ? ` · about ${clock(p.eta)} left` : "");
    if (u.status === "queued" || u.status === "running") {
      setTimeout(poll, POLL_MS);
      return;
    }
    $(".cancel", card).hidden = true;
    if (u.status === "done") {
      bar.max = 1; bar.value = 1;
      const d = $(".downloads", card);
      for (const [cls, name] of [["csv", "predictions.csv"], ["json", "predictions.json"], ["zip", "pictures.zip"]]) {
        $("." + cls, d).href = `/api/jobs/${id}/download/${name}`;
      }
      d.hidden = false;
    }
    if (u.error) { $(".error", card).textContent = u.error; $(".error", card).hidden = false; }
  };
  poll();
}

// ------------------------------------------------------------------ start

(async () => {
  info = await (await fetch("/api/info")).json();
  $("#model").textContent = `model ${info.checkpoint}: ${info.au_names.length} AUs (${info.au_names.join(", ")})`;
  const d = info.defaults;
  for (const k of ["threshold", "every", "smooth", "plot_every"]) $("#" + k).value = d[k];
  if (d.max_frames) $("#max_frames").value = d.max_frames;
  if (d.whole_image) $('input[name="mode"][value="whole"]').checked = true;
  const jobs = await (await fetch("/api/jobs")).json();  // a reloaded page shows the jobs it had
  for (const j of jobs) watch(j.id, j.files);
  document.body.dataset.ready = "1";
})();

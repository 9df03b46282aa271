// The Glimpse playground: plain JS, no framework, nothing loaded from elsewhere.
// Every value from the server is written with textContent, never as HTML.
"use strict";
(function () {
  const KEY_STORE = "glimpse.apiKey";
  const $ = (id) => document.getElementById(id);
  const form = $("form"), keyInput = $("key"), fileInput = $("file"), urlInput = $("url");
  const labelsInput = $("labels"), drop = $("drop"), preview = $("preview"), go = $("go");
  const classifierSelect = $("classifier");
  let file = null;

  keyInput.value = localStorage.getItem(KEY_STORE) || "";
  keyInput.addEventListener("change", () => localStorage.setItem(KEY_STORE, keyInput.value.trim()));

  const previewNote = $("preview-note");
  function note(text) {
    previewNote.textContent = text;
    previewNote.hidden = !text;
  }
  // A file the browser cannot show (HEIC, a PDF, anything not an image) gets a sentence instead
  // of a broken-image icon; the server still says whether it can read it.
  preview.addEventListener("error", () => {
    if (!preview.getAttribute("src")) return;
    preview.hidden = true;
    note("This browser cannot preview " + (file ? file.name : "this file") +
      "; Classify will tell whether Glimpse can read it (JPEG, PNG, WebP, GIF, BMP).");
  });
  function useFile(f) {
    file = f || null;
    if (preview.src) URL.revokeObjectURL(preview.src);
    note("");
    if (file) {
      urlInput.value = "";
      if (file.type && !file.type.startsWith("image/")) {
        preview.removeAttribute("src");
        preview.hidden = true;
        note(file.name + " does not look like an image (" + file.type + "); Glimpse reads JPEG, " +
          "PNG, WebP, GIF and BMP.");
        return;
      }
      preview.src = URL.createObjectURL(file);
      preview.hidden = false;
    } else {
      preview.removeAttribute("src");
      preview.hidden = true;
    }
  }
  fileInput.addEventListener("change", () => useFile(fileInput.files[0]));
  urlInput.addEventListener("input", () => { if (urlInput.value) { fileInput.value = ""; useFile(null); } });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) useFile(e.dataTransfer.files[0]);
  });
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); fileInput.click(); }
  });
  document.querySelectorAll("input[name=model]").forEach((r) =>
    r.addEventListener("change", () => {
      labelsInput.disabled = model() !== "clip";
      classifierSelect.disabled = model() !== "clip";
    }));

  // The key's saved classifiers, as options of the picker (names only; textContent).
  async function loadClassifiers() {
    const key = keyInput.value.trim();
    showError("");
    if (!key) { showError("Enter an API key to list its classifiers."); return; }
    try {
      const res = await fetch("/api/classifiers", { headers: { "X-API-Key": key } });
      const data = await res.json();
      if (!res.ok) { showError((data.message || "HTTP " + res.status) + " (" + data.code + ")"); return; }
      const keep = classifierSelect.value;
      classifierSelect.replaceChildren(classifierSelect.options[0]);
      for (const c of data.classifiers) {
        const o = document.createElement("option");
        o.value = c.name;
        o.textContent = c.name + " (" + c.labels.map((l) => l.name).join(", ") + ")";
        classifierSelect.appendChild(o);
      }
      classifierSelect.value = keep;
      $("status").textContent = data.classifiers.length + " saved classifier(s).";
    } catch (err) {
      showError("Request failed: " + err.message);
    }
  }
  $("load-classifiers").addEventListener("click", loadClassifiers);

  function model() {
    return document.querySelector("input[name=model]:checked").value;
  }

  function showError(text) {
    const el = $("error");
    el.textContent = text;
    el.hidden = !text;
  }

  // Before each call and after a failure: no answer from an earlier call stays on screen.
  function clearAnswer() {
    $("result").textContent = "–";
    $("chart").replaceChildren();
    $("imagenet").replaceChildren();
    $("imagenet-box").hidden = true;
    $("raw").textContent = "";
  }

  function drawImagenet(top) {
    const list = $("imagenet");
    list.replaceChildren();
    for (const c of top || []) {
      const item = document.createElement("li");
      item.textContent = String(c.label) + " — " + ((Number(c.score) || 0) * 100).toFixed(1) +
        "% (" + String(c.category) + ")";
      list.appendChild(item);
    }
    $("imagenet-box").hidden = !(top && top.length);
  }

  function drawChart(predictions) {
    const chart = $("chart");
    chart.replaceChildren();
    for (const p of predictions || []) {
      const score = Number(p.score) || 0;
      const row = document.createElement("div");
      row.className = "bar";
      row.dataset.label = String(p.label);
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = String(p.label);
      name.title = String(p.label);
      const track = document.createElement("span");
      track.className = "track";
      const fill = document.createElement("span");
      fill.className = "fill";
      fill.style.display = "block";
      fill.style.width = (Math.max(0, Math.min(1, score)) * 100).toFixed(1) + "%";
      track.appendChild(fill);
      const value = document.createElement("span");
      value.className = "value";
      value.textContent = (score * 100).toFixed(1) + "%";
      row.append(name, track, value);
      row.setAttribute("aria-label", p.label + ": " + value.textContent);
      chart.appendChild(row);
    }
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const key = keyInput.value.trim();
    localStorage.setItem(KEY_STORE, key);
    showError("");
    clearAnswer();
    const kind = model();
    const target = new URL("/api/image-classification/" + kind, location.origin);
    if (kind === "clip" && classifierSelect.value) {
      target.searchParams.set("classifier", classifierSelect.value);
    } else if (kind === "clip" && labelsInput.value.trim()) {
      target.searchParams.set("labels", labelsInput.value.trim());
    }
    const init = { method: "POST", headers: {} };
    if (key) init.headers["X-API-Key"] = key;
    if (file) {
      const body = new FormData();
      body.append("image", file, file.name || "image");
      init.body = body;
    } else if (urlInput.value.trim()) {
      target.searchParams.set("url", urlInput.value.trim());
    } else {
      showError("Choose an image file or enter an image URL.");
      return;
    }
    go.disabled = true;
    $("out").setAttribute("aria-busy", "true");
    $("status").textContent = "Classifying…";
    try {
      const res = await fetch(target, init);
      const credits = res.headers.get("X-Credits-Remaining");
      if (credits !== null) $("credits").textContent = credits;
      const text = await res.text();
      let data = null;
      try { data = JSON.parse(text); } catch (_) { /* shown raw below */ }
      $("raw").textContent = data ? JSON.stringify(data, null, 2) : text;
      if (!res.ok) {
        const msg = data && data.message ? data.message : "HTTP " + res.status;
        const code = data && data.code ? " (" + data.code + ")" : "";
        showError(msg + code);
        $("status").textContent = "Failed: HTTP " + res.status;
        return;
      }
      $("result").textContent = data.result + " (" + (data.confidence * 100).toFixed(1) + "%)" +
        (data.abstained ? " — abstained: the top score is below minConfidence" : "");
      drawChart(data.predictions);
      drawImagenet(data.imagenet);
      $("status").textContent = "Done in " + data.timingMs + " ms with " + data.modelId + ".";
    } catch (err) {
      showError("Request failed: " + err.message);
      $("status").textContent = "";
    } finally {
      go.disabled = false;
      $("out").setAttribute("aria-busy", "false");
    }
  });
})();

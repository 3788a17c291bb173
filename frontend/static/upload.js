/* Checkpoint upload: drag-and-drop several files, one XHR per file (for upload progress),
 * step read from the file name or the Step field, per-file errors from the API's `detail`. */
(function () {
  "use strict";

  const STEP_PATTERNS = [
    /(?:^|[^a-z])(?:step|checkpoint|ckpt|iter|iteration|global_step)[-_ .=]?(\d+)/i,
    /(?:^|[^0-9])(\d+)\.(?:safetensors|pt|pth|bin|ckpt)$/i,
  ];

  /** `step_1000.pt`, `checkpoint-1000`, `model_1000.safetensors` -> 1000; else null. */
  function stepFromName(name) {
    for (const re of STEP_PATTERNS) {
      const m = re.exec(name);
      if (m) return parseInt(m[1], 10);
    }
    return null;
  }

  function init() {
    const section = document.getElementById("upload");
    if (!section) return;
    const runId = section.dataset.run;
    const input = document.getElementById("upload-files");
    const zone = document.getElementById("dropzone");
    const list = document.getElementById("upload-list");
    const stepField = document.getElementById("upload-step");
    const queue = [];
    let busy = false;

    function addFiles(files) {
      Array.from(files).forEach((file) => {
        const li = document.createElement("li");
        li.className = "upload-item";
        const name = document.createElement("span");
        name.className = "upload-name";
        name.textContent = file.name;
        const bar = document.createElement("progress");
        bar.max = 1;
        bar.value = 0;
        bar.setAttribute("aria-label", "upload of " + file.name);
        const msg = document.createElement("span");
        msg.className = "upload-msg";
        li.append(name, bar, msg);
        list.prepend(li);
        const fromName = stepFromName(file.name);
        const step = fromName !== null ? fromName : (stepField.value === "" ? null : parseInt(stepField.value, 10));
        if (step === null || Number.isNaN(step)) {
          li.classList.add("error");
          msg.textContent = "no step in the file name: fill in the Step field and add it again";
          return;
        }
        msg.textContent = "step " + step + " · waiting";
        queue.push({ file, step, li, bar, msg });
      });
      pump();
    }

    function pump() {
      if (busy || !queue.length) return;
      busy = true;
      const item = queue.shift();
      send(item).finally(() => { busy = false; pump(); });
    }

    function send(item) {
      return new Promise((resolve) => {
        const form = new FormData();
        form.append("step", String(item.step));
        form.append("file", item.file, item.file.name);
        const xhr = new XMLHttpRequest();
        xhr.open("POST", "/api/runs/" + runId + "/checkpoints");
        const headers = window.Phaseboard.authHeaders({ Accept: "application/json" });
        Object.entries(headers).forEach(([k, v]) => xhr.setRequestHeader(k, v));
        xhr.upload.addEventListener("progress", (e) => {
          if (e.lengthComputable) {
            item.bar.value = e.loaded / e.total;
            item.msg.textContent = "step " + item.step + " · " + Math.round((100 * e.loaded) / e.total) + "%";
          }
        });
        xhr.addEventListener("load", () => {
          if (xhr.status >= 200 && xhr.status < 300) {
            item.bar.value = 1;
            item.li.classList.add("ok");
            item.msg.textContent = "step " + item.step + " · uploaded";
            window.Phaseboard.refreshPartial("checkpoints");
            window.Phaseboard.refreshPartial("jobs");
          } else {
            item.li.classList.add("error");
            item.msg.textContent = window.Phaseboard.errorText(xhr.status, xhr.statusText, xhr.responseText);
          }
          resolve();
        });
        xhr.addEventListener("error", () => {
          item.li.classList.add("error");
          item.msg.textContent = "network error: the upload did not reach the server";
          resolve();
        });
        item.msg.textContent = "step " + item.step + " · uploading";
        xhr.send(form);
      });
    }

    input.addEventListener("change", () => { addFiles(input.files); input.value = ""; });
    ["dragenter", "dragover"].forEach((ev) => zone.addEventListener(ev, (e) => {
      e.preventDefault();
      zone.classList.add("over");
    }));
    ["dragleave", "drop"].forEach((ev) => zone.addEventListener(ev, (e) => {
      e.preventDefault();
      zone.classList.remove("over");
    }));
    zone.addEventListener("drop", (e) => { if (e.dataTransfer) addFiles(e.dataTransfer.files); });
  }

  /** "Import from the Hub": POST /api/runs/{id}/imports, then follow its progress. */
  function initHubImport() {
    const form = document.getElementById("hub-import");
    const section = document.getElementById("upload");
    if (!form || !section) return;
    const list = document.getElementById("hub-import-list");

    function row(text) {
      const li = document.createElement("li");
      li.className = "upload-item";
      const name = document.createElement("span");
      name.className = "upload-name";
      name.textContent = text;
      const bar = document.createElement("progress");
      bar.setAttribute("aria-label", "import of " + text);
      const msg = document.createElement("span");
      msg.className = "upload-msg";
      li.append(name, bar, msg);
      list.prepend(li);
      return { li, bar, msg };
    }

    function follow(url, item) {
      fetch(url, { headers: window.Phaseboard.authHeaders({ Accept: "application/json" }) }).then((r) => r.json()).then((t) => {
        if (t.total) { item.bar.max = t.total; item.bar.value = t.done; }
        let text = t.total ? t.done + " of " + t.total + " revisions · " + t.message : t.message;
        if (t.duplicates && t.duplicates.length) {
          text += " · " + t.duplicates.length + " with the same weights as a later step";
        }
        item.msg.textContent = text;
        if (t.done) window.Phaseboard.refreshPartial("checkpoints");
        if (t.state === "running") { setTimeout(() => follow(url, item), 1500); return; }
        item.li.classList.add(t.state === "done" ? "ok" : "error");
        if (t.state === "done") { item.bar.max = 1; item.bar.value = 1; }
        window.Phaseboard.refreshPartial("checkpoints");
        window.Phaseboard.refreshPartial("jobs");
      }).catch(() => { item.msg.textContent = "lost track of the import; reload the page"; });
    }

    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const data = new FormData(form);
      const body = { source: String(data.get("source")).trim(), revisions: String(data.get("revisions")).trim() || null };
      if (data.get("max")) body.max = parseInt(String(data.get("max")), 10);
      const item = row(body.source + (body.revisions ? " @ " + body.revisions : ""));
      item.msg.textContent = "starting";
      fetch("/api/runs/" + section.dataset.run + "/imports", {
        method: "POST",
        headers: window.Phaseboard.authHeaders({ Accept: "application/json", "Content-Type": "application/json" }),
        body: JSON.stringify(body),
      }).then((r) => r.text().then((text) => {
        if (!r.ok) {
          item.li.classList.add("error");
          item.msg.textContent = window.Phaseboard.errorText(r.status, r.statusText, text);
          return;
        }
        follow(JSON.parse(text).status_url, item);
      })).catch(() => {
        item.li.classList.add("error");
        item.msg.textContent = "network error: the import was not started";
      });
    });
  }

  window.PhaseboardUpload = { stepFromName };
  document.addEventListener("DOMContentLoaded", init);
  document.addEventListener("DOMContentLoaded", initHubImport);
})();

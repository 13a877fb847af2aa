// crossmodald monitoring page: every stream the daemon runs, from GET /v1/streams (polled) and
// the event stream (GET /v1/events, Server-Sent Events, replayed from the daemon's buffer so a
// fresh page starts with history). Per stream: an offset gauge, a plot of the offset over the
// last minutes on the ITU-R BT.1359 bands, alarms, faults and speech on a timeline, the active
// speaker. Plain JS, no build. `window.crossmodaldMonitor` holds the state (read by
// tests/e2e/test_browser_monitor.py).
"use strict";

(() => {
  // ITU-R BT.1359, audio_lead_ms sign (positive: audio ahead of video).
  const BANDS = { detectable: [-125, 45], acceptable: [-185, 90] };
  const RANGE_MS = 250; // gauge and plot span -250..+250 ms
  const HISTORY_S = 300; // the plot and the timeline show at most the last 5 minutes
  const POINTS_MAX = 2000; // offsets kept per stream and plugin
  const MARKS_MAX = 500; // faults, alarms, speech segments kept per stream
  const POLL_MS = 2000; // GET /v1/streams
  const DRAW_MS = 1000; // redraw at most this often
  // sync.offset methods by plugin (the event names no plugin; its method does).
  const SPEAKER_METHODS = new Set(["asd_scan", "mouth_motion"]);
  // The event types the page draws (the subscription's filter).
  const TYPES = [
    "sync.offset", "sync.alarm", "stream.fault", "plugin.error", "speech", "speaker",
    "stream.start", "stream.end",
  ];

  const params = new URLSearchParams(location.search);

  /** Everything the monitor knows; exposed for automation. */
  const state = {
    connected: false,
    error: null,
    events: 0,
    last_seq: null,
    streams: {}, // name -> stream record (below)
    order: [], // stream names in the order first seen
    draws: 0,
    view: null, // "monitor" or "publish"
  };
  window.crossmodaldMonitor = state;

  function record(name) {
    let s = state.streams[name];
    if (!s) {
      s = {
        name,
        info: null, // the /v1/streams entry
        offsets: {}, // plugin -> [{t, ms, smoothed, confidence, method}]
        alarms: [], // {start, end, direction, ms}
        faults: [], // {t, kind, message, phase}
        speech: [], // {start, end}
        speakers: {}, // face track id -> since (t) while it speaks
        ended: null,
      };
      state.streams[name] = s;
      state.order.push(name);
    }
    return s;
  }

  function token() {
    const field = document.getElementById("token");
    return (field && field.value.trim()) || params.get("token") || "";
  }

  // -- data ---------------------------------------------------------------------------------

  async function poll() {
    try {
      const headers = token() ? { Authorization: `Bearer ${token()}` } : {};
      const response = await fetch("/v1/streams", { headers });
      if (!response.ok) throw new Error(`GET /v1/streams answered ${response.status}`);
      const body = await response.json();
      for (const info of body.streams || []) record(info.name).info = info;
      state.error = null;
    } catch (err) {
      state.error = err.message || String(err);
    }
    schedule();
  }

  function pluginOf(event) {
    const method = (event.data || {}).method;
    return SPEAKER_METHODS.has(method) ? "speaker" : "avsync";
  }

  function timeOf(event) {
    const t = Date.parse(event.ts);
    return Number.isNaN(t) ? Date.now() : t;
  }

  function bounded(list, max) {
    if (list.length > max) list.splice(0, list.length - max);
  }

  function onEvent(event) {
    state.events += 1;
    state.last_seq = event.seq;
    if (!event.stream) return;
    const s = record(event.stream);
    const d = event.data || {};
    const t = timeOf(event);
    switch (event.type) {
      case "sync.offset": {
        const plugin = pluginOf(event);
        const list = (s.offsets[plugin] = s.offsets[plugin] || []);
        list.push({
          t,
          ms: d.audio_lead_ms ?? null,
          smoothed: d.smoothed_audio_lead_ms ?? null,
          confidence: d.confidence ?? 0,
          smoothed_confidence: d.smoothed_confidence ?? null,
          method: d.method || "?",
        });
        bounded(list, POINTS_MAX);
        break;
      }
      case "sync.alarm": {
        const open = s.alarms.find((a) => a.end === null);
        if (event.phase === "end") {
          if (open) open.end = t;
        } else if (!open) {
          s.alarms.push({ start: t, end: null, direction: d.direction, ms: d.audio_lead_ms });
        } else {
          open.ms = d.audio_lead_ms;
        }
        bounded(s.alarms, MARKS_MAX);
        break;
      }
      case "stream.fault":
      case "plugin.error":
        s.faults.push({
          t,
          kind: d.kind || (d.plugin ? `plugin ${d.plugin}` : "error"),
          message: d.message || "",
          phase: event.phase,
        });
        bounded(s.faults, MARKS_MAX);
        break;
      case "speech": {
        const open = s.speech.find((a) => a.end === null);
        if (event.phase === "end") {
          if (open) open.end = t;
        } else if (!open) {
          s.speech.push({ start: t, end: null });
        }
        bounded(s.speech, MARKS_MAX);
        break;
      }
      case "speaker":
        if (event.phase === "end") delete s.speakers[d.track_id];
        else if (!(d.track_id in s.speakers)) s.speakers[d.track_id] = t;
        break;
      case "stream.start":
        s.ended = null;
        break;
      case "stream.end":
        s.ended = d.reason || "ended";
        for (const a of [...s.alarms, ...s.speech]) if (a.end === null) a.end = t;
        s.speakers = {};
        break;
      default:
        break;
    }
    schedule();
  }

  let events = null; // the EventSource
  function connect() {
    // The daemon's replay buffer gives a fresh page the recent past (last_event_id=0); the
    // browser reconnects with Last-Event-ID by itself.
    // Each SSE message is named by its event type: a listener per type the page draws.
    // Again after a token change: from the last event seen, so nothing is taken twice.
    const after = String(state.last_seq ?? 0);
    const query = new URLSearchParams({ last_event_id: after, type: TYPES.join(",") });
    if (token()) query.set("access_token", token());
    if (events) events.close();
    const source = new EventSource(`/v1/events?${query}`);
    events = source;
    source.addEventListener("open", () => (state.connected = true));
    source.addEventListener("error", () => (state.connected = false));
    const take = (message) => {
      try {
        const event = JSON.parse(message.data);
        if (event && event.type) onEvent(event);
      } catch (err) {
        console.error("bad event", err);
      }
    };
    for (const type of TYPES) source.addEventListener(type, take);
  }

  // -- drawing --------------------------------------------------------------------------------

  let pending = false;
  let lastDraw = 0;
  function schedule() {
    if (pending) return;
    pending = true;
    const wait = Math.max(0, DRAW_MS - (Date.now() - lastDraw));
    setTimeout(() => {
      pending = false;
      lastDraw = Date.now();
      draw();
    }, wait);
  }

  function esc(text) {
    return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
  }

  function fmtMs(ms) {
    if (ms === null || ms === undefined || Number.isNaN(ms)) return "–";
    return `${ms > 0 ? "+" : ""}${ms.toFixed(1)} ms`;
  }

  function verdict(ms) {
    const [dLag, dLead] = BANDS.detectable;
    const [aLag, aLead] = BANDS.acceptable;
    if (ms >= dLag && ms <= dLead) return ["in sync", "ok"];
    if (ms >= aLag && ms <= aLead) return ["acceptable", "warn"];
    return ["out of the acceptable band", "bad"];
  }

  function describe(ms) {
    const [where] = verdict(ms);
    const dir = ms > 0 ? "audio ahead" : ms < 0 ? "audio behind" : "";
    return `${fmtMs(ms)} (${dir ? `${dir}, ` : ""}${where})`;
  }

  /** The latest reading of a plugin: its smoothed offset with the smoothed confidence. */
  function reading(s, plugin) {
    const list = s.offsets[plugin] || [];
    for (let i = list.length - 1; i >= 0; i -= 1) {
      const o = list[i];
      if (o.smoothed !== null) return { ms: o.smoothed, confidence: o.smoothed_confidence, o };
    }
    const status = ((s.info || {}).plugin_status || {})[plugin];
    if (status && status.smoothed_audio_lead_ms != null) {
      return { ms: status.smoothed_audio_lead_ms, confidence: status.smoothed_confidence, o: null };
    }
    return null;
  }

  const clampMs = (ms) => Math.max(-RANGE_MS, Math.min(RANGE_MS, ms));

  function gauge(readings) {
    // -250..+250 ms over x 0..500; end labels anchored inward so nothing is clipped.
    const x = (ms) => clampMs(ms) + RANGE_MS;
    const [aLag, aLead] = BANDS.acceptable;
    const [dLag, dLead] = BANDS.detectable;
    const ticks = [
      [-RANGE_MS, "−250 ms", "start"],
      [aLag, "−185", "middle"],
      [dLag, "−125", "middle"],
      [0, "0", "middle"],
      [dLead, "+45", "middle"],
      [aLead, "+90", "middle"],
      [RANGE_MS, "+250 ms", "end"],
    ];
    const needles = readings
      .map(({ plugin, r }, i) => {
        const px = x(r.ms);
        return `<polygon class="needle n${i}" points="${px},16 ${px - 6},4 ${px + 6},4"><title>${esc(
          plugin,
        )}: ${esc(fmtMs(r.ms))}</title></polygon>`;
      })
      .join("");
    return `<svg class="gauge" viewBox="0 0 500 74" role="img" aria-label="audio lead gauge, ms">
      <rect x="0" y="16" width="500" height="26" class="out"/>
      <rect x="${x(aLag)}" y="16" width="${aLead - aLag}" height="26" class="acceptable"/>
      <rect x="${x(dLag)}" y="16" width="${dLead - dLag}" height="26" class="undetectable"/>
      <line x1="250" y1="12" x2="250" y2="46" class="zero"/>
      <g class="ticks">${ticks
        .map(([ms, label, anchor]) => {
          return `<line x1="${x(ms)}" y1="42" x2="${x(ms)}" y2="47"/><text x="${x(ms)}" y="58" text-anchor="${anchor}">${label}</text>`;
        })
        .join("")}</g>
      <text x="250" y="71" class="axis" text-anchor="middle">audio lead, ms (+: audio ahead)</text>
      ${needles}
    </svg>`;
  }

  const PLOT = { w: 600, h: 160, left: 44, right: 8, top: 6, bottom: 18 };

  /** Seconds the plot and timeline span: the history seen, whole minutes, 1 to 5 minutes. */
  function spanS(s, now) {
    const times = [
      ...Object.values(s.offsets).flatMap((list) => (list.length ? [list[0].t] : [])),
      ...s.alarms.map((a) => a.start),
      ...s.faults.map((f) => f.t),
      ...s.speech.map((a) => a.start),
    ];
    const first = times.length ? Math.min(...times) : now;
    const minutes = Math.ceil((now - first) / 60000);
    return Math.min(HISTORY_S, Math.max(60, minutes * 60));
  }

  function timeTicks(span) {
    // [seconds before now, label]: every 15 s over one minute, else every minute.
    const step = span <= 60 ? 15 : 60;
    const ticks = [];
    for (let ago = span; ago >= 0; ago -= step) {
      const label = ago === 0 ? "now" : step < 60 ? `−${ago} s` : `−${ago / 60} min`;
      ticks.push([ago, label]);
    }
    return ticks;
  }

  function plot(s, now, plugins, span) {
    const { w, h, left, right, top, bottom } = PLOT;
    const t0 = now - span * 1000;
    const x = (t) => left + ((t - t0) / (span * 1000)) * (w - left - right);
    const y = (ms) => top + ((RANGE_MS - clampMs(ms)) / (2 * RANGE_MS)) * (h - top - bottom);
    const band = (lo, hi, cls) =>
      `<rect x="${left}" y="${y(hi)}" width="${w - left - right}" height="${y(lo) - y(hi)}" class="${cls}"/>`;
    const [aLag, aLead] = BANDS.acceptable;
    const [dLag, dLead] = BANDS.detectable;
    let series = "";
    plugins.forEach((plugin, i) => {
      const list = (s.offsets[plugin] || []).filter((o) => o.t >= t0);
      const dots = list
        .filter((o) => o.ms !== null && o.confidence >= 0.5)
        .map((o) => `<circle cx="${x(o.t).toFixed(1)}" cy="${y(o.ms).toFixed(1)}" r="1.6"/>`)
        .join("");
      const line = list
        .filter((o) => o.smoothed !== null)
        .map((o) => `${x(o.t).toFixed(1)},${y(o.smoothed).toFixed(1)}`)
        .join(" ");
      series += `<g class="series s${i}"><g class="dots">${dots}</g>${
        line ? `<polyline points="${line}"/>` : ""
      }</g>`;
    });
    const yTicks = [RANGE_MS, aLead, 0, dLag, aLag, -RANGE_MS]
      .map((ms) => `<text x="${left - 4}" y="${y(ms) + 3}" text-anchor="end">${ms > 0 ? "+" : ""}${ms}</text>`)
      .join("");
    const xTicks = timeTicks(span)
      .map(([ago, label]) => {
        const px = x(now - ago * 1000);
        const anchor = ago === 0 ? "end" : ago === span ? "start" : "middle";
        return `<line x1="${px}" y1="${h - bottom}" x2="${px}" y2="${h - bottom + 3}"/><text x="${px}" y="${h - 4}" text-anchor="${anchor}">${label}</text>`;
      })
      .join("");
    return `<svg class="plot" viewBox="0 0 ${w} ${h}" role="img" aria-label="audio lead over the last minutes, ms">
      ${band(-RANGE_MS, RANGE_MS, "out")}${band(aLag, aLead, "acceptable")}${band(dLag, dLead, "undetectable")}
      <line x1="${left}" y1="${y(0)}" x2="${w - right}" y2="${y(0)}" class="zero"/>
      <g class="ticks">${yTicks}${xTicks}</g>
      <text x="${w - right - 4}" y="${top + 10}" class="axis" text-anchor="end">audio lead, ms</text>
      ${series}
    </svg>`;
  }

  function timeline(s, now, span) {
    const w = 600;
    const left = 44;
    const right = 8;
    const t0 = now - span * 1000;
    const x = (t) => left + ((Math.max(t, t0) - t0) / (span * 1000)) * (w - left - right);
    const bars = (items, row, cls, title) =>
      items
        .filter((a) => (a.end ?? now) >= t0)
        .map((a) => {
          const x0 = x(a.start);
          const x1 = Math.max(x0 + 2, x(a.end ?? now));
          return `<rect x="${x0.toFixed(1)}" y="${row}" width="${(x1 - x0).toFixed(1)}" height="10" class="${cls}"><title>${esc(title(a))}</title></rect>`;
        })
        .join("");
    const alarms = bars(s.alarms, 4, "alarm", (a) => `alarm: ${a.direction} ${fmtMs(a.ms)}`);
    const speech = bars(s.speech, 34, "speech", () => "speech");
    const faults = s.faults
      .filter((f) => f.t >= t0)
      .map((f) => {
        const px = x(f.t).toFixed(1);
        return `<polygon class="fault" points="${px},19 ${px - 4},29 ${+px + 4},29"><title>${esc(
          `${f.kind}: ${f.message}`,
        )}</title></polygon>`;
      })
      .join("");
    return `<svg class="timeline" viewBox="0 0 ${w} 48" role="img" aria-label="alarms, faults and speech">
      <g class="ticks"><text x="${left - 4}" y="13" text-anchor="end">alarm</text>
      <text x="${left - 4}" y="28" text-anchor="end">fault</text>
      <text x="${left - 4}" y="43" text-anchor="end">speech</text></g>
      <line x1="${left}" y1="47" x2="${w - right}" y2="47" class="rule"/>
      ${alarms}${faults}${speech}
    </svg>`;
  }

  function details(s) {
    const info = s.info || {};
    const parts = [info.source || "?"];
    if (info.width && info.height) parts.push(`${info.width}×${info.height}`);
    if (info.frame_rate) parts.push(`${Math.round(info.frame_rate * 100) / 100} fps`);
    if (info.sample_rate) parts.push(`${info.sample_rate / 1000} kHz`);
    if (info.clock) parts.push(`timing ${info.clock}`);
    return parts.join(" · ");
  }

  function card(s, now) {
    const info = s.info || {};
    const status = info.plugin_status || {};
    const stateName = info.state || (s.ended ? "ended" : "running");
    const plugins = ["avsync", "speaker"].filter((p) => s.offsets[p] || (status[p] && "audio_lead_ms" in status[p]));
    const readings = plugins.map((plugin) => ({ plugin, r: reading(s, plugin) })).filter((x) => x.r);
    const lines = [];
    for (const [i, plugin] of plugins.entries()) {
      const r = reading(s, plugin);
      const st = status[plugin] || {};
      const conf = r && r.confidence != null ? r.confidence.toFixed(2) : "–";
      let text = r ? `${describe(r.ms)}, confidence ${conf} (smoothed)` : "no confident estimate yet";
      if (st.drift_ppm != null) {
        const unc = st.drift_uncertainty_ppm != null ? ` ± ${st.drift_uncertainty_ppm.toFixed(1)}` : "";
        text += `; drift ${st.drift_ppm > 0 ? "+" : ""}${st.drift_ppm.toFixed(1)}${unc} ppm`;
      }
      const cls = r ? verdict(r.ms)[1] : "";
      lines.push(`<dt><span class="key k${i}"></span>${esc(plugin)}</dt><dd class="${cls}">${esc(text)}</dd>`);
    }
    const transport = (info.source_status || {}).transport;
    if (transport && transport.audio_lead_ms != null) {
      lines.push(`<dt>arrival lead</dt><dd>${esc(describe(transport.audio_lead_ms))} (transport, ${esc(transport.timing)})</dd>`);
    }
    const speech = status.speech;
    const speaking = s.speech.some((a) => a.end === null) || (speech && speech.speaking === true);
    if (speech || s.speech.length) {
      lines.push(`<dt>speech</dt><dd class="${speaking ? "speaking" : ""}">${speaking ? "speaking" : "silent"}</dd>`);
    }
    const speakerStatus = status.speaker;
    const tracks = Object.keys(s.speakers);
    const ids = tracks.length ? tracks : (speakerStatus && speakerStatus.speaking_track_ids) || [];
    if (speakerStatus || tracks.length) {
      lines.push(
        `<dt>active speaker</dt><dd class="${ids.length ? "speaking" : ""}">${
          ids.length ? esc(ids.map((id) => `face #${id}`).join(", ")) : "nobody visible is talking"
        }</dd>`,
      );
    }
    const span = spanS(s, now);
    const openAlarm = s.alarms.find((a) => a.end === null);
    const alarm = openAlarm
      ? `<p class="alarm" role="alert">Lip-sync alarm: ${esc(String(openAlarm.direction).replace("_", " "))} ${esc(fmtMs(openAlarm.ms))}</p>`
      : "";
    const lastFault = s.faults[s.faults.length - 1];
    const fault = lastFault
      ? `<p class="fault-line">Last fault: ${esc(lastFault.kind)}: ${esc(lastFault.message)}</p>`
      : "";
    const repeated = lastFault && info.error && lastFault.message === info.error;
    const error = info.error && !repeated ? `<p class="fault-line">${esc(info.error)}</p>` : "";
    return `<article class="stream" data-stream="${esc(s.name)}">
      <h3>${esc(s.name)} <span class="badge ${esc(stateName)}">${esc(stateName)}</span>
        <small>${esc(details(s))}</small></h3>
      ${alarm}
      ${gauge(readings)}
      <dl class="readings">${lines.join("")}</dl>
      ${plot(s, now, plugins, span)}
      ${timeline(s, now, span)}
      ${fault}${error}
    </article>`;
  }

  function draw() {
    const root = document.getElementById("streams");
    if (!root || state.view !== "monitor") return; // drawn again when shown
    const now = Date.now();
    const names = state.order;
    root.innerHTML = names.length
      ? names.map((n) => card(state.streams[n], now)).join("")
      : `<p class="empty">No streams yet.</p>`;
    const line = document.getElementById("monitor-status");
    if (line) {
      line.textContent = state.error
        ? state.error
        : `${names.length} stream${names.length === 1 ? "" : "s"}; ${
            state.connected ? "live events" : "connecting to the event stream"
          }; ${state.events} events`;
      line.className = state.error ? "error" : state.connected ? "live" : "";
    }
    state.draws += 1;
  }

  // -- views ------------------------------------------------------------------------------------

  let started = false;
  function show(view) {
    for (const name of ["monitor", "publish"]) {
      document.getElementById(`view-${name}`).classList.toggle("hidden", name !== view);
      document.getElementById(`tab-${name}`).setAttribute("aria-selected", String(name === view));
    }
    state.view = view;
    // The monitor starts when first shown: a page opened to publish (the calibration mode,
    // whose flash timing wants the page idle) neither subscribes nor polls until then.
    if (view === "monitor" && !started) {
      started = true;
      connect();
      poll();
      setInterval(poll, POLL_MS);
      setInterval(schedule, 5000); // the time axis moves on without events
    }
    if (view === "monitor") schedule();
  }

  document.addEventListener("DOMContentLoaded", () => {
    // The publish view for its own links (mode=..., autostart=1, view=publish).
    const publish = params.get("view") === "publish" || params.has("mode") || params.get("autostart") === "1";
    show(publish ? "publish" : "monitor");
    document.getElementById("tab-monitor").addEventListener("click", () => show("monitor"));
    document.getElementById("tab-publish").addEventListener("click", () => show("publish"));
    // A token typed in later (the publish view's Connection part): subscribe again with it.
    document.getElementById("token").addEventListener("change", () => {
      if (started) {
        connect();
        poll();
      }
    });
  });
})();

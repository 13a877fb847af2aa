// crossmodald publish page: WHIP publishing, live events over the "events" data channel, and the
// calibration mode (a canvas flash and a WebAudio beep generated in step). Plain JS, no build.
//
// Query parameters (for links and automation): stream=NAME, mode=camera|calibrate,
// codec=VP8|H264, autostart=1. `window.crossmodald` holds the page's state (read by the
// headless-browser test in tests/e2e/test_browser_calibration.py).
"use strict";

(() => {
  // ITU-R BT.1359 thresholds, audio_lead_ms sign (positive: audio ahead of video).
  const DETECTABLE = { lead: 45, lag: -125 };
  const ACCEPTABLE = { lead: 90, lag: -185 };
  const GAUGE_RANGE_MS = 250; // the gauge spans -250..+250 ms over 500 SVG units
  const LOG_MAX = 300; // event lines kept on the page (older ones are removed)
  const OFFSETS_MAX = 200;
  const CALIBRATION_WINDOWS = 10; // confident windows behind the browser chain offset
  // The calibration rule of `crossmodald calibrate` (service/calibrate.py, checked by
  // tests/service/test_calibrate.py): only the calibration signal's methods, never motion; a
  // verdict needs CALIBRATION_MIN_WINDOWS windows whose spread (median absolute deviation) is
  // at most CALIBRATION_MAX_SPREAD_MS, else "unstable, try again".
  const CALIBRATION_METHODS = new Set(["flash", "clap"]);
  const CALIBRATION_MAX_SPREAD_MS = 15.0;
  const CALIBRATION_MIN_WINDOWS = 3;
  const ICE_GATHER_TIMEOUT_MS = 3000;

  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);

  /** Everything the page knows; exposed for automation. */
  const state = {
    status: "idle",
    error: null,
    mode: null,
    stream: null,
    session: null, // the WHIP session URL (Location)
    connection: "new",
    channel: "closed",
    events: 0,
    types: {},
    offsets: [], // {seq, ms, confidence, smoothed, method, clock}
    last_seq: null, // seq of the last event received
    transport: null, // last sync.transport data
    alarm: null,
    ended: null,
    calibration: null, // {median_ms, spread_ms, windows, stable}
    flashes: 0, // calibration flashes (and beeps) generated
    codecs: {}, // negotiated codec per kind, from the answer
  };
  window.crossmodald = state;

  let pc = null;
  let media = null;
  let calibration = null;

  // -- status and display ---------------------------------------------------------------------

  function setStatus(text, kind = "") {
    state.status = text;
    const el = $("status");
    el.textContent = text;
    el.className = kind;
  }

  function fail(message) {
    state.error = message;
    setStatus(message, "error");
  }

  function fmtMs(ms) {
    if (ms === null || ms === undefined || Number.isNaN(ms)) return "–";
    const sign = ms > 0 ? "+" : "";
    return `${sign}${ms.toFixed(1)} ms`;
  }

  function describeLead(ms) {
    if (ms === null || ms === undefined) return "–";
    const where =
      ms >= DETECTABLE.lag && ms <= DETECTABLE.lead
        ? "in sync"
        : ms >= ACCEPTABLE.lag && ms <= ACCEPTABLE.lead
          ? "acceptable"
          : "out of the acceptable band";
    const dir = ms > 0 ? "audio ahead" : ms < 0 ? "audio behind" : "";
    return `${fmtMs(ms)} ${dir ? `(${dir}, ${where})` : `(${where})`}`;
  }

  function placeNeedle(id, ms) {
    const needle = $(id);
    if (ms === null || ms === undefined) {
      needle.classList.add("hidden");
      return;
    }
    const clamped = Math.max(-GAUGE_RANGE_MS, Math.min(GAUGE_RANGE_MS, ms));
    needle.classList.remove("hidden");
    needle.setAttribute("transform", `translate(${clamped} 0)`);
  }

  function median(values) {
    const sorted = [...values].sort((a, b) => a - b);
    const mid = sorted.length >> 1;
    return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  }

  /** Median absolute deviation from the median: the calibration's spread. */
  function spreadMs(values) {
    const med = median(values);
    return median(values.map((v) => Math.abs(v - med)));
  }

  // -- events -----------------------------------------------------------------------------------

  function summary(event) {
    const d = event.data || {};
    switch (event.type) {
      case "sync.offset":
        return d.audio_lead_ms === null
          ? "no estimate"
          : `audio_lead_ms=${fmtMs(d.audio_lead_ms)} conf=${(d.confidence ?? 0).toFixed(2)}`;
      case "sync.transport":
        return `transport_offset_ms=${fmtMs(d.transport_offset_ms)} timing=${d.timing}`;
      case "sync.alarm":
        return `${d.direction} ${fmtMs(d.audio_lead_ms)} (limit ${d.limit_ms} ms)`;
      case "stream.fault":
        return `${d.kind}: ${d.message}`;
      case "stream.end":
        return d.reason;
      default: {
        const text = JSON.stringify(d);
        return text.length > 160 ? `${text.slice(0, 157)}...` : text;
      }
    }
  }

  function logEvent(event) {
    const li = document.createElement("li");
    const family = event.type.split(".")[0];
    const special = { "sync.alarm": "alarm-event", "stream.fault": "fault", "plugin.error": "error" };
    li.className = special[event.type] || family;
    const time = (event.ts || "").slice(11, 23);
    const phase = event.phase ? ` [${event.phase}]` : "";
    li.textContent = `${time} ${event.type}${phase} ${summary(event)}`;
    const log = $("log");
    log.prepend(li);
    while (log.childElementCount > LOG_MAX) log.lastElementChild.remove();
    $("event-count").textContent = String(state.events);
  }

  function updateCalibration() {
    // The browser chain offset: what the daemon measures on the calibration pattern, whose
    // flash and beep the page generated at the same instant (the truth is 0). Only windows
    // measured on that signal count; the motion method is no reference.
    const usable = state.offsets.filter(
      (o) => o.confidence >= 0.5 && o.clock === "rtcp" && CALIBRATION_METHODS.has(o.method),
    );
    if (usable.length === 0) return;
    const recent = usable.slice(-CALIBRATION_WINDOWS).map((o) => o.ms);
    const med = median(recent);
    const spread = spreadMs(recent);
    const stable = recent.length >= CALIBRATION_MIN_WINDOWS && spread <= CALIBRATION_MAX_SPREAD_MS;
    state.calibration = { median_ms: med, spread_ms: spread, windows: recent.length, stable };
    const over = `spread ${spread.toFixed(1)} ms over ${recent.length} windows`;
    $("calibration").textContent = stable
      ? `${describeLead(med)}; ${over}`
      : recent.length < CALIBRATION_MIN_WINDOWS
        ? `measuring (${recent.length} of ${CALIBRATION_MIN_WINDOWS} windows)`
        : `unstable, try again (${over}, limit ${CALIBRATION_MAX_SPREAD_MS} ms)`;
  }

  function onEvent(event) {
    state.events += 1;
    state.last_seq = event.seq;
    state.types[event.type] = (state.types[event.type] || 0) + 1;
    const d = event.data || {};
    switch (event.type) {
      case "sync.offset": {
        if (d.audio_lead_ms !== null && d.audio_lead_ms !== undefined) {
          state.offsets.push({
            seq: event.seq,
            ms: d.audio_lead_ms,
            confidence: d.confidence ?? 0,
            smoothed: d.smoothed_audio_lead_ms ?? null,
            method: d.method ?? null,
            clock: event.media ? event.media.clock : "unknown",
          });
          if (state.offsets.length > OFFSETS_MAX) state.offsets.shift();
        }
        // The smoothed value (a median of confident windows); a lone window only if confident.
        const confident = (d.confidence ?? 0) >= 0.5 ? d.audio_lead_ms : null;
        const shown = d.smoothed_audio_lead_ms ?? confident;
        if (shown !== null && shown !== undefined) {
          placeNeedle("needle", shown);
          // The smoothed value with the smoothed confidence (the median of the same windows);
          // a lone confident window with its own.
          const conf = d.smoothed_audio_lead_ms != null ? d.smoothed_confidence : d.confidence;
          $("offset").textContent =
            `${describeLead(shown)}, confidence ${(conf ?? 0).toFixed(2)}`;
        } else if (d.audio_lead_ms !== null && d.audio_lead_ms !== undefined) {
          $("offset").textContent =
            `no confident estimate yet (window: ${fmtMs(d.audio_lead_ms)}, ` +
            `confidence ${(d.confidence ?? 0).toFixed(2)})`;
        }
        $("timing").textContent = event.media ? event.media.clock : "–";
        if (state.mode === "calibrate") updateCalibration();
        break;
      }
      case "sync.transport":
        state.transport = d;
        // The arrival lead (docs/webrtc.md): how far audio arrives ahead of video relative to
        // their SR-mapped capture times (audio_lead_ms, > 0: audio arrives first), the offset
        // the path adds. transport_offset_ms is its negation, shown as the timestamps' view.
        placeNeedle("needle-transport", d.audio_lead_ms);
        $("transport").textContent =
          d.audio_lead_ms === null || d.audio_lead_ms === undefined
            ? `waiting for Sender Reports (timing: ${d.timing})`
            : `arrival lead ${describeLead(d.audio_lead_ms)}; timestamps ` +
              `${fmtMs(d.transport_offset_ms)}; latency audio ${fmtMs(d.audio_latency_ms)}, ` +
              `video ${fmtMs(d.video_latency_ms)}`;
        break;
      case "sync.alarm": {
        const box = $("alarm");
        if (event.phase === "end") {
          state.alarm = null;
          box.classList.add("hidden");
        } else {
          state.alarm = d;
          box.textContent = `Lip-sync alarm: ${summary(event)}`;
          box.classList.remove("hidden");
        }
        break;
      }
      case "stream.end":
        state.ended = d.reason || "ended";
        setStatus(`stream ended: ${state.ended}`);
        break;
      default:
        break;
    }
    logEvent(event);
  }

  // -- calibration pattern ------------------------------------------------------------------------

  /**
   * A white flash on a canvas and a 1 kHz beep from an oscillator, both scheduled for the same
   * instant: the beep on the AudioContext clock (sample exact), the flash on the animation frame
   * nearest that instant (performance clock mapped to the audio clock). Periods and lengths
   * match crossmodald's built-in pattern, so avsync's flash method reads it.
   */
  class Calibration {
    constructor(options = {}) {
      this.periodMs = options.periodMs ?? 1200;
      this.flashMs = options.flashMs ?? 100;
      this.beepMs = options.beepMs ?? 100;
      this.toneHz = options.toneHz ?? 1000;
      this.width = options.width ?? 320;
      this.height = options.height ?? 240;
      this.fps = options.fps ?? 30;
      this.leadMs = 600; // how far ahead a flash/beep pair is scheduled
      this.flashes = []; // performance-clock start times of planned flashes
      this.nextTargetMs = null;
      this.lagSamples = [];
      this.rafMs = 1000 / 60;
      this.lastRaf = null;
      this.nextDrawMs = 0;
      this.lastOn = false;
      this.frame = 0;
      this.running = false;
    }

    async start() {
      const audio = new AudioContext({ latencyHint: "interactive" });
      this.audio = audio;
      // Pages need a user gesture to run audio; autostart in a browser without one hangs here.
      await Promise.race([
        audio.resume(),
        new Promise((_, reject) =>
          setTimeout(() => reject(new Error("audio is blocked: press Start to allow it")), 3000),
        ),
      ]);
      const osc = audio.createOscillator();
      osc.frequency.value = this.toneHz;
      this.gain = audio.createGain();
      this.gain.gain.value = 0;
      const dest = audio.createMediaStreamDestination();
      dest.channelCount = 1;
      osc.connect(this.gain).connect(dest);
      osc.start();
      this.osc = osc;

      const canvas = document.createElement("canvas");
      canvas.width = this.width;
      canvas.height = this.height;
      this.g = canvas.getContext("2d", { alpha: false });
      // Frames on demand: each drawn frame is captured when drawn, so the flash's first frame
      // is captured at the instant it was planned for (not up to a frame later by a timer).
      let stream = canvas.captureStream(0);
      this.track = stream.getVideoTracks()[0];
      if (typeof this.track.requestFrame !== "function") {
        this.track.stop();
        stream = canvas.captureStream(this.fps);
        this.track = stream.getVideoTracks()[0];
      }
      this.draw(false);
      this.running = true;
      const loop = (t) => {
        if (!this.running) return;
        this.onFrame(t);
        requestAnimationFrame(loop);
      };
      requestAnimationFrame(loop);
      return new MediaStream([this.track, dest.stream.getAudioTracks()[0]]);
    }

    /** Map the audio clock onto the performance clock (ms). */
    lagMs() {
      // currentTime advances in steps of the audio callback; right after a step,
      // now - currentTime is smallest, which is the mapping at the render position.
      const now = performance.now();
      this.lagSamples.push(now - this.audio.currentTime * 1000);
      if (this.lagSamples.length > 180) this.lagSamples.shift();
      return Math.min(...this.lagSamples);
    }

    plan(t, lag) {
      if (this.nextTargetMs === null) this.nextTargetMs = t + 1000;
      while (this.nextTargetMs - t < this.leadMs) {
        // Put the flash on an animation frame, and the beep at that frame's instant.
        const frames = Math.round((this.nextTargetMs - t) / this.rafMs);
        const flashAt = t + frames * this.rafMs;
        const beepAt = (flashAt - lag) / 1000;
        const level = 0.5;
        this.gain.gain.setValueAtTime(level, beepAt);
        this.gain.gain.setValueAtTime(0, beepAt + this.beepMs / 1000);
        this.flashes.push(flashAt);
        this.nextTargetMs += this.periodMs;
      }
    }

    onFrame(t) {
      const lag = this.lagMs();
      if (this.lastRaf !== null) {
        const dt = t - this.lastRaf;
        if (dt > 4 && dt < 100) this.rafMs = 0.95 * this.rafMs + 0.05 * dt;
      }
      this.lastRaf = t;
      this.plan(t, lag);
      const half = this.rafMs / 2;
      while (this.flashes.length && t >= this.flashes[0] + this.flashMs + half) this.flashes.shift();
      const on = this.flashes.some((f) => t >= f - half && t < f + this.flashMs - half);
      // Draw at the frame rate, and always at a flash edge.
      if (on !== this.lastOn || t >= this.nextDrawMs - half) {
        if (on && !this.lastOn) state.flashes += 1;
        this.draw(on);
        this.lastOn = on;
        // The next frame one frame interval on; from now when the page fell behind.
        const next = this.nextDrawMs + 1000 / this.fps;
        this.nextDrawMs = next > t ? next : t + 1000 / this.fps;
      }
    }

    draw(on) {
      const g = this.g;
      g.fillStyle = on ? "#ffffff" : "#000000";
      g.fillRect(0, 0, this.width, this.height);
      // A small frame counter keeps every frame distinct (too small to move the mean).
      g.fillStyle = on ? "#c0c0c0" : "#404040";
      g.font = "10px monospace";
      g.fillText(`crossmodald calibration ${this.frame++}`, 4, this.height - 4);
      if (typeof this.track.requestFrame === "function") this.track.requestFrame();
    }

    stop() {
      this.running = false;
      if (this.osc) this.osc.stop();
      if (this.audio) this.audio.close();
      if (this.track) this.track.stop();
    }
  }

  // -- devices ----------------------------------------------------------------------------------

  async function listDevices(askPermission) {
    if (!navigator.mediaDevices) {
      fail("this page needs a secure context (https or localhost) for cameras and microphones");
      return;
    }
    if (askPermission) {
      const probe = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
      probe.getTracks().forEach((t) => t.stop());
    }
    const devices = await navigator.mediaDevices.enumerateDevices();
    for (const [kind, id] of [
      ["videoinput", "camera"],
      ["audioinput", "microphone"],
    ]) {
      const select = $(id);
      const keep = select.value;
      select.replaceChildren(new Option("default", ""));
      devices
        .filter((d) => d.kind === kind && d.deviceId)
        .forEach((d, i) => select.add(new Option(d.label || `${id} ${i + 1}`, d.deviceId)));
      select.value = keep;
    }
  }

  async function cameraMedia() {
    const cam = $("camera").value;
    const mic = $("microphone").value;
    // No echo cancellation, noise suppression or gain control: they add their own delay.
    const audio = {
      echoCancellation: false,
      noiseSuppression: false,
      autoGainControl: false,
      ...(mic ? { deviceId: { exact: mic } } : {}),
    };
    const video = cam ? { deviceId: { exact: cam } } : true;
    return navigator.mediaDevices.getUserMedia({ audio, video });
  }

  // -- WHIP -------------------------------------------------------------------------------------

  function whipUrl(stream) {
    const template = $("endpoint").value.trim() || "/v1/whip/{stream}";
    const path = template.includes("{stream}")
      ? template.replace("{stream}", encodeURIComponent(stream))
      : `${template.replace(/\/$/, "")}/${encodeURIComponent(stream)}`;
    return new URL(path, location.href).href;
  }

  function authHeaders() {
    const token = $("token").value.trim();
    return token ? { Authorization: `Bearer ${token}` } : {};
  }

  function iceGatheringComplete(peer) {
    // WHIP without trickle: the offer carries every candidate.
    if (peer.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        if (peer.iceGatheringState === "complete") {
          peer.removeEventListener("icegatheringstatechange", done);
          resolve();
        }
      };
      peer.addEventListener("icegatheringstatechange", done);
      setTimeout(resolve, ICE_GATHER_TIMEOUT_MS); // send what was gathered
    });
  }

  function preferCodec(transceiver, name) {
    if (!name || !RTCRtpSender.getCapabilities || !transceiver.setCodecPreferences) return;
    const caps = RTCRtpSender.getCapabilities("video").codecs;
    const wanted = caps.filter((c) => {
      const mime = c.mimeType.toLowerCase();
      if (mime !== `video/${name.toLowerCase()}`) return false;
      if (name === "H264") {
        // What the daemon decodes: constrained baseline, packetization-mode=1.
        const fmtp = (c.sdpFmtpLine || "").toLowerCase();
        return fmtp.includes("packetization-mode=1") && /profile-level-id=42(e0|00)/.test(fmtp);
      }
      return true;
    });
    const rtx = caps.filter((c) => c.mimeType.toLowerCase() === "video/rtx");
    if (wanted.length) transceiver.setCodecPreferences([...wanted, ...rtx]);
  }

  /** The codec the answer chose per media kind (its first payload type). */
  function answerCodecs(sdp) {
    const codecs = {};
    let kind = null;
    let first = null;
    for (const line of sdp.split(/\r?\n/)) {
      if (line.startsWith("m=")) {
        const parts = line.slice(2).split(" ");
        kind = parts[0];
        first = parts[3];
      } else if (kind && line.startsWith(`a=rtpmap:${first} `) && !(kind in codecs)) {
        codecs[kind] = line.split(" ")[1].split("/")[0];
      }
    }
    return codecs;
  }

  async function errorText(response) {
    const body = await response.text();
    try {
      return JSON.parse(body).error || body;
    } catch {
      return body.slice(0, 200) || response.statusText;
    }
  }

  async function start() {
    const stream = $("stream").value.trim();
    const mode = document.querySelector('input[name="mode"]:checked').value;
    Object.assign(state, {
      error: null,
      mode,
      stream,
      session: null,
      events: 0,
      types: {},
      offsets: [],
      last_seq: null,
      transport: null,
      alarm: null,
      ended: null,
      calibration: null,
      codecs: {},
    });
    $("log").replaceChildren();
    $("calibration-label").classList.toggle("hidden", mode !== "calibrate");
    $("calibration").classList.toggle("hidden", mode !== "calibrate");
    $("start").disabled = true;
    $("stop").disabled = false;
    try {
      setStatus(mode === "calibrate" ? "starting the calibration pattern" : "opening devices");
      if (mode === "calibrate") {
        calibration = new Calibration();
        media = await calibration.start();
      } else {
        media = await cameraMedia();
      }
      $("preview").srcObject = media;

      pc = new RTCPeerConnection({ iceServers: [], bundlePolicy: "max-bundle" });
      pc.addEventListener("connectionstatechange", () => {
        state.connection = pc ? pc.connectionState : "closed";
        if (state.connection === "connected") {
          const used = [state.codecs.video, state.codecs.audio].filter(Boolean).join(" + ");
          setStatus(`publishing as ${stream}${used ? ` (${used})` : ""}`, "live");
        }
        else if (state.connection === "failed") fail("the WebRTC connection failed");
        else if (state.connection === "disconnected") setStatus("connection interrupted");
      });
      const channel = pc.createDataChannel("events");
      channel.addEventListener("open", () => (state.channel = "open"));
      channel.addEventListener("close", () => (state.channel = "closed"));
      channel.addEventListener("message", (message) => {
        try {
          onEvent(JSON.parse(message.data));
        } catch (err) {
          console.error("bad event message", err);
        }
      });
      const codec = $("codec").value;
      for (const track of media.getTracks()) {
        const transceiver = pc.addTransceiver(track, { direction: "sendonly", streams: [media] });
        if (track.kind === "video") preferCodec(transceiver, codec);
      }
      await pc.setLocalDescription(await pc.createOffer());
      await iceGatheringComplete(pc);
      setStatus("sending the offer");
      const url = whipUrl(stream);
      const response = await fetch(url, {
        method: "POST",
        headers: { "Content-Type": "application/sdp", ...authHeaders() },
        body: pc.localDescription.sdp,
      });
      if (response.status !== 201) {
        throw new Error(`WHIP POST ${url} answered ${response.status}: ${await errorText(response)}`);
      }
      const location_ = response.headers.get("Location");
      if (!location_) throw new Error("WHIP answer has no Location header");
      state.session = new URL(location_, url).href;
      const answer = await response.text();
      state.codecs = answerCodecs(answer);
      await pc.setRemoteDescription({ type: "answer", sdp: answer });
      setStatus("connecting");
    } catch (err) {
      await stop(false);
      fail(err.message || String(err));
    }
  }

  async function stop(userAsked = true) {
    $("start").disabled = false;
    $("stop").disabled = true;
    const session = state.session;
    state.session = null;
    if (session) {
      try {
        const response = await fetch(session, { method: "DELETE", headers: authHeaders() });
        if (!response.ok && response.status !== 404) {
          fail(`WHIP DELETE answered ${response.status}: ${await errorText(response)}`);
        }
      } catch (err) {
        fail(`WHIP DELETE failed: ${err.message}`);
      }
    }
    if (pc) pc.close();
    pc = null;
    state.connection = "closed";
    if (media) media.getTracks().forEach((t) => t.stop());
    media = null;
    if (calibration) calibration.stop();
    calibration = null;
    $("preview").srcObject = null;
    if (userAsked && !state.error) setStatus("stopped");
  }

  // -- wiring -----------------------------------------------------------------------------------

  function syncModeUi() {
    const mode = document.querySelector('input[name="mode"]:checked').value;
    $("devices").classList.toggle("hidden", mode !== "camera");
  }

  document.addEventListener("DOMContentLoaded", () => {
    if (params.get("stream")) $("stream").value = params.get("stream");
    if (params.get("codec")) $("codec").value = params.get("codec");
    const mode = params.get("mode");
    if (mode === "calibrate" || mode === "camera") {
      document.querySelector(`input[name="mode"][value="${mode}"]`).checked = true;
    }
    $("calibration-label").classList.add("hidden");
    $("calibration").classList.add("hidden");
    syncModeUi();
    document
      .querySelectorAll('input[name="mode"]')
      .forEach((el) => el.addEventListener("change", syncModeUi));
    $("form").addEventListener("submit", (e) => {
      e.preventDefault();
      start();
    });
    $("stop").addEventListener("click", () => stop(true));
    $("refresh").addEventListener("click", () =>
      listDevices(true).catch((err) => fail(`cannot list devices: ${err.message}`)),
    );
    window.addEventListener("pagehide", () => {
      // Best effort: end the session when the tab goes away.
      if (state.session) fetch(state.session, { method: "DELETE", headers: authHeaders(), keepalive: true });
    });
    if (navigator.mediaDevices) listDevices(false).catch(() => {});
    if (params.get("autostart") === "1") start();
  });
})();

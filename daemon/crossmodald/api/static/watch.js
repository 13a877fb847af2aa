// crossmodald "Watch" view: play a stream's re-synchronised WHEP output beside its offset and
// the correction applied. Kept apart from app.js (the publish page) on purpose: its own section
// of index.html, its own WHEP session and its own event stream (SSE).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  let peer = null;
  let location = null;
  let events = null;
  // What the view shows, for tests driving the page (DevTools) and for the console.
  const state = (window.crossmodaldWatch = {
    status: "idle",
    connection: "closed",
    offset_ms: null,
    correction: null,
    video: () => {
      const v = $("watch-video");
      return { width: v.videoWidth, height: v.videoHeight, time_s: v.currentTime };
    },
  });

  const fmt = (ms) => (ms === null || ms === undefined ? "–" : `${ms >= 0 ? "+" : ""}${ms.toFixed(1)} ms`);

  function status(text) {
    state.status = text;
    $("watch-status").textContent = text;
  }

  function headers() {
    // The publish form's token, when one is set: WHEP takes the same tokens as WHIP.
    const field = $("token");
    const token = field ? field.value.trim() : "";
    return token ? { Authorization: `Bearer ${token}` } : {};
  }

  function gathered(pc) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      pc.addEventListener("icegatheringstatechange", () => {
        if (pc.iceGatheringState === "complete") resolve();
      });
      setTimeout(resolve, 2000);
    });
  }

  function listen(stream) {
    // EventSource cannot send headers; the token goes as access_token (event routes only).
    const token = headers().Authorization;
    const query = new URLSearchParams({ type: "sync.", stream });
    if (token) query.set("access_token", token.slice(7));
    events = new EventSource(`/v1/events?${query}`);
    events.addEventListener("sync.offset", (e) => {
      const data = JSON.parse(e.data).data;
      const lead = data.smoothed_audio_lead_ms ?? data.audio_lead_ms;
      if (lead !== null && lead !== undefined) {
        state.offset_ms = lead;
        $("watch-offset").textContent = fmt(lead);
      }
    });
    events.addEventListener("sync.correction", (e) => {
      const data = JSON.parse(e.data).data;
      state.correction = data;
      const held = data.delayed ? ` (${data.delayed} delayed)` : "";
      $("watch-correction").textContent = `${fmt(data.audio_lead_ms)}${held}, ${data.state}`;
    });
  }

  async function watch() {
    const stream = $("watch-stream").value.trim();
    if (!stream) return;
    await stop();
    status("connecting…");
    peer = new RTCPeerConnection({ iceServers: [] });
    peer.addEventListener("connectionstatechange", () => (state.connection = peer ? peer.connectionState : "closed"));
    peer.addTransceiver("video", { direction: "recvonly" });
    peer.addTransceiver("audio", { direction: "recvonly" });
    const media = new MediaStream();
    peer.addEventListener("track", (e) => {
      media.addTrack(e.track);
      $("watch-video").srcObject = media;
    });
    await peer.setLocalDescription(await peer.createOffer());
    await gathered(peer);
    const response = await fetch(`/v1/whep/${encodeURIComponent(stream)}`, {
      method: "POST",
      headers: { "Content-Type": "application/sdp", ...headers() },
      body: peer.localDescription.sdp,
    });
    if (response.status !== 201) {
      let message = `${response.status}`;
      try {
        message += `: ${(await response.json()).error}`;
      } catch (_) {
        /* not JSON */
      }
      status(`refused (${message})`);
      await stop();
      return;
    }
    location = response.headers.get("Location");
    await peer.setRemoteDescription({ type: "answer", sdp: await response.text() });
    listen(stream);
    $("watch-stop").disabled = false;
    status(`watching ${stream}`);
  }

  async function stop() {
    if (events) events.close();
    events = null;
    if (location) {
      await fetch(location, { method: "DELETE", headers: headers() }).catch(() => {});
      location = null;
    }
    if (peer) peer.close();
    peer = null;
    state.connection = "closed";
    $("watch-stop").disabled = true;
    status("idle");
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("watch-form").addEventListener("submit", (e) => {
      e.preventDefault();
      watch().catch((err) => status(`failed: ${err}`));
    });
    $("watch-stop").addEventListener("click", () => stop());
  });
})();

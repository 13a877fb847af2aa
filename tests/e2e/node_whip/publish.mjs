// A WHIP publisher on werift (a second WebRTC stack, not aiortc) for crossmodald's tests.
//
// It sends pre-encoded VP8 + Opus (written by the Python test with PyAV) as RTP, each packet
// at t0 + pts / clock on one clock, so the RTCP Sender Reports werift sends (NTP at the send of
// the last packet) give the capture time to within the timer's jitter. It opens a data channel
// labelled "events" and prints each event the daemon sends back.
//
//   node publish.mjs --url http://127.0.0.1:8750/v1/whip/node --media DIR [--token T]
//
// DIR holds media.json ({duration_s, video: [[pts, offset, size, keyframe], ...], audio: [...]},
// video pts at 90 kHz, audio at 48 kHz) and media.bin (the packets). Output: one JSON object
// per line on stdout ({"status": ...}, {"event": {...}}, {"sent": {...}}). ICE uses 127.0.0.1
// only and no STUN/TURN server. Exit status 0 when the media was sent and DELETE answered 200.

import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";

// werift's CommonJS build, so that its utils module below is the one its sender calls.
const require = createRequire(import.meta.url);
const werift = require("werift");
const { MediaStreamTrack, RTCPeerConnection, RtpHeader, RtpPacket, useOPUS, useVP8 } = werift;

// werift (0.24.4, and 0.25.2 as published) builds the NTP timestamp of its Sender Reports from
// the *decimal digits* of the fractional second (e.g. 0.25 s -> fraction 25 of 2^32), so every
// SR is off by up to a second and jumps back and forth; a receiver that maps RTP to the
// sender's clock through SRs (as crossmodald does) sees a sender restart at almost every SR.
// Replace it with a correct 32.32 fixed-point NTP time. The sender calls it through the
// module's exports at each packet, so replacing the export is enough.
const NTP_EPOCH_OFFSET_MS = -Date.UTC(1900, 0, 1);
const utils = require(join(dirname(require.resolve("werift")), "utils.js"));
utils.ntpTime = () => {
  const ms = performance.timeOrigin + performance.now() + NTP_EPOCH_OFFSET_MS;
  const seconds = Math.floor(ms / 1000);
  const fraction = Math.floor(((ms - seconds * 1000) / 1000) * 2 ** 32);
  return (BigInt(seconds) << 32n) | BigInt(fraction);
};

const VP8_MAX_PAYLOAD = 1100; // bytes of VP8 data per RTP packet (stays under a 1200 MTU)
const START_DELAY_MS = 500; // from "connected" to the first packet
const GATHER_TIMEOUT_MS = 3000;

function parseArgs(argv) {
  const out = { token: null };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, "");
    if (!["url", "media", "token", "linger"].includes(key) || argv[i + 1] === undefined) {
      throw new Error(`usage: publish.mjs --url URL --media DIR [--token T] [--linger S] (bad: ${argv[i]})`);
    }
    out[key] = argv[i + 1];
  }
  if (!out.url || !out.media) throw new Error("publish.mjs: --url and --media are required");
  return out;
}

function emit(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

function loadMedia(dir) {
  const manifest = JSON.parse(readFileSync(join(dir, "media.json"), "utf8"));
  const data = readFileSync(join(dir, "media.bin"));
  const slice = ([pts, offset, size, key]) => ({
    pts,
    key: Boolean(key),
    data: data.subarray(offset, offset + size),
  });
  return {
    durationS: manifest.duration_s,
    video: manifest.video.map(slice),
    audio: manifest.audio.map(slice),
  };
}

/** RTP packets of one VP8 frame (RFC 7741: one-byte descriptor, S bit on the first). */
function vp8Packets(frame, timestamp, seq) {
  const packets = [];
  for (let at = 0; at < frame.data.length; at += VP8_MAX_PAYLOAD) {
    const chunk = frame.data.subarray(at, at + VP8_MAX_PAYLOAD);
    const descriptor = Buffer.from([at === 0 ? 0x10 : 0x00]);
    const last = at + VP8_MAX_PAYLOAD >= frame.data.length;
    const header = new RtpHeader({
      payloadType: 96, // the sender writes the negotiated type
      sequenceNumber: seq.next(),
      timestamp,
      marker: last,
    });
    packets.push(new RtpPacket(header, Buffer.concat([descriptor, chunk])));
  }
  return packets;
}

function counter(start) {
  let value = start;
  return { next: () => (value = (value + 1) & 0xffff) };
}

async function waitFor(event, predicate, timeoutMs, what) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), timeoutMs);
    const { unSubscribe } = event.subscribe((value) => {
      if (predicate(value)) {
        clearTimeout(timer);
        unSubscribe();
        resolve(value);
      } else if (value === "failed") {
        clearTimeout(timer);
        unSubscribe();
        reject(new Error(`${what}: failed`));
      }
    });
  });
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const media = loadMedia(args.media);
  const pc = new RTCPeerConnection({
    iceServers: [], // no STUN/TURN: nothing leaves the machine
    iceUseIpv6: false,
    iceAdditionalHostAddresses: ["127.0.0.1"], // werift skips loopback by default
    iceInterfaceAddresses: { udp4: "127.0.0.1" },
    iceFilterCandidatePair: (pair) =>
      pair.localCandidate.host === "127.0.0.1" && pair.remoteCandidate.host === "127.0.0.1",
    bundlePolicy: "max-bundle",
    codecs: { video: [useVP8()], audio: [useOPUS()] },
  });
  const video = new MediaStreamTrack({ kind: "video" });
  const audio = new MediaStreamTrack({ kind: "audio" });
  pc.addTransceiver(video, { direction: "sendonly" });
  pc.addTransceiver(audio, { direction: "sendonly" });
  const channel = pc.createDataChannel("events");
  let events = 0;
  channel.onMessage.subscribe((message) => {
    events += 1;
    emit({ event: JSON.parse(message.toString()) });
  });

  await pc.setLocalDescription(await pc.createOffer());
  if (pc.iceGatheringState !== "complete") {
    await waitFor(pc.iceGatheringStateChange, (s) => s === "complete", GATHER_TIMEOUT_MS, "ICE gathering");
  }
  const headers = { "Content-Type": "application/sdp" };
  if (args.token) headers.Authorization = `Bearer ${args.token}`;
  const response = await fetch(args.url, {
    method: "POST",
    headers,
    body: pc.localDescription.sdp,
  });
  const answer = await response.text();
  if (response.status !== 201) {
    throw new Error(`WHIP POST ${args.url} answered ${response.status}: ${answer.slice(0, 200)}`);
  }
  const session = new URL(response.headers.get("location"), args.url).href;
  emit({ status: "answered", location: session, etag: response.headers.get("etag") });
  await pc.setRemoteDescription({ type: "answer", sdp: answer });
  if (pc.connectionState !== "connected") {
    await waitFor(pc.connectionStateChange, (s) => s === "connected", 10000, "connection");
  }
  emit({ status: "connected" });

  // One schedule for both tracks, on one clock.
  const vBase = Math.floor(Math.random() * 0xffffffff);
  const aBase = Math.floor(Math.random() * 0xffffffff);
  const vSeq = counter(Math.floor(Math.random() * 0xffff));
  const aSeq = counter(Math.floor(Math.random() * 0xffff));
  const items = [
    ...media.video.map((f) => ({ kind: "video", dueMs: (f.pts / 90000) * 1000, frame: f })),
    ...media.audio.map((f) => ({ kind: "audio", dueMs: (f.pts / 48000) * 1000, frame: f })),
  ].sort((a, b) => a.dueMs - b.dueMs);
  const t0 = performance.now() + START_DELAY_MS;
  let sentVideo = 0;
  let sentAudio = 0;
  let lateMs = 0;
  for (const item of items) {
    const wait = t0 + item.dueMs - performance.now();
    if (wait > 1) await sleep(wait);
    lateMs = Math.max(lateMs, performance.now() - (t0 + item.dueMs));
    if (item.kind === "video") {
      const ts = (vBase + item.frame.pts) >>> 0;
      for (const packet of vp8Packets(item.frame, ts, vSeq)) video.writeRtp(packet);
      sentVideo += 1;
    } else {
      const header = new RtpHeader({
        payloadType: 111,
        sequenceNumber: aSeq.next(),
        timestamp: (aBase + item.frame.pts) >>> 0,
        marker: false,
      });
      audio.writeRtp(new RtpPacket(header, Buffer.from(item.frame.data)));
      sentAudio += 1;
    }
  }
  emit({ sent: { video_frames: sentVideo, audio_packets: sentAudio, max_late_ms: lateMs } });
  // Let the last windows close and their events come back before ending the session.
  await sleep(Number(args.linger ?? 1.5) * 1000);
  const ended = await fetch(session, { method: "DELETE", headers: args.token ? { Authorization: headers.Authorization } : {} });
  emit({ status: "deleted", code: ended.status, events });
  await pc.close();
  process.exit(ended.status === 200 ? 0 : 1);
}

main().catch((err) => {
  emit({ error: err.message || String(err) });
  process.exit(1);
});

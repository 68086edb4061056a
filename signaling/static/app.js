// Parley demo client: one WebRTC call to the agent, events on a data channel.
"use strict";

const $ = (id) => document.getElementById(id);
const stats = { maxLevel: 0, audioFrames: 0, events: [], finals: [], replies: [], state: "idle" };
window.parleyStats = stats; // read by the browser test

let pc = null, channel = null, room = null, callId = null, meterTimer = null, audioCtx = null;

function setState(state) {
  stats.state = state;
  const el = $("state");
  el.textContent = state; el.className = "state " + state; el.dataset.state = state;
}

function fail(message) {
  $("error").textContent = message;
  hangUp();
}

function addItem(list, text, cls) {
  const li = document.createElement("li");
  li.textContent = text;
  if (cls) li.className = cls;
  $(list).appendChild(li);
}

function onEvent(ev) {
  stats.events.push(ev.type);
  switch (ev.type) {
    case "state": setState(ev.state); break;
    case "transcript":
      if (ev.final) { $("partial").textContent = ""; stats.finals.push(ev.text); addItem("transcripts", ev.text); }
      else $("partial").textContent = ev.text;
      break;
    case "reply_delta": $("reply").textContent += ev.text; break;
    case "reply":
      $("reply").textContent = "";
      stats.replies.push(ev.heard_text);
      addItem("replies", ev.heard_text || ev.text, ev.interrupted ? "interrupted" : "");
      break;
    case "metrics": {
      const row = document.createElement("tr");
      const fmt = (v) => (v === null || v === undefined ? "-" : Math.round(v) + " ms");
      for (const v of [ev.turn_id, fmt(ev.voice_to_voice_ms), fmt(ev.stt_final_ms), fmt(ev.llm_first_token_ms), fmt(ev.tts_first_audio_ms)]) {
        const td = document.createElement("td"); td.textContent = v; row.appendChild(td);
      }
      $("latency").querySelector("tbody").appendChild(row);
      break;
    }
    case "error": $("error").textContent = ev.stage + ": " + ev.message; break;
    case "tool_call": addItem("tools", "\u2192 " + ev.name + " " + ev.arguments, "call"); break;
    case "tool_result":
      addItem("tools", "\u2190 " + ev.name + (ev.ok ? ": " + ev.content : " failed (" + ev.code + ")") + (ev.late ? " (after interruption)" : ""), ev.ok ? "ok" : "failed");
      break;
  }
}

function watchLevel(stream) {
  audioCtx = new AudioContext();
  const analyser = audioCtx.createAnalyser();
  analyser.fftSize = 1024;
  audioCtx.createMediaStreamSource(stream).connect(analyser);
  const buf = new Float32Array(analyser.fftSize);
  meterTimer = setInterval(() => {
    analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (const x of buf) sum += x * x;
    const rms = Math.sqrt(sum / buf.length);
    stats.maxLevel = Math.max(stats.maxLevel, rms);
    if (rms > 0.01) stats.audioFrames += 1;
    $("level").value = Math.min(1, rms * 4);
  }, 50);
}

async function waitIce(peer) {
  if (peer.iceGatheringState === "complete") return;
  await new Promise((resolve) => {
    const check = () => { if (peer.iceGatheringState === "complete") { peer.removeEventListener("icegatheringstatechange", check); resolve(); } };
    peer.addEventListener("icegatheringstatechange", check);
    setTimeout(resolve, 3000);
  });
}

async function call() {
  $("error").textContent = "";
  $("call").disabled = true;
  try {
    // A server off loopback needs an API key: open the page as /#key=pk_... (the
    // fragment never leaves the browser, so the key reaches no server log).
    const apiKey = new URLSearchParams(location.hash.slice(1)).get("key");
    const auth = apiKey ? { Authorization: "Bearer " + apiKey } : {};
    const r = await fetch("/v1/rooms", { method: "POST", headers: { "Content-Type": "application/json", ...auth }, body: "{}" });
    if (r.status === 401) throw new Error("this server needs an API key: open this page as /#key=pk_...");
    if (!r.ok) throw new Error("could not create a room (" + r.status + ")");
    room = await r.json();
    const mic = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
    });
    pc = new RTCPeerConnection({ iceServers: room.ice_servers || [] });
    mic.getTracks().forEach((t) => pc.addTrack(t, mic));
    pc.ontrack = (e) => { $("remote").srcObject = e.streams[0] || new MediaStream([e.track]); watchLevel($("remote").srcObject); };
    pc.onconnectionstatechange = () => { if (pc && ["failed", "closed"].includes(pc.connectionState)) fail("connection " + pc.connectionState); };
    channel = pc.createDataChannel("events");
    channel.onmessage = (m) => onEvent(JSON.parse(m.data));
    channel.onopen = () => { $("text").disabled = false; $("send").disabled = false; };
    await pc.setLocalDescription(await pc.createOffer());
    await waitIce(pc);
    const answer = await fetch(`/v1/rooms/${room.id}/offer`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: "Bearer " + room.token },
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer" }),
    });
    const body = await answer.json();
    if (!answer.ok) throw new Error(body.detail || "offer refused (" + answer.status + ")");
    callId = body.call_id;
    await pc.setRemoteDescription({ sdp: body.sdp, type: body.type });
    setState("listening");
    $("hangup").disabled = false;
  } catch (err) {
    fail(err.message || String(err));
  }
}

async function hangUp() {
  if (room && callId) {
    fetch(`/v1/rooms/${room.id}/calls/${callId}`, { method: "DELETE", headers: { Authorization: "Bearer " + room.token } }).catch(() => {});
  }
  if (meterTimer) clearInterval(meterTimer);
  if (audioCtx) audioCtx.close();
  if (pc) { pc.getSenders().forEach((s) => s.track && s.track.stop()); pc.close(); }
  pc = null; channel = null; callId = null; meterTimer = null; audioCtx = null;
  $("call").disabled = false; $("hangup").disabled = true; $("text").disabled = true; $("send").disabled = true;
  setState("idle");
}

$("call").addEventListener("click", call);
$("hangup").addEventListener("click", hangUp);
$("textform").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("text").value.trim();
  if (text && channel && channel.readyState === "open") {
    channel.send(JSON.stringify({ type: "text", text }));
    $("text").value = "";
  }
});

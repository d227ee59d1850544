// Recording the microphone with MediaRecorder: a level meter (an AnalyserNode's RMS), a timer, stop, re-record.
const MAX_SECONDS = 180;

export class Recorder {
  constructor({ onLevel, onTick, onStop }) {
    Object.assign(this, { onLevel, onTick, onStop });
    this.recorder = null;
  }

  get recording() {
    return this.recorder?.state === "recording";
  }

  async start() {
    this.stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    this.chunks = [];
    this.recorder = new MediaRecorder(this.stream);
    this.recorder.addEventListener("dataavailable", (event) => event.data.size && this.chunks.push(event.data));
    this.stopped = new Promise((resolve) => this.recorder.addEventListener("stop", resolve, { once: true }));
    this.context = new AudioContext();
    const analyser = this.context.createAnalyser();
    analyser.fftSize = 1024;
    this.context.createMediaStreamSource(this.stream).connect(analyser);
    const samples = new Float32Array(analyser.fftSize);
    this.began = performance.now();
    const tick = () => {
      if (!this.recording) return;
      analyser.getFloatTimeDomainData(samples);
      const rms = Math.sqrt(samples.reduce((sum, x) => sum + x * x, 0) / samples.length);
      this.onLevel(Math.min(1, rms * 4));
      const seconds = (performance.now() - this.began) / 1000;
      this.onTick(seconds);
      if (seconds >= MAX_SECONDS) this.stop();
      else requestAnimationFrame(tick);
    };
    this.recorder.start(250);
    requestAnimationFrame(tick);
  }

  /** Stop; resolves to {blob, seconds}. */
  async stop() {
    if (!this.recorder || this.recorder.state === "inactive") return null;
    const seconds = (performance.now() - this.began) / 1000;
    this.recorder.stop();
    await this.stopped;
    this.stream.getTracks().forEach((track) => track.stop());
    await this.context.close();
    this.onLevel(0);
    const type = this.recorder.mimeType || "audio/webm";
    const result = { blob: new Blob(this.chunks, { type }), seconds };
    this.onStop(result);
    return result;
  }
}

// Bundle loading and the ONNX target as a KV-cached model (onnxruntime-web).
//
// A bundle is the folder `edgespec export` writes: edgespec.json (the manifest, every file with
// its sha256 and size), target/onnx-<quant>/model.onnx (+ model.onnx.data) and tokenizer/.
// The graph is edgespec's `gqa` graph (GroupQueryAttention): inputs input_ids int64[1, T],
// attention_mask int64[1, P+T], optional position_ids int64[1, T] and attention_bias
// float32[1, 1, T, P+T], and past_key_values.{i}.key/value float32[1, H_kv, P, D]; outputs
// logits float32[1, T, V] and present.{i}.key/value float32[1, H_kv, P+T, D].
// Here the past is fed at its true length P (no shared n_ctx buffer: onnxruntime-web copies
// every input into the WASM heap, so a padded buffer would cost a copy of n_ctx rows per step).

export class DemoError extends Error {}  // shown in the page as one line

/** Every file a role's artifact or the tokenizer consists of: [{path, sha256, size}]. */
function entries(list) { return Array.isArray(list) ? list : []; }

export async function readManifest(base) {
  let res;
  try { res = await fetch(new URL('edgespec.json', base)); } catch (e) {
    throw new DemoError(`cannot reach the bundle at ${base} (${e.message})`);
  }
  if (!res.ok) throw new DemoError(`${base} is not an edgespec bundle (edgespec.json: HTTP ${res.status}); export one with: edgespec export -m MODEL --format onnx -o DIR`);
  let m;
  try { m = await res.json(); } catch (e) { throw new DemoError(`${base}edgespec.json is not valid JSON (${e.message}); re-export the bundle`); }
  if (m.format_version !== 1) throw new DemoError(`bundle format_version ${m.format_version}; this demo reads 1: re-export the bundle`);
  return m;
}

/** A role's ONNX artifacts, in the manifest's order. */
export function onnxArtifacts(manifest, role = 'target') {
  return entries(manifest.roles?.[role]?.artifacts).filter((a) => a.format === 'onnx');
}

export function pickArtifact(manifest, quant) {
  const arts = onnxArtifacts(manifest);
  const have = manifest.roles?.target?.artifacts?.map((a) => `${a.format}-${a.quantization}`) ?? [];
  if (!arts.length) throw new DemoError(`this bundle has no ONNX target (it holds: ${have.join(', ') || 'nothing'}); export one with: edgespec export -m MODEL --format onnx -o DIR`);
  if (!quant || quant === 'auto') return arts[0];
  const a = arts.find((x) => x.quantization === quant);
  if (!a) throw new DemoError(`this bundle has no onnx-${quant} target (it has: ${arts.map((x) => x.quantization).join(', ')})`);
  return a;
}

/** The draft role's ONNX artifact for a target artifact: the same quantization when the draft
 * has it, else its first; null when the bundle has no ONNX draft (the page then offers no
 * draft speculation). */
export function pickDraftArtifact(manifest, target) {
  const arts = onnxArtifacts(manifest, 'draft');
  return arts.find((x) => x.quantization === target.quantization) ?? arts[0] ?? null;
}

async function sha256Hex(buf) {
  const d = await crypto.subtle.digest('SHA-256', buf);
  return Array.from(new Uint8Array(d), (b) => b.toString(16).padStart(2, '0')).join('');
}

/** Fetch one manifest entry as bytes; check its size and (if `verify`) its sha256. */
export async function fetchEntry(base, entry, { verify = true, onProgress } = {}) {
  const res = await fetch(new URL(entry.path, base));
  if (!res.ok) throw new DemoError(`bundle file ${entry.path} is missing (HTTP ${res.status}); re-export the bundle`);
  let buf;
  if (onProgress && res.body && entry.size > (1 << 22)) {
    const out = new Uint8Array(entry.size);
    const reader = res.body.getReader();
    let n = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (n + value.length > out.length) throw new DemoError(`bundle file ${entry.path} is larger than the manifest's ${entry.size} bytes; re-export the bundle`);
      out.set(value, n); n += value.length; onProgress(n, entry.size);
    }
    if (n !== entry.size) throw new DemoError(`bundle file ${entry.path} has ${n} bytes, the manifest says ${entry.size}; re-export the bundle`);
    buf = out;
  } else {
    buf = new Uint8Array(await res.arrayBuffer());
  }
  if (buf.byteLength !== entry.size) throw new DemoError(`bundle file ${entry.path} has ${buf.byteLength} bytes, the manifest says ${entry.size}; re-export the bundle`);
  if (verify) {
    const got = await sha256Hex(buf);
    if (got !== entry.sha256) throw new DemoError(`bundle file ${entry.path} fails its checksum (sha256 ${got.slice(0, 12)}…, the manifest says ${entry.sha256.slice(0, 12)}…); the file was changed: re-export the bundle`);
  }
  return buf;
}

/** Refuse a model that cannot fit: its bytes against navigator.deviceMemory (GiB, Chrome) and
 * the 4 GiB wasm32 heap. Returns a note for the page or throws DemoError. */
export function checkMemory(bytes, backend) {
  const mb = (bytes / 2 ** 20).toFixed(0);
  if (backend === 'wasm' && bytes > 3 * 2 ** 30) throw new DemoError(`the model has ${mb} MB; WASM's heap is 4 GB at most (weights plus KV and activations): export a smaller quantization (--quant int4)`);
  const gib = navigator.deviceMemory;
  if (gib && bytes > 0.5 * gib * 2 ** 30) throw new DemoError(`the model has ${mb} MB but this device reports ${gib} GB of memory; export a smaller quantization (--quant int4) or a smaller model`);
  return `${mb} MB of weights`;
}

export async function webgpuAvailable() {
  if (!('gpu' in navigator)) return { ok: false, why: 'this browser has no WebGPU (navigator.gpu)' };
  try {
    const a = await navigator.gpu.requestAdapter();
    if (!a) return { ok: false, why: 'WebGPU has no adapter on this device' };
    const i = a.info ?? {};
    return { ok: true, why: '', adapter: [i.vendor, i.architecture, i.description].filter(Boolean).join(' ') + (i.isFallbackAdapter ? ' (fallback adapter)' : '') };
  } catch (e) { return { ok: false, why: `WebGPU adapter request failed (${e.message})` }; }
}

/** The ONNX target with its KV cache. forward(tokens) appends tokens and returns logits. */
export class OnnxLM {
  constructor(ort, session, cfg) {
    this.ort = ort;
    this.session = session;
    this.vocab = cfg.vocab;
    this.inputs = new Set(session.inputNames);
    this.layers = session.inputNames.filter((n) => /^past_key_values\.\d+\.key$/.test(n)).length;
    this.hkv = cfg.hkv;
    this.headDim = cfg.headDim;
    this.hidden = cfg.hidden;
    this.nPast = 0;
    this.past = null;  // {name: Float32Array [H_kv, P, D]}
    this.reset();
  }

  reset() {
    this.nPast = 0;
    this.past = {};
    for (let i = 0; i < this.layers; i++) {
      for (const kv of ['key', 'value']) this.past[`past_key_values.${i}.${kv}`] = new Float32Array(0);
    }
  }

  /** Append `tokens` (T >= 1) and score them. Returns {rows: T, vocab: V, data: Float32Array[T*V]};
   * row i is the distribution over the token after tokens[i]. Chains need no mask: the
   * GroupQueryAttention graph is causal, so attention_bias is all zeros (as in the Python
   * runtime's OnnxModel.forward). */
  async forward(tokens) {
    const { ort } = this;
    const T = tokens.length, P = this.nPast;
    const feeds = {
      input_ids: new ort.Tensor('int64', BigInt64Array.from(tokens, BigInt), [1, T]),
      attention_mask: new ort.Tensor('int64', new BigInt64Array(P + T).fill(1n), [1, P + T]),
    };
    if (this.inputs.has('position_ids')) {
      feeds.position_ids = new ort.Tensor('int64', BigInt64Array.from({ length: T }, (_, i) => BigInt(P + i)), [1, T]);
    }
    if (this.inputs.has('attention_bias')) {
      feeds.attention_bias = new ort.Tensor('float32', new Float32Array(T * (P + T)), [1, 1, T, P + T]);
    }
    if (this.inputs.has('use_embeds')) {  // the inputs_embeds entry (Dolphin memory): unused here
      feeds.use_embeds = new ort.Tensor('bool', new Uint8Array(1), []);
      feeds.inputs_embeds = new ort.Tensor('float32', new Float32Array(this.hidden), [1, 1, this.hidden]);
    }
    for (const [name, data] of Object.entries(this.past)) {
      feeds[name] = new ort.Tensor('float32', data, [1, this.hkv, P, this.headDim]);
    }
    const out = await this.session.run(feeds);
    for (const name of Object.keys(this.past)) {
      const present = out[name.replace('past_key_values.', 'present.')];
      this.past[name] = present.data;
    }
    this.nPast = P + T;
    const logits = out.logits;
    return { rows: T, vocab: logits.dims[2], data: logits.data };
  }

  /** Keep the first `length` cached positions (rollback after a rejected draft). */
  truncate(length) {
    if (length >= this.nPast) return;
    const P = this.nPast, D = this.headDim;
    for (const [name, data] of Object.entries(this.past)) {
      const kept = new Float32Array(this.hkv * length * D);
      for (let h = 0; h < this.hkv; h++) kept.set(data.subarray(h * P * D, h * P * D + length * D), h * length * D);
      this.past[name] = kept;
    }
    this.nPast = length;
  }
}

/** Load one role's ONNX artifact (the target's or the draft's) of the bundle at `base` (a URL
 * ending in '/'): {lm: OnnxLM, config: its config.json, note: its size for the page}. */
export async function loadRole(ort, base, artifact, { backend, verify, onProgress }) {
  const files = entries(artifact.files);
  const byName = (n) => files.find((f) => f.path === `${artifact.path}/${n}`);
  const modelEntry = byName('model.onnx');
  if (!modelEntry) throw new DemoError(`artifact ${artifact.path} has no model.onnx in the manifest; re-export the bundle`);
  const total = files.reduce((s, f) => s + f.size, 0);
  const note = checkMemory(total, backend);
  const config = JSON.parse(new TextDecoder().decode(await fetchEntry(base, byName('config.json'), { verify })));
  const model = await fetchEntry(base, modelEntry, { verify });
  const externalData = [];
  for (const f of files) {
    if (!/\.onnx\.data$|\.onnx_data$/.test(f.path)) continue;
    const data = await fetchEntry(base, f, { verify, onProgress: (n, t) => onProgress?.(`${f.path.split('/').pop()}: ${(n / 2 ** 20).toFixed(0)}/${(t / 2 ** 20).toFixed(0)} MB`) });
    externalData.push({ path: f.path.slice(artifact.path.length + 1), data });
  }
  onProgress?.('creating the onnxruntime-web session');
  let session;
  try {
    session = await ort.InferenceSession.create(model, {
      executionProviders: [backend],
      externalData,
      graphOptimizationLevel: 'all',
    });
  } catch (e) {
    throw new DemoError(`onnxruntime-web (${backend}) cannot load ${artifact.path}: ${e.message ?? e}`);
  }
  const heads = config.num_attention_heads;
  const cfg = {
    vocab: config.vocab_size,
    hkv: config.num_key_value_heads ?? heads,
    headDim: config.head_dim ?? config.hidden_size / heads,
    hidden: config.hidden_size,
  };
  return { lm: new OnnxLM(ort, session, cfg), config, note };
}

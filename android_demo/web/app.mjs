// edgespec demo: the page's wiring. Loads a bundle's ONNX target with onnxruntime-web
// (WASM SIMD, or WebGPU when present), its tokenizer with transformers.js, and decodes with
// decode.mjs. window.demo is the programmatic interface the tests drive:
//   await window.demo.ready            -> info {backend, threads, isolated, artifact, ...}
//   await window.demo.run({prompt | promptIds, maxNewTokens, strategy, greedy, ...})
//                                      -> {promptIds, tokens, text, stats}
import { DemoError, readManifest, pickArtifact, pickDraftArtifact, loadRole, webgpuAvailable } from './model.mjs';
import { generate, DraftProposer } from './decode.mjs';

/** Assumed package power while decoding, watts: browsers report no power, so energy is an
 * estimate (a phone SoC's big cores under load draw a few watts). */
const ASSUMED_WATTS = 3;

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const android = globalThis.EdgespecAndroid;  // the WebView's JS bridge (MainActivity), if any

function status(msg) { $('status').textContent = msg; }
function fail(e) {
  const msg = e instanceof DemoError ? e.message : `unexpected error: ${e?.message ?? e}`;
  $('error').textContent = msg;
  $('error').hidden = false;
  status('stopped');
  console.error(e);
  return msg;
}

async function bundleList() {
  const given = params.get('bundle');
  if (given) return [{ name: given, url: given }];
  try {
    const r = await fetch('models/index.json');
    if (r.ok) return await r.json();
  } catch { /* fall through */ }
  return [];
}

async function chooseBackend(want) {
  if (want === 'wasm') return { backend: 'wasm', note: '', adapter: null };
  const gpu = await webgpuAvailable();
  if (gpu.ok) return { backend: 'webgpu', note: '', adapter: gpu.adapter };
  if (want === 'webgpu') throw new DemoError(`WebGPU was asked for but ${gpu.why}; choose WASM (backend=wasm)`);
  return { backend: 'wasm', note: `no WebGPU (${gpu.why}): WASM SIMD on the CPU`, adapter: null };
}

async function loadTokenizer(base, manifest) {
  const tok = manifest.tokenizer ?? {};
  if (!tok.path) throw new DemoError('the bundle has no tokenizer folder; re-export it with edgespec export');
  // check every tokenizer file against the manifest before transformers.js reads them
  const { fetchEntry } = await import('./model.mjs');
  const files = {};
  for (const f of tok.files ?? []) files[f.path.split('/').pop()] = await fetchEntry(base, f);
  const json = (n) => (files[n] ? JSON.parse(new TextDecoder().decode(files[n])) : {});
  const { AutoTokenizer, PreTrainedTokenizer, env } = await import('./vendor/transformers/transformers.min.js');
  let tokenizer;
  if (files['tokenizer_config.json']) {
    env.allowRemoteModels = false;
    env.allowLocalModels = true;
    env.localModelPath = new URL(base).pathname;  // a path, not a URL: transformers.js fetches it
    env.useBrowserCache = false;
    tokenizer = await AutoTokenizer.from_pretrained(tok.path.replace(/\/$/, ''));
  } else {
    // no tokenizer_config.json (AutoTokenizer needs one): the generic class over tokenizer.json
    // a bundle exported from a GGUF file carries only tokenizer.gguf: token ids work, text not
    if (!files['tokenizer.json']) return { tokenizer: null, cfg: json('tokenizer_config.json'), gen: json('generation_config.json'), idOf: () => undefined };
    tokenizer = new PreTrainedTokenizer(json('tokenizer.json'), {});
  }
  // the same rules as edgespec.tokenizer.HFTokenizer: special tokens as tokenizer.json adds
  // them, BOS prepended when tokenizer_config says add_bos_token; EOS from
  // generation_config, config and tokenizer_config
  const cfg = json('tokenizer_config.json'), gen = json('generation_config.json');
  const idOf = (t) => (typeof t === 'string' ? tokenizer.model?.tokens_to_ids?.get(t) : typeof t?.content === 'string' ? tokenizer.model?.tokens_to_ids?.get(t.content) : undefined);
  return { tokenizer, cfg, gen, idOf };
}

function eosIds(tok, config) {
  const ids = new Set();
  for (const e of [tok.gen.eos_token_id, config.eos_token_id].flat()) if (Number.isInteger(e)) ids.add(e);
  const named = tok.idOf(tok.cfg.eos_token);
  if (Number.isInteger(named)) ids.add(named);
  return ids;
}

const NO_TEXT = 'this bundle has no tokenizer.json (exported from a GGUF file: tokenizer.gguf only), so the page takes token ids only; export from the HF model for text prompts';

function decodeIds(tok, ids) { return tok.tokenizer ? tok.tokenizer.decode(ids) : `[${ids.join(', ')}]`; }

function encode(tok, config, text) {
  if (!tok.tokenizer) throw new DemoError(NO_TEXT);
  const ids = Array.from(tok.tokenizer.encode(text, { add_special_tokens: true }));
  const bos = tok.idOf(tok.cfg.bos_token) ?? config.bos_token_id;
  if (tok.cfg.add_bos_token && Number.isInteger(bos) && ids[0] !== bos) ids.unshift(bos);
  return ids;
}

/** strategy -> the title of its stats box */
const TITLES = {
  plain: () => 'plain decoding',
  ngram: () => `speculative (prompt lookup, k=${$('k').value})`,
  draft: () => `speculative (draft model, k=${$('k').value})`,
};

function fmt(x, digits = 1) { return x === null || x === undefined || Number.isNaN(x) ? '–' : Number(x).toFixed(digits); }

function renderStats(el, title, s) {
  const joules = (s.totalMs / 1000) * ASSUMED_WATTS;
  const rows = [
    ['time to first token', `${fmt(s.ttftMs, 0)} ms`],
    ['decode speed', `${fmt(s.tokensPerS, 2)} tokens/s`],
    ['tokens', `${s.tokens} in ${fmt(s.totalMs / 1000, 2)} s`],
    ['acceptance', s.acceptance === null ? '– (no drafts)' : `${fmt(100 * s.acceptance, 0)} % (${s.accepted}/${s.proposed})`],
    ['accepted per step', fmt(s.meanAcceptedPerStep, 2)],
    ['forwards', s.draftForwards ? `${s.forwards} target + ${s.draftForwards} draft` : `${s.forwards}`],
    ['energy (estimated)', `≈ ${fmt(joules, 2)} J at an assumed ${ASSUMED_WATTS} W`],
  ];
  const box = document.createElement('div');
  box.className = 'stats';
  box.innerHTML = `<h3></h3><table></table>`;
  box.querySelector('h3').textContent = title;
  const table = box.querySelector('table');
  for (const [k, v] of rows) {
    const tr = table.insertRow();
    tr.insertCell().textContent = k;
    const td = tr.insertCell();
    td.textContent = v;
    td.className = 'num';
  }
  el.append(box);
}

async function main() {
  const isolated = globalThis.crossOriginIsolated === true;
  const threads = isolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  const info = { isolated, threads, webview: Boolean(android) };
  $('env').textContent = `cross-origin isolated: ${isolated ? 'yes' : 'no'} · WASM threads: ${threads}` +
    (android ? ' · Android WebView (never cross-origin isolated: single-threaded)' : '');
  if (android) {
    $('chrome').hidden = false;
    $('chrome').onclick = () => android.openInChrome();
  }
  const bundles = await bundleList();
  if (!bundles.length) {
    throw new DemoError(android
      ? 'no model: adb push a bundle to /sdcard/Android/data/org.edgespec.demo/files/models/NAME/ (see android_demo/README.md) and reopen the app'
      : 'no bundle is served: start the server with edgespec demo serve --bundle DIR');
  }
  const sel = $('bundle');
  for (const b of bundles) sel.add(new Option(b.name, b.url));
  sel.onchange = () => { params.set('bundle', sel.value); location.search = params.toString(); };
  const base = new URL(bundles[0].url, location.href).href.replace(/\/?$/, '/');
  status(`reading ${base}edgespec.json`);
  const manifest = await readManifest(base);
  const artifact = pickArtifact(manifest, params.get('quant'));
  const { backend, note, adapter } = await chooseBackend(params.get('backend') ?? 'auto');
  const ort = await import(backend === 'webgpu' ? './vendor/ort/ort.webgpu.min.mjs' : './vendor/ort/ort.wasm.min.mjs');
  ort.env.wasm.wasmPaths = new URL('vendor/ort/', location.href).href;
  ort.env.wasm.numThreads = threads;
  ort.env.wasm.simd = true;
  const verify = params.get('verify') !== '0';
  status(`loading ${artifact.path}${verify ? ' (checking sha256)' : ''}`);
  const t0 = performance.now();
  const { lm, config, note: mem } = await loadRole(ort, base, artifact, { backend, verify, onProgress: status });
  // a draft role with an ONNX artifact: draft-model speculation (same tokenizer, checked equal
  // by edgespec export)
  const draftArt = pickDraftArtifact(manifest, artifact);
  const models = {};
  if (draftArt) {
    status(`loading the draft ${draftArt.path}`);
    const d = await loadRole(ort, base, draftArt, { backend, verify, onProgress: status });
    if (d.config.vocab_size !== config.vocab_size) throw new DemoError(`the draft's vocabulary (${d.config.vocab_size}) differs from the target's (${config.vocab_size}); re-export the bundle`);
    models.draft = new DraftProposer(d.lm);
    $('strategy').add(new Option('speculative (draft model)', 'draft'));
  }
  const tok = await loadTokenizer(base, manifest);
  const eos = eosIds(tok, config);
  Object.assign(info, { backend, backendNote: note, adapter, artifact: artifact.path, draft: draftArt?.path ?? null, quantization: artifact.quantization, loadMs: performance.now() - t0, weights: mem, eos: [...eos] });
  $('model').textContent = `${artifact.path} (${artifact.quantization}, ${mem})${draftArt ? ` + draft ${draftArt.path}` : ''} on ${backend}${adapter ? ` (${adapter})` : ''}${note ? ` — ${note}` : ''} · loaded in ${fmt(info.loadMs / 1000, 1)} s`;

  let busy = false;
  async function run(opts) {
    if (busy) throw new DemoError('a generation is already running');
    busy = true;
    try {
      if (opts.prompt !== undefined) $('prompt').value = opts.prompt;
      const promptIds = opts.promptIds ?? encode(tok, config, opts.prompt ?? '');
      if (!promptIds.length) throw new DemoError('the prompt is empty');
      const ctx = config.max_position_embeddings ?? 2048;
      if (promptIds.length + (opts.maxNewTokens ?? 32) > ctx) throw new DemoError(`prompt (${promptIds.length} tokens) plus max new tokens exceed the model's context of ${ctx}`);
      status(`generating (${opts.strategy ?? 'plain'})`);
      const r = await generate(lm, promptIds, opts, eos, (ids) => { $('output').textContent = decodeIds(tok, ids); }, models);
      const text = decodeIds(tok, r.tokens);
      $('output').textContent = text;
      status('done');
      return { promptIds, tokens: r.tokens, text, stats: r.stats };
    } finally { busy = false; }
  }

  function formOpts(strategy) {
    const greedy = $('greedy').checked;
    return {
      prompt: $('prompt').value,
      maxNewTokens: Number($('max').value),
      strategy,
      k: Number($('k').value),
      greedy,
      temperature: Number($('temperature').value),
      topP: Number($('topp').value),
      topK: Number($('topk').value),
      seed: Number($('seed').value),
    };
  }
  async function clicked(strategies) {
    $('error').hidden = true;
    $('stats').replaceChildren();
    try {
      for (const s of strategies) {
        const r = await run(formOpts(s));
        renderStats($('stats'), TITLES[s](), r.stats);
      }
    } catch (e) { fail(e); }
  }
  $('go').onclick = () => clicked([$('strategy').value]);
  $('compare').onclick = () => clicked(models.draft ? ['plain', 'ngram', 'draft'] : ['plain', 'ngram']);
  $('go').disabled = $('compare').disabled = false;
  status(tok.tokenizer ? 'ready' : `ready (token ids only: ${NO_TEXT})`);
  return { info, run, renderStats: (title, s) => renderStats($('stats'), title, s) };
}

const started = main().catch((e) => { fail(e); throw e; });
window.demo = {
  ready: started.then((x) => x.info),
  run: async (opts) => (await started).run(opts),
  show: async (title, s) => (await started).renderStats(title, s),
  error: () => ($('error').hidden ? null : $('error').textContent),
};

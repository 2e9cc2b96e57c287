// The decoding loops: plain (greedy or sampled) and speculative with prompt lookup or a draft
// model, a JS port of edgespec's (edgespec/speculative/proposers/ngram.py and draft_model.py,
// edgespec/speculative/step.py, edgespec/speculative/verify.py).
//
// Speculation verifies a chain in one forward: [next, d1..dk] -> k+1 logit rows; row i scores
// d(i+1). Greedy keeps the longest prefix where argmax(row i) == d(i+1), so its output equals
// plain greedy decoding token for token (up to near-ties between the one-token and the
// (k+1)-token kernels). Sampling uses Leviathan et al. (2023), Algorithm 1: accept d with
// probability min(1, q(d) / p(d)), where p is the draft's distribution (one-hot on d for prompt
// lookup); on rejection sample max(0, q - p), normalized. Rejected positions are rolled back
// from the target's KV cache (model.truncate); a draft model's cache re-syncs lazily.
import { DemoError } from './model.mjs';

/** Index of the largest logit in row `r` (the first one on ties, as numpy.argmax). */
export function argmax(logits, r) {
  const V = logits.vocab, off = r * V, d = logits.data;
  let best = 0, bv = d[off];
  for (let i = 1; i < V; i++) if (d[off + i] > bv) { bv = d[off + i]; best = i; }
  return best;
}

/** mulberry32: a seeded generator of floats in [0, 1), so seeded runs repeat exactly. */
export function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** q: the sampling distribution of row r (temperature, then top-k, then top-p) as
 * Float64Array[V] summing to 1. */
export function probs(logits, r, { temperature = 1, topK = 0, topP = 1 }) {
  const V = logits.vocab, off = r * V, d = logits.data;
  let mx = -Infinity;
  for (let i = 0; i < V; i++) mx = Math.max(mx, d[off + i]);
  const q = new Float64Array(V);
  let s = 0;
  for (let i = 0; i < V; i++) { q[i] = Math.exp((d[off + i] - mx) / temperature); s += q[i]; }
  for (let i = 0; i < V; i++) q[i] /= s;
  if ((topK > 0 && topK < V) || topP < 1) {
    const order = Array.from(q.keys()).sort((a, b) => q[b] - q[a]);
    let keep = topK > 0 ? Math.min(topK, V) : V, cum = 0;
    for (let j = 0; j < keep; j++) { cum += q[order[j]]; if (cum >= topP) { keep = j + 1; break; } }
    const kept = new Float64Array(V);
    let ks = 0;
    for (let j = 0; j < keep; j++) { kept[order[j]] = q[order[j]]; ks += q[order[j]]; }
    for (let i = 0; i < V; i++) kept[i] /= ks;
    return kept;
  }
  return q;
}

export function sampleFrom(q, u) {
  let c = 0;
  for (let i = 0; i < q.length; i++) { c += q[i]; if (u < c) return i; }
  for (let i = q.length - 1; i >= 0; i--) if (q[i] > 0) return i;
  return 0;
}

/** Prompt lookup (Saxena 2023): the tokens after the most recent earlier occurrence of the
 * longest context suffix of ngramMax..ngramMin tokens; [] when none. */
export function ngramPropose(ctx, k, ngramMin = 1, ngramMax = 4) {
  const n = ctx.length;
  for (let size = Math.min(ngramMax, n - 1); size >= ngramMin; size--) {
    for (let i = n - 1 - size; i >= 0; i--) {
      let hit = true;
      for (let j = 0; j < size; j++) if (ctx[i + j] !== ctx[n - size + j]) { hit = false; break; }
      if (hit) {
        const follow = ctx.slice(i + size, i + size + k);
        if (follow.length) return follow;
      }
    }
  }
  return [];
}

/** One token from row r: argmax when greedy, else a sample from q. */
function pick(logits, r, p, rand) {
  return p.greedy ? argmax(logits, r) : sampleFrom(probs(logits, r, p), rand());
}

/**
 * A draft model of the same vocabulary (Leviathan et al. 2023), as DraftModelProposer: it keeps
 * its own KV cache, synchronised lazily. Each propose rolls the cache back to the longest
 * prefix it shares with the committed context, catches up on the missing tokens in one
 * forward, then drafts up to k tokens one at a time (greedy: argmax; sampling: a sample from its
 * own q, whose rows are returned as `probs`). Drafting stops early when the draft's top
 * probability falls below minConfidence (0.3, SpecConfig.min_confidence's default).
 */
export class DraftProposer {
  constructor(lm, minConfidence = 0.3) {
    this.lm = lm;
    this.minConfidence = minConfidence;
    this.cached = [];  // the tokens in the draft's KV cache, in order
  }

  reset() { this.lm.reset(); this.cached = []; }

  /** Make the cache hold ctx; return the logits after it (row `row`). */
  async sync(ctx) {
    let common = 0;
    const limit = Math.min(this.cached.length, ctx.length - 1);
    while (common < limit && this.cached[common] === ctx[common]) common++;
    this.lm.truncate(common);
    this.cached = ctx.slice(0, common);
    const missing = ctx.slice(common);
    const logits = await this.lm.forward(missing);
    this.cached.push(...missing);
    return logits;
  }

  /** {tokens, probs: Float64Array[V] per token or null (greedy), forwards}. */
  async propose(ctx, k, p, rand) {
    if (k <= 0) return { tokens: [], probs: null, forwards: 0 };
    let logits = await this.sync(ctx), row = logits.rows - 1, forwards = 1;
    const tokens = [], dists = [];
    for (;;) {
      let tok, sure;
      if (p.greedy) {
        tok = argmax(logits, row);
        sure = probs1(logits, row, tok);
      } else {
        const q = probs(logits, row, p);
        tok = sampleFrom(q, rand());
        sure = q[tok];
        dists.push(q);
      }
      tokens.push(tok);
      if (tokens.length >= k || sure < (p.minConfidence ?? this.minConfidence)) break;
      logits = await this.lm.forward([tok]);
      row = 0;
      forwards++;
      this.cached.push(tok);
    }
    return { tokens, probs: p.greedy ? null : dists, forwards };
  }
}

/** softmax(row r)[tok]: how sure a greedy draft is of tok. */
function probs1(logits, r, tok) {
  const V = logits.vocab, off = r * V, d = logits.data;
  let mx = -Infinity, s = 0;
  for (let i = 0; i < V; i++) mx = Math.max(mx, d[off + i]);
  for (let i = 0; i < V; i++) s += Math.exp(d[off + i] - mx);
  return Math.exp(d[off + tok] - mx) / s;
}

/** strategy -> (params, models) -> proposer {propose(ctx, k, rand) -> {tokens, probs, forwards}}
 * or null (plain decoding): one entry per strategy, as edgespec's PROPOSERS registry. */
export const PROPOSERS = {
  plain: () => null,
  ngram: (p) => ({
    propose: async (ctx, k) => ({ tokens: ngramPropose(ctx, k, p.ngramMin, p.ngramMax), probs: null, forwards: 0 }),
  }),
  draft: (p, models) => {
    if (!models.draft) throw new DemoError('this bundle has no ONNX draft model: export one with edgespec export -m MODEL --draft DRAFT --format onnx -o DIR');
    models.draft.reset();
    return { propose: (ctx, k, rand) => models.draft.propose(ctx, k, p, rand) };
  },
};

/**
 * Generate from `promptIds`. params: {maxNewTokens, greedy, temperature, topK, topP, seed,
 * strategy: a PROPOSERS key ('plain' | 'ngram' | 'draft'), k (draft length), ngramMin,
 * ngramMax, minConfidence (draft: stop below this top probability)}; eos: Set of stop ids; models: {draft: DraftProposer} when the bundle has a draft.
 * onToken(ids) is called as tokens become final. Returns {tokens, stats}: tokens exclude EOS
 * (as edgespec's GenerationResult.token_ids); stats times are milliseconds.
 */
export async function generate(lm, promptIds, params, eos, onToken = () => {}, models = {}) {
  const p = { maxNewTokens: 32, greedy: true, temperature: 1, topK: 0, topP: 1, seed: 0, strategy: 'plain', k: 4, ngramMin: 1, ngramMax: 4, ...params };
  const make = PROPOSERS[p.strategy];
  if (!make) throw new DemoError(`unknown strategy '${p.strategy}'; known: ${Object.keys(PROPOSERS).join(', ')}`);
  const proposer = make(p, models);
  const rand = rng(p.seed);
  const stats = { prefillMs: 0, ttftMs: 0, totalMs: 0, decodeMs: 0, forwards: 0, draftForwards: 0, proposed: 0, accepted: 0, steps: 0, histogram: [] };
  const t0 = performance.now();
  lm.reset();
  const out = [];
  let logits = await lm.forward(promptIds);
  stats.forwards++;
  let next = pick(logits, logits.rows - 1, p, rand);
  stats.prefillMs = stats.ttftMs = performance.now() - t0;
  const done = (tok) => eos.has(tok) || out.length >= p.maxNewTokens;
  while (!done(next)) {
    out.push(next);
    onToken(out);
    if (out.length >= p.maxNewTokens) break;
    const budget = p.maxNewTokens - out.length;  // tokens still allowed after `next`
    const proposal = proposer && budget > 0 ? await proposer.propose([...promptIds, ...out], Math.min(p.k, budget), rand) : null;
    const draft = proposal?.tokens ?? [];
    stats.draftForwards += proposal?.forwards ?? 0;
    const base = lm.nPast;
    logits = await lm.forward([next, ...draft]);
    stats.forwards++;
    if (!draft.length) { next = pick(logits, 0, p, rand); continue; }
    stats.steps++; stats.proposed += draft.length;
    let a = 0, bonus = -1;
    for (; a < draft.length; a++) {
      const d = draft[a];
      if (p.greedy) {
        const t = argmax(logits, a);
        if (t !== d) { bonus = t; break; }
      } else {
        const q = probs(logits, a, p), pd = proposal.probs?.[a];  // pd null: one-hot on d
        if (rand() < (pd ? q[d] / pd[d] : q[d])) continue;  // accept with min(1, q(d) / p(d))
        const r = pd ? q.map((x, i) => Math.max(0, x - pd[i])) : q;  // resample max(0, q - p)
        if (!pd) r[d] = 0;
        const s = r.reduce((x, y) => x + y, 0);
        bonus = sampleFrom(r.map((x) => x / s), rand());
        break;
      }
    }
    stats.accepted += a;
    stats.histogram[a] = (stats.histogram[a] ?? 0) + 1;
    if (bonus < 0) bonus = pick(logits, draft.length, p, rand);
    let stopped = false;
    for (let i = 0; i < a; i++) {
      if (done(draft[i])) { stopped = true; break; }
      out.push(draft[i]);
    }
    if (stopped) break;
    if (a) onToken(out);
    lm.truncate(base + 1 + a);  // keep next and the accepted drafts; drop the rejected
    next = bonus;
  }
  stats.totalMs = performance.now() - t0;
  stats.decodeMs = stats.totalMs - stats.prefillMs;
  stats.tokens = out.length;
  stats.tokensPerS = out.length > 1 ? (out.length - 1) / (stats.decodeMs / 1000) : 0;
  stats.acceptance = stats.proposed ? stats.accepted / stats.proposed : null;
  stats.meanAcceptedPerStep = stats.steps ? stats.accepted / stats.steps : null;
  return { tokens: out, stats };
}

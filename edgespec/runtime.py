"""The Python API: ``rt = edgespec.load(...)``, then ``rt.generate(...)`` / ``rt.stream(...)``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from edgespec.engine import Generation, GenerationResult, make_context
from edgespec.errors import EdgespecError, missing_extra
from edgespec.model import Model
from edgespec.runtimes import BACKENDS, PREFERRED, LoadOptions, ModelSource
from edgespec.sampling import GenerationParams
from edgespec.sources import resolve
from edgespec.speculative.config import SpecConfig
from edgespec.speculative.session import SpecSession
from edgespec.strategies import STRATEGIES
from edgespec.threads import load_tuned
from edgespec.tokenizer import Tokenizer, load_tokenizer


def make_params(base: GenerationParams | None = None, **overrides: Any) -> GenerationParams:
    """``base`` (or the defaults) with ``overrides`` applied, validated."""
    known = {f.name for f in fields(GenerationParams)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise EdgespecError(
            f"unknown generation option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    if isinstance(overrides.get("stop"), str):
        overrides["stop"] = (overrides["stop"],)
    d = (base or GenerationParams()).to_dict()
    d.update(overrides)
    return GenerationParams.from_dict(d)


def check_weights(backend: str, weights: str) -> None:
    """One line when ``--weights`` is given to a backend that has no such choice (it would
    be silently ignored).

    Raises:
        EdgespecError: ``weights`` is not "auto" and ``backend`` does not take it.
    """
    if weights != "auto" and not BACKENDS.get(backend).takes_weights:
        able = " or ".join(n for n in BACKENDS.names() if BACKENDS.get(n).takes_weights)
        raise EdgespecError(
            f"backend '{backend}' takes no --weights (it runs the model as it is); drop "
            f"--weights {weights} or use --backend {able}"
        )


def pick_backend(
    source: ModelSource, backend: str | None, options: LoadOptions | None = None
) -> str:
    """The backend to use: the user's choice (checked); else, among the installed backends
    that can load ``source``, the one that decodes one token of this model (by content)
    fastest on this device, with the threads, weights and spin of ``options``; else the
    first installed one in ``PREFERRED`` order.

    Measurements come from the store (``edgespec calibrate``'s cost curves, else earlier
    thread probes). When fewer than two backends have one, the candidates without one that
    are cheap to load (``Backend.cheap_to_load``: not the onnx backend before its one-time
    conversion, nor tvm, which compiles, nor the NumPy reference, which dequantizes the
    model) are loaded and timed once (:func:`edgespec.threads.tune`, at their best thread
    counts) and set against the stored ones, the result is cached, and the user is told the
    choice in one line, which also names the backends left out for being slow to load and the
    command that measures them. Without ``options`` nothing is compared.
    """
    if backend:
        cls = BACKENDS.get(backend)
        check_weights(backend, options.weights if options is not None else "auto")
        if source.kind not in cls.accepts:
            raise EdgespecError(
                f"backend '{backend}' cannot load a {source.kind} model "
                f"(it accepts: {', '.join(cls.accepts)}); pick another --backend"
            )
        if not cls.available():
            raise missing_extra(cls.requires[0], cls.extra or backend)
        return backend
    installed = _installed(source.kind)
    if options is not None and options.device != "cpu":  # only backends that run there
        there = [
            n
            for n in dict.fromkeys([*installed, *BACKENDS.names()])
            if source.kind in BACKENDS.get(n).accepts
            and options.device in BACKENDS.get(n).devices
            and BACKENDS.get(n).available()
        ]
        if not there:
            raise EdgespecError(
                f"no installed backend runs a {source.kind} model on --device "
                f"{options.device}; use --device cpu"
            )
        return there[0]
    if options is not None:
        # any installed backend that loads this kind may win on measurements, including
        # ones not preferred by default (onnx converts a GGUF once, on first use)
        fastest = _fastest_measured(source, _able(source, installed), options)
        if fastest is not None:
            return fastest
    if installed:
        return installed[0]
    raise EdgespecError(f"no installed backend can load a {source.kind} model; run ./install.sh")


def _installed(kind: str) -> list[str]:
    """The installed backends of ``PREFERRED[kind]``, in that order."""
    return [n for n in PREFERRED[kind] if BACKENDS.get(n).available()]


def _able(source: ModelSource, installed: list[str]) -> list[str]:
    """``installed`` (``PREFERRED`` order), then every other installed backend that loads
    ``source``'s kind."""
    return installed + [
        n
        for n in BACKENDS.names()
        if n not in installed
        and source.kind in BACKENDS.get(n).accepts
        and BACKENDS.get(n).available()
    ]


def _fastest_measured(source: ModelSource, able: list[str], options: LoadOptions) -> str | None:
    """The stored winner among ``able``, probing the cheap ones first when needed."""
    import sys

    from edgespec import threads
    from edgespec.speculative import cost_curves

    if len(able) < 2:
        return None
    digest = source.digest()
    weights = {n: threads.stored_weights(source, n, options) for n in able}
    args = (options.n_threads, weights, options.spin, options.device)
    fastest = cost_curves.fastest_backend(digest, able, *args)
    if fastest is not None:
        return fastest[0]
    times, cheap, slow = _measured_cheap_slow(source, able, options)
    if len(times) + len(cheap) < 2:
        return None  # (load() names the slow ones once the chosen backend has loaded)
    quiet = replace(options, progress=False)  # one line below says it all
    for name in cheap:
        try:
            with BACKENDS.get(name).load(source, quiet) as model:
                choice = threads.tune(model, source, name, quiet)  # cached unless busy
        except EdgespecError:
            continue  # this backend cannot load this model: it is out of the running
        if choice.threads is not None and choice.one_token_s:
            times[name] = (choice.one_token_s[choice.threads], choice.threads)
    if len(times) < 2:
        return None
    best = min(times, key=lambda n: times[n][0])
    if options.progress:
        per = ", ".join(
            f"{n} {s * 1000:.1f} ms ({t} threads)" for n, (s, t) in sorted(times.items())
        )
        also = f"; {_untimed(source, slow)}" if slow else ""
        print(
            f"edgespec: {best} decodes {source.name or source.path.name} fastest on this "
            f"device (one token: {per}); cached (edgespec calibrate re-measures, --backend "
            f"overrides){also}",
            file=sys.stderr,
        )
    return best


def _measured_cheap_slow(
    source: ModelSource, able: list[str], options: LoadOptions
) -> tuple[dict[str, tuple[float, int | None]], list[str], list[str]]:
    """``able`` sorted for the first-use choice: ``{backend: (one-token seconds, threads)}``
    of those with a stored thread probe (whether or not cheap to load: a tvm run stores
    one), the cheap-to-load ones without one (to be timed), and the rest that are not a
    reference (slow to load and never measured with ``options``: left out, and named)."""
    from edgespec import threads
    from edgespec.speculative import cost_curves

    times: dict[str, tuple[float, int | None]] = {}
    cheap, slow = [], []
    for name in able:
        entry = cost_curves.load_threads(threads.key_for(source, name, options))
        one = cost_curves.one_token_seconds(entry, options.n_threads)
        if entry is not None and one is not None:
            times[name] = (one, options.n_threads or entry.get("best"))
        elif BACKENDS.get(name).cheap_to_load(source, options):
            cheap.append(name)
        elif not BACKENDS.get(name).reference:
            slow.append(name)
    return times, cheap, slow


def untimed_note(source: ModelSource, options: LoadOptions) -> str | None:
    """For the first load of ``source`` with an automatic backend choice: the line naming
    the backends it left out (:func:`_measured_cheap_slow`) and how to measure them, or None."""
    _, _, slow = _measured_cheap_slow(source, _able(source, _installed(source.kind)), options)
    return f"edgespec: {_untimed(source, slow)}" if slow else None


def _untimed(source: ModelSource, slow: list[str]) -> str:
    """What the first-use choice left out: the backends in ``slow`` (slow to load, never
    measured), and the command that measures one so that later runs weigh it."""
    name = source.name or str(source.path)
    return (
        f"not timed: {', '.join(slow)} (a first load compiles or converts the model); "
        f"`edgespec calibrate -m {name} --backend {slow[-1]}` measures it once"
        + "".join(f" (or `--backend {n}`)" for n in reversed(slow[:-1]))
        + ", and later runs choose among the measured"
    )


def load_model(source: ModelSource, backend: str, options: LoadOptions) -> Model:
    """Instantiate ``source`` on ``backend`` with ``options`` as they are (``n_threads``
    None: the library's default); :func:`load` uses :func:`edgespec.threads.load_tuned`."""
    return BACKENDS.get(backend).load(source, options)


@dataclass
class Runtime:
    """A tokenizer, a target model and (optionally) a draft model, ready to generate.

    Attributes:
        tokenizer: the target's tokenizer.
        target: the model whose output is the contract.
        backend: the target's backend name.
        source: where the target came from.
        options: how models were loaded (n_ctx, threads).
        draft: an optional smaller model with the same vocabulary, as the proposers run it:
            the draft's file, or its copy in ``draft_quant`` (:func:`load` chose it).
        compressor_source: the context compressor to load on first use (``compressor=`` of
            :func:`load` or a bundle's role); None: the draft, else the target, compresses.
        compress_ratio: the bundle's default ``--compress`` ratio (None: none named).
        compressor_backend: the backend the compressor scores on (None: the fastest for
            batched scoring that is installed; see :mod:`edgespec.compress.prompt`).
        draft_source: where the draft came from (None: no draft, or one passed as a model).
        draft_backend: the draft's backend name.
        draft_quant: the type ``draft`` was requantized to from ``draft_source``
            (:mod:`edgespec.requant`); None: ``draft`` runs the file's own types. The lossy
            two-model strategies and the compressor take the file's (:meth:`file_draft`).
    """

    tokenizer: Tokenizer
    target: Model
    backend: str
    source: ModelSource
    options: LoadOptions = field(default_factory=LoadOptions)
    draft: Model | None = None
    compressor_source: ModelSource | None = None
    compress_ratio: float | None = None
    compressor_backend: str | None = None
    draft_source: ModelSource | None = None
    draft_backend: str | None = None
    draft_quant: str | None = None
    _compressor: Any = field(default=None, repr=False)  # edgespec.compress.Compressor
    _sessions: dict[tuple[SpecConfig, bool], SpecSession] = field(default_factory=dict, repr=False)
    _heads: dict[tuple[int, str | None, int, str | None], Model] = field(
        default_factory=dict, repr=False
    )
    #: the draft requantized, per type (:meth:`draft_requantized`)
    _drafts: dict[str, Model] = field(default_factory=dict, repr=False)
    #: probe seconds of sessions built since the last generation started (-> Stats.probe_s)
    _probe_s: float = field(default=0.0, repr=False)

    def encode_prompt(
        self, prompt: str, *, chat: bool = False, system: str | None = None
    ) -> list[int]:
        """Token ids of ``prompt``; with ``chat``, wrapped in the model's chat template."""
        if not prompt or not prompt.strip():
            raise EdgespecError("the prompt is empty; pass some text to continue")
        if chat:
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": prompt}
            ]
            return self.encode_messages(messages)
        return self.tokenizer.encode(prompt)

    def encode_messages(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of chat ``messages`` (``{"role", "content"}`` dicts) through the model's
        chat template, with one BOS even when the template writes its own."""
        ids = self.tokenizer.encode(self.tokenizer.apply_chat_template(messages))
        bos = self.tokenizer.bos_id
        if bos is not None and len(ids) > 1 and ids[0] == ids[1] == bos:
            ids = ids[1:]  # the template already wrote the BOS
        return ids

    def curve_key(self) -> str:
        """The key under which ``edgespec calibrate`` stores this runtime's cost curve and
        near-tie bound, and under which the controller and the bench look them up."""
        from edgespec.speculative import cost_curves

        return cost_curves.curve_key(
            self.backend,
            self.source.digest(),
            self.options.n_threads,
            str(self.target.info.extra.get("variant", "")),
            self.options.device,
        )

    def start(
        self,
        prompt: str | list[int],
        *,
        strategy: str = "autoregressive",
        chat: bool = False,
        config: Any = None,
        params: GenerationParams | None = None,
        compress: Any = None,
        context_budget: int | None = None,
        system: str | None = None,
        **overrides: Any,
    ) -> Generation:
        """A :class:`Generation` for ``prompt`` (text, or token ids used as they are).

        Sampling comes from ``params``, with ``overrides`` (any
        :class:`~edgespec.sampling.GenerationParams` field) applied on top.
        ``compress`` (a ratio in (0, 1], True for the bundle's default, or
        :class:`~edgespec.compress.CompressOptions`) or ``context_budget`` (tokens) shortens
        the prompt's context with the compressor first, for every strategy (lossy; see
        :mod:`edgespec.compress`). ``system``: the system message with ``chat``.
        """
        gp = make_params(params, **overrides)
        compression = None
        if compress is not None or context_budget is not None:
            from edgespec.compress import prompt as cp

            opts = cp.options_for(self, compress, context_budget)
            assert opts is not None
            ids, compression = cp.compress_for(self, prompt, opts, chat=chat, system=system)
        elif isinstance(prompt, list):
            ids = list(prompt)
        else:
            ids = self.encode_prompt(prompt, chat=chat, system=system)
        prepared = STRATEGIES.get(strategy).prepare(self, config)
        # memory compression prefixes the target (compress.dolphin): its rows take context
        target = getattr(compression, "target", None) or self.target
        n_memory = int(getattr(target, "n_memory", 0))
        ctx = make_context(
            target=target,
            params=gp,
            backend=self.backend,
            strategy=strategy,
            n_ctx=self.options.n_ctx - n_memory,
            prompt_len=len(ids),
            eos_ids=self.tokenizer.eos_ids,
            draft=self.draft,
            config=prepared,
        )
        ctx.rec.probe_s, self._probe_s = self._probe_s, 0.0
        gen = Generation(ctx, strategy, self.tokenizer, ids)
        extra = self.target.info.extra
        if "kv_cache" in extra:
            ctx.rec.kv_cache = str(extra["kv_cache"])
            ctx.rec.kv_cache_mb = extra["kv_cache_bytes"] / 1e6
            ctx.rec.kv_cache_f16_mb = extra["kv_cache_f16_bytes"] / 1e6
            ctx.rec.kv_cache_default = str(extra.get("kv_cache_default", ""))
            ctx.rec.kv_cache_default_mb = extra.get("kv_cache_default_bytes", 0) / 1e6
            from edgespec.runtimes.base import LOSSY_KV_CACHE_TYPES

            ctx.rec.lossy = ctx.rec.lossy or extra["kv_cache"] in LOSSY_KV_CACHE_TYPES
        sparsity = getattr(self.target, "sparsity", None)  # chunk-sparse FFN counters
        if sparsity is not None:
            sparsity.reset()  # count this generation only (not the cost-curve probe)
            ctx.rec.sparsity = sparsity
            ctx.rec.lossy = ctx.rec.lossy or sparsity.lossy
        if compression is not None:
            compression.record(ctx.rec)
        return gen

    def generate(self, prompt: str | list[int], **kwargs: Any) -> GenerationResult:
        """Generate to completion; see :meth:`start` for the arguments."""
        return self.start(prompt, **kwargs).run()

    def stream(self, prompt: str | list[int], **kwargs: Any) -> Iterator[str]:
        """Yield text pieces as they are generated; see :meth:`start` for the arguments."""
        yield from self.start(prompt, **kwargs)

    def spec_session(self, config: SpecConfig, *, allow_plain: bool) -> SpecSession:
        """The speculation session for ``config``, built once and reused (learned state
        such as the recycling table and the cost curve carries over)."""
        key = (config, allow_plain)
        if key not in self._sessions:
            self._sessions[key] = SpecSession.build(self, config, allow_plain=allow_plain)
            self._probe_s += self._sessions[key].probe_s
        return self._sessions[key]

    def draft_requantized(self, quant: str) -> Model:
        """The draft model requantized to ``quant`` by llama.cpp's quantizer
        (:mod:`edgespec.requant`, cached on disk), loaded once on the draft's backend;
        ``quant`` "file": the draft in its file's own types. :attr:`draft` itself where it
        already is that. Lossless for the output: a draft only proposes, and the target
        verifies.

        Raises:
            EdgespecError: no draft, a draft that is not a GGUF file, an unknown ``quant``.
        """
        from edgespec.requant import check_quant, requantize

        if quant != "file":
            check_quant(quant)
        if self.draft is None:
            raise EdgespecError("draft_quant needs a draft model; pass --draft MODEL")
        if self._draft_key(quant) is None:
            return self.draft
        if self.draft_source is None or self.draft_backend is None:
            raise EdgespecError(
                "draft_quant needs to know the draft's file; load the draft with "
                "edgespec.load(..., draft=PATH) or --draft PATH"
            )
        if quant not in self._drafts:
            source = self.draft_source
            if quant != "file":
                source = requantize(source, quant, progress=self.options.progress)
            self._drafts[quant], _ = load_tuned(source, self.draft_backend, self.options)
        return self._drafts[quant]

    def file_draft(self) -> Model | None:
        """The draft in its file's own types (None: no draft): :attr:`draft`, or, where
        :func:`load` requantized it, the file loaded on first use. What the lossy two-model
        strategies and the compressor run, whose output depends on the draft's weights."""
        if self.draft is None or self.draft_quant is None:
            return self.draft
        return self.draft_requantized("file")

    def _draft_key(self, quant: str | None) -> str | None:
        """``quant`` (a ``draft_quant`` value), or None where it names :attr:`draft` itself."""
        if quant is None or quant == (self.draft_quant or "file"):
            return None
        return quant

    def draft_with_head(
        self,
        size: int,
        corpus: str | Path | None = None,
        slots: int = 0,
        quant: str | None = None,
    ) -> Model:
        """The draft (requantized to ``quant`` when given: :meth:`draft_requantized`)
        narrowed to a frequent-token head of ``size`` tokens (:mod:`edgespec.draft_head`),
        sharing that draft's weights; built once per size, corpus, slots and quant.

        Args:
            size: tokens kept (rounded up to 64).
            corpus: a UTF-8 text file whose token counts choose them; None: the Python
                standard library.
            slots: of them, prompt slots that :meth:`Model.fit_head` refills per prompt
                (rounded down to 64, at most half the head).
            quant: the draft's weights requantized to this type; None: as loaded.
        Raises:
            EdgespecError: no draft, a backend without heads, a bad size or corpus.
        """
        if self.draft is None:
            raise EdgespecError("draft_head needs a draft model; pass --draft MODEL")
        quant = self._draft_key(quant)
        base = self.draft if quant is None else self.draft_requantized(quant)
        key = (int(size), None if corpus is None else str(corpus), int(slots), quant)
        if key not in self._heads:
            from edgespec.draft_head import head_with_slots

            ids, n_slots = head_with_slots(
                self.tokenizer,
                base.info.vocab_size,
                size,
                slots,
                None if corpus is None else [corpus],
                progress=self.options.progress,
            )
            self._heads[key] = base.with_head(ids, n_slots)
        return self._heads[key]

    def close(self) -> None:
        for session in self._sessions.values():
            session.close()
        self._sessions.clear()
        for head in self._heads.values():
            head.close()
        self._heads.clear()
        for d in self._drafts.values():
            d.close()
        self._drafts.clear()
        if self._compressor is not None:
            self._compressor.close()
            self._compressor = None
        for m in (self.target, self.draft):
            if m is not None:
                m.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load(
    model: str | Path | None = None,
    *,
    backend: str | None = None,
    draft: str | Path | None = None,
    draft_backend: str | None = None,
    n_ctx: int = 2048,
    n_threads: int | None = None,
    dtype: str = "float32",
    progress: bool = True,
    weights: str = "auto",
    spin: bool = True,
    exact: bool = False,
    compressor: str | Path | None = None,
    compressor_backend: str | None = None,
    kv_cache: str | None = None,
    device: str = "cpu",
    sparse_kernel: str = "numpy",
    draft_quant: str | None = "auto",
) -> Runtime:
    """Load a model (zoo name, .gguf, HF folder or hub id; default ``smollm2-135m``).

    Args:
        model: what to load; None means the default zoo model.
        backend: "llamacpp", "onnx" or "numpy"; None picks the best installed one.
        draft: an optional draft model with the same vocabulary (for speculation).
        draft_backend: backend of the draft; defaults to the target's when it can load it.
        n_ctx: KV-cache capacity in tokens.
        n_threads: CPU threads; None means the fastest count measured on this device for
            this backend and model (stored by ``edgespec calibrate``, else measured by a
            quick probe on first use and cached; see :mod:`edgespec.threads`).
        dtype: compute dtype of the NumPy reference.
        progress: show progress bars for downloads and conversions.
        weights: onnx and tvm backends with a GGUF model: "gguf-exact" (the file's own
            quantized blocks; what "auto" picks on onnx), "fp32" (dequantized) or, on tvm,
            "gguf-q8act" (int8 activations; tvm's "auto" on a CPU with AVX512-VNNI,
            AVX-VNNI or AVX2, else gguf-exact). See ``LoadOptions.weights``.
        spin: onnx backend: False lets idle worker threads sleep (less CPU per token,
            slower). See ``LoadOptions.spin``.
        exact: plain decoding through the verification kernels, so that lossless strategies
            match it bit for bit (llamacpp, onnx). See ``LoadOptions.exact``.
        compressor: the context-compressor model (any vocabulary), loaded on the first
            compressed generation; None: a bundle's compressor role, else the draft, else
            the target (see :mod:`edgespec.compress`).
        compressor_backend: the backend the compressor scores on; None: a bundle's
            compressor role's ``backend``, else the installed backend fastest at batched
            scoring (``edgespec.compress.prompt.SCORING_BACKENDS``: onnx with fp32 weights,
            then llamacpp, then numpy).
        kv_cache: the KV cache's element type: f32, f16, q8 or q4 (lossy below the
            backend's default); None: the backend's default. See ``LoadOptions.kv_cache``.
        device: where the model runs: cpu, opencl or vulkan (the tvm backend). See
            ``LoadOptions.device``.
        sparse_kernel: the chunk-sparse FFN kernel of sparse models (``blockffn``
            backend, sparsified bundles): "numpy", "tvm" or "tvm-q8" (Q8_0 weights,
            lossy). See ``LoadOptions.sparse_kernel``.
        draft_quant: the draft's weights for speculation: "auto" (default:
            :func:`edgespec.requant.auto_quant` requantizes a GGUF draft to Q4_0 where its
            layers average more than 5 bits a weight and it streams from memory), "file"
            (also "none": the file's own types) or a type of ``edgespec.requant.QUANTS``.
            Lossless: the target verifies every token. See ``Runtime.draft_quant``.
    """
    if n_ctx < 16:
        raise EdgespecError(f"n_ctx must be at least 16, got {n_ctx}")
    if compressor_backend is not None:
        BACKENDS.get(compressor_backend)  # a typo fails before any model loads
    from edgespec.requant import draft_choice

    draft_quant = draft_choice(draft_quant)
    from edgespec.bundle import role_source, select
    from edgespec.sparse.kernel import check_impl

    source = select(resolve(model, progress=progress), backend)  # bundles: per backend
    options = LoadOptions(
        n_ctx=n_ctx,
        n_threads=n_threads,
        dtype=dtype,
        progress=progress,
        weights=weights,
        spin=spin,
        exact=exact,
        kv_cache=kv_cache,
        device=device,
        sparse_kernel=check_impl(sparse_kernel),
    )
    if kv_cache is not None:  # before pick_backend, which may load and time backends
        from edgespec.runtimes.base import KV_CACHE_TYPES

        if kv_cache not in KV_CACHE_TYPES:
            raise EdgespecError(
                f"unknown KV-cache type '{kv_cache}'; known: {', '.join(KV_CACHE_TYPES)}"
            )
    name = pick_backend(source, backend, options)
    if kv_cache is not None:
        able = BACKENDS.get(name).kv_cache_types
        if kv_cache not in able:
            kv_ok = ", ".join(
                n for n in BACKENDS.names() if kv_cache in BACKENDS.get(n).kv_cache_types
            )
            takes = f"takes {', '.join(able)}" if able else "takes no --kv-cache type"
            raise EdgespecError(
                f"backend '{name}' has no {kv_cache} KV cache; drop --kv-cache or use "
                f"--backend {kv_ok or 'llamacpp'} ({name} {takes})"
            )
    if device not in BACKENDS.get(name).devices:
        runs = {n: BACKENDS.get(n).devices for n in BACKENDS.names()}
        dev_ok = ", ".join(n for n, devices in runs.items() if device in devices)
        known = ", ".join(sorted({d for devices in runs.values() for d in devices}))
        raise EdgespecError(
            f"backend '{name}' cannot run on --device {device}; use --backend {dev_ok}"
            if dev_ok
            else f"unknown --device '{device}'; known: {known}"
        )
    if exact and not BACKENDS.get(name).supports_exact:
        exact_ok = ", ".join(n for n in BACKENDS.names() if BACKENDS.get(n).supports_exact)
        raise EdgespecError(
            f"backend '{name}' has no exact mode; drop --exact or use --backend {exact_ok}"
        )
    # the source's tokenizer first (a bad one fails before a long load), unless the
    # backend's model builds the same vocabulary itself: then its own, built once
    tokenizer = None if BACKENDS.get(name).reads_own_vocab else load_tokenizer(source)
    target, choice = load_tuned(source, name, options)  # n_threads None: the fastest measured
    if tokenizer is None:
        tokenizer = target.own_tokenizer() or load_tokenizer(source)
    if backend is None and progress and device == "cpu" and choice.source == "probe":
        # a first use (its thread probe ran now): the backends the choice could not time
        note = untimed_note(source, options)
        if note:
            import sys

            print(note, file=sys.stderr)
    from edgespec.sparse.dense import apply_bundle_sparsity

    target = apply_bundle_sparsity(source, target, options)  # a bundle's sparsity (lossy)
    draft_model = dname = quant = None
    # a bundle's draft role becomes the draft unless the caller names one
    dsource = role_source(source, "draft") if draft is None else resolve(draft, progress=progress)
    if dsource is not None:
        from edgespec.vocab import check_same_vocab

        dname = draft_backend or (name if dsource.kind in BACKENDS.get(name).accepts else None)
        dname = pick_backend(dsource, dname)
        # the vocabularies compared before the draft loads, unless its model builds the
        # draft's vocabulary itself: then after, with that one (built once)
        own_vocab = BACKENDS.get(dname).reads_own_vocab
        if not own_vocab:
            check_same_vocab(tokenizer, load_tokenizer(dsource), source.name, dsource.name)
        quant = _draft_quant(dsource, dname, options, draft_quant)
        if quant is not None:
            from edgespec.requant import requantize

            draft_model, _ = load_tuned(
                requantize(dsource, quant, progress=progress), dname, options
            )
        else:
            draft_model, _ = load_tuned(dsource, dname, options)
        if own_vocab:
            dtok = draft_model.own_tokenizer() or load_tokenizer(dsource)
            check_same_vocab(tokenizer, dtok, source.name, dsource.name)
    from edgespec.compress.prompt import compressor_source_of

    csource, ratio, cbackend = compressor_source_of(source, compressor, progress)
    return Runtime(
        tokenizer,
        target,
        name,
        source,
        options,
        draft_model,
        csource,
        ratio,
        compressor_backend or cbackend,
        dsource,
        dname,
        quant,
    )


def _draft_quant(
    source: ModelSource, backend: str, options: LoadOptions, choice: str
) -> str | None:
    """The type :func:`load` requantizes the draft ``source`` to for ``choice`` (a
    :func:`edgespec.requant.draft_choice`), or None for the file's own; "auto" says on stderr
    what it chose and why, unless ``options.progress`` is off."""
    from edgespec import requant

    if choice == "file":
        return None
    if choice != "auto":
        return choice
    quant = requant.auto_quant(source, BACKENDS.get(backend), options.weights)
    if quant is not None and options.progress:
        import sys

        print(
            f"draft: {source.name}'s layers average {requant.layer_bits(source):.2f} bits a "
            f"weight; speculating with a {requant.QUANTS[quant]} copy (lossless; "
            "--draft-quant file keeps the file's types)",
            file=sys.stderr,
        )
    return quant

"""KV-cache types of the NumPy reference backend (``--kv-cache f32|f16|q8|q4|gear4``).

One registry, :data:`KV_STORES`, maps the ``--kv-cache`` names to store classes
(:mod:`edgespec.kvcache.store`); :func:`make_store` builds one for a model's layout. The
quantizers live in :mod:`edgespec.kvcache.quant`. llama.cpp implements its own types
(``edgespec.runtimes.llamacpp.KV_TYPES``); the names mean the same bytes there (q8 = q8_0,
q4 = q4_0).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgespec.registry import Registry

if TYPE_CHECKING:
    from edgespec.kvcache.store import KVStore

#: ``--kv-cache`` name -> :class:`~edgespec.kvcache.store.KVStore` subclass
KV_STORES: Registry[type[KVStore]] = Registry("KV-cache type")
KV_STORES.add_lazy("f32", "edgespec.kvcache.store:DenseStore")
KV_STORES.add_lazy("f16", "edgespec.kvcache.store:HalfStore")
KV_STORES.add_lazy("q8", "edgespec.kvcache.store:Q8Store")
KV_STORES.add_lazy("q4", "edgespec.kvcache.store:Q4Store")
KV_STORES.add_lazy("gear4", "edgespec.kvcache.store:GearStore")

#: the names, in the order users read them
NUMPY_KV_TYPES = ("f32", "f16", "q8", "q4", "gear4")


def make_store(
    name: str,
    *,
    n_layers: int,
    n_kv: int,
    n_ctx: int,
    head_dim: int,
    dtype: Any,
    max_write: int,
) -> KVStore:
    """A ``name`` store for this layout (see :class:`~edgespec.kvcache.store.KVStore`)."""
    return KV_STORES.get(name)(n_layers, n_kv, n_ctx, head_dim, dtype, max_write)


def size_fields(
    name: str, values: int, nbytes: int, default_itemsize: int, default_name: str = "f32"
) -> dict[str, Any]:
    """The ``ModelInfo.extra`` fields through which a ``name`` cache's size reaches ``Stats``
    (as llama.cpp's backend records its cache's): ``values`` numbers (K and V of every layer
    and slot) held in ``nbytes``, against float16, float32 and the backend's own arrays
    without ``--kv-cache`` (``default_name`` elements of ``default_itemsize`` bytes: what
    ``--stats`` reports the saving against)."""
    return dict(
        kv_cache=name,
        kv_cache_bytes=nbytes,
        kv_cache_f16_bytes=values * 2,
        kv_cache_f32_bytes=values * 4,
        kv_cache_default=default_name,
        kv_cache_default_bytes=values * default_itemsize,
    )

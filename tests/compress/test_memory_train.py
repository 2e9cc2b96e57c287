"""Dolphin memory: projector training (loss falls, resume == uninterrupted, bad pairs),
``edgespec train-compressor``, and generation with ``--compress memory``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgespec.cli import main
from edgespec.errors import EdgespecError

pytest.importorskip("torch")
pytestmark = pytest.mark.unit

PAIR = {
    "compressor": {"name": "tiny", "sha256": "c" * 64},
    "target": {"name": "tiny", "sha256": "t" * 64},
}
PROMPT = (
    "The gardener painted the fence on Monday. Nora's room number is 42. The old librarian "
    "counted the maps.\n\nQuestion: What is Nora's room number? Answer: Nora's room number is"
)


@pytest.fixture(scope="module")
def tiny_folder(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny llama with a byte tokenizer (loadable by edgespec.load)."""
    from edgespec.testing import add_byte_tokenizer

    out = tmp_path_factory.mktemp("mem") / "tiny"
    shutil.copytree(tiny_llama_dir, out)
    add_byte_tokenizer(out)
    return out


@pytest.fixture(scope="module")
def tiny(tiny_folder: Path):
    from edgespec.runtimes.base import LoadOptions, ModelSource
    from edgespec.runtimes.numpy_ref import NumpyBackend

    return NumpyBackend.load(ModelSource("hf", tiny_folder, "tiny"), LoadOptions(n_ctx=512))


def _data(n: int, seed: int = 0):
    """Random contexts, prompts and answers in the tiny vocabulary."""
    from edgespec.compress.dolphin.train import Tokenized

    rng = np.random.default_rng(seed)
    ids = lambda k: rng.integers(3, 256, k).tolist()  # noqa: E731
    return [Tokenized(ids(20), ids(3), ids(4)) for _ in range(n)]


def _train(tiny, cfg, ckpt: Path, resume: bool = False):
    from edgespec.compress.dolphin.train import compute_features, train

    data = _data(cfg.examples)
    feats = compute_features(tiny, data, cfg.memory_slots, progress=False)
    return train(tiny, data, feats, cfg, PAIR, ckpt, resume=resume, n_threads=1, progress=False)


def test_pooling_is_a_mean_over_contiguous_segments() -> None:
    from edgespec.compress.dolphin.memory import pool_segments

    h = np.arange(14, dtype=np.float32).reshape(7, 2)
    got = pool_segments(h, 3)  # segments of 3, 2, 2 rows
    np.testing.assert_allclose(got, [h[:3].mean(0), h[3:5].mean(0), h[5:].mean(0)])
    assert pool_segments(h, 20).shape == (7, 2)  # never more slots than rows


def test_loss_decreases_on_a_fixed_batch(tiny, tmp_path: Path) -> None:
    from edgespec.compress.dolphin.train import TrainConfig

    # batch == examples: every step sees the same four examples
    cfg = TrainConfig(memory_slots=4, examples=4, batch=4, steps=8, lr=1e-2, checkpoint_every=4)
    projector, losses = _train(tiny, cfg, tmp_path / "c.pt")
    assert len(losses) == 8
    assert losses[-1] < losses[0] - 0.05, losses
    assert projector.w1.shape == (tiny.hp.n_embd, 2 * tiny.hp.n_embd)
    assert projector.meta["target"] == PAIR["target"] and projector.slots == 4


def test_resume_equals_uninterrupted_training(tiny, tmp_path: Path) -> None:
    from edgespec.compress.dolphin.train import TrainConfig

    cfg = TrainConfig(memory_slots=4, examples=6, batch=3, steps=4, lr=1e-2, checkpoint_every=2)
    whole, whole_losses = _train(tiny, cfg, tmp_path / "a.pt")
    half = TrainConfig(**{**cfg.__dict__, "steps": 2})
    _train(tiny, half, tmp_path / "b.pt")
    resumed, resumed_losses = _train(tiny, cfg, tmp_path / "b.pt", resume=True)
    assert resumed_losses == whole_losses
    for name in ("w1", "b1", "w2", "b2"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(whole, name))


def test_resume_refuses_another_pair_or_other_settings(tiny, tmp_path: Path) -> None:
    from edgespec.compress.dolphin.train import TrainConfig, load_checkpoint

    cfg = TrainConfig(memory_slots=4, examples=4, batch=2, steps=2, checkpoint_every=2)
    _train(tiny, cfg, tmp_path / "c.pt")
    other = {**PAIR, "target": {"name": "other", "sha256": "0" * 64}}
    with pytest.raises(EdgespecError, match="not this pair"):
        load_checkpoint(tmp_path / "c.pt", other, cfg)
    with pytest.raises(EdgespecError, match="memory_slots 4 -> 2"):
        load_checkpoint(tmp_path / "c.pt", PAIR, TrainConfig(**{**cfg.__dict__, "memory_slots": 2}))
    with pytest.raises(EdgespecError, match="no checkpoint"):
        load_checkpoint(tmp_path / "none.pt", PAIR, cfg)


def test_memory_prefix_is_what_the_target_sees(tiny, tmp_path: Path) -> None:
    """Generation over MemoryPrefixed equals forward_embeds(memory) then the ids, by hand."""
    from edgespec.compress.dolphin.memory import MemoryPrefixed, Projector

    rng = np.random.default_rng(0)
    D = tiny.hp.n_embd
    proj = Projector(
        rng.standard_normal((D, 8)).astype(np.float32),
        np.zeros(8, np.float32),
        rng.standard_normal((8, D)).astype(np.float32),
        np.zeros(D, np.float32),
        {"memory_slots": 3},
    )
    memory = proj(rng.standard_normal((3, D)))
    q = [5, 6, 7]
    tiny.reset()
    tiny.forward_embeds(memory)
    want = tiny.forward(q)
    m = MemoryPrefixed(tiny, memory)
    assert m.n_past == 3
    m.forward([9, 9])
    m.reset()  # back to the memory alone
    assert m.n_past == 3
    np.testing.assert_array_equal(m.forward(q), want)
    m.truncate(1)
    m.reset()  # cut into the memory: refilled
    np.testing.assert_array_equal(m.forward(q), want)
    tiny.reset()


def _train_cli(folder: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "train-compressor",
            "--target",
            str(folder),
            "--out",
            str(out),
            "--memory-slots",
            "4",
            "--examples",
            "6",
            "--batch",
            "3",
            "--steps",
            "2",
            "--sentences",
            "3",
            "--checkpoint-every",
            "1",
            "-t",
            "1",
            "-q",
            *extra,
        ]
    )


def test_train_compressor_into_a_bundle_and_generate(
    tiny_folder: Path, tmp_path: Path, capsys
) -> None:
    import edgespec
    from edgespec.compress.dolphin.memory import MemoryOptions
    from edgespec.fileutil import sha256_file

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "edgespec.json").write_text(json.dumps({"format_version": 1, "roles": {}}))
    assert _train_cli(tiny_folder, bundle, "--json") == 0
    res = json.loads(capsys.readouterr().out)
    entry = json.loads((bundle / "edgespec.json").read_text())["roles"]["compressor"]["projector"]
    path = bundle / entry["path"]
    assert entry["sha256"] == sha256_file(path) and entry["memory_slots"] == 4
    assert entry["target"]["sha256"] == entry["compressor"]["sha256"] == res["target"]["sha256"]
    assert len(res["losses"]) == 2

    # again without --resume: one line, exit 2; --resume with other settings: the same
    assert _train_cli(tiny_folder, bundle) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert _train_cli(tiny_folder, bundle, "--resume", "--lr", "0.5") == 2
    assert "other settings" in capsys.readouterr().err

    with edgespec.load(str(tiny_folder), backend="numpy", n_ctx=512, progress=False) as rt:
        r = rt.generate(PROMPT, compress=MemoryOptions(projector=path), max_new_tokens=4)
        question = "\n\nQuestion: What is Nora's room number? Answer: Nora's room number is"
        n_q = len(rt.tokenizer.encode(question))
        s = r.stats
        assert s.lossy and s.compressor == "memory:target (4 slots)"
        assert s.compressed_to == 4 + n_q and s.compressed_from == len(rt.tokenizer.encode(PROMPT))
        assert 0 < s.compress_s <= s.ttft_s
        # the memory rows take context: a generation to the end stops there cleanly
        r = rt.generate(PROMPT, compress=MemoryOptions(projector=path), max_new_tokens=10_000)
        assert s.compressed_to + r.stats.new_tokens == 512
        with pytest.raises(EdgespecError, match="no context before the question"):
            rt.generate("What is Nora's room number?", compress=MemoryOptions(projector=path))

    # a model from the bundle finds the projector through the manifest, checksum checked
    from types import SimpleNamespace

    from edgespec.compress.dolphin.memory import projector_of
    from edgespec.runtimes.base import ModelSource

    rt_like = SimpleNamespace(source=ModelSource("hf", bundle / "target" / "x", "b:target"))
    found, where = projector_of(rt_like, MemoryOptions())
    assert where == str(path) and found.slots == 4
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(EdgespecError, match="checksum"):
        projector_of(rt_like, MemoryOptions())


def test_generate_refuses_a_projector_of_another_pair(
    tiny_folder: Path, tmp_path: Path, capsys
) -> None:
    from edgespec.compress.dolphin.memory import Projector

    D = 64
    z = np.zeros
    Projector(
        z((D, 4), np.float32),
        z(4, np.float32),
        z((4, D), np.float32),
        z(D, np.float32),
        {**PAIR, "memory_slots": 2},
    ).save(tmp_path / "p.npz")
    rc = main(
        [
            "generate",
            "-m",
            str(tiny_folder),
            "-b",
            "numpy",
            "-q",
            "-n",
            "2",
            "--compress",
            "memory",
            "--projector",
            str(tmp_path / "p.npz"),
            PROMPT,
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "was trained for compressor tiny" in err and len(err.splitlines()) == 1


def test_memory_flags_bad_input(tiny_folder: Path, capsys) -> None:
    base = ["generate", "-m", str(tiny_folder), "-b", "numpy", "-q", "-n", "2"]
    assert main([*base, "--projector", "x.npz", PROMPT]) == 2
    assert "--projector applies only with --compress" in capsys.readouterr().err
    assert main([*base, "--compress", "memory", "--keep-last", "5", PROMPT]) == 2
    assert "--question-sep, not --keep-last" in capsys.readouterr().err
    assert main([*base, "--compress", "memory", PROMPT]) == 2  # no bundle, no --projector
    assert "needs a projector" in capsys.readouterr().err

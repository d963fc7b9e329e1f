"""The language model's set-up per process: the trie depth found by expanding each distinct row once equals a
plain breadth-first search over every state, on the bundled py3langid model; the tables cached on disk give the
same identifier, and a broken or unwritable cache is rebuilt or skipped."""

from __future__ import annotations

import numpy as np
import pytest
from py3langid.langid import MODEL_FILE, LanguageIdentifier

from data_pipelines.filters import langid_fast
from data_pipelines.filters.langid_fast import FastLanguageIdentifier, _array, _trie_depth, fast_identifier

from .multilingual import check_set


@pytest.fixture(scope="module")
def py3langid_model() -> LanguageIdentifier:
    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def _plain_bfs_depth(nm: np.ndarray, rows: np.ndarray) -> int:
    """Every state of each level expanded over all 256 bytes: the obvious search, no shortcuts."""
    table = nm.reshape(-1, 256)
    depth = np.full(len(rows), -1, dtype=np.int64)
    depth[0] = 0
    frontier = np.array([0])
    level = 0
    while len(frontier):
        targets = np.unique(table[rows[frontier]].ravel())  # each state's 256 next states
        targets = targets[depth[targets] < 0]
        if not len(targets):
            break
        level += 1
        depth[targets] = level
        frontier = targets
    return level


def test_trie_depth_equals_a_plain_breadth_first_search_on_the_bundled_model(py3langid_model):
    nm, rows = _array(py3langid_model.tk_nextmove), _array(py3langid_model.tk_row)
    assert fast_identifier().depth == _trie_depth(nm, rows) == _plain_bfs_depth(nm, rows) >= 4


def test_trie_depth_of_a_small_automaton():
    """States 0 -a-> 1 -b-> 2 -c-> 3 (every other byte back to 0, or to 1 on 'a'): depth 3, with rows shared."""
    rows_table = np.zeros((4, 256), dtype=np.uint32)
    rows_table[:, ord("a")] = 1  # every state: 'a' starts the match again
    rows_table[1, ord("b")] = 2
    rows_table[2, ord("c")] = 3
    rows = np.array([0, 1, 2, 0], dtype=np.uint16)  # state 3 has state 0's row (shared rows)
    assert _trie_depth(rows_table.ravel(), rows) == 3


def test_the_cached_tables_give_the_same_identifier_and_a_broken_cache_is_rebuilt(tmp_path, monkeypatch,
                                                                                   py3langid_model):
    monkeypatch.setenv("DATA_PIPELINES_CACHE_DIR", str(tmp_path / "cache"))
    fast_identifier.cache_clear()
    try:
        built = fast_identifier()  # no copy yet: built from py3langid's model, then saved
        folder = langid_fast.cache_folder()
        assert folder.parent == tmp_path / "cache" and (folder / "meta.json").exists()
        fast_identifier.cache_clear()
        loaded = fast_identifier()
        assert isinstance(loaded, FastLanguageIdentifier) and loaded is not built
        assert isinstance(loaded._ptc, np.memmap) and not loaded._ptc.flags.writeable  # mapped, shared, read-only
        texts = [t for _, t in check_set()] + ["", "a", "THE CAT", "日本語の文章です。"]
        assert [loaded.rank(t) for t in texts] == [py3langid_model.rank(t) for t in texts]
        assert loaded.detect_many(texts, ["en"]) == built.detect_many(texts, ["en"])
        assert loaded.depth == built.depth and loaded.labels == tuple(built.labels)
        assert (folder / "last_used").is_file()  # stamped by the processes that use it (mark_used)

        (folder / "_ptc.npy").write_bytes(b"\x93NUMPY broken")  # a truncated copy: rebuilt, not an error
        fast_identifier.cache_clear()
        again = fast_identifier()
        assert again.rank(texts[0]) == py3langid_model.rank(texts[0])
        assert FastLanguageIdentifier.load(folder).depth == built.depth  # written whole again

        monkeypatch.setenv("DATA_PIPELINES_CACHE_DIR", "none")
        assert langid_fast.cache_folder() is None
    finally:
        fast_identifier.cache_clear()


def _rebuilt(folder, texts, reference) -> None:
    """The next identifier scores as py3langid and leaves a whole copy, which the one after it maps."""
    fast_identifier.cache_clear()
    assert [fast_identifier().rank(t) for t in texts] == [reference.rank(t) for t in texts]
    fast_identifier.cache_clear()
    assert isinstance(fast_identifier()._ptc, np.memmap), "the rebuilt copy was not saved"


def test_damaged_or_abandoned_cache_copies_are_replaced(tmp_path, monkeypatch, py3langid_model):
    import multiprocessing
    import shutil

    monkeypatch.setenv("DATA_PIPELINES_CACHE_DIR", str(tmp_path / "cache"))
    texts = [t for _, t in check_set()][:4]
    fast_identifier.cache_clear()
    try:
        built = fast_identifier()
        folder = langid_fast.cache_folder()
        # a copy of the right shapes whose values were changed: refused by its checksums, not scored wrong
        np.save(folder / "_next_base.npy", np.ascontiguousarray(built._next_base[::-1]), allow_pickle=False)
        _rebuilt(folder, texts, py3langid_model)
        for meta in ("[]", "null", '{"format": 1}'):  # not a dict, an older format
            (folder / "meta.json").write_text(meta)
            _rebuilt(folder, texts, py3langid_model)
        # a removal cut short leaves the folder without meta.json: it is replaced, not kept in the way forever
        (folder / "meta.json").unlink()
        # and a writer killed while saving left its half copy beside it: removed by the next writer
        child = multiprocessing.get_context("spawn").Process(target=int)
        child.start()
        child.join()
        dead = folder.with_name(f".{folder.name}.tmp-{child.pid}-0000")
        dead.mkdir()
        (dead / "_ptc.npy").write_bytes(b"half")
        _rebuilt(folder, texts, py3langid_model)
        assert not dead.exists() and (folder / "meta.json").exists()
        assert [p.name for p in folder.parent.iterdir()] == [folder.name]
        shutil.rmtree(folder)
    finally:
        fast_identifier.cache_clear()


def test_copies_no_process_used_for_30_days_are_removed_by_the_next_user(tmp_path):
    """Another environment's copy (a stamp 40 days old, or no stamp and a folder that old) is removed when a
    process stamps its own; recent copies and foreign folders are left alone, nothing is removed by a process
    that cannot stamp its copy, and the stamp is written at most once a day."""
    import os
    import time
    from pathlib import Path

    now = time.time()
    day = 86400
    root = tmp_path / "cache"

    def copy(name: str, stamp_age: float | None, folder_age: float = 0) -> Path:
        folder = root / name
        folder.mkdir(parents=True)
        (folder / "meta.json").write_text("{}")
        if stamp_age is not None:
            (folder / "last_used").touch()
            os.utime(folder / "last_used", (now - stamp_age, now - stamp_age))
        os.utime(folder, (now - folder_age, now - folder_age))
        return folder

    ours = copy("langid-ours", None)
    copy("langid-old", 40 * day)  # stale: stamped 40 days ago
    copy("langid-legacy", None, folder_age=40 * day)  # stale: no stamp, made 40 days ago
    recent, fresh_legacy = copy("langid-recent", 29 * day), copy("langid-new-legacy", None, folder_age=2 * day)
    foreign = copy("tokenizers-old", 400 * day, folder_age=400 * day)
    langid_fast.mark_used(ours, now)
    assert sorted(p.name for p in root.iterdir()) == sorted(p.name for p in (ours, recent, fresh_legacy, foreign))
    assert abs((ours / "last_used").stat().st_mtime - now) < 1

    # stamped today already: nothing is looked at again until tomorrow
    os.utime(recent / "last_used", (now - 40 * day, now - 40 * day))
    langid_fast.mark_used(ours, now + 3600)
    assert recent.exists()
    langid_fast.mark_used(ours, now + day + 1)
    assert not recent.exists() and fresh_legacy.exists() and foreign.exists()

    # a copy that cannot be stamped (removed meanwhile by another process): nothing else is removed either
    stale = copy("langid-stale", 90 * day)
    langid_fast.mark_used(root / "langid-gone", now)
    assert stale.exists() and not (root / "langid-gone").exists()


def test_no_home_directory_means_no_cache(monkeypatch):
    from pathlib import Path

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    for key in ("DATA_PIPELINES_CACHE_DIR", "XDG_CACHE_HOME", "HOME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert langid_fast.cache_folder() is None

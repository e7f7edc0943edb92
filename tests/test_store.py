import pytest
import torch

from flatlib import store


def test_cache_dir_follows_flatlib_cache_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("FLATLIB_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert store.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("FLATLIB_CACHE")
    assert store.cache_dir() == tmp_path / "xdg" / "flatlib" / "results"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert store.cache_dir() == tmp_path / "home" / ".cache" / "flatlib" / "results"


def test_values_round_trip_and_missing_keys_read_as_none():
    assert store.get_json("a/b.json") is None and store.get_torch("a/t.pt") is None
    assert store.get_bytes("a/raw") is None
    store.put_bytes("a/raw", b"\x00\x01")
    store.put_json("a/b.json", {"value": 1.5, "nan": float("nan")})
    store.put_torch("a/t.pt", {"w": torch.arange(3.0)})
    assert store.get_bytes("a/raw") == b"\x00\x01"
    entry = store.get_json("a/b.json")
    assert entry["value"] == 1.5 and entry["nan"] != entry["nan"]
    assert torch.equal(store.get_torch("a/t.pt")["w"], torch.arange(3.0))
    assert not list(store.cache_dir().rglob("*.tmp"))


@pytest.mark.parametrize("put,get,key", [(store.put_json, store.get_json, "m/x.json"),
                                         (store.put_torch, store.get_torch, "n/x.pt")])
def test_corrupt_entry_is_deleted_and_reads_as_missing(put, get, key):
    path = put(key, {"value": 2.0} if put is store.put_json else {"w": torch.ones(100)})
    path.write_bytes(path.read_bytes()[:10])
    assert get(key) is None
    assert not path.exists()


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../outside.json", "a/../../b"])
def test_keys_stay_inside_the_store(key):
    with pytest.raises(ValueError, match="relative path"):
        store.path(key)


def test_digest_is_canonical():
    assert store.digest({"a": 1, "b": [2, 3]}) == store.digest({"b": [2, 3], "a": 1})
    assert store.digest({"a": 1}) != store.digest({"a": 2})
    assert len(store.digest({})) == 20

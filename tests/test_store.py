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
def test_a_truncated_entry_reads_as_missing(put, get, key, capsys):
    path = put(key, {"value": 2.0} if put is store.put_json else {"w": torch.ones(100)})
    path.write_bytes(path.read_bytes()[:-10])
    assert get(key) is None and not store.verified(key)
    assert store.report_discarded() == 1
    assert "1 entry refused and recomputed (1 with bytes that do not match their checksum)" in capsys.readouterr().err


def _flip(path, at):
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0x01
    path.write_bytes(bytes(raw))


def test_a_flipped_byte_anywhere_in_a_stored_network_is_refused():
    """torch.load accepts many one-bit changes of a tensor's bytes (it just loads another number);
    the checksum does not."""
    import io

    blob = {"w": torch.arange(1000.0)}
    path = store.put_torch("networks/a.pt", blob)
    size = path.stat().st_size
    for at in (size - 1, size - 2000, size // 2):
        before = path.read_bytes()
        _flip(path, at)
        raw = path.read_bytes()[path.read_bytes().index(b"\n", len(store.MAGIC)) + 1:]
        try:  # what the old store would have served: often a tensor with one number changed
            torch.load(io.BytesIO(raw), weights_only=True)
        except Exception:
            pass
        assert store.get_torch("networks/a.pt") is None, at
        path.write_bytes(before)
    assert torch.equal(store.get_torch("networks/a.pt")["w"], blob["w"])
    store.report_discarded()


def test_a_value_edited_in_place_or_an_entry_under_another_key_is_never_served():
    a = store.put_json("measures/a.json", {"value": 1.0})
    b = store.put_json("measures/b.json", {"value": 2.0})
    edited = a.read_bytes().replace(b'"value": 1.0', b'"value": 1.5')
    a.write_bytes(edited)
    assert store.get_json("measures/a.json") is None  # edited in place
    a_bytes, b_bytes = store.put_json("measures/a.json", {"value": 1.0}).read_bytes(), b.read_bytes()
    a.write_bytes(b_bytes)
    b.write_bytes(a_bytes)  # two entries swapped
    assert store.get_json("measures/a.json") is None and store.get_json("measures/b.json") is None
    assert store.report_discarded() == 3


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../outside.json", "a/../../b"])
def test_keys_stay_inside_the_store(key):
    with pytest.raises(ValueError, match="relative path"):
        store.path(key)


def test_digest_is_canonical():
    assert store.digest({"a": 1, "b": [2, 3]}) == store.digest({"b": [2, 3], "a": 1})
    assert store.digest({"a": 1}) != store.digest({"a": 2})
    assert len(store.digest({})) == 20


def test_a_file_url_is_the_folder_it_names(monkeypatch, tmp_path):
    monkeypatch.setenv("FLATLIB_CACHE", (tmp_path / "as url").as_uri())
    assert store.cache_dir() == tmp_path / "as url" and store.location() == str(tmp_path / "as url")
    store.put_json("a/b.json", {"value": 1})
    assert (tmp_path / "as url" / "a" / "b.json").is_file() and store.get_json("a/b.json") == {"value": 1}


@pytest.mark.parametrize("url", ["s3://bucket/prefix", "gs://bucket/prefix", "file://otherhost/store"])
def test_a_url_is_never_taken_for_a_folder(url, monkeypatch, tmp_path):
    """A path-only store would have written s3://bucket/prefix into a local folder named 's3:'."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FLATLIB_CACHE", url)
    with pytest.raises(store.StoreError):
        store.cache_dir()
    if not url.startswith("s3://"):  # an S3 URL is a store (tests/test_store_s3.py); the others are refused
        with pytest.raises(store.StoreError, match="a store is a folder .* or one of s3://bucket/prefix|another host"):
            store.check_writable()
    assert list(tmp_path.iterdir()) == []

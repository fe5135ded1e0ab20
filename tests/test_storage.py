"""Both storage backends behave the same; S3 is moto's server over HTTP, reached by boto3."""

from __future__ import annotations

import httpx
import pytest

from pipeline.errors import StorageError
from pipeline.storage import LocalStorage, open_storage


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path, settings, bucket):
    if request.param == "local":
        return open_storage(str(tmp_path / "out"), settings)
    return open_storage(f"s3://{bucket}/some/prefix", settings)


def test_put_get_exists_list(storage):
    storage.put_bytes("a/b/1.png", b"png-bytes")
    storage.put_text("a/b/1.json", '{"k": 1}')
    storage.put_text("jobs/j/results.jsonl", "")
    assert storage.get_bytes("a/b/1.png") == b"png-bytes"
    assert storage.get_text("a/b/1.json") == '{"k": 1}'
    assert storage.exists("a/b/1.png") and not storage.exists("a/b/2.png")
    assert list(storage.list_keys("a/")) == ["a/b/1.json", "a/b/1.png"]
    with pytest.raises(FileNotFoundError):
        storage.get_bytes("missing.png")


def test_url_for_serves_the_object(storage):
    storage.put_bytes("x/y.png", b"\x89PNG-data")
    url = storage.url_for("x/y.png")
    if url.startswith("file://"):
        assert url.endswith("/x/y.png")
    else:
        assert "X-Amz-Signature=" in url
        assert httpx.get(url).content == b"\x89PNG-data"


def test_a_local_key_cannot_escape_the_root(tmp_path):
    with pytest.raises(StorageError):
        LocalStorage(tmp_path).put_bytes("../escape.png", b"")

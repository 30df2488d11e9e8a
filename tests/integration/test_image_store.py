"""The site-wide image store: its owner (the second test account) adds, lists and removes images; the test user's
import takes a stored digest without asking the registry, a tag within the TTL without a request and after it
with one manifest request; an untrusted store or entry, or a damaged one, is passed over with one warning."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from pyenroot.devtools import imagebuilder as ib
from pyenroot.image.sitestore import SiteStore, StoreIndex
from tests.integration import test_image_cache
from tests.integration.imagecheck import HTTP, import_as, push

proxy = test_image_cache.proxy  # the counting proxy in front of the registry (a fixture)
E = ib.Entry
WARNING = "pyenroot: warning: not using the image store"


@pytest.fixture(scope="module")
def stored_image(registry, pusher):
    push(pusher, "test/stored", "v1", [[E("data", "dir"), E("data/file", data=b"from the store")]])
    return "test/stored"


@pytest.fixture
def store(session_dir, other_account, request) -> Path:
    """An empty store directory owned by the other account (the store's owner), 0755."""
    path = session_dir / "stores" / request.node.name[:80]
    path.parent.mkdir(exist_ok=True, mode=0o755)
    path.mkdir(mode=0o755)
    os.chown(path, other_account.pw_uid, other_account.pw_gid)
    return path


def admin(other_user, store: Path, *args: str):
    return other_user.pyenroot("store", *args, env={**HTTP, "PYENROOT_IMAGE_STORE": str(store)})


def added(other_user, store: Path, uri: str) -> dict:
    result = admin(other_user, store, "add", uri)
    assert result.returncode == 0, result.stderr
    listed = admin(other_user, store, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    return next(e for e in json.loads(listed.stdout) if uri in e["tags"] or e["reference_digest"] in uri)


def requests(proxy) -> tuple[int, int]:
    return proxy.count("GET", "/manifests/") + proxy.count("HEAD", "/manifests/"), proxy.count("GET", "/blobs/")


def user_import(user, store: Path, uri: str, name: str = "out.sqsh", **env: str):
    return import_as(user, uri, name, {"PYENROOT_IMAGE_STORE": str(store), **env})


def user_blobs(user) -> list[str]:
    blobs = user.home / ".cache/enroot/blobs/sha256"
    return sorted(os.listdir(blobs)) if blobs.is_dir() else []


def test_add_list_remove(other_user, user, store, proxy, stored_image):
    uri = f"docker://{proxy.host}#{stored_image}:v1"
    entry = added(other_user, store, uri)
    assert entry["tags"] == [uri]
    image = Path(entry["path"])
    assert image.parent == store / "images" and image.stat().st_size == entry["size"]
    assert image.stat().st_uid == store.stat().st_uid and image.stat().st_mode & 0o777 == 0o644
    listed = admin(other_user, store, "list")
    assert entry["reference_digest"] in listed.stdout and uri in listed.stdout
    again = admin(other_user, store, "add", uri)  # cron's refresh: nothing is built again
    assert again.returncode == 0 and again.stdout.startswith("up to date"), again.stdout + again.stderr
    assert image.stat().st_ino == os.stat(entry["path"]).st_ino
    # Users only read the store.
    refused = user.pyenroot("store", "add", uri, env={**HTTP, "PYENROOT_IMAGE_STORE": str(store)})
    assert refused.returncode == 2 and "belongs to pyenroot-other" in refused.stderr, refused.stderr
    assert len(refused.stderr.splitlines()) == 2  # the error and its hint
    removed = admin(other_user, store, "remove", uri)
    assert removed.returncode == 0, removed.stderr
    assert not image.exists()
    assert json.loads(admin(other_user, store, "list", "--json").stdout) == []
    unknown = admin(other_user, store, "remove", uri)
    assert unknown.returncode == 2 and "no such image in the store" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_remove_by_digest(other_user, store, proxy, stored_image):
    entry = added(other_user, store, f"docker://{proxy.host}#{stored_image}:v1")
    removed = admin(other_user, store, "remove", entry["reference_digest"])
    assert removed.returncode == 0, removed.stderr
    assert not Path(entry["path"]).exists()
    assert StoreIndex.from_json((store / "index.json").read_text()).images == {}


def test_a_stored_digest_needs_no_registry_request(other_user, user, store, proxy, stored_image):
    entry = added(other_user, store, f"docker://{proxy.host}#{stored_image}:v1")
    before = requests(proxy)
    pinned = f"docker://{proxy.host}#{stored_image}@{entry['reference_digest']}"
    result, output = user_import(user, store, pinned)
    assert result.returncode == 0, result.stderr
    assert requests(proxy) == before
    assert output.read_bytes() == Path(entry["path"]).read_bytes()
    assert os.stat(output).st_ino != os.stat(entry["path"]).st_ino  # the user's copy, not a name of the store's
    assert user_blobs(user) == []
    assert "warning" not in result.stderr


def test_a_tag_within_the_ttl_makes_no_request_and_after_it_one(other_user, user, store, proxy, stored_image):
    uri = f"docker://{proxy.host}#{stored_image}:v1"
    entry = added(other_user, store, uri)
    before = requests(proxy)
    result, output = user_import(user, store, uri, "fresh.sqsh", PYENROOT_IMAGE_STORE_TTL="1h")
    assert result.returncode == 0, result.stderr
    assert requests(proxy) == before
    assert output.read_bytes() == Path(entry["path"]).read_bytes()
    # The tag was resolved two hours ago (as if cron had stopped): one manifest request, still no blob.
    index = json.loads((store / "index.json").read_text())
    for tag in index["tags"]:
        tag["resolved"] = time.time() - 7200
    (store / "index.json").write_text(json.dumps(index))
    result, output = user_import(user, store, uri, "stale.sqsh", PYENROOT_IMAGE_STORE_TTL="1h")
    assert result.returncode == 0, result.stderr
    manifests, blobs = requests(proxy)
    assert (manifests - before[0], blobs - before[1]) == (1, 0)
    assert output.read_bytes() == Path(entry["path"]).read_bytes()
    assert user_blobs(user) == []


def test_without_a_ttl_a_tag_costs_one_manifest_request(other_user, user, store, proxy, stored_image):
    uri = f"docker://{proxy.host}#{stored_image}:v1"
    added(other_user, store, uri)
    before = requests(proxy)
    result, _ = user_import(user, store, uri)
    assert result.returncode == 0, result.stderr
    assert (requests(proxy)[0] - before[0], requests(proxy)[1] - before[1]) == (1, 0)


def test_a_store_the_user_could_write_is_ignored(other_user, user, store, proxy, stored_image):
    uri = f"docker://{proxy.host}#{stored_image}:v1"
    added(other_user, store, uri)
    store.chmod(0o777)
    result, output = user_import(user, store, uri)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith(WARNING)]
    assert len(warnings) == 1 and "writable by group or others" in warnings[0], result.stderr
    assert user_blobs(user) != []  # the normal path: downloaded and built
    assert output.read_bytes()[:4] == b"hsqs"


def test_an_entry_of_someone_else_is_ignored(other_user, user, store, proxy, stored_image):
    uri = f"docker://{proxy.host}#{stored_image}:v1"
    entry = added(other_user, store, uri)
    os.chown(entry["path"], 65534, 65534)  # nobody: neither the store's owner nor root
    result, _ = user_import(user, store, uri)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "image store" in line]
    assert len(warnings) == 1 and "belongs to" in warnings[0], result.stderr
    assert user_blobs(user) != []


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_entry_is_refused_on_first_use(other_user, user, store, proxy, stored_image, damage):
    uri = f"docker://{proxy.host}#{stored_image}:v1"
    entry = added(other_user, store, uri)
    data = bytearray(Path(entry["path"]).read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        del data[-100:]
    Path(entry["path"]).write_bytes(bytes(data))
    result, output = user_import(user, store, uri)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "image store" in line]
    expected = "does not match the checksum" if damage == "flip" else "were recorded"
    assert len(warnings) == 1 and expected in warnings[0], result.stderr
    assert output.read_bytes() != bytes(data) and user_blobs(user) != []


def test_the_checksum_is_read_once_per_node(other_user, user, store, proxy, stored_image):
    uri = f"docker://{proxy.host}#{stored_image}:v1"
    entry = added(other_user, store, uri)
    result, _ = user_import(user, store, uri, "first.sqsh")
    assert result.returncode == 0, result.stderr
    stamp = user.home / ".run/enroot/store-verified" / SiteStore(store).image(entry["name"]).stem
    assert stamp.is_file() and entry["sha256"] in stamp.read_text()


def test_bad_store_commands(user, session_dir):
    unset = user.pyenroot("store", "list", env={"PYENROOT_IMAGE_STORE": None})
    assert unset.returncode == 2 and "PYENROOT_IMAGE_STORE is not set" in unset.stderr
    missing = str(session_dir / "no-such-store")
    for args in (("list",), ("remove", "sha256:" + "0" * 64)):
        result = user.pyenroot("store", *args, env={"PYENROOT_IMAGE_STORE": missing})
        assert result.returncode == 1 and f"the image store {missing} does not exist" in result.stderr
        assert len(result.stderr.splitlines()) == 2 and not os.path.exists(missing)
    archive = user.pyenroot("store", "add", "oci-archive:///tmp/x.tar", env={"PYENROOT_IMAGE_STORE": missing})
    assert archive.returncode == 2 and "not a registry image" in archive.stderr and not os.path.exists(missing)


def test_load_unpacks_the_stored_image(other_user, user, store, proxy, stored_image):
    entry = added(other_user, store, f"docker://{proxy.host}#{stored_image}:v1")
    before = requests(proxy)
    pinned = f"docker://{proxy.host}#{stored_image}@{entry['reference_digest']}"
    result = user.pyenroot("load", "-n", "fromstore", pinned, env={**HTTP, "PYENROOT_IMAGE_STORE": str(store)})
    assert result.returncode == 0, result.stderr
    assert requests(proxy) == before and user_blobs(user) == []
    assert (user.home / ".local/share/enroot/fromstore/data/file").read_bytes() == b"from the store"

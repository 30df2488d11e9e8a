"""The foundation's fixtures are real: a registry on loopback, pushed images, an unprivileged user."""

import requests

from pyenroot.devtools import imagebuilder


def test_cli_runs_as_unprivileged_user(user):
    result = user.pyenroot("version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert user.run(["id", "-u"]).stdout.strip() == str(user.uid)
    assert user.uid != 0


def test_unknown_verb_as_user(user):
    result = user.pyenroot("frobnicate")
    assert result.returncode == 2
    assert result.stderr.startswith("pyenroot: error: unknown command: frobnicate")
    assert "Traceback" not in result.stderr


def test_registry_serves_pushed_image(busybox_image):
    url = f"{busybox_image.registry.url}/v2/{busybox_image.repository}/manifests/{busybox_image.tag}"
    response = requests.get(url, headers={"Accept": imagebuilder.DOCKER_MANIFEST})
    assert response.status_code == 200
    assert response.headers["Docker-Content-Digest"] == busybox_image.image.digest


def test_index_and_zstd_layers_push(registry, pusher):
    layer = imagebuilder.tar_bytes([imagebuilder.Entry("hello", data=b"hi\n")])
    amd = imagebuilder.build_image([layer], compression="zstd", oci=True, arch="amd64")
    arm = imagebuilder.build_image([layer], compression="none", oci=True, arch="arm64", variant="v8")
    index = imagebuilder.build_index({("linux", "amd64", None): amd, ("linux", "arm64", "v8"): arm})
    digest = pusher.index("test/multi", "v1", index, [amd, arm])
    response = requests.get(f"{registry.url}/v2/test/multi/manifests/v1", headers={"Accept": imagebuilder.OCI_INDEX})
    assert response.headers["Docker-Content-Digest"] == digest


def test_info_prints_every_setting_unset_ones_too(user):
    from pyenroot.config import SETTINGS

    result = user.pyenroot("info", env={"ENROOT_UNSHARE_NET": None, "ENROOT_MOUNT_HOME": "y"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("pyenroot ")
    for setting in SETTINGS:
        assert sum(1 for line in lines if line.startswith((f"{setting.name}=", f"# {setting.name} "))) == 1, setting
    assert "# ENROOT_UNSHARE_NET unset" in lines
    assert "ENROOT_MOUNT_HOME=y" in lines
    assert f"ENROOT_DATA_PATH={user.home}/.local/share/enroot" in lines
